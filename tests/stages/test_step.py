"""The rerank step on a user's own Ray Dataset: lazy, column mapping, passthrough columns, errors as rows, contracts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mmr5_batch import ContractError, build_reranker, rerank_dataset
from tests.conftest import grey_jpeg

SETTINGS = {"backend": "scripted-test", "actors": 1, "batch_size": 2, "prepare_batch_size": 2}


def test_a_mapped_dataset_is_reranked_with_its_columns_passed_through(ray_session):
    rows = [
        {
            "qid": f"q{index}",
            "question": "which page is darkest?",
            "hits": [{"page": "light", "png": grey_jpeg(220), "bm25": 2.0}, {"page": "dark", "png": grey_jpeg(20), "bm25": 1.0}],
            "tenant": f"t{index}",
        }
        for index in range(3)
    ] + [{"qid": "broken", "question": "", "hits": [{"page": "x", "png": grey_jpeg(5), "bm25": 1.0}], "tenant": "t9"}]
    dataset = ray_session.data.from_arrow(pa.Table.from_pylist(rows))
    step = build_reranker(SETTINGS, columns={"query_id": "qid", "query": "question", "candidates": "hits", "doc_id": "page", "image": "png", "score": "bm25"})
    reranked = step(dataset)
    assert isinstance(reranked, ray_session.data.Dataset)  # lazy: nothing ran yet
    out = {row["query_id"]: row for row in reranked.take_all()}
    assert sorted(out) == ["broken", "q0", "q1", "q2"]
    for index in range(3):
        row = out[f"q{index}"]
        assert row["doc_ids"] == ["dark", "light"] and row["first_stage_doc_ids"] == ["light", "dark"]
        assert row["status"] == "ok" and row["tenant"] == f"t{index}"
    assert out["broken"]["status"] == "error" and "empty query" in out["broken"]["reason"]
    # The user decides where errors go.
    assert reranked.filter(lambda row: row["status"] != "error").count() == 3


def test_pairs_layout(ray_session):
    rows = [
        {"query_id": "q", "query": "which?", "doc_id": doc_id, "image": grey_jpeg(level), "image_uri": None, "text": None, "score": score}
        for doc_id, level, score in (("a", 200, 0.9), ("b", 10, 0.5), ("c", 100, 0.1))
    ]
    out = rerank_dataset(ray_session.data.from_items(rows), SETTINGS, layout="pairs").take_all()
    assert [row["doc_ids"] for row in out] == [["b", "c", "a"]]


def test_a_dataset_without_the_query_column_is_refused_naming_stage_and_column(ray_session):
    dataset = ray_session.data.from_items([{"query_id": "q", "candidates": [{"doc_id": "a", "image": grey_jpeg(1)}]}])
    with pytest.raises(Exception) as raised:
        build_reranker(SETTINGS)(dataset).take_all()
    assert isinstance(raised.value, ContractError) or "ContractError" in str(raised.value)
    assert "stage 'prepare' reads column 'query'" in str(raised.value)
    with pytest.raises(Exception, match="stage 'columns'"):
        build_reranker(SETTINGS, columns={"query": "question"})(dataset).take_all()
