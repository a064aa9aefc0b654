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

from mmr5_batch.core.arrow_types import conform_array
from mmr5_batch.core.layouts import GROUPED, InputSchemaError, detect_layout, input_type_problem, passthrough_problem, run_schema
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
    schema: pa.Schema | None = None  # the file's own schema (read as the run's schema, `InputPlan.schema`)
    passthrough: tuple[str, ...] = ()  # its columns beyond the layout's

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
    schema: pa.Schema = field(default_factory=lambda: pa.schema([]))  # what every shard is read as (its own columns cast losslessly)
    ignored: list[str] = field(default_factory=list)  # files under the input that are not data ('_' or '.' names, not .parquet)

    @property
    def shards(self) -> int:
        return len(self.to_run) + len(self.skipped) + len(self.bad)


def _inspect(fs: Any, shard: ShardPlan) -> str | None:
    """Fill in layout and query_ids; the reason when the shard cannot be used."""
    try:
        with fs.open(shard.path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            shard.schema = parquet.schema_arrow
            found = detect_layout(shard.schema, shard.uri)
            shard.layout, shard.passthrough = found.layout, found.passthrough
            problem = input_type_problem(shard.schema, shard.layout, shard.uri)
            if problem:
                return problem
            ids = parquet.read(columns=["query_id"])["query_id"]
    except InputSchemaError as error:
        return str(error)
    except Exception as error:  # not Parquet, truncated, unreadable
        return f"{shard.uri}: cannot read as Parquet: {error_line(error)}"
    values = conform_array(ids.combine_chunks(), pa.string()).to_pylist()  # integer ids read as strings
    shard.query_ids = [value if value and value.strip() else None for value in values]
    return None


def _run_schema(to_run: list[ShardPlan], layout: str, bad: dict[str, str], established: pa.Schema | None = None) -> pa.Schema:
    """One schema for the run: the layout's columns and each passthrough column's type (as earlier runs into the
    output wrote it, else the type in most shards); a shard whose passthrough column cannot be read as that type
    losslessly moves to `bad`."""
    seen: dict[str, Counter[pa.DataType]] = defaultdict(Counter)
    for shard in to_run:
        assert shard.schema is not None
        for name in shard.passthrough:
            seen[name][shard.schema.field(name).type] += 1
    # Each column's type in most shards (the first seen among equals); all-null columns have no say.
    canonical = {name: max(types, key=lambda arrow_type: (not pa.types.is_null(arrow_type), types[arrow_type])) for name, types in seen.items()}
    # Types earlier runs into this output wrote stand: their shards are not read again to vote.
    for column in established or []:
        if not pa.types.is_null(column.type):
            canonical[column.name] = column.type
    for shard in list(to_run):
        assert shard.schema is not None
        for name in shard.passthrough:
            problem = passthrough_problem(name, shard.schema.field(name).type, canonical[name])
            if problem:
                bad[shard.uri] = f"{shard.uri}: {problem}"
                to_run.remove(shard)
                break
    return run_schema(layout, canonical)


def plan_input(config: Any, storage: Storage, state: OutputState) -> InputPlan:
    """The shards and rows this run processes; raises JobError when nothing can run at all."""
    try:
        fs, paths, ignored = storage.list_input(config.input)
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
        if entry is None and not config.overwrite:
            started = state.started_fingerprint(shard.key)
            if started is not None and started != shard.fingerprint:
                # Rewritten since an interrupted run began it: its rows are of the old content.
                entry = {"fingerprint": started}
        return shard, _inspect(fs, shard), entry

    with ThreadPoolExecutor(max_workers=16) as pool:
        looked = reading_output(state, lambda: list(pool.map(look, shards)))

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
    schema = _run_schema(to_run, layout, bad, None if config.overwrite else reading_output(state, state.passthrough_types))
    if not to_run and not skipped:
        raise JobError("no readable shard: " + "; ".join(bad.values()))

    changed_paths = {shard.path for shard in changed}
    if not config.overwrite:
        with ThreadPoolExecutor(max_workers=16) as pool:
            written = reading_output(
                state, lambda: list(pool.map(lambda shard: Counter() if shard.path in changed_paths else state.written_ids(shard.key), to_run))
            )
            for shard, done in zip(to_run, written):
                shard.done = done
    # After `done` is known: a copy already written stands (see _mark_unaddressable).
    _mark_unaddressable(to_run, layout)
    return InputPlan(root, fs, layout, to_run, skipped, [shard for shard in to_run if shard.path in changed_paths], bad, schema, ignored)


def reading_output(state: OutputState, read: Any) -> Any:
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
                    _mark_repeated(shard, query_id, seen[query_id], shards)
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


def _mark_repeated(shard: ShardPlan, query_id: str, copies: int, shards: list[ShardPlan]) -> None:
    """A query_id in several rows: the first written copy stands (an earlier, interrupted run wrote it) and the
    others become dead letters naming it; when none is written yet, every copy is one (which is right is ambiguous)."""
    holders = [other.uri for other in shards if other.done.get(query_id)]
    if not holders:
        shard.unaddressable[query_id] = f"query_id appears {copies} times in the input; none of them is reranked"
    elif not shard.done.get(query_id):
        shard.unaddressable[query_id] = (
            f"query_id appears {copies} times in the input; the copy already written for {holders[0]} stands, this one is not reranked"
        )


def rows_to_drop(shard: ShardPlan) -> frozenset[str | None]:
    """The query_ids of a shard the pipeline must not process: done already, or dead-lettered by the planner."""
    return frozenset(shard.done) | frozenset(shard.unaddressable)
