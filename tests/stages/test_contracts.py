"""Declared stage contracts: a missing or mistyped column is one error naming the stage and the column."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mmr5_batch.core.arrow_types import type_problem
from mmr5_batch.core.preparation import PrepareSettings
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA, PREPARED_COLUMNS
from mmr5_batch.errors import ContractError
from mmr5_batch.stages.contracts import StageContract
from mmr5_batch.stages.model_actor import RERANK
from mmr5_batch.stages.prepare_stage import PREPARE, prepare_batch


def grouped(**types):
    fields = {"query_id": pa.string(), "query": pa.string(), "candidates": GROUPED_INPUT_SCHEMA.field("candidates").type} | types
    return pa.schema([pa.field(name, kind) for name, kind in fields.items() if kind is not None])


def test_a_conforming_batch_passes_with_or_without_the_optional_columns():
    PREPARE.check_input(grouped())
    PREPARE.check_input(grouped(path=pa.string(), domain=pa.int64()))  # passthrough columns are not the stage's business
    minimal = pa.list_(pa.struct([("doc_id", pa.large_string()), ("image_uri", pa.string())]))
    PREPARE.check_input(grouped(candidates=minimal, query_id=pa.large_string()))


@pytest.mark.parametrize(
    "schema, words",
    [
        (grouped(query_id=None), ["stage 'prepare'", "column 'query_id'", "lacks"]),
        (grouped(query_id=pa.int64()), ["stage 'prepare'", "column 'query_id' must be string, got int64"]),
        (grouped(candidates=pa.string()), ["stage 'prepare'", "column 'candidates' must be list"]),
        (grouped(candidates=pa.list_(pa.struct([("image", pa.binary())]))), ["stage 'prepare'", "'candidates[].doc_id' is missing"]),
        (
            grouped(candidates=pa.list_(pa.struct([("doc_id", pa.string()), ("score", pa.string())]))),
            ["column 'candidates[].score' must be double, got string"],
        ),
        (grouped(path=pa.int32()), ["column 'path' must be string"]),
    ],
)
def test_a_broken_batch_names_the_stage_and_the_column(schema, words):
    with pytest.raises(ContractError) as raised:
        PREPARE.check_input(schema)
    for word in words:
        assert word in str(raised.value)
    assert "\n" not in str(raised.value)


def test_kinds_not_widths_decide():
    assert type_problem(pa.int32(), pa.float64(), "x") is None  # an integer reads as a float
    assert type_problem(pa.null(), pa.string(), "x") is None  # an all-null column fits anything
    assert type_problem(pa.large_list(pa.int8()), pa.list_(pa.int64()), "x") is None
    assert "must be int64" in type_problem(pa.float64(), pa.int64(), "x")


def test_the_rerank_stage_reads_prepared_rows_and_writes_results():
    RERANK.check_input(PREPARED_COLUMNS)
    with pytest.raises(ContractError, match="stage 'rerank' reads column 'candidates'"):
        RERANK.check_input(pa.schema([field for field in PREPARED_COLUMNS if field.name != "candidates"]))
    with pytest.raises(ContractError, match="stage 'x' writes column 'b'"):
        StageContract("x", reads=pa.schema([]), writes=pa.schema([("b", pa.string())])).check_output(pa.schema([("a", pa.string())]))


def test_the_prepare_udf_checks_its_batch_before_any_work():
    batch = pa.table({"query_id": pa.array([1, 2]), "query": ["a", "b"], "candidates": pa.array([[], []], pa.list_(pa.struct([("doc_id", pa.string())])))})
    with pytest.raises(ContractError, match="stage 'prepare' reads column 'query_id' must be string, got int64"):
        prepare_batch(batch, PrepareSettings(image_tokens=64))
