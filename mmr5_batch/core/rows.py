"""One typed model per row kind at every stage boundary, and the Arrow schemas derived from them.

Each model is a dataclass whose fields carry their Arrow type; `arrow_schema`
and `struct_type` read the types from there, so a model and its schema cannot
disagree. The row kinds, in the order data flows:

- `InputRow` (grouped layout, one row per query) with `InputCandidate`s;
  `PairRow` (pairs layout, one row per query-candidate), grouped before preparing;
- `PreparedRow` with `PreparedCandidate`s: images fitted to their budget
  (small JPEG bytes), bad candidates carrying a reason (the CPU stage's output);
- `ResultRow`: one per query out of the model stage; `status == "error"` rows
  become dead letters, the others ranked rows;
- `DeadLetter`: what the dead-letter table keeps of an error row;
- `RelabelPair`: one query-candidate of a ranked row (`--emit pairs`);
- `ShardSurvey` and `ShardReadback`: what the job's planning and readback
  tasks send the driver about one shard.

Only plain Arrow columns cross stage boundaries: no PIL images, no tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

# The column Ray Data's `include_paths` adds, and its name in the outputs.
READ_PATH = "path"
SOURCE_PATH = "source_path"


def column(arrow_type: pa.DataType, default: Any = None) -> Any:
    """A dataclass field of the given Arrow type (None by default: every column is nullable)."""
    return field(default=default, metadata={"arrow": arrow_type})


def arrow_schema(model: type) -> pa.Schema:
    """The Arrow schema of a row model: its fields in order, with their declared types."""
    return pa.schema([pa.field(item.name, item.metadata["arrow"]) for item in dataclasses.fields(model)])


def struct_type(model: type) -> pa.StructType:
    return pa.struct(list(arrow_schema(model)))


def to_table(rows: list[Any], model: type) -> pa.Table:
    """Row models (or plain dicts with their fields) as a table of the model's schema."""
    return pa.Table.from_pylist([row if isinstance(row, dict) else dataclasses.asdict(row) for row in rows], schema=arrow_schema(model))


Row = TypeVar("Row")


def from_mapping(model: type[Row], data: Mapping[str, Any]) -> Row:
    """A row model from a mapping that has its fields (an Arrow row as `to_pylist` gives it); other keys ignored."""
    return model(**{item.name: data.get(item.name) for item in dataclasses.fields(model)})  # type: ignore[arg-type]


@dataclass
class InputCandidate:
    doc_id: str | None = column(pa.string())
    image: bytes | None = column(pa.binary())  # the page image's bytes (JPEG, PNG, ...)
    image_uri: str | None = column(pa.string())  # or where to read it (within the allowed prefixes)
    text: str | None = column(pa.string())
    score: float | None = column(pa.float64())  # first-stage score; higher is better


CANDIDATE_TYPE = struct_type(InputCandidate)
CANDIDATE_FIELDS = tuple(CANDIDATE_TYPE.names)


@dataclass
class InputRow:
    query_id: str | None = column(pa.string())
    query: str | None = column(pa.string())
    candidates: list[dict[str, Any]] | None = column(pa.list_(CANDIDATE_TYPE))


@dataclass
class PairRow:
    query_id: str | None = column(pa.string())
    query: str | None = column(pa.string())
    doc_id: str | None = column(pa.string())
    image: bytes | None = column(pa.binary())
    image_uri: str | None = column(pa.string())
    text: str | None = column(pa.string())
    score: float | None = column(pa.float64())


GROUPED_INPUT_SCHEMA = arrow_schema(InputRow)
PAIRS_INPUT_SCHEMA = arrow_schema(PairRow)


@dataclass
class PassPicture:
    """A page's picture as one picture pass of the run shows it (`PrepareSettings.pictures` says which pass is which)."""

    image: bytes | None = column(pa.binary())  # fitted to the pass's budget, JPEG
    tokens: int | None = column(pa.int32())
    # The model's input for `image` (images.processing 'cpu-stage'), under the model that sees this pass: uint8 patch
    # rows, their (frames, rows, columns) grid and a content key (core/model_inputs.py); null where the engine builds
    # it from the JPEG.
    patches: bytes | None = column(pa.large_binary())
    grid: list[int] | None = column(pa.list_(pa.int32()))
    key: str | None = column(pa.string())


PASS_PICTURE_TYPE = struct_type(PassPicture)

# Which picture pass is which, in `PreparedCandidate.pictures` (and `PrepareSettings.pictures`): the main model's, at
# each page's own budget, then the first pass's (the same-model cascade's small ones, or those the two-model cascade's
# scorer sees) where a first pass sees pictures.
MAIN_PICTURES = 0
FIRST_PASS_PICTURES = 1


