"""Planning: which shards and rows this run processes, with the driver holding per-shard summaries only.

On the driver: one listing of the input (each shard's fingerprint comes
with it), the ledger in a few reads (ledger_index.py): a shard done and
unchanged is skipped without being opened; one whose content changed since
it was done or begun is reprocessed from scratch. One recursive listing per
result folder finds what earlier, interrupted runs wrote for each shard.

In Ray tasks (shard_survey.py), for the other shards: layout, schema and
`query_id` column (a shard that is not Parquet, is truncated or has the
wrong schema is recorded as bad and skipped), and what is already written.
They return counts and 64-bit hashes of the ids, never the ids.

Rows whose query_id does not name one query of one shard (missing, repeated
in the input, or a pairs-layout query spread over several shards) cannot be
tracked by id for resume, so the planner dead-letters them itself, once per
shard in one file, and the pipeline drops them. Repeats are found on the
hashes; only the shards holding one are read again, for the exact ids.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from mmr5_batch.core.group_key import group_key_problem
from mmr5_batch.core.layouts import GROUPED, passthrough_problem, run_schema
from mmr5_batch.core.rows import SURVEY_SCHEMA
from mmr5_batch.errors import JobError, error_line
from mmr5_batch.job.shard_groups import group_shards
from mmr5_batch.job.shard_survey import id_hashes, query_ids, survey_shard
from mmr5_batch.job.shard_tasks import map_shards
from mmr5_batch.output.layout import shard_key
from mmr5_batch.output.store import OutputStore
from mmr5_batch.stages.cluster import ensure_ray
from mmr5_batch.storage.arrow_filesystems import read_parquet
from mmr5_batch.storage.filesystems import InputNotFound, Storage

# Shards per survey task: it reads two small columns per shard.
SURVEY_SHARDS_PER_TASK = 256


@dataclass
class ShardPlan:
    path: str  # the filesystem path: what the read stage's path column holds
    uri: str  # the URI users know (s3://bucket/key), recorded as source_path
    key: str  # the shard's folder name in the outputs
    fingerprint: str
    size: int = 0  # bytes
    layout: str = GROUPED
    queries: int = 0  # result rows it yields in all: one per row (grouped), per distinct query_id or id-less row (pairs)
    written: int = 0  # result rows already written for it by an earlier, interrupted run
    pending: int = 0  # its distinct query_ids neither written nor dead-lettered by the planner
    written_files: list[str] = field(default_factory=list)  # the result files holding them (the read stage drops their ids)
    unaddressable: dict[str | None, str] = field(default_factory=dict)  # query_id -> why it is dead-lettered by the planner
    schema: pa.Schema | None = None  # the file's own schema (read as the run's schema, `InputPlan.schema`)
    passthrough: tuple[str, ...] = ()  # its columns beyond the layout's

    def remaining(self) -> int:
        return self.queries - self.written

    def has_work(self) -> bool:
        """Rows neither written already nor dead-lettered by the planner."""
        return self.pending > 0


@dataclass
class InputPlan:
    root: str
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

    def waves(self, max_queries: int | None) -> list[InputPlan]:
        """This plan cut into consecutive waves of whole shards with up to `max_queries` pending queries each
        (a bigger shard alone); one wave when unset. Each wave is this plan with a part of `to_run`."""
        if max_queries is None or not self.to_run:
            return [self]
        groups = group_shards(self.to_run, [shard.pending for shard in self.to_run], max_queries, len(self.to_run), 1)
        return [replace(self, to_run=group) for group in groups]


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


def _classify(shards: list[ShardPlan], state: OutputStore, overwrite: bool) -> tuple[list[ShardPlan], list[ShardPlan], list[ShardPlan]]:
    """(to survey, skipped, changed) from the ledger: done and unchanged is skipped; done, begun or being replaced
    with other content is changed (its results are superseded and it is processed from scratch)."""
    fresh: list[ShardPlan] = []
    skipped: list[ShardPlan] = []
    changed: list[ShardPlan] = []
    for shard in shards:
        verdict = None if overwrite else state.is_changed(shard.key, shard.fingerprint)
        (fresh if verdict is None else changed if verdict else skipped).append(shard)
    return fresh, skipped, changed


def plan_input(config: Any, storage: Storage, state: OutputStore) -> InputPlan:
    """The shards and rows this run processes; raises JobError when nothing can run at all."""
    try:
        listing = storage.list_input(config.input)
    except InputNotFound as error:
        raise JobError(str(error)) from None
    _, root = storage.filesystem(config.input)
    fs = listing.filesystem
    shards = [ShardPlan(f.path, storage.uri(fs, f.path), shard_key(root, f.path), f.fingerprint, f.size) for f in listing.shards]
    fresh, skipped, changed = reading_output(state, lambda: _classify(shards, state, config.overwrite))
    to_survey = sorted(fresh + changed, key=lambda shard: shard.path)
    changed_keys = {shard.key for shard in changed}
    written = {} if config.overwrite or not to_survey else reading_output(state, state.written_files)
    for shard in to_survey:
        shard.written_files = [] if shard.key in changed_keys else sorted(written.get(shard.key, []))

    bad: dict[str, str] = {}
    hashes = _survey(to_survey, storage, bad, config.execution.address)
    to_run = [shard for shard in to_survey if shard.uri not in bad]
    # The layout is the job's, decided once: as the first run into the output found most of its shards (ties to
    # grouped), so a shard refused for its layout is refused again on every rerun, whatever else is pending.
    established = None if config.overwrite else reading_output(state, state.input_layout)
    layout = established or _majority_layout(to_run)
    for shard in [shard for shard in to_run if shard.layout != layout]:
        whose = "this output's shards use" if established else "the other shards use"
        bad[shard.uri] = f"{shard.uri}: uses the {shard.layout} layout while {whose} {layout}"
        to_run.remove(shard)
    schema = _run_schema(to_run, layout, bad, None if config.overwrite else reading_output(state, state.passthrough_types))
    if not to_run and not skipped:
        raise JobError("no readable shard: " + "; ".join(bad.values()))
    group_by = config.execution.group_by
    if to_run and group_by and (problem := group_key_problem(group_by, schema)) is not None:
        raise JobError(problem)
    _mark_unaddressable_by_hash(to_run, layout, hashes, storage)
    return InputPlan(root, layout, to_run, skipped, [shard for shard in to_run if shard.key in changed_keys], bad, schema, listing.ignored)


def _survey(shards: list[ShardPlan], storage: Storage, bad: dict[str, str], address: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fill in each shard's survey (Ray tasks); bad ones go to `bad`. Returns uri -> (id hashes, pending id hashes)."""
    if not shards:
        return {}
    ensure_ray(address)
    by_uri = {shard.uri: shard for shard in shards}
    descriptors = [{"uri": shard.uri, "written": shard.written_files} for shard in shards]
    hashes = {}
    for row in map_shards(descriptors, survey_shard, SURVEY_SCHEMA, SURVEY_SHARDS_PER_TASK, storage=storage):
        shard = by_uri[row["uri"]]
        if row["problem"]:
            bad[shard.uri] = row["problem"]
            continue
        shard.layout, shard.passthrough = row["layout"], tuple(row["passthrough"])
        shard.schema = pa.ipc.read_schema(pa.py_buffer(row["schema"]))
        shard.queries, shard.written = row["queries"], row["written"]
        if row["missing"]:
            shard.unaddressable[None] = "missing query_id"
        hashes[shard.uri] = (np.frombuffer(row["ids"], dtype=np.uint64), np.frombuffer(row["pending"], dtype=np.uint64))
        shard.pending = len(hashes[shard.uri][1])
    return hashes


