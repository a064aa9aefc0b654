"""The job against a real S3 protocol server on loopback (moto's server mode).

Shards are read from S3, images fetched by `s3://` URI, outputs written to
S3; incremental runs over a growing prefix, a changed shard, a bad shard and
a missing bucket. Credentials and the endpoint come from the standard AWS
environment (`AWS_ENDPOINT_URL`), set before this module's Ray starts so its
workers see the same chain.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmr5_batch.config import load_config
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.job.runner import JobError, run_job
from tests.conftest import grey_jpeg
from tests.support.ledger_support import done_keys


@pytest.fixture(scope="module")
def ray_session(s3_endpoint, ray_session):
    """The shared local Ray, started after the AWS environment is set."""
    return ray_session


@pytest.fixture
def s3(s3_endpoint, request):
    import boto3
    import s3fs

    bucket = f"b-{request.node.name.replace('_', '-')[:40].lower().strip('-')}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return fs, bucket


def put_shard(fs, uri: str, rows: list[dict]) -> None:
    schema = GROUPED_INPUT_SCHEMA.append(pa.field("domain", pa.string()))
    with fs.open(uri, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)
    fs.invalidate_cache()


def uri_row(query_id: str, bucket: str, levels: list[int], extra_uris: tuple[str, ...] = ()) -> dict:
    candidates = [
        {"doc_id": f"p{level}", "image": None, "image_uri": f"s3://{bucket}/pages/p{level}.jpg", "text": None, "score": 1 - i / 10}
        for i, level in enumerate(levels)
    ]
    candidates += [{"doc_id": uri.rsplit("/", 1)[-1], "image": None, "image_uri": uri, "text": None, "score": 0.0} for uri in extra_uris]
    return {"query_id": query_id, "query": "which page?", "candidates": candidates, "domain": "s3"}


def upload_pages(fs, bucket: str, levels) -> None:
    for level in levels:
        fs.pipe(f"{bucket}/pages/p{level}.jpg", grey_jpeg(level))


def results(fs, output: str) -> tuple[list[dict], list[dict]]:
    fs.invalidate_cache()

    def rows(folder: str) -> list[dict]:
        path = f"{output.removeprefix('s3://')}/{folder}"
        if not fs.exists(path):
            return []
        files = sorted(name for name in fs.find(path) if name.endswith(".parquet") and "/." not in name)
        return [row for name in files for row in pq.read_table(fs.open(name, "rb")).to_pylist()]

    return rows("ranked"), rows("dead_letter")


def config(bucket: str, **overrides):
    values = {
        "input": f"s3://{bucket}/in/",
        "output": f"s3://{bucket}/out",
        "model.backend": "scripted-test",
        "images.allowed_uri_prefixes": [f"s3://{bucket}/pages/"],
        "execution.batch_size": 2,
        "execution.prepare_batch_size": 2,
        **overrides,
    }
    return load_config(None, values)


def test_shards_and_images_from_s3_results_to_s3(ray_session, s3):
    fs, bucket = s3
    upload_pages(fs, bucket, (30, 90, 150, 210))
    put_shard(fs, f"{bucket}/in/a.parquet", [uri_row(f"a{i}", bucket, [210, 150, 30, 90]) for i in range(3)])
    put_shard(
        fs,
        f"{bucket}/in/b.parquet",
        [uri_row("b0", bucket, [90, 30], extra_uris=(f"s3://{bucket}/pages/missing.jpg", f"s3://{bucket}/secret/x.jpg"))],
    )
    summary = run_job(config(bucket))
    ranked, dead = results(fs, f"s3://{bucket}/out")
    assert dead == [] and sorted(r["query_id"] for r in ranked) == ["a0", "a1", "a2", "b0"]
    by_id = {r["query_id"]: r for r in ranked}
    assert by_id["a0"]["doc_ids"][0] == "p30"  # the darkest page, fetched from S3, ranks first
    assert by_id["a0"]["source_path"] == f"s3://{bucket}/in/a.parquet"
    flags = dict(zip(by_id["b0"]["flagged_doc_ids"], by_id["b0"]["flag_reasons"]))
    assert flags["missing.jpg"].startswith(f"cannot read image_uri s3://{bucket}/pages/missing.jpg: FileNotFoundError")
    assert "outside the allowed prefixes" in flags["x.jpg"]
    assert summary["failed"] is None and summary["shards"]["processed"] == 2
    assert fs.exists(f"{bucket}/out/summary.json") and fs.exists(f"{bucket}/out/config.yaml")
    ledger = done_keys(f"s3://{bucket}/out")
    assert len(ledger) == 2 and ledger[0].startswith("a-")
    assert "testing-secret" not in fs.cat(f"{bucket}/out/config.yaml").decode()


def test_incremental_runs_over_a_growing_prefix(ray_session, s3):
    fs, bucket = s3
    upload_pages(fs, bucket, (30, 90, 150))
    put_shard(fs, f"{bucket}/in/day1.parquet", [uri_row(f"d1-{i}", bucket, [150, 30, 90]) for i in range(3)])
    first = run_job(config(bucket))
    assert first["totals"]["queries"] == 3

    # A new shard arrives: only it is processed.
    put_shard(fs, f"{bucket}/in/day2.parquet", [uri_row(f"d2-{i}", bucket, [90, 30]) for i in range(2)])
    second = run_job(config(bucket))
    assert second["shards"] == {"total": 2, "processed": 1, "skipped_done_earlier": 1, "reprocessed_changed": 0, "bad": 0}
    assert second["totals"]["queries"] == 2

    # Nothing new: nothing processed.
    third = run_job(config(bucket))
    assert third["totals"]["queries"] == 0 and third["shards"]["skipped_done_earlier"] == 2

    # day1 is rewritten with other rows: its old rows go, its new rows come.
    put_shard(fs, f"{bucket}/in/day1.parquet", [uri_row(f"d1-new{i}", bucket, [30, 90]) for i in range(2)])
    fourth = run_job(config(bucket))
    assert fourth["shards"]["reprocessed_changed"] == 1 and fourth["totals"]["queries"] == 2

    ranked, dead = results(fs, f"s3://{bucket}/out")
    assert dead == []
    assert Counter(r["query_id"] for r in ranked) == Counter(["d1-new0", "d1-new1", "d2-0", "d2-1"])

    # --overwrite reprocesses everything.
    fifth = run_job(config(bucket, overwrite=True))
    assert fifth["totals"]["queries"] == 4 and fifth["shards"]["skipped_done_earlier"] == 0
    ranked, _ = results(fs, f"s3://{bucket}/out")
    assert sorted(r["query_id"] for r in ranked) == ["d1-new0", "d1-new1", "d2-0", "d2-1"]


def test_bad_shard_is_skipped_and_the_rest_complete(ray_session, s3):
    fs, bucket = s3
    upload_pages(fs, bucket, (30, 90))
    put_shard(fs, f"{bucket}/in/good.parquet", [uri_row("g0", bucket, [90, 30])])
    fs.pipe(f"{bucket}/in/junk.parquet", b"this is not parquet")
    good = pa.Table.from_pylist([uri_row("t0", bucket, [90, 30])], schema=GROUPED_INPUT_SCHEMA.append(pa.field("domain", pa.string())))
    sink = pa.BufferOutputStream()
    pq.write_table(good, sink)
    fs.pipe(f"{bucket}/in/truncated.parquet", sink.getvalue().to_pybytes()[:-40])
    fs.invalidate_cache()
    summary = run_job(config(bucket))
    assert summary["shards"]["bad"] == 2 and summary["totals"]["queries"] == 1
    assert "junk.parquet: cannot read as Parquet" in summary["bad_shards"][f"s3://{bucket}/in/junk.parquet"]
    assert "truncated.parquet: cannot read as Parquet" in summary["bad_shards"][f"s3://{bucket}/in/truncated.parquet"]
    assert "2 of 3 shards could not be read" in summary["failed"]
    ranked, _ = results(fs, f"s3://{bucket}/out")
    assert [r["query_id"] for r in ranked] == ["g0"]


def test_missing_bucket_is_one_clear_line(ray_session, s3_endpoint):
    with pytest.raises(JobError, match=r"input not found: s3://no-such-bucket-here/in/"):
        run_job(config("no-such-bucket-here"))


def test_rejected_credentials_are_one_clear_line_without_the_secret(ray_session, s3, monkeypatch):
    import moto.settings

    fs, bucket = s3
    put_shard(fs, f"{bucket}/in/a.parquet", [uri_row("a0", bucket, [30])])
    # From here on the server checks every request's credentials; the job's are unknown to it.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    values = {"storage.access_key_id": "AKIAWRONGWRONGWRONG0", "storage.secret_access_key": "wrong-secret-value"}
    with pytest.raises(JobError) as failure:
        run_job(config(bucket, **values))
    message = str(failure.value)
    assert message.startswith(f"cannot list input s3://{bucket}/in/: PermissionError:") and "\n" not in message
    assert "wrong-secret-value" not in message


def test_the_lease_on_an_s3_prefix_is_a_conditional_create(s3):
    from mmr5_batch.output.lease import OutputLease
    from mmr5_batch.storage.filesystems import Storage

    _, bucket = s3
    first = OutputLease(Storage(), f"s3://{bucket}/out", "a", "run-a")
    first.acquire()
    try:
        with pytest.raises(JobError, match="in use by run run-a"):
            OutputLease(Storage(), f"s3://{bucket}/out", "b", "run-b").acquire()
    finally:
        first.release()
    with OutputLease(Storage(), f"s3://{bucket}/out", "b", "run-b") as second:
        assert second.holder()["owner"] == "b"