@dataclass
class PreparedCandidate:
    doc_id: str | None = column(pa.string())
    # One picture per picture pass of the run, by the pass's index (the main model's pass first, then the first
    # pass's: the same-model cascade's small pictures or the two-model cascade scorer's); empty for a page without
    # a picture.
    pictures: list[PassPicture] | None = column(pa.list_(PASS_PICTURE_TYPE))
    score: float | None = column(pa.float64())
    error: str | None = column(pa.string())  # why the candidate has no usable image (or, pointwise, no image nor text)
    text: str | None = column(pa.string())  # the document's text: the pointwise protocol shows it beside (or instead of) the image
    # P(yes) from the two-model cascade's pointwise scorer; null before it, or not scored (below --top-k).
    relevance: float | None = column(pa.float64())

    def __post_init__(self) -> None:
        # A candidate read from a mapping (an Arrow row, the Python API) has its pictures as mappings too.
        if self.pictures:
            self.pictures = [picture if isinstance(picture, PassPicture) else from_mapping(PassPicture, picture) for picture in self.pictures]

    @property
    def usable(self) -> bool:
        return self.error is None

    def _pass(self, index: int) -> PassPicture | None:
        pictures = self.pictures or ()
        return pictures[index] if 0 <= index < len(pictures) else None

    def picture(self, index: int = 0) -> bytes | None:
        """The picture picture pass `index` shows (None: the page has none for it)."""
        found = self._pass(index)
        return found.image if found is not None else None

    def picture_tokens(self, index: int = 0) -> int:
        found = self._pass(index)
        return (found.tokens or 0) if found is not None else 0

    def set_patches(self, index: int, patches: bytes, grid: list[int], key: str) -> None:
        found = self._pass(index)
        if found is None:
            raise IndexError(f"the candidate has no picture for pass {index}")
        found.patches, found.grid, found.key = patches, grid, key

    def patches(self, index: int = 0) -> tuple[bytes, list[int], str] | None:
        """The model's input for pass `index`'s picture (its patch bytes, grid and content key), None where not built."""
        found = self._pass(index)
        if found is None or found.patches is None or found.grid is None or found.key is None:
            return None
        return found.patches, found.grid, found.key

    def flagged(self, reason: str) -> PreparedCandidate:
        """The candidate without pictures, kept (ranked last) with the reason."""
        return PreparedCandidate(doc_id=self.doc_id, score=self.score, text=self.text, error=reason)


PREPARED_CANDIDATE_TYPE = struct_type(PreparedCandidate)


@dataclass
class PreparedRow:
    query_id: str | None = column(pa.string())
    query: str | None = column(pa.string())
    source_path: str | None = column(pa.string())
    error: str | None = column(pa.string())  # why the whole query cannot be reranked
    candidates: list[PreparedCandidate] | None = column(pa.list_(PREPARED_CANDIDATE_TYPE))
    # Source pages decoded and pictures turned into patches while preparing this row (a page the task had
    # already prepared, for this query or another, counts once, at its first use); pictures the two-model
    # cascade's scorer sent (and the pages its engine decoded and processed) are added on.
    pages_decoded: int | None = column(pa.int32())
    pages_processed: int | None = column(pa.int32())
    pages_sent: int | None = column(pa.int32())
    # What the two-model cascade's scorer spent on the query (null without one).
    scored: int | None = column(pa.int32())
    scorer_prompt_tokens: int | None = column(pa.int64())
    scorer_image_tokens: int | None = column(pa.int64())

    @classmethod
    def of(cls, row: PreparedRow | Mapping[str, Any]) -> PreparedRow:
        """The row itself, or the row model of a mapping (an Arrow row, its candidates as mappings)."""
        if isinstance(row, PreparedRow):
            return row
        prepared = from_mapping(cls, row)
        prepared.candidates = [
            candidate if isinstance(candidate, PreparedCandidate) else from_mapping(PreparedCandidate, candidate) for candidate in prepared.candidates or []
        ]
        return prepared


PREPARED_COLUMNS = arrow_schema(PreparedRow)