def _mark_unaddressable_by_hash(shards: list[ShardPlan], layout: str, hashes: dict[str, tuple[np.ndarray, np.ndarray]], storage: Storage) -> None:
    """Find ids repeated across the input by their hashes; read only the shards holding one for the exact ids."""
    arrays = [hashes[shard.uri][0] for shard in shards if shard.uri in hashes]
    if not arrays:
        return
    values, counts = np.unique(np.concatenate(arrays), return_counts=True)
    repeated = values[counts > 1]
    if not len(repeated):
        return
    involved = [shard for shard in shards if np.isin(hashes[shard.uri][0], repeated).any()]
    repeated_set = set(repeated.tolist())

    def exact(shard: ShardPlan) -> tuple[list[str], set[str]]:
        ids = [value for value in query_ids(read_parquet(storage, shard.uri, ["query_id"])["query_id"]) if value is not None]
        pending = set(hashes[shard.uri][1].tolist())
        suspects = [(value, int(hashed)) for value, hashed in zip(ids, id_hashes(ids)) if hashed in repeated_set]
        return [value for value, _ in suspects], {value for value, hashed in suspects if hashed not in pending}

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = dict(zip((shard.uri for shard in involved), pool.map(exact, involved)))
    _mark_unaddressable(involved, layout, {uri: list(ids) for uri, (ids, _) in found.items()}, {uri: done for uri, (_, done) in found.items()})
    for shard in involved:
        # Repeated ids not written yet are dead-lettered, not processed.
        unwritten = {value for value in shard.unaddressable if value is not None} - found[shard.uri][1]
        shard.pending -= len(unwritten)


