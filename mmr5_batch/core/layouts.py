"""Input layouts (grouped, pairs): which one a shard uses, which of its columns pass through, and carrying them along.

Grouped: one row per query with a `candidates` list. Pairs: one row per
query-candidate, grouped by `query_id` before the model stage. Any other
input column passes through to the output, unless its name is one the job
writes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from mmr5_batch.core.arrow_types import type_problem
from mmr5_batch.core.rows import CANDIDATE_FIELDS, GROUPED_INPUT_SCHEMA, PAIRS_INPUT_SCHEMA, READ_PATH, RESULT_COLUMNS

GROUPED = "grouped"
PAIRS = "pairs"

# An input column with one of these names would be overwritten, so a shard carrying one is refused.
RESERVED_COLUMNS = frozenset(RESULT_COLUMNS.names) | {"candidates", "error", READ_PATH}


class InputSchemaError(ValueError):
    """A shard whose columns cannot be read as either input layout."""


@dataclass(frozen=True)
class ShardLayout:
    layout: str
    passthrough: tuple[str, ...]


def detect_layout(schema: pa.Schema, shard: str) -> ShardLayout:
    """Which layout a shard uses and which of its columns pass through; raises naming the shard."""
    names = set(schema.names)
    missing = {"query_id", "query"} - names
    if missing:
        raise InputSchemaError(f"{shard}: missing column(s) {sorted(missing)}; expected query_id, query and candidates (or doc_id)")
    if "candidates" in names:
        layout = GROUPED
        candidates = schema.field("candidates").type
        if not (pa.types.is_list(candidates) or pa.types.is_large_list(candidates)) or not pa.types.is_struct(candidates.value_type):
            raise InputSchemaError(f"{shard}: column 'candidates' must be list<struct<doc_id, image, ...>>, got {candidates}")
        fields = {candidates.value_type.field(i).name for i in range(candidates.value_type.num_fields)}
        if "doc_id" not in fields or not fields & {"image", "image_uri"}:
            raise InputSchemaError(f"{shard}: candidates need doc_id and image or image_uri, got fields {sorted(fields)}")
        own = {"query_id", "query", "candidates"}
    elif "doc_id" in names:
        layout = PAIRS
        if not names & {"image", "image_uri"}:
            raise InputSchemaError(f"{shard}: pairs layout needs an image or image_uri column")
        own = {"query_id", "query", *CANDIDATE_FIELDS}
    else:
        raise InputSchemaError(f"{shard}: neither a 'candidates' column (grouped layout) nor 'doc_id' (pairs layout)")
    passthrough = tuple(name for name in schema.names if name not in own)
    clashing = sorted(set(passthrough) & RESERVED_COLUMNS)
    if clashing:
        raise InputSchemaError(f"{shard}: column(s) {clashing} clash with output columns; rename them")
    return ShardLayout(layout, passthrough)


def append_passthrough(table: pa.Table, source: pa.Table, own: set[str] | frozenset[str]) -> pa.Table:
    """`table` plus every column of `source` (same rows, same order) whose name is not in `own`."""
    for name in source.column_names:
        if name not in own:
            table = table.append_column(source.schema.field(name), source.column(name))
    return table


# A candidate needs a doc_id and one of image / image_uri (detect_layout checks which); the rest may be absent.
OPTIONAL_CANDIDATE_FIELDS = frozenset({"image", "image_uri", "text", "score"})


def layout_schema(layout: str) -> pa.Schema:
    return GROUPED_INPUT_SCHEMA if layout == GROUPED else PAIRS_INPUT_SCHEMA


def input_type_problem(schema: pa.Schema, layout: str, shard: str) -> str | None:
    """Why a shard's own columns cannot be read losslessly as the layout's input schema, or None."""
    for field in layout_schema(layout):
        if field.name not in schema.names:
            continue  # optional pairs columns; required ones were checked by detect_layout
        problem = type_problem(schema.field(field.name).type, field.type, field.name, OPTIONAL_CANDIDATE_FIELDS, integers_as_strings=True)
        if problem:
            return f"{shard}: {problem}"
    return None


def passthrough_problem(name: str, actual: pa.DataType, canonical: pa.DataType) -> str | None:
    """Why a passthrough column of type `actual` cannot be read as the run's type for it without loss, or None."""
    if pa.types.is_null(actual) or pa.types.is_null(canonical):
        return None
    if type_problem(actual, canonical, name) or type_problem(canonical, actual, name):
        return f"passthrough column '{name}' is {actual} here but {canonical} in the other shards"
    return None


def run_schema(layout: str, passthrough: dict[str, pa.DataType]) -> pa.Schema:
    """The one schema every shard of a run is read as: the layout's columns, then the passthrough columns."""
    return pa.schema([*layout_schema(layout), *(pa.field(name, arrow_type) for name, arrow_type in passthrough.items())])
