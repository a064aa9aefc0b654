"""Relabel pairs: the label rule, existing labels and disagreement, orphaned pairs files."""

from __future__ import annotations

from mmr5_batch.job.relabel import pairs_rows


def ranked_row(**overrides):
    row = {
        "query_id": "q",
        "doc_ids": ["c", "a", "b", "x"],
        "first_stage_doc_ids": ["a", "b", "c", "x"],
        "first_stage_scores": [0.9, 0.8, 0.7, 0.1],
        "flagged_doc_ids": ["x"],
        "decided_by": ["model", "model", "model", "flagged"],
        "status": "ok",
        "source_path": "s3://b/in/a.parquet",
        "run_id": "r",
        "model": "m",
        "reasoning": None,
        "gold": ["a"],
    }
    return row | overrides


def test_top_k_of_the_reranked_order_are_positives_and_disagreements_are_flagged():
    pairs = pairs_rows(ranked_row(), positives_top_k=1, label_column="gold")
    assert [(p.doc_id, p.reranked_rank, p.first_stage_rank, p.label, p.existing_label, p.disagrees) for p in pairs] == [
        ("c", 1, 3, 1, 0, True),  # a missed positive, or a wrong promotion: a human looks
        ("a", 2, 1, 0, 1, True),
        ("b", 3, 2, 0, 0, False),
        ("x", 4, 4, 0, 0, False),
    ]
    assert pairs[0].first_stage_score == 0.7 and pairs[3].decided_by == "flagged"


def test_flagged_candidates_are_never_positive_and_no_label_column_means_unknown():
    pairs = pairs_rows(ranked_row(doc_ids=["x", "a", "b", "c"]), positives_top_k=2, label_column=None)
    assert [p.label for p in pairs] == [0, 1, 0, 0]
    assert all(p.existing_label is None and p.disagrees is None for p in pairs)
