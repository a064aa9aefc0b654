"""A transaction step's writes as data: put a file whole, or delete one, applied in the order listed.

A step first decides everything it will write (from what it read and what
it holds in memory), then `apply` carries the list out in order; the order
of a step's writes is thus a value a test can read, and the one place that
touches storage for the transaction is here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.storage.filesystems import Storage


@dataclass(frozen=True)
class Put:
    """Write `data` to `uri`, whole or not at all."""

    uri: str
    data: bytes


@dataclass(frozen=True)
class Delete:
    """Delete `uri` (nothing when it is gone already)."""

    uri: str


Write = Put | Delete


def put_json(uri: str, payload: Any) -> Put:
    return Put(uri, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def put_parquet(uri: str, table: pa.Table) -> Put:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return Put(uri, buffer.getvalue().to_pybytes())


def apply(storage: Storage, writes: Iterable[Write]) -> None:
    """Carry the writes out, in order."""
    for write in writes:
        if isinstance(write, Put):
            storage.write_bytes(write.uri, write.data)
        else:
            storage.remove(write.uri)
