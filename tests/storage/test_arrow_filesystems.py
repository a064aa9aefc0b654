"""pyarrow's native filesystems, built from the job's storage settings: local files and S3 on a real protocol server."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmr5_batch.config import load_config
from mmr5_batch.storage.arrow_filesystems import _s3_arguments, arrow_filesystem, read_parquet
from mmr5_batch.storage.filesystems import Storage


def test_local_paths_use_the_native_local_filesystem(tmp_path):
    pq.write_table(pa.table({"query_id": ["a"], "other": [1]}), tmp_path / "s.parquet")
    fs, path = arrow_filesystem(Storage(), f"file://{tmp_path}/s.parquet")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/s.parquet"
    assert read_parquet(Storage(), str(tmp_path / "s.parquet"), ["query_id", "absent"]).to_pydict() == {"query_id": ["a"]}


def test_s3_settings_become_s3filesystem_arguments(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(
        None,
        {
            "input": "s3://b/in",
            "output": "s3://b/out",
            "storage.endpoint_url": "http://127.0.0.1:9000",
            "storage.region": "eu-west-1",
            "storage.access_key_id": "AK",
            "storage.secret_access_key": "SK",
        },
    )
    assert _s3_arguments(config.storage.s3_options()) == {
        "endpoint_override": "127.0.0.1:9000",
        "scheme": "http",
        "region": "eu-west-1",
        "access_key": "AK",
        "secret_key": "SK",
    }
    assert _s3_arguments({}) == {}  # the AWS chain decides
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")
    assert _s3_arguments({})["endpoint_override"] == "s3.example.com"


def test_a_named_profile_goes_through_fsspec(monkeypatch):
    fs, path = arrow_filesystem(Storage({"profile": "team"}), "s3://bucket/key.parquet")
    assert isinstance(fs, pafs.PyFileSystem) and path == "bucket/key.parquet"


def test_s3_reads_through_the_native_client(s3_endpoint, tmp_path):
    import boto3

    boto3.client("s3").create_bucket(Bucket="native")
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"query_id": ["q1", "q2"]}), buffer)
    boto3.client("s3").put_object(Bucket="native", Key="in/s.parquet", Body=buffer.getvalue().to_pybytes())
    fs, _ = arrow_filesystem(Storage(), "s3://native/in/s.parquet")
    assert isinstance(fs, pafs.S3FileSystem)
    assert read_parquet(Storage(), "s3://native/in/s.parquet")["query_id"].to_pylist() == ["q1", "q2"]
