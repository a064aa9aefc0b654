"""Prepared rows from Arrow: small fields as values, patches as views of the batch's buffers; the score stage's rows
back to Arrow over the input's own pictures array."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from mmr5_batch.core.arrow_rows import binary_views, prepared_rows, scored_table
from mmr5_batch.core.rows import PREPARED_COLUMNS, PassPicture, PreparedCandidate, PreparedRow, to_table


def candidate(doc: str, size: int, error: str | None = None) -> PreparedCandidate:
    if error is not None:
        return PreparedCandidate(doc_id=doc, score=0.1, error=error)
    patches = bytes(np.arange(size, dtype=np.uint8) ^ len(doc))
    # Two picture passes; the second without patches when the page is small (the engine builds them).
    first_patches = {"patches": patches[: size // 2], "grid": [1, 1, size // 2], "key": f"f-{doc}"} if size > 32 else {}
    return PreparedCandidate(
        doc_id=doc,
        pictures=[
            PassPicture(image=b"jpeg-" + doc.encode(), tokens=size // 4, patches=patches, grid=[1, 2, size // 2], key=f"k-{doc}"),
            PassPicture(image=b"small-" + doc.encode(), tokens=1, **first_patches),
        ],
        score=0.5,
        text=f"text {doc}",
    )


def sample_rows() -> list[PreparedRow]:
    return [
        PreparedRow(query_id="q0", query="a?", source_path="s0", candidates=[candidate("d0", 64), candidate("bad", 0, "unreadable"), candidate("d1", 32)]),
        PreparedRow(query_id="q1", query="b?", source_path="s0", error="no usable candidate", candidates=[]),
        PreparedRow(query_id="q2", query="c?", source_path="s1", candidates=[candidate("d2", 128)], pages_decoded=1, pages_processed=2, pages_sent=0),
    ]


def pictures_column(table: pa.Table, chunk: int) -> pa.StructArray:
    """The struct array of every picture of one chunk's candidates."""
    return table.column("candidates").chunk(chunk).values.field("pictures").values


def buffer_address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


def test_rows_read_back_equal_and_patches_are_views_of_the_batch():
    rows = sample_rows()
    table = to_table(rows, PreparedRow)
    read = prepared_rows(table)
    assert read == rows  # a view compares equal to the bytes it shows
    data = pictures_column(table, 0).field("patches").buffers()[2]
    for picture in (0, 1):
        found = read[0].candidates[0].patches(picture)
        assert found is not None and isinstance(found[0], memoryview) and found[0].readonly
        assert data.address <= buffer_address(found[0]) < data.address + data.size  # no copy: inside the batch's buffer
        assert isinstance(read[0].candidates[0].picture(picture), bytes) and isinstance(found[1], list)
    assert read[0].candidates[1].pictures is None and read[0].candidates[1].patches(0) is None
    assert read[0].candidates[2].patches(0) is not None and read[0].candidates[2].patches(1) is None  # no patches for that pass


def test_slices_chunks_and_other_columns():
    rows = sample_rows()
    table = to_table(rows, PreparedRow).append_column("extra", pa.array([1, 2, 3]))
    assert prepared_rows(table.slice(1, 2)) == rows[1:]
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 2)])
    assert chunked.column("candidates").num_chunks == 2
    assert prepared_rows(chunked) == rows
    assert prepared_rows(table.slice(0, 0)) == []


def test_null_candidates_become_an_empty_list():
    table = to_table([PreparedRow(query_id="q", candidates=None)], PreparedRow)
    assert table.column("candidates").null_count == 1
    assert prepared_rows(table)[0].candidates == []


def test_binary_views_of_sliced_and_null_values():
    array = pa.array([b"ab", None, b"", b"cde"], pa.large_binary()).slice(1)
    assert [None if view is None else bytes(view) for view in binary_views(array)] == [None, b"", b"cde"]
    assert [bytes(view) for view in binary_views(pa.array([b"x", b"yz"], pa.binary()))] == [b"x", b"yz"]
    with pytest.raises(TypeError):
        binary_views(pa.array(["text"]))


def test_scored_table_keeps_the_input_pictures_and_drops_those_of_a_flagged_candidate():
    rows = sample_rows()
    source = pa.concat_tables([to_table(rows[:2], PreparedRow), to_table(rows[2:], PreparedRow)])
    scored = prepared_rows(source)
    scored[0].candidates[0] = dataclasses.replace(scored[0].candidates[0], relevance=0.9)
    scored[0].candidates[2] = scored[0].candidates[2].flagged("the engine refused it")
    scored[2] = dataclasses.replace(scored[2], scored=1, scorer_prompt_tokens=40, candidates=[dataclasses.replace(scored[2].candidates[0], relevance=0.2)])
    table = scored_table(scored, source)
    assert table.schema == PREPARED_COLUMNS
    again = prepared_rows(table)
    assert again == scored
    assert again[0].candidates[2].pictures is None and again[0].candidates[2].error == "the engine refused it"
    assert again[0].candidates[0].patches(1) == scored[0].candidates[0].patches(1)
    # The last chunk had no flagged candidate: its patches are the source's buffer itself.
    source_data = pictures_column(source, 1).field("patches").buffers()[2]
    assert pictures_column(table, 1).field("patches").buffers()[2].address == source_data.address


def test_scored_table_refuses_a_changed_shape():
    rows = sample_rows()
    source = to_table(rows, PreparedRow)
    with pytest.raises(ValueError, match="scored rows"):
        scored_table(rows[:2], source)
    changed = prepared_rows(source)
    changed[0] = dataclasses.replace(changed[0], candidates=changed[0].candidates[:1])
    with pytest.raises(ValueError, match="number of candidates"):
        scored_table(changed, source)
