"""Row models and their Arrow schemas come from one definition."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from mmr5_batch.core import rows
from mmr5_batch.core.rows import DeadLetter, InputRow, PreparedRow, ResultRow, arrow_schema, to_table


def test_every_schema_is_its_model_field_for_field():
    for model, schema in (
        (InputRow, rows.GROUPED_INPUT_SCHEMA),
        (rows.PairRow, rows.PAIRS_INPUT_SCHEMA),
        (PreparedRow, rows.PREPARED_COLUMNS),
        (ResultRow, rows.RESULT_COLUMNS),
    ):
        assert schema.names == [item.name for item in dataclasses.fields(model)]
    assert tuple(item.name for item in dataclasses.fields(DeadLetter)) == rows.DEAD_LETTER_KEEP
    assert rows.CANDIDATE_TYPE.names == ["doc_id", "image", "image_uri", "text", "score"]
    assert rows.RESULT_COLUMNS.field("scores").type == pa.list_(pa.float64())


def test_dead_letter_columns_are_result_columns_of_the_same_type():
    for field in arrow_schema(DeadLetter):
        assert rows.RESULT_COLUMNS.field(field.name).type == field.type


def test_to_table_takes_models_or_dicts():
    table = to_table([ResultRow(query_id="q", status="ok", windows=2), {"query_id": "r", "status": "error", "reason": "why"}], ResultRow)
    assert table.schema == rows.RESULT_COLUMNS
    assert table.column("windows").to_pylist() == [2, None]
    assert table.column("reason").to_pylist() == [None, "why"]


def test_a_prepared_candidates_pictures_are_indexed_by_picture_pass():
    """From a mapping (an Arrow row, the Python API) the pictures become `PassPicture`s; a pass a page has no picture
    for reads as none, and patches only where all three parts are there."""
    row = PreparedRow.of({"query_id": "q", "candidates": [{"doc_id": "a", "pictures": [{"image": b"big", "tokens": 9}, {"image": b"small", "tokens": 2}]}]})
    [candidate] = row.candidates or []
    assert all(isinstance(picture, rows.PassPicture) for picture in candidate.pictures or [])
    assert [candidate.picture(index) for index in (0, 1, 2)] == [b"big", b"small", None]
    assert [candidate.picture_tokens(index) for index in (0, 1, 2)] == [9, 2, 0]
    candidate.set_patches(1, b"\x01\x02", [1, 2, 2], "k")
    assert candidate.patches(1) == (b"\x01\x02", [1, 2, 2], "k") and candidate.patches(0) is None
    with pytest.raises(IndexError, match="no picture for pass 2"):
        candidate.set_patches(2, b"", [1, 1, 1], "k")
    assert candidate.flagged("bad").pictures is None
    assert rows.PREPARED_CANDIDATE_TYPE.field("pictures").type == pa.list_(rows.PASS_PICTURE_TYPE)
