"""Filesystems for inputs and outputs (any fsspec URI), listing shards, and small file writes.

Local paths and URIs (`s3://...`, `gs://...`, `file://...`) go through
fsspec; pyarrow and Ray Data get the same filesystem wrapped, so credentials
and endpoints (e.g. `AWS_ENDPOINT_URL`) are resolved once, the standard way.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import fsspec
from fsspec.core import url_to_fs


class UriNotAllowed(ValueError):
    """An image_uri outside the prefixes the job config allows."""


class InputNotFound(FileNotFoundError):
    """The input path does not exist or holds no Parquet shards."""


def filesystem_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a URI and the path within it."""
    return url_to_fs(uri)


def list_shards(uri: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The Parquet shards under `uri` (a file or a prefix), sorted; raises InputNotFound."""
    fs, path = filesystem_for(uri)
    if not fs.exists(path):
        raise InputNotFound(f"input not found: {uri}")
    if fs.isfile(path):
        return fs, [path]
    shards = sorted(
        name
        for name in fs.find(path)
        if name.endswith(".parquet") and not any(part.startswith((".", "_")) for part in name[len(path) :].split("/"))
    )
    if not shards:
        raise InputNotFound(f"no .parquet files under {uri}")
    return fs, shards


def read_image_uri(uri: str, allowed_prefixes: Sequence[str]) -> bytes:
    """The bytes of an image URI, refused unless it starts with an allowed prefix."""
    if not any(uri.startswith(prefix) for prefix in allowed_prefixes):
        raise UriNotAllowed(
            f"image_uri {uri!r} is outside the allowed prefixes {list(allowed_prefixes)} "
            "(set images.allowed_uri_prefixes in the job config)"
        )
    with fsspec.open(uri, "rb") as handle:
        return handle.read()


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[part.strip("/") for part in parts]])


def open_for_write(uri: str, mode: str = "w"):
    """A writable handle on `uri`, its parent folder created first."""
    fs, path = filesystem_for(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    return fs.open(path, mode)


def write_text(uri: str, text: str) -> None:
    with open_for_write(uri) as handle:
        handle.write(text)


def write_parquet(table: Any, uri: str) -> None:
    import pyarrow.parquet as pq

    with open_for_write(uri, "wb") as handle:
        pq.write_table(table, handle)


def write_json(uri: str, payload: Any) -> None:
    write_text(uri, json.dumps(payload, indent=2, sort_keys=True) + "\n")