@dataclass
class ResultRow:
    query_id: str | None = column(pa.string())
    doc_ids: list[str | None] | None = column(pa.list_(pa.string()))  # the reranked order
    # MM-R5: rank-derived, 1.0 for the top; pointwise: the model's P(yes) per document (null where not scored).
    scores: list[float | None] | None = column(pa.list_(pa.float64()))
    first_stage_doc_ids: list[str | None] | None = column(pa.list_(pa.string()))
    first_stage_scores: list[float | None] | None = column(pa.list_(pa.float64()))
    # Image tokens each candidate was given, aligned with first_stage_doc_ids (0: not shown).
    candidate_image_tokens: list[int | None] | None = column(pa.list_(pa.int32()))
    status: str | None = column(pa.string())  # vocabulary.STATUSES
    flagged_doc_ids: list[str | None] | None = column(pa.list_(pa.string()))
    flag_reasons: list[str | None] | None = column(pa.list_(pa.string()))
    decided_by: list[str] | None = column(pa.list_(pa.string()))  # per final position: vocabulary.DECIDED_BY
    reasoning: list[str] | None = column(pa.list_(pa.string()))  # the model's output per window (opt-in)
    windows: int | None = column(pa.int32())
    scored: int | None = column(pa.int32())  # candidates a pointwise model judged (pointwise protocol, two-model cascade)
    image_tokens: int | None = column(pa.int64())
    prompt_tokens: int | None = column(pa.int64())
    generated_tokens: int | None = column(pa.int64())
    # Windows whose reasoning hit the thinking budget and were made to answer.
    forced_answers: int | None = column(pa.int32())
    # Pictures sent to an engine (every window's and pair's), source pages decoded and pictures turned into the
    # model's patches, by the CPU stage (once per distinct page and budget) or, on the engine path, at every send.
    pages_sent: int | None = column(pa.int32())
    pages_decoded: int | None = column(pa.int32())
    pages_processed: int | None = column(pa.int32())
    model: str | None = column(pa.string())
    # Which engine ran the model: hf, vllm, or scripted-test (no model: plumbing tests).
    backend: str | None = column(pa.string())
    run_id: str | None = column(pa.string())
    source_path: str | None = column(pa.string())
    query: str | None = column(pa.string())
    reason: str | None = column(pa.string())  # why the query is a dead letter (status error)


RESULT_COLUMNS = arrow_schema(ResultRow)
# Ranked rows leave out what only dead letters need.
RANKED_DROP = ("query", "reason")


@dataclass
class DeadLetter:
    query_id: str | None = column(pa.string())
    status: str | None = column(pa.string())
    reason: str | None = column(pa.string())
    source_path: str | None = column(pa.string())
    query: str | None = column(pa.string())
    first_stage_doc_ids: list[str] | None = column(pa.list_(pa.string()))
    run_id: str | None = column(pa.string())
    model: str | None = column(pa.string())
    backend: str | None = column(pa.string())


DEAD_LETTER_KEEP = tuple(arrow_schema(DeadLetter).names)


@dataclass
class RelabelPair:
    """One query-candidate of a ranked row (`--emit pairs`, job/relabel.py): its ranks, label and the label it had."""

    query_id: str | None = column(pa.string())
    doc_id: str | None = column(pa.string())
    reranked_rank: int | None = column(pa.int32())
    first_stage_rank: int | None = column(pa.int32())
    first_stage_score: float | None = column(pa.float64())
    label: int | None = column(pa.int8())
    existing_label: int | None = column(pa.int8())
    disagrees: bool | None = column(pa.bool_())
    decided_by: str | None = column(pa.string())
    status: str | None = column(pa.string())
    source_path: str | None = column(pa.string())
    run_id: str | None = column(pa.string())
    model: str | None = column(pa.string())
    reasoning: list[str] | None = column(pa.list_(pa.string()))


PAIRS_SCHEMA = arrow_schema(RelabelPair)


@dataclass
class ShardSurvey:
    """What a planning task learns of one input shard (job/shard_survey.py), for the driver."""

    uri: str | None = column(pa.string())
    problem: str | None = column(pa.string())  # why the shard cannot be used; null when it can
    layout: str | None = column(pa.string())
    passthrough: list[str] | None = column(pa.list_(pa.string()))
    schema: bytes | None = column(pa.binary())  # the file's Arrow schema, serialized
    queries: int | None = column(pa.int64())  # result rows it yields: one per row (grouped), per distinct id or id-less row (pairs)
    missing: int | None = column(pa.int64())  # rows without a query_id
    written: int | None = column(pa.int64())  # result rows already written for it
    ids: bytes | None = column(pa.binary())  # hashes of its query_ids: one per row (grouped) or per distinct id (pairs)
    pending: bytes | None = column(pa.binary())  # hashes of its distinct query_ids not written yet


SURVEY_SCHEMA = arrow_schema(ShardSurvey)


@dataclass
class ShardReadback:
    """One processed shard's rows as written, counted by a readback task (job/readback.py): accounting's summary, as JSON."""

    uri: str | None = column(pa.string())
    stats: str | None = column(pa.string())


READBACK_SCHEMA = arrow_schema(ShardReadback)
