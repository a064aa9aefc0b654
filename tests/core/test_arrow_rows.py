"""Prepared rows from Arrow: small fields as values, patches as views of the batch's buffers; the score stage's rows
back to Arrow over the input's own picture arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from mmr5_batch.core.arrow_rows import binary_views, prepared_rows, scored_table
from mmr5_batch.core.rows import PREPARED_COLUMNS, PreparedCandidate, PreparedRow, to_table


def candidate(doc: str, size: int, error: str | None = None) -> PreparedCandidate:
    if error is not None:
        return PreparedCandidate(doc_id=doc, score=0.1, image_tokens=0, error=error)
    patches = bytes(np.arange(size, dtype=np.uint8) ^ len(doc))
    return PreparedCandidate(
        doc_id=doc,
        image=b"jpeg-" + doc.encode(),
        image_tokens=size // 4,
        first_image=b"small-" + doc.encode(),
        first_image_tokens=1,
        image_patches=patches,
        image_grid=[1, 2, size // 2],
        image_key=f"k-{doc}",
        first_image_patches=patches[: size // 2],
        first_image_grid=[1, 1, size // 2],
        first_image_key=f"f-{doc}",
        score=0.5,
        text=f"text {doc}",
    )


def sample_rows() -> list[PreparedRow]:
    return [
        PreparedRow(query_id="q0", query="a?", source_path="s0", candidates=[candidate("d0", 64), candidate("bad", 0, "unreadable"), candidate("d1", 32)]),
        PreparedRow(query_id="q1", query="b?", source_path="s0", error="no usable candidate", candidates=[]),
        PreparedRow(query_id="q2", query="c?", source_path="s1", candidates=[candidate("d2", 128)], pages_decoded=1, pages_processed=2, pages_sent=0),
    ]


def buffer_address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


def test_rows_read_back_equal_and_patches_are_views_of_the_batch():
    rows = sample_rows()
    table = to_table(rows, PreparedRow)
    read = prepared_rows(table)
    assert read == rows  # a view compares equal to the bytes it shows
    patches = read[0].candidates[0].image_patches
    assert isinstance(patches, memoryview) and patches.readonly
    data = table.column("candidates").chunk(0).values.field("image_patches").buffers()[2]
    assert data.address <= buffer_address(patches) < data.address + data.size  # no copy: inside the batch's buffer
    assert isinstance(read[0].candidates[0].image, bytes) and isinstance(read[0].candidates[0].image_grid, list)
    assert read[0].candidates[1].image_patches is None


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
    assert again[0].candidates[2].image_patches is None and again[0].candidates[2].error == "the engine refused it"
    # The last chunk had no flagged candidate: its patches are the source's buffer itself.
    source_data = source.column("candidates").chunk(1).values.field("image_patches").buffers()[2]
    assert table.column("candidates").chunk(1).values.field("image_patches").buffers()[2].address == source_data.address


def test_scored_table_refuses_a_changed_shape():
    rows = sample_rows()
    source = to_table(rows, PreparedRow)
    with pytest.raises(ValueError, match="scored rows"):
        scored_table(rows[:2], source)
    changed = prepared_rows(source)
    changed[0] = dataclasses.replace(changed[0], candidates=changed[0].candidates[:1])
    with pytest.raises(ValueError, match="number of candidates"):
        scored_table(changed, source)
