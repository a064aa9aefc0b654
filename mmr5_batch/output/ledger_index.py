"""The shard ledger as a few files per run: `_ledger/index/<seq>-<event>-<attempt>.jsonl`.

One line per shard and event, one file per run and event kind, so a run
writes two or three files whatever its number of shards, and reading the
whole ledger costs one listing plus one read per file, not one per shard:

- `forgotten`: the results there are of content that has changed since; they
  are deleted next and the shard is processed again (a crash in between
  leaves the event, so the next run deletes them too).
- `started`: the content (fingerprint) a run began to process; rows written
  for the shard after it are of that content.
- `done`: every query of the shard is written, with the shard's counters.

The latest event of a shard wins (files in `seq` order, which a run takes as
one past the highest, holding the output's lease). While an `--overwrite` is
in progress, events it did not write do not count (their `overwrite_id`
differs). When the index holds more than `COMPACT_AFTER` files, a run writes
the latest event of every shard into one file and then deletes the others;
a crash in between leaves both, which read the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mmr5_batch.output.layout import INDEX, OutputLayout
from mmr5_batch.storage.filesystems import Storage

STARTED, DONE, FORGOTTEN = "started", "done", "forgotten"
EVENTS = (FORGOTTEN, STARTED, DONE)
COMPACTED = "compacted"
COMPACT_AFTER = 16


@dataclass
class LedgerIndex:
    """Every shard's latest ledger event, read from the index files."""

    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard key -> its latest event
    files: list[str] = field(default_factory=list)  # index files read, in seq order
    next_seq: int = 1

    def apply(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.latest[event["key"]] = event


def _seq(uri: str) -> int:
    name = uri.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def read_index(storage: Storage, output: str) -> LedgerIndex:
    """The ledger of `output`: one listing of the index, one read per index file."""
    index = LedgerIndex()
    index.files = sorted(storage.list_files(OutputLayout(output).ledger(INDEX), ".jsonl"), key=lambda uri: (_seq(uri), uri))
    for uri in index.files:
        index.apply(json.loads(line) for line in storage.read_bytes(uri).decode().splitlines() if line.strip())
    index.next_seq = max((_seq(uri) for uri in index.files), default=0) + 1
    return index


def append_events(storage: Storage, output: str, index: LedgerIndex, kind: str, attempt: str, events: list[dict[str, Any]]) -> str | None:
    """Write one index file of `events` (each with `key`), as the next in order; None when there are none."""
    if not events:
        return None
    lines = [json.dumps(event | {"event": event.get("event", kind)}, sort_keys=True) for event in events]
    uri = OutputLayout(output).ledger(INDEX, f"{index.next_seq:08d}-{kind}-{attempt}.jsonl")
    storage.write_text(uri, "\n".join(lines) + "\n")
    index.apply(json.loads(line) for line in lines)
    index.files.append(uri)
    index.next_seq += 1
    return uri


def compact(storage: Storage, output: str, index: LedgerIndex, attempt: str, keep: Any = None) -> bool:
    """Rewrite the index as one file of each shard's latest event (only those `keep(event)` accepts), then delete
    the files it replaces; whether it did (it does when there are more than COMPACT_AFTER index files, or a
    `keep` filter)."""
    if keep is None and len(index.files) <= COMPACT_AFTER:
        return False
    replaced = list(index.files)
    events = [event for _, event in sorted(index.latest.items()) if keep is None or keep(event)]
    index.latest, index.files = {}, []
    # Even with no events left, the compacted file marks the sequence past the deleted ones.
    written = append_events(storage, output, index, COMPACTED, attempt, events) if events else None
    for uri in replaced:
        if uri != written:
            storage.remove(uri)
    return True
