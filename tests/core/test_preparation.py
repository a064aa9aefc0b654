"""Row validation and image preparation: bad rows become reasons, never exceptions."""

from __future__ import annotations

import pytest

from mmr5_batch.core.preparation import PrepareSettings, prepare_row


def settings(**overrides):
    values = dict(image_tokens=64, jpeg_quality=90, duplicate_query_ids={})
    values.update(overrides)
    return PrepareSettings(**values)


def candidate(doc_id, image=None, score=None, image_uri=None):
    return {"doc_id": doc_id, "image": image, "image_uri": image_uri, "text": None, "score": score}


def test_good_row_is_prepared(make_grey_jpeg):
    row = {"query_id": "q1", "query": "what?", "path": "s.parquet", "candidates": [candidate("a", make_grey_jpeg(10), 0.5)]}
    prepared = prepare_row(row, settings())
    assert prepared["error"] is None and prepared["source_path"] == "s.parquet"
    [c] = prepared["candidates"]
    assert c["error"] is None and 0 < c["image_tokens"] <= 64 and c["image"][:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"query_id": None, "query": "q", "candidates": [candidate("a", b"x")]}, "missing query_id"),
        ({"query_id": "q1", "query": "  ", "candidates": [candidate("a", b"x")]}, "empty query"),
        ({"query_id": "q1", "query": "q", "candidates": []}, "no candidates"),
        ({"query_id": "q1", "query": "q", "candidates": [candidate("a", b"x"), candidate("a", b"y")]}, "duplicate doc_id"),
        ({"query_id": "q1", "query": "q", "candidates": [candidate(None, b"x")]}, "have no doc_id"),
        ({"query_id": "dup", "query": "q", "candidates": [candidate("a", b"x")]}, "appears 2 times"),
        ({"query_id": "q1", "query": "q", "candidates": [candidate("a", b"junk"), candidate("b")]}, "no usable candidate"),
    ],
)
def test_bad_rows_get_a_query_level_reason(row, reason):
    prepared = prepare_row(row, settings(duplicate_query_ids={"dup": "query_id appears 2 times in the input"}))
    assert reason in prepared["error"]
    assert all(c["image"] is None for c in prepared["candidates"])


def test_a_null_candidate_is_the_rows_reason_not_a_crash(make_grey_jpeg):
    row = {"query_id": "q1", "query": "q", "candidates": [candidate("a", make_grey_jpeg(10)), None]}
    prepared = prepare_row(row, settings())
    assert prepared["error"] == "candidate(s) [2] are null"
    assert [c["doc_id"] for c in prepared["candidates"]] == ["a"]


def test_anything_unforeseen_becomes_the_rows_reason():
    from mmr5_batch.core.preparation import prepare_row_safely

    row = {"query_id": "q1", "query": "q", "candidates": [{"doc_id": "a", "image": 12345, "score": 1.0}]}  # bytes expected
    prepared = prepare_row_safely(row, settings())
    assert prepared["query_id"] == "q1" and prepared["error"].startswith(("cannot prepare the row: ", "no usable candidate"))
