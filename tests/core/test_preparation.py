"""Row validation and image preparation: bad rows become reasons, never exceptions."""

from __future__ import annotations

import pytest

from mmr5_batch.core.preparation import PageWork, PicturePass, PrepareSettings, prepare_row


def settings(**overrides):
    values = dict(image_tokens=64, jpeg_quality=90, duplicate_query_ids={})
    values.update(overrides)
    return PrepareSettings(**values)


def candidate(doc_id, image=None, score=None, image_uri=None):
    return {"doc_id": doc_id, "image": image, "image_uri": image_uri, "text": None, "score": score}


def test_good_row_is_prepared(make_grey_jpeg):
    row = {"query_id": "q1", "query": "what?", "path": "s.parquet", "candidates": [candidate("a", make_grey_jpeg(10), 0.5)]}
    prepared = prepare_row(row, settings())
    assert prepared.error is None and prepared.source_path == "s.parquet"
    [c] = prepared.candidates
    assert c.error is None and 0 < c.picture_tokens() <= 64 and (c.picture() or b"")[:2] == b"\xff\xd8"


def test_each_picture_pass_gets_its_picture_from_one_decode(make_grey_jpeg):
    """A page gets one picture per picture pass, in the passes' order: the main one at the page's own budget on its
    model's grid, the first pass's at its fixed budget on its own grid (the two-model cascade's scorer may be another
    model); a page without a picture, and a text reranker's pages, get none."""
    passes = (PicturePass(grid=28), PicturePass(grid=32, tokens=8, first_pass=True))
    rows = [
        {"query_id": f"q{n}", "query": "q", "candidates": [candidate("a", make_grey_jpeg(40), 0.9), candidate("b", make_grey_jpeg(90), 0.5)]} for n in (1, 2)
    ]
    work = PageWork()
    [first, second] = [prepare_row(row, settings(image_tokens=64, pictures=passes), work=work) for row in rows]
    assert work.decoded == 2 and first.pages_decoded == 2 and second.pages_decoded == 0  # one decode per page, every pass
    for page in first.candidates:
        assert len(page.pictures or []) == 2 and page.picture(0) != page.picture(1)
        assert 8 < page.picture_tokens(0) <= 64 and 0 < page.picture_tokens(1) <= 8
        assert page.picture(2) is None and page.picture_tokens(2) == 0 and page.patches(1) is None
    assert second.candidates == first.candidates
    one = prepare_row(rows[0], settings(image_tokens=64))
    assert [len(page.pictures or []) for page in one.candidates] == [1, 1] and one.candidates[0].picture() == first.candidates[0].picture(0)
    text = prepare_row({"query_id": "t", "query": "q", "candidates": [{"doc_id": "a", "image": make_grey_jpeg(40), "text": "words"}]}, settings(pictures=()))
    assert text.error is None and text.candidates[0].pictures is None


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
    assert reason in prepared.error
    assert all(c.pictures is None for c in prepared.candidates)


def test_a_null_candidate_is_the_rows_reason_not_a_crash(make_grey_jpeg):
    row = {"query_id": "q1", "query": "q", "candidates": [candidate("a", make_grey_jpeg(10)), None]}
    prepared = prepare_row(row, settings())
    assert prepared.error == "candidate(s) [2] are null"
    assert [c.doc_id for c in prepared.candidates] == ["a"]


def test_fields_of_the_wrong_kind_are_data_errors_with_a_reason(make_grey_jpeg):
    good = candidate("b", make_grey_jpeg(10))
    row = {"query_id": "q1", "query": "q", "candidates": [{"doc_id": "a", "image": 12345, "score": 1.0}, good]}  # bytes expected
    prepared = prepare_row(row, settings())
    assert prepared.error is None and prepared.candidates[0].error == "image must be bytes, got int"
    assert prepared.candidates[1].error is None
    for bad, reason in ((7, "have a doc_id that is not a string"), ("a", None)):
        scored = prepare_row({"query_id": 5, "query": "q", "candidates": [{"doc_id": bad, "image": make_grey_jpeg(10), "score": "high"}]}, settings())
        assert scored.query_id is None and scored.error == "missing query_id"
        checked = prepare_row({"query_id": "q", "query": "q", "candidates": [{"doc_id": bad, "image": make_grey_jpeg(10), "score": "high"}]}, settings())
        assert checked.error == f"candidate(s) [1] {reason or 'have a score that is not a number'}"


def test_a_bug_is_not_a_dead_letter_it_fails_the_batch(make_grey_jpeg, monkeypatch):
    """Only data problems become reasons; an exception from the code itself goes up, so Ray retries the batch."""
    import pyarrow as pa

    from mmr5_batch.core import preparation
    from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
    from mmr5_batch.stages.prepare_stage import FetchSettings, prepare_batch

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(preparation, "candidate_budgets", broken)
    rows = [{"query_id": "q1", "query": "q", "candidates": [candidate("a", make_grey_jpeg(10))]}]
    batch = pa.Table.from_pylist(
        [{**row, "candidates": [{**c, "image_uri": None, "text": None} for c in row["candidates"]]} for row in rows], schema=GROUPED_INPUT_SCHEMA
    )
    with pytest.raises(RuntimeError, match="a bug"):
        prepare_batch(batch, settings(), FetchSettings())
