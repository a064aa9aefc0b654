"""Dead letters the planner writes itself: rows whose query_id cannot be tracked (missing, repeated, split over shards).

Such rows cannot be resumed by id, so they never enter the pipeline: each
shard's are written once, in one file, and a rerun finds the file and
leaves it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import pyarrow as pa

from mmr5_batch.core.layouts import PAIRS
from mmr5_batch.core.rows import CANDIDATE_FIELDS, DeadLetter
from mmr5_batch.core.vocabulary import ERROR
from mmr5_batch.core.windows import first_stage_order
from mmr5_batch.job.planner import InputPlan, ShardPlan
from mmr5_batch.output.layout import DEAD_LETTER
from mmr5_batch.output.transaction import OutputTransaction
from mmr5_batch.storage.arrow_filesystems import read_parquet

# One file per shard, named by the attempt that wrote it (a file of another attempt, even one with the same run id, is
# never overwritten); a later run finds it and leaves it.
UNADDRESSABLE_PREFIX = "part-unaddressable"


def unaddressable_dead_letters(shard: ShardPlan, table: pa.Table, run_id: str, model: str, backend: str = "") -> pa.Table:
    """Dead letters for a shard's unaddressable rows: one per row (grouped), one per query_id (pairs)."""
    ids = table["query_id"].to_pylist()
    keep = [(query_id if query_id and query_id.strip() else None) in shard.unaddressable for query_id in ids]
    rows = table.filter(pa.array(keep)).to_pylist()
    if shard.layout == PAIRS:
        grouped: dict[Any, list[dict]] = defaultdict(list)
        for row in rows:
            query_id = row["query_id"] if row["query_id"] and row["query_id"].strip() else None
            # Pair rows without an id cannot be grouped: each is its own dead letter.
            grouped[(query_id, len(grouped)) if query_id is None else query_id].append(row)
        letters = [
            _letter(group[0], [r.get("doc_id") for r in group], [r.get("score") for r in group], shard, run_id, model, backend) for group in grouped.values()
        ]
    else:
        letters = []
        for row in rows:
            candidates = [candidate for candidate in row.get("candidates") or [] if candidate]
            letters.append(_letter(row, [c.get("doc_id") for c in candidates], [c.get("score") for c in candidates], shard, run_id, model, backend))
    return pa.Table.from_pylist(letters)


def _letter(row: dict, doc_ids: list, scores: list, shard: ShardPlan, run_id: str, model: str, backend: str) -> dict:
    query_id = row.get("query_id") if row.get("query_id") and row["query_id"].strip() else None
    own = {"query_id", "query", "candidates", *CANDIDATE_FIELDS}
    letter = DeadLetter(
        query_id=query_id,
        status=ERROR,
        reason=shard.unaddressable[query_id],
        source_path=shard.uri,
        query=row.get("query"),
        first_stage_doc_ids=[doc_ids[index] for index in first_stage_order(scores)],
        run_id=run_id,
        model=model,
        backend=backend or None,
    )
    # Passthrough columns follow the dead letter's own.
    return dataclasses.asdict(letter) | {name: value for name, value in row.items() if name not in own}


def write_unaddressable(plan: InputPlan, transaction: OutputTransaction[InputPlan], run_id: str, model: str, backend: str = "") -> int:
    """Write each shard's planner dead letters once (a rerun finds the file and leaves it); rows written."""
    written = 0
    for shard in plan.to_run:
        if not shard.unaddressable:
            continue
        if any(uri.rsplit("/", 1)[-1].startswith(UNADDRESSABLE_PREFIX) for uri in transaction.store.result_files(DEAD_LETTER, shard.key)):
            continue
        table = read_parquet(transaction.storage, shard.uri)
        letters = unaddressable_dead_letters(shard, table, run_id, model, backend)
        transaction.write_dead_letters(shard.key, f"{UNADDRESSABLE_PREFIX}-{transaction.attempt}.parquet", letters)
        written += letters.num_rows
    return written
