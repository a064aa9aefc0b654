"""`--overwrite` without losing results: earlier results stay until their replacement is complete.

An overwrite run starts with one write, `_ledger/superseded.json`: its id,
its settings, and every result file already in the output. From then on
(until it is finished) the ledger's older entries do not count and the
superseded files are never read as results (resume, readback and orphan
checks skip them), yet they stay where they are: a shard's old files are
deleted only once its new rows are all written and counted. A crash at any
point leaves each shard's old results or its new ones, never neither; the
next run, with or without `--overwrite`, carries on under the same overwrite.
When a run has accounted for every shard, what is still superseded (shards
gone from the input, or unreadable now) is deleted too, with the ledger
entries older than the overwrite, and the overwrite ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from mmr5_batch.evaluation.relabel import PAIRS_FOLDER
from mmr5_batch.job.ledger import RESULT_FOLDERS, OutputState
from mmr5_batch.storage.filesystems import join

FOLDERS = (*RESULT_FOLDERS, PAIRS_FOLDER)


def supersede_results(state: OutputState, fingerprint: dict[str, Any]) -> int:
    """Start an overwrite: every result file now in the output is superseded (one write); how many files."""
    files = set(state.superseded())  # an unfinished overwrite's too
    for name in FOLDERS:
        files.update(state.storage.list_files(join(state.output, name), ".parquet"))
    state.record_overwrite({"overwrite_id": uuid.uuid4().hex[:12], "fingerprint": fingerprint, "files": sorted(files)})
    return len(files)


def _shard_of(uri: str, prefix: str) -> str:
    """The shard key a result file belongs to (`<prefix>/<folder>/<key>/<file>`, `prefix` as the listing spells the output)."""
    return uri[len(prefix) + 1 :].split("/")[1]


def delete_superseded(state: OutputState, keys: Iterable[str]) -> int:
    """Delete the superseded files of the given shards (their new rows are complete); how many."""
    overwrite = state.overwrite()
    if overwrite is None:
        return 0
    wanted = set(keys)
    prefix = state.storage.listed_prefix(state.output)
    doomed = {uri for uri in overwrite["files"] if _shard_of(uri, prefix) in wanted}
    for uri in sorted(doomed):
        state.storage.remove(uri)
    state.record_overwrite(overwrite | {"files": [uri for uri in overwrite["files"] if uri not in doomed]})
    return len(doomed)


def finish_overwrite(state: OutputState, attempt: str) -> None:
    """Every shard is accounted for: delete what is still superseded and the ledger events older than the overwrite, then end it."""
    overwrite = state.overwrite()
    if overwrite is None:
        return
    for uri in overwrite["files"]:
        state.storage.remove(uri)
    state.compact_ledger(attempt, keep=lambda event: event.get("overwrite_id") == overwrite["overwrite_id"])
    state.record_overwrite(None)
