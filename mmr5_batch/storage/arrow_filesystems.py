"""pyarrow's native filesystems for bulk Parquet reads (shards, written results), built from the same settings as fsspec's.

Reading thousands of shards through the Python fsspec wrapper costs a Python
call per request and per buffer; pyarrow's C++ filesystems do not. Local
paths get `pyarrow.fs.LocalFileSystem`, `s3://` gets `pyarrow.fs.S3FileSystem`
with the job's endpoint, region and keys (or, unset, the same AWS chain:
environment, `AWS_ENDPOINT_URL`, config files, instance metadata); any other
scheme, and S3 with a named profile (which pyarrow cannot select), goes
through fsspec wrapped for pyarrow. One instance per process and settings.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import pyarrow.fs as pafs

from mmr5_batch.storage.filesystems import LOCAL_PROTOCOLS, S3_PROTOCOLS, Storage, protocol_of


def arrow_filesystem(storage: Storage, uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `uri` and the path within it."""
    protocol = protocol_of(uri)
    if protocol in LOCAL_PROTOCOLS:
        return _local(), os.path.abspath(uri.removeprefix("file://"))
    if protocol in S3_PROTOCOLS and "profile" not in storage.s3_options:
        return _s3(tuple(sorted(_s3_arguments(storage.s3_options).items()))), uri.split("://", 1)[1]
    fs, path = storage.filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _s3_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """S3FileSystem arguments from the s3fs options (`StorageConfig.s3_options`) and the environment."""
    arguments: dict[str, Any] = {}
    endpoint = options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, address = endpoint.partition("://")
        arguments.update(endpoint_override=address.rstrip("/") or scheme, scheme=scheme if address else "https")
    region = (options.get("client_kwargs") or {}).get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        arguments["region"] = region
    for ours, theirs in (("key", "access_key"), ("secret", "secret_key"), ("token", "session_token")):
        if options.get(ours):
            arguments[theirs] = options[ours]
    return arguments


@lru_cache(maxsize=1)
def _local() -> pafs.FileSystem:
    return pafs.LocalFileSystem()


@lru_cache(maxsize=8)
def _s3(arguments: tuple[tuple[str, Any], ...]) -> pafs.FileSystem:
    return pafs.S3FileSystem(**dict(arguments))


def read_parquet(storage: Storage, uri: str, columns: list[str] | None = None) -> Any:
    """A Parquet file (or some of its columns; those it lacks are left out) read with the native filesystem."""
    import pyarrow.parquet as pq

    fs, path = arrow_filesystem(storage, uri)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        present = None if columns is None else [name for name in columns if name in parquet.schema_arrow.names]
        return parquet.read(columns=present)
