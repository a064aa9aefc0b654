"""Arrow schemas of the job's inputs, its internal rows and its outputs, and shard-level checks.

Input comes in two layouts. Grouped: one row per query with a `candidates`
list. Pairs: one row per query-candidate, grouped by `query_id` before the
model stage. Any other input column passes through to the output. Only plain
Arrow columns cross stage boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

GROUPED = "grouped"
PAIRS = "pairs"

CANDIDATE_FIELDS = ("doc_id", "image", "image_uri", "text", "score")

CANDIDATE_TYPE = pa.struct(
    [
        pa.field("doc_id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("text", pa.string()),
        pa.field("score", pa.float64()),
    ]
)

GROUPED_INPUT_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string()),
        pa.field("query", pa.string()),
        pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
    ]
)

PAIRS_INPUT_SCHEMA = pa.schema(
    [pa.field("query_id", pa.string()), pa.field("query", pa.string())] + list(CANDIDATE_TYPE)
)

# Columns the job itself adds or consumes; an input column with one of these
# names would be overwritten, so a shard carrying one is refused at plan time.
SOURCE_PATH = "source_path"

# The prepared row handed from the CPU stage to the model stage: images are
# already fitted to their budget (small JPEG bytes), bad candidates carry a reason.
PREPARED_CANDIDATE_TYPE = pa.struct(
    [
        pa.field("doc_id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_tokens", pa.int32()),
        # The cascade's first-pass version (small budget); null without a cascade.
        pa.field("first_image", pa.binary()),
        pa.field("first_image_tokens", pa.int32()),
        pa.field("score", pa.float64()),
        pa.field("error", pa.string()),
    ]
)

PREPARED_COLUMNS = pa.schema(
    [
        pa.field("query_id", pa.string()),
        pa.field("query", pa.string()),
        pa.field(SOURCE_PATH, pa.string()),
        pa.field("error", pa.string()),
        pa.field("candidates", pa.list_(PREPARED_CANDIDATE_TYPE)),
    ]
)

# One row per query out of the model stage; `status == "error"` rows become
# dead letters, the others ranked rows.
RESULT_COLUMNS = pa.schema(
    [
        pa.field("query_id", pa.string()),
        pa.field("doc_ids", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float64())),
        pa.field("first_stage_doc_ids", pa.list_(pa.string())),
        pa.field("first_stage_scores", pa.list_(pa.float64())),
        # Image tokens each candidate was given, aligned with first_stage_doc_ids (0: not shown).
        pa.field("candidate_image_tokens", pa.list_(pa.int32())),
        pa.field("status", pa.string()),
        pa.field("flagged_doc_ids", pa.list_(pa.string())),
        pa.field("flag_reasons", pa.list_(pa.string())),
        # Per final position: "detail" / "first_pass" (cascade passes), "model" (no cascade),
        # "first_stage" (below --top-k or nothing to compare), "flagged".
        pa.field("decided_by", pa.list_(pa.string())),
        pa.field("reasoning", pa.list_(pa.string())),
        pa.field("windows", pa.int32()),
        pa.field("image_tokens", pa.int64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("generated_tokens", pa.int64()),
        # Windows whose reasoning hit the thinking budget and were made to answer.
        pa.field("forced_answers", pa.int32()),
        pa.field("model", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field(SOURCE_PATH, pa.string()),
        pa.field("query", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

RANKED_DROP = ("query", "reason")
DEAD_LETTER_KEEP = ("query_id", "status", "reason", SOURCE_PATH, "query", "first_stage_doc_ids", "run_id", "model")

RESERVED_COLUMNS = frozenset(RESULT_COLUMNS.names) | {"candidates", "error", "path"}


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
        if not (pa.types.is_list(candidates) or pa.types.is_large_list(candidates)) or not pa.types.is_struct(
            candidates.value_type
        ):
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
