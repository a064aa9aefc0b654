"""The shard ledger as a few files per run: `_ledger/index/<seq>-<event>-<attempt>.jsonl`.

One line per shard and event, one file per run and event kind, so a run
writes two or three files whatever its number of shards, and reading the
whole ledger costs one listing plus one read per file, not one per shard:

- `started`: the content (fingerprint) a run began to process; rows written
  for the shard after it are of that content.
- `done`: every query of the shard is written, with the shard's counters.
- `forgotten` (written by earlier versions only): the results there are of
  content that has changed since; read as a changed shard.

The latest event of a shard wins (files in `seq` order, which a run takes as
one past the highest, holding the output's lease). While an `--overwrite` is
in progress, events it did not write do not count (their `overwrite_id`
differs). When the index holds more than `COMPACT_AFTER` files, a run writes
the latest event of every shard into one file and then deletes the others;
a crash in between leaves both, which read the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mmr5_batch.output.layout import INDEX, OutputLayout
from mmr5_batch.output.records import LedgerEvent, parse_json
from mmr5_batch.output.writes import Delete, Put, Write
from mmr5_batch.storage.filesystems import Storage

STARTED, DONE, FORGOTTEN = "started", "done", "forgotten"
# What a damaged index file's message tells the user to do.
REMEDY = "remove the damaged file to let the next run redo the shards it recorded, or write the results to a new output"
EVENTS = (FORGOTTEN, STARTED, DONE)
COMPACTED = "compacted"
COMPACT_AFTER = 16


@dataclass
class LedgerIndex:
    """Every shard's latest ledger event, read from the index files."""

    latest: dict[str, LedgerEvent] = field(default_factory=dict)  # shard key -> its latest event
    files: list[str] = field(default_factory=list)  # index files read, in seq order
    next_seq: int = 1

    def apply(self, events: Iterable[LedgerEvent]) -> None:
        for event in events:
            self.latest[event.key] = event


def _seq(uri: str) -> int:
    name = uri.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def read_index(storage: Storage, output: str) -> LedgerIndex:
    """The ledger of `output`: one listing of the index, one read per index file."""
    index = LedgerIndex()
    index.files = sorted(storage.list_files(OutputLayout(output).ledger(INDEX), ".jsonl"), key=lambda uri: (_seq(uri), uri))
    for uri in index.files:
        lines = storage.read_bytes(uri).splitlines()
        index.apply(LedgerEvent.from_json(parse_json(uri, line, REMEDY)) for line in lines if line.strip())
    index.next_seq = max((_seq(uri) for uri in index.files), default=0) + 1
    return index


def append(output: str, index: LedgerIndex, kind: str, attempt: str, events: list[LedgerEvent]) -> list[Write]:
    """One index file of `events`, as the next in order (none when there are none); `index` takes them now."""
    if not events:
        return []
    uri = OutputLayout(output).ledger(INDEX, f"{index.next_seq:08d}-{kind}-{attempt}.jsonl")
    index.apply(events)
    index.files.append(uri)
    index.next_seq += 1
    return [Put(uri, "".join(json.dumps(event.to_json(), sort_keys=True) + "\n" for event in events).encode())]


def compact(output: str, index: LedgerIndex, attempt: str, keep: Callable[[LedgerEvent], bool] | None = None) -> list[Write]:
    """The index rewritten as one file of each shard's latest event (only those `keep(event)` accepts), then the
    files it replaces deleted; nothing unless there are more than COMPACT_AFTER index files, or a `keep` filter."""
    if keep is None and len(index.files) <= COMPACT_AFTER:
        return []
    replaced = list(index.files)
    events = [event for _, event in sorted(index.latest.items()) if keep is None or keep(event)]
    index.latest, index.files = {}, []
    # Even with no events left, the compacted file marks the sequence past the deleted ones.
    written = append(output, index, COMPACTED, attempt, events)
    return [*written, *(Delete(uri) for uri in replaced if uri not in {write.uri for write in written})]
