"""Filesystems for inputs, outputs and image URIs (any fsspec URI): shard listing, atomic writes, reads.

Local paths and URIs (`s3://...`, `gs://...`, `file://...`) go through
fsspec; pyarrow and Ray Data get the same filesystem wrapped. S3 settings
come from the job config when set (`storage`), else from the standard AWS
chain, `AWS_ENDPOINT_URL` included. A `Storage` holds those settings and is
small and picklable, so every Ray task resolves filesystems the same way.
Credentials live only in it: nothing here prints or writes them.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from mmr5_batch.errors import error_line

S3_PROTOCOLS = ("s3", "s3a")
LOCAL_PROTOCOLS = ("file", "local")


class InputNotFound(FileNotFoundError):
    """The input path does not exist, cannot be listed, or holds no Parquet shards."""


# A file being written on a local file system: hidden, renamed into place when whole.
TEMPORARY_SUFFIX = ".tmp"


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[part.strip("/") for part in parts]])


def is_hidden(name: str) -> bool:
    """Files and folders starting with '.' or '_' are ours (temporaries, ledger), never data."""
    return name.rsplit("/", 1)[-1].startswith((".", "_"))


@dataclass(frozen=True)
class Storage:
    """How to reach storage: s3fs options from the job config (empty: the AWS chain decides)."""

    s3_options: dict[str, Any] = field(default_factory=dict)

    def filesystem(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem of a URI and the path within it."""
        if protocol_of(uri) in S3_PROTOCOLS:
            # The output prefix changes while the job runs: a cached listing
            # would hide the files written since (and make them unopenable).
            return url_to_fs(uri, use_listings_cache=False, **self.s3_options)
        return url_to_fs(uri)

    def list_input(self, uri: str) -> InputListing:
        """The Parquet shards under `uri` (a file or a prefix), sorted, with their fingerprints and sizes from the one
        listing, and the files ignored there (hidden, or not `.parquet`); raises InputNotFound naming the problem."""
        try:
            fs, path = self.filesystem(uri)
            if not fs.exists(path):
                raise InputNotFound(f"input not found: {uri}")
            found = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
        except InputNotFound:
            raise
        except Exception as error:  # missing bucket, bad or expired credentials, unreachable endpoint
            raise InputNotFound(f"cannot list input {uri}: {error_line(error)}") from None
        names = sorted(name for name in found if name.endswith(".parquet") and not _under_hidden(name, path))
        chosen = set(names)
        ignored = sorted(self.uri(fs, name) for name in found if name not in chosen)
        if not names:
            raise InputNotFound(f"no .parquet files under {uri}" + (f" ({len(ignored)} other files ignored: {ignored[:3]})" if ignored else ""))
        shards = [ListedFile(name, info_fingerprint(found[name]), int(found[name].get("size") or 0)) for name in names]
        return InputListing(fs, shards, ignored)

    def uri(self, fs: fsspec.AbstractFileSystem, path: str) -> str:
        """A filesystem path as the URI users know (s3://bucket/key; local paths stay paths)."""
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return path if protocol in LOCAL_PROTOCOLS else f"{protocol}://{path}"

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.filesystem(uri)
        return fs.cat_file(path)

    def exists(self, uri: str) -> bool:
        fs, path = self.filesystem(uri)
        return fs.exists(path)

    def remove(self, uri: str) -> None:
        fs, path = self.filesystem(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def listed_prefix(self, uri: str) -> str:
        """`uri` as `list_files` spells the files under it: a relative local path made absolute, a scheme kept,
        so `file[len(prefix) + 1 :]` is the file's path below it."""
        fs, path = self.filesystem(uri)
        return self.uri(fs, path.rstrip("/"))

    def list_files(self, uri: str, suffix: str = "") -> list[str]:
        """Visible files under a prefix (URIs), sorted; none when it does not exist."""
        fs, path = self.filesystem(uri)
        if not fs.exists(path):
            return []
        return sorted(self.uri(fs, name) for name in fs.find(path) if name.endswith(suffix) and not _under_hidden(name, path))

    def writability_problem(self, uri: str) -> str | None:
        """Why files cannot be written under a local prefix, found without writing (None: they can, as far as the
        file system says, or an object store, which only a write can tell)."""
        if protocol_of(uri) not in LOCAL_PROTOCOLS:
            return None
        path = os.path.abspath(uri.removeprefix("file://"))
        existing = path
        while not os.path.exists(existing):
            parent = os.path.dirname(existing)
            if parent == existing:
                return None
            existing = parent
        if not os.path.isdir(existing):
            return f"{existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{existing} is not writable (read-only, or no permission)"
        return None

    def temporaries(self, uri: str) -> list[str]:
        """The hidden temporaries `write_bytes` left under a local prefix (object stores have none)."""
        fs, path = self.filesystem(uri)
        if protocol_of(uri) not in LOCAL_PROTOCOLS or not fs.exists(path):
            return []
        return sorted(self.uri(fs, name) for name in fs.find(path) if name.rsplit("/", 1)[-1].startswith(".") and name.endswith(TEMPORARY_SUFFIX))

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write all of `data` or nothing: readers never see a partial file.

        Object stores publish an object only when its upload completes; on
        file systems we write a hidden temporary and rename it into place.
        """
        fs, path = self.filesystem(uri)
        parent = path.rsplit("/", 1)[0]
        if protocol_of(uri) in LOCAL_PROTOCOLS:
            fs.makedirs(parent, exist_ok=True)
            temporary = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
            try:
                with fs.open(temporary, "wb") as handle:
                    handle.write(data)
                fs.mv(temporary, path)
            except BaseException:
                # A full disk or a killed task must not leave the half-written temporary behind; a process killed
                # outright does, and the output's next holder removes it (output/transaction.py: open).
                if fs.exists(temporary):
                    fs.rm(temporary)
                raise
        else:
            with fs.open(path, "wb") as handle:
                handle.write(data)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode())

    def write_json(self, uri: str, payload: Any) -> None:
        self.write_text(uri, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_parquet(self, table: Any, uri: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        self.write_bytes(uri, buffer.getvalue().to_pybytes())


def _under_hidden(name: str, root: str) -> bool:
    return any(part.startswith((".", "_")) for part in name[len(root) :].split("/") if part)


def info_fingerprint(info: dict[str, Any]) -> str:
    """A file's fingerprint from its listing entry: size plus ETag (object stores) or modification time (file
    systems), so it changes when the file does; listings carry both, so no request per file."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return f"{info.get('size')}:{str(version).strip(chr(34))}"


@dataclass(frozen=True)
class ListedFile:
    path: str  # the filesystem path
    fingerprint: str
    size: int  # bytes


@dataclass(frozen=True)
class InputListing:
    filesystem: Any  # the fsspec filesystem the paths are in
    shards: list[ListedFile]
    ignored: list[str]  # URIs of files that are not data
