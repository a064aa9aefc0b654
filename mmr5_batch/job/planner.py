"""Planning on the driver, before any Ray work: which shards and rows this run processes.

For every shard under the input prefix: its fingerprint and ledger entry
(done and unchanged: skipped; changed: reprocessed from scratch), its layout
and query_ids (a shard that is not Parquet, is truncated or has the wrong
schema is recorded as bad and skipped; the others go on), and the query_ids
already written for it by an earlier, interrupted run (skipped).

Rows whose query_id does not name one query of one shard (missing, repeated
in the input, or a pairs-layout query spread over several shards) cannot be
tracked by id for resume, so the planner dead-letters them itself, once per
shard in one file, and the pipeline drops them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.core.layouts import GROUPED, InputSchemaError, detect_layout
from mmr5_batch.core.rows import READ_PATH
from mmr5_batch.errors import JobError, error_line
from mmr5_batch.job.ledger import OutputState, shard_key
from mmr5_batch.storage.filesystems import InputNotFound, Storage, fingerprint


@dataclass
class ShardPlan:
    path: str  # the filesystem path: what Ray Data's `path` column holds
    uri: str  # the URI users know (s3://bucket/key), recorded as source_path
    key: str  # the shard's folder name in the outputs
    fingerprint: str
    layout: str = GROUPED
    query_ids: list[str | None] = field(default_factory=list)  # one per row (grouped) or per pair row (pairs)
    done: Counter[str] = field(default_factory=Counter)  # query_id -> result rows already written
    unaddressable: dict[str | None, str] = field(default_factory=dict)  # query_id -> why it is dead-lettered by the planner

    @property
    def queries(self) -> int:
        """Result rows this shard yields in all: one per row (grouped) or per distinct query_id (pairs)."""
        if self.layout == GROUPED:
            return len(self.query_ids)
        return len({query_id for query_id in self.query_ids if query_id}) + self.query_ids.count(None)

    def remaining(self) -> int:
        return self.queries - sum(self.done.values())


@dataclass
class InputPlan:
    root: str
    filesystem: Any
    layout: str
    to_run: list[ShardPlan]
    skipped: list[ShardPlan]  # done in an earlier run and unchanged
    changed: list[ShardPlan]  # in the ledger with another fingerprint: old rows deleted, reprocessed
    bad: dict[str, str]  # shard URI -> why it was skipped

    @property
    def shards(self) -> int:
        return len(self.to_run) + len(self.skipped) + len(self.bad)


def _inspect(fs: Any, shard: ShardPlan) -> str | None:
    """Fill in layout and query_ids; the reason when the shard cannot be used."""
    try:
        with fs.open(shard.path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            shard.layout = detect_layout(parquet.schema_arrow, shard.uri).layout
            ids = parquet.read(columns=["query_id"])["query_id"]
    except InputSchemaError as error:
        return str(error)
    except Exception as error:  # not Parquet, truncated, unreadable
        return f"{shard.uri}: cannot read as Parquet: {error_line(error)}"
    if not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type):
        return f"{shard.uri}: column query_id must be a string, got {ids.type}"
    shard.query_ids = [value if value and value.strip() else None for value in ids.to_pylist()]
    return None


def plan_input(config: Any, storage: Storage, state: OutputState) -> InputPlan:
    """The shards and rows this run processes; raises JobError when nothing can run at all."""
    try:
        fs, paths = storage.list_shards(config.input)
    except InputNotFound as error:
        raise JobError(str(error)) from None
    _, root = storage.filesystem(config.input)
    shards = [ShardPlan(path, storage.uri(fs, path), shard_key(root, path), "") for path in paths]

    def look(shard: ShardPlan) -> tuple[ShardPlan, str | None, dict | None]:
        try:
            shard.fingerprint = fingerprint(fs, shard.path)
        except Exception as error:
            return shard, f"{shard.uri}: cannot stat: {error}", None
        entry = None if config.overwrite else state.ledger_entry(shard.key)
        if entry is not None and entry.get("fingerprint") == shard.fingerprint:
            return shard, None, entry
        return shard, _inspect(fs, shard), entry

    with ThreadPoolExecutor(max_workers=16) as pool:
        looked = _reading_output(state, lambda: list(pool.map(look, shards)))

    to_run: list[ShardPlan] = []
    skipped: list[ShardPlan] = []
    changed: list[ShardPlan] = []
    bad: dict[str, str] = {}
    for shard, problem, entry in looked:
        if problem:
            bad[shard.uri] = problem
        elif entry is not None and entry.get("fingerprint") == shard.fingerprint:
            skipped.append(shard)
        else:
            (changed if entry is not None else to_run).append(shard)
    to_run = sorted(to_run + changed, key=lambda shard: shard.path)

    layouts = Counter(shard.layout for shard in to_run)
    layout = layouts.most_common(1)[0][0] if layouts else GROUPED
    for shard in [shard for shard in to_run if shard.layout != layout]:
        bad[shard.uri] = f"{shard.uri}: uses the {shard.layout} layout while the other shards use {layout}"
        to_run.remove(shard)
    if not to_run and not skipped:
        raise JobError("no readable shard: " + "; ".join(bad.values()))

    _mark_unaddressable(to_run, layout)
    changed_paths = {shard.path for shard in changed}
    if not config.overwrite:
        with ThreadPoolExecutor(max_workers=16) as pool:
            written = _reading_output(
                state, lambda: list(pool.map(lambda shard: Counter() if shard.path in changed_paths else state.written_ids(shard.key), to_run))
            )
            for shard, done in zip(to_run, written):
                shard.done = done
    return InputPlan(root, fs, layout, to_run, skipped, [shard for shard in to_run if shard.path in changed_paths], bad)


def _reading_output(state: OutputState, read: Any) -> Any:
    """Run `read`; an output prefix that cannot be read (bucket, credentials, endpoint) is one JobError line."""
    try:
        return read()
    except JobError:
        raise
    except Exception as error:
        raise JobError(f"cannot read output {state.output}: {error_line(error)}") from None


def _mark_unaddressable(shards: list[ShardPlan], layout: str) -> None:
    if layout == GROUPED:
        seen = Counter(query_id for shard in shards for query_id in shard.query_ids if query_id)
        for shard in shards:
            for query_id in shard.query_ids:
                if query_id is None:
                    shard.unaddressable[None] = "missing query_id"
                elif seen[query_id] > 1:
                    shard.unaddressable[query_id] = f"query_id appears {seen[query_id]} times in the input; none of them is reranked"
    else:
        homes: dict[str, set[str]] = defaultdict(set)
        for shard in shards:
            for query_id in shard.query_ids:
                if query_id:
                    homes[query_id].add(shard.uri)
        for shard in shards:
            for query_id in shard.query_ids:
                if query_id is None:
                    shard.unaddressable[None] = "missing query_id"
                elif len(homes[query_id]) > 1:
                    shard.unaddressable[query_id] = (
                        f"query_id's rows are spread over {len(homes[query_id])} shards {sorted(homes[query_id])}; a query's rows must be in one shard"
                    )


def rows_to_drop(plan: InputPlan) -> dict[str, frozenset[str | None]]:
    """Per shard path, the query_ids the pipeline must not process: done already, or dead-lettered by the planner."""
    drop = {}
    for shard in plan.to_run:
        ids = frozenset(shard.done) | frozenset(shard.unaddressable)
        if ids:
            drop[shard.path] = ids
    return drop


def drop_rows(batch: pa.Table, drop: dict[str, frozenset[str | None]]) -> pa.Table:
    """Ray Data UDF: remove rows whose (path, query_id) is in `drop` (missing ids count as None)."""
    if not drop or batch.num_rows == 0:
        return batch
    paths = batch[READ_PATH].to_pylist()
    ids = batch["query_id"].to_pylist()
    keep = []
    for path, query_id in zip(paths, ids):
        query_id = query_id if query_id and query_id.strip() else None
        keep.append(query_id not in drop.get(path, ()))
    return batch.filter(pa.array(keep, type=pa.bool_()))
