"""Metrics against hand-computed values: fractional multi-gold recall, graded nDCG, MRR, micro vs macro."""

from __future__ import annotations

import math

import pytest

from mmr5_batch.evaluation.metrics import hit_at_k, macro, micro, ndcg_at_k, query_metrics, recall_at_k, reciprocal_rank
from mmr5_batch.evaluation.qrels import QrelsError, from_records, load_qrels, parse_trec


def test_recall_is_fractional_over_several_gold_pages():
    gold = {"p2": 1, "p7": 1, "p9": 0}  # p9 judged not relevant
    ranked = ["p1", "p2", "p3", "p7"]
    assert recall_at_k(ranked, gold, 1) == 0.0
    assert recall_at_k(ranked, gold, 3) == 0.5
    assert recall_at_k(ranked, gold, 5) == 1.0
    assert recall_at_k(ranked, {"p9": 0}, 5) == 0.0


def test_ndcg_mrr_and_hit_by_hand():
    gold = {"a": 2, "b": 1}
    ranked = ["x", "a", "b"]
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    actual = 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, gold, 3) == pytest.approx(actual / ideal)
    assert ndcg_at_k(["a", "b"], gold, 2) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "a", "b"], gold, 3) < 1.0  # a repeated id earns nothing twice
    assert reciprocal_rank(ranked, gold) == 0.5 and reciprocal_rank(["x"], gold) == 0.0
    assert hit_at_k(ranked, gold, 1) == 0.0 and hit_at_k(ranked, gold, 2) == 1.0
    assert set(query_metrics(ranked, gold, [1, 5])) == {"mrr", "mrr@1", "recall@1", "ndcg@1", "hit@1", "mrr@5", "recall@5", "ndcg@5", "hit@5"}


def test_micro_is_over_queries_and_macro_over_group_means():
    rows = [("finance", {"r": 1.0}), ("finance", {"r": 1.0}), ("finance", {"r": 1.0}), ("legal", {"r": 0.0})]
    assert micro(row for _, row in rows) == {"r": 0.75}
    assert macro(rows) == {"r": 0.5}


def test_qrels_forms(tmp_path):
    assert parse_trec("q1 0 d1 1\nq1 0 d2 0\n# note\nq2 Q0 d3 2\n") == {"q1": {"d1": 1.0, "d2": 0.0}, "q2": {"d3": 2.0}}
    with pytest.raises(QrelsError, match="qrels:2: expected"):
        parse_trec("q1 0 d1 1\nq1 d1 1\n")
    (tmp_path / "q.jsonl").write_text('{"query_id": "q1", "doc_id": "d1", "relevance": 2}\n{"query_id": "q1", "doc_id": "d2", "relevance": 0}\n')
    assert load_qrels(str(tmp_path / "q.jsonl")) == {"q1": {"d1": 2.0, "d2": 0.0}}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"query_id": ["q1", "q2"], "doc_id": ["d1", "d2"]}), tmp_path / "q.parquet")
    assert load_qrels(str(tmp_path / "q.parquet")) == {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}}
    with pytest.raises(QrelsError, match="needs columns query_id and doc_id"):
        from_records([{"qid": "q"}], "x.parquet")
    with pytest.raises(QrelsError, match="qrels not found"):
        load_qrels(str(tmp_path / "none.txt"))


def test_mrr_at_k_is_cut_at_k_and_fixed_groups_count_absent_ones_as_zero():
    from mmr5_batch.evaluation.metrics import macro, query_metrics

    values = query_metrics(["a", "b", "gold"], {"gold": 1}, [1, 3])
    assert values["mrr"] == pytest.approx(1 / 3) and values["mrr@3"] == pytest.approx(1 / 3) and values["mrr@1"] == 0.0
    rows = [("x", {"recall@1": 1.0}), ("x", {"recall@1": 0.0}), ("y", {"recall@1": 1.0})]
    assert macro(rows) == {"recall@1": 0.75}
    assert macro(rows, ["x", "y", "z", "w"]) == {"recall@1": pytest.approx(1.5 / 4)}
