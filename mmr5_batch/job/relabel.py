"""Relabel mode (`--emit pairs`): one row per query-candidate for cleaning retrieval datasets.

From each ranked row: every candidate with its reranked and first-stage
rank (1-based), a label by a documented rule (`label = 1` for the top
`positives_top_k` of the reranked order, else 0; flagged candidates are 0),
the label the input already had (from `label_column`, a passthrough column
listing a query's positive doc ids), and `disagrees` when the two differ.
Mined hard negatives are the rows with `label = 0` and a high first-stage
rank; missed positives are `label = 1` with `existing_label = 0`.

Pairs are written in the same write task as their ranked row, before it
(`pairs/<shard key>/` with the ranked file's name): the ranked file is the
commit, and a pairs file without one is the leftover of a crashed task,
removed by the next run (output/transaction.py: begin) and never named in the manifest, so pairs keep the exactly-once
guarantee of the ranked rows.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from mmr5_batch.core.rows import RelabelPair, to_table


def pairs_rows(row: dict[str, Any], positives_top_k: int, label_column: str | None) -> list[RelabelPair]:
    """The pairs of one ranked row (see the module docstring for the rule)."""
    first_stage = row["first_stage_doc_ids"] or []
    scores = row.get("first_stage_scores") or [None] * len(first_stage)
    first_rank = {doc_id: position + 1 for position, doc_id in enumerate(first_stage)}
    first_score = dict(zip(first_stage, scores))
    flagged = set(row.get("flagged_doc_ids") or [])
    decided = row.get("decided_by") or [None] * len(row["doc_ids"])
    known = row.get(label_column) if label_column else None
    positives = set(known) if isinstance(known, (list, tuple)) else None
    pairs = []
    for position, doc_id in enumerate(row["doc_ids"]):
        label = int(position < positives_top_k and doc_id not in flagged)
        existing = None if positives is None else int(doc_id in positives)
        pairs.append(
            RelabelPair(
                query_id=row["query_id"],
                doc_id=doc_id,
                reranked_rank=position + 1,
                first_stage_rank=first_rank.get(doc_id),
                first_stage_score=first_score.get(doc_id),
                label=label,
                existing_label=existing,
                disagrees=None if existing is None else existing != label,
                decided_by=decided[position],
                status=row["status"],
                source_path=row["source_path"],
                run_id=row["run_id"],
                model=row["model"],
                reasoning=row.get("reasoning"),
            )
        )
    return pairs


def pairs_table(ranked: pa.Table, positives_top_k: int, label_column: str | None) -> pa.Table:
    return to_table([pair for row in ranked.to_pylist() for pair in pairs_rows(row, positives_top_k, label_column)], RelabelPair)