def _majority_layout(shards: list[ShardPlan]) -> str:
    counts = Counter(shard.layout for shard in shards)
    return max(sorted(counts), key=lambda layout: (counts[layout], layout == GROUPED)) if counts else GROUPED


def reading_output(state: OutputStore, read: Any) -> Any:
    """Run `read`; an output prefix that cannot be read (bucket, credentials, endpoint) is one JobError line."""
    try:
        return read()
    except JobError:
        raise
    except Exception as error:
        raise JobError(f"cannot read output {state.output}: {error_line(error)}") from None


def _mark_unaddressable(shards: list[ShardPlan], layout: str, ids: dict[str, list[str | None]], written: dict[str, set[str]]) -> None:
    """Mark the repeated ids among `ids` (uri -> the shard's query_ids to consider; `written`: those written for it)."""
    if layout == GROUPED:
        seen = Counter(query_id for shard in shards for query_id in ids[shard.uri] if query_id)
        for shard in shards:
            for query_id in ids[shard.uri]:
                if query_id is None:
                    shard.unaddressable[None] = "missing query_id"
                elif seen[query_id] > 1:
                    _mark_repeated(shard, query_id, seen[query_id], shards, written)
    else:
        homes: dict[str, set[str]] = defaultdict(set)
        for shard in shards:
            for query_id in ids[shard.uri]:
                if query_id:
                    homes[query_id].add(shard.uri)
        for shard in shards:
            for query_id in ids[shard.uri]:
                if query_id is None:
                    shard.unaddressable[None] = "missing query_id"
                elif len(homes[query_id]) > 1:
                    shard.unaddressable[query_id] = (
                        f"query_id's rows are spread over {len(homes[query_id])} shards {sorted(homes[query_id])}; a query's rows must be in one shard"
                    )


def _mark_repeated(shard: ShardPlan, query_id: str, copies: int, shards: list[ShardPlan], written: dict[str, set[str]]) -> None:
    """A query_id in several rows: the first written copy stands (an earlier, interrupted run wrote it) and the
    others become dead letters naming it; when none is written yet, every copy is one (which is right is ambiguous)."""
    holders = [other.uri for other in shards if query_id in written[other.uri]]
    if not holders:
        shard.unaddressable[query_id] = f"query_id appears {copies} times in the input; none of them is reranked"
    elif query_id not in written[shard.uri]:
        shard.unaddressable[query_id] = (
            f"query_id appears {copies} times in the input; the copy already written for {holders[0]} stands, this one is not reranked"
        )
