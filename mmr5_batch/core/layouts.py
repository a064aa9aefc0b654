"""Input layouts (grouped, pairs): which one a shard uses, which of its columns pass through, and carrying them along.

Grouped: one row per query with a `candidates` list. Pairs: one row per
query-candidate, grouped by `query_id` before the model stage. Any other
input column passes through to the output, unless its name is one the job
writes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from mmr5_batch.core.rows import CANDIDATE_FIELDS, READ_PATH, RESULT_COLUMNS

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
