"""Preparing one query: validate the row, fit candidate images to their budgets, flag what is bad.

Per-query problems (no id, empty query, no candidates, a missing or
non-string doc_id, a score that is not a number, duplicate doc_id, a
query_id seen more than once in the input, no usable candidate) put a reason
on the row, which later becomes a dead letter. Per-candidate problems (no
image, a field of the wrong kind, undecodable bytes, a refused or unreadable
URI) put a reason on the candidate, which is kept, ranked last and flagged.
Nothing here raises on bad data; anything that does raise is a bug, and fails
the batch (Ray retries it, and the job stops with the error if it persists)
instead of hiding as a higher error rate. Nothing here reads storage:
image_uri bytes (or the reason they could not be read) are fetched by the
caller and handed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmr5_batch.core.budgets import candidate_budgets
from mmr5_batch.core.families import CUT_DOCUMENT_HEAD, CUT_PAIR_TAIL
from mmr5_batch.core.images import GRID, ImageError, PreparedImage, prepare_images
from mmr5_batch.core.model_inputs import ImagePatches, image_key, patch_image, processor_signature
from mmr5_batch.core.pointwise_prompt import TEXT_PROMPT_PREFIX, TEXT_PROMPT_SUFFIX, text_pair
from mmr5_batch.core.rows import CANDIDATE_FIELDS, READ_PATH, PassPicture, PreparedCandidate, PreparedRow
from mmr5_batch.core.windows import first_stage_order

# image_uri -> its bytes, or the reason it could not be read.
Fetched = Mapping[str, "bytes | str"]


@dataclass(frozen=True)
class PicturePass:
    """One picture every pictured page gets, for one picture pass of the run: its index in `PrepareSettings.pictures`
    is the index of the page's picture in `PreparedCandidate.pictures`, and what the model stages ask for."""

    # Pixels per image token of the model that sees it (Qwen2.5-VL 28, Qwen3-VL 32).
    grid: int = GRID
    # Its image tokens; None: each page's own budget, by the budget policy over `image_tokens` (the main model's pass).
    tokens: int | None = None
    # Where the image processor of the model that sees it is read from, when the CPU stage builds the model's
    # patches (images.processing 'cpu-stage'); None: the engine builds them.
    processor_source: str | None = None
    # A cascade's first pass (the same-model cascade's small pictures, the two-model cascade scorer's): which of its
    # pictures are sent is known before any pass runs.
    first_pass: bool = False


@dataclass(frozen=True)
class PrepareSettings:
    image_tokens: int  # the per-candidate cap
    jpeg_quality: int = 90
    # query_id -> why every row with it is a dead letter (seen more than once, spans shards)
    duplicate_query_ids: Mapping[str, str] = field(default_factory=dict)
    window: int = 5
    prompt_image_tokens: int | None = None
    policy: str = "uniform"
    # The pictures each pictured page gets, one per picture pass (the main model's first; none for a text
    # reranker: no image is fetched or decoded, a page needs text).
    pictures: tuple[PicturePass, ...] = (PicturePass(),)
    # The pointwise protocol judges text too: a candidate with text and no image is usable.
    text_documents: bool = False
    # Which pictures are certain to be sent, so worth their patches: the first top_k usable candidates; under a
    # cascade (detail_top set) the full-budget ones only when no more than detail_top are shown (otherwise which
    # ones the detail pass shows is known only after the first pass: the engine processes those few), the small
    # ones when a first pass runs (always for the two-model cascade's scorer).
    top_k: int | None = None
    detail_top: int | None = None
    scorer_first: bool = False
    # Document text a pointwise model reads is cut to this many tokens (None: no model reads text), counted by the
    # tokenizer at `tokenizer_source` (None: words, for the scripted test engine).
    text_tokens: int | None = None
    tokenizer_source: str | None = None
    # How the reading family cuts (core/families.py): the document's head, or the whole pair at its end (then the
    # family's instruction, resolved, is part of the pair).
    text_cut: str = CUT_DOCUMENT_HEAD
    instruction: str = ""

    def budgets(self, count: int) -> list[int]:
        return candidate_budgets(count, cap=self.image_tokens, window=self.window, prompt_total=self.prompt_image_tokens, policy=self.policy)


@dataclass
class PageWork:
    """One CPU task's page work, shared by its rows: each distinct source page is decoded and fitted once per set of
    budgets, each prepared picture cut into the model's patches once (windows, cascade passes and queries of the
    task that show the same page reuse it); and how much of either it did."""

    # The image processor cutting each picture pass's pictures, by the pass's index (None, or none given: no patches,
    # the engine builds them).
    processors: tuple[Any, ...] = ()
    # The tokenizer counting a document's text tokens (None: words stand in for tokens).
    tokenizer: Any = None
    prepared: dict[tuple[Any, ...], list[PreparedImage]] = field(default_factory=dict)
    patched: dict[str, ImagePatches] = field(default_factory=dict)  # by image_key: content and processor
    decoded: int = 0
    processed: int = 0

    def processor(self, index: int) -> Any:
        return self.processors[index] if index < len(self.processors) else None

    def prepare(self, data: bytes, wanted: list[int], grids: list[int], quality: int) -> list[PreparedImage]:
        key = (hashlib.blake2b(data, digest_size=16).digest(), tuple(wanted), tuple(grids), quality)
        if key not in self.prepared:
            self.prepared[key] = prepare_images(data, wanted, quality, grids)
            self.decoded += 1
        return self.prepared[key]

    def cut_text(self, text: str, limit: int) -> str:
        """`text` cut to its first `limit` tokens (the pointwise family's rule: the document's head, as its reference
        truncates a long document), exactly: the cut text tokenises to at most `limit` tokens on its own, and a cut
        never splits a character (see `cut_to_tokens`)."""
        if self.tokenizer is None:
            words = text.split()
            return text if len(words) <= limit else " ".join(words[:limit])
        return cut_to_tokens(text, limit, self.tokenizer)

    def cut_document(self, text: str, query: str, settings: PrepareSettings) -> str:
        """A document's text as the reading family cuts it at `settings.text_tokens`: its head (`cut_text`), or, for a
        family that truncates the whole pair (the text Qwen3-Reranker's reference tokenises instruction, query and
        document together and keeps the first `max_length - len(prefix) - len(suffix)` tokens), the document's part
        of the pair so cut: empty when the query leaves it no room. Without a tokenizer words stand in for tokens,
        and the document's head is cut."""
        limit = settings.text_tokens
        assert limit is not None
        if settings.text_cut != CUT_PAIR_TAIL or self.tokenizer is None:
            return self.cut_text(text, limit)
        fixed = sum(len(self.tokenizer.encode(part, add_special_tokens=False)) for part in (TEXT_PROMPT_PREFIX, TEXT_PROMPT_SUFFIX))
        head = text_pair(query, "", settings.instruction)
        pair = cut_to_tokens(head + text, max(0, limit - fixed), self.tokenizer)
        return pair[len(head) :] if pair.startswith(head) else ""

    def patch(self, picture: bytes, tokens: int, processor: Any, grid: int) -> ImagePatches:
        # The picture's content key is its cache key too: one hash per picture.
        key = image_key(picture, processor_signature(processor))
        if key not in self.patched:
            self.patched[key] = patch_image(picture, processor, grid, tokens, key)
            self.processed += 1
        return self.patched[key]


def _prepared_candidate(
    candidate: Mapping[str, Any], query: str, budget: int, settings: PrepareSettings, fetched: Fetched, work: PageWork
) -> PreparedCandidate:
    """The candidate with its picture for each picture pass (the main one at the page's `budget`), or the reason it has
    none."""
    given = text = _text_or_none(candidate.get("text"))
    if text and settings.text_tokens is not None:
        text = work.cut_document(text, query, settings)
    bare = PreparedCandidate(doc_id=candidate["doc_id"], score=candidate.get("score"), text=text)
    problem = _field_problem(candidate)
    if problem is not None:
        return bare.flagged(problem)
    passes = settings.pictures
    if not passes:
        # A text reranker: the page is its text; its image is never read.
        if text and text.strip():
            return bare
        if given and given.strip():
            return bare.flagged(f"the query leaves no room for the document's text within model.document_tokens ({settings.text_tokens})")
        return bare.flagged("candidate has no text, which a text reranker needs" + (" (its text is blank)" if given else ""))
    data = candidate.get("image")
    uri = candidate.get("image_uri")
    if not data:
        if not uri:
            # A blank text (white space only) says nothing to a model: no document, where there is no image either.
            if settings.text_documents and text and text.strip():
                return bare
            needs = "image bytes, image_uri nor text" if settings.text_documents else "image bytes nor image_uri"
            blank = " (its text is blank)" if settings.text_documents and text else ""
            return bare.flagged(f"candidate has neither {needs}{blank}")
        result = fetched.get(uri, f"cannot read image_uri {uri}: not fetched")
        if isinstance(result, str):
            return bare.flagged(result)
        data = result
    try:
        # One decode serves every pass's size.
        wanted = [budget if each.tokens is None else each.tokens for each in passes]
        prepared = work.prepare(data, wanted, [each.grid for each in passes], settings.jpeg_quality)
    except ImageError as error:
        return bare.flagged(str(error))
    return dataclasses.replace(bare, pictures=[PassPicture(image=picture.data, tokens=picture.tokens) for picture in prepared])


def _attach_patches(prepared: list[PreparedCandidate], order: list[int], settings: PrepareSettings, work: PageWork) -> None:
    """Cut the pictures certain to be sent into the model's patches (see PrepareSettings.top_k); a picture the
    processor refuses flags its candidate."""
    usable = [index for index in order if prepared[index].usable]
    shown = usable[: settings.top_k] if settings.top_k is not None else usable
    cascade = settings.detail_top is not None
    full = not cascade or len(shown) <= (settings.detail_top or 0)
    first_pass = settings.scorer_first or (cascade and not full)
    wanted = [(number, work.processor(number), each.grid) for number, each in enumerate(settings.pictures) if (first_pass if each.first_pass else full)]
    for index in shown:
        candidate = prepared[index]
        try:
            for number, processor, grid in wanted:
                picture = candidate.picture(number)
                if processor is not None and picture is not None:
                    patches = work.patch(picture, candidate.picture_tokens(number), processor, grid)
                    candidate.set_patches(number, patches.patches, list(patches.grid), patches.key)
        except ImageError as error:
            prepared[index] = candidate.flagged(str(error))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# A candidate's optional fields and the kinds they must be (the Python API takes rows without a schema).
_FIELD_KINDS = {"image": bytes, "image_uri": str, "text": str}


def _field_problem(candidate: Mapping[str, Any]) -> str | None:
    for name, kind in _FIELD_KINDS.items():
        value = candidate.get(name)
        if value is not None and not isinstance(value, kind):
            return f"{name} must be {kind.__name__}, got {type(value).__name__}"
    return None


def _query_error(query_id: Any, query: Any, candidates: Any, settings: PrepareSettings) -> str | None:
    if not isinstance(query_id, str) or not query_id.strip():
        return "missing query_id"
    if query_id in settings.duplicate_query_ids:
        return settings.duplicate_query_ids[query_id]
    if not isinstance(query, str) or not query.strip():
        return "empty query (or conflicting query texts for one query_id in the pairs layout)"
    if not candidates:
        return "no candidates"
    nulls = [position for position, candidate in enumerate(candidates, 1) if not isinstance(candidate, Mapping)]
    if nulls:
        return f"candidate(s) {nulls} are null"
    doc_ids = [candidate.get("doc_id") for candidate in candidates]
    missing = [position for position, doc_id in enumerate(doc_ids, 1) if not doc_id]
    if missing:
        return f"candidate(s) {missing} have no doc_id"
    not_text = [position for position, doc_id in enumerate(doc_ids, 1) if not isinstance(doc_id, str)]
    if not_text:
        return f"candidate(s) {not_text} have a doc_id that is not a string"
    # The first-stage order (and so every budget) is read from the scores.
    not_numbers = [position for position, c in enumerate(candidates, 1) if c.get("score") is not None and not _is_number(c.get("score"))]
    if not_numbers:
        return f"candidate(s) {not_numbers} have a score that is not a number"
    repeated = sorted(doc_id for doc_id, count in Counter(doc_ids).items() if count > 1)
    if repeated:
        return f"duplicate doc_id(s) within the query: {repeated}"
    return None


def prepare_row(row: Mapping[str, Any], settings: PrepareSettings, fetched: Fetched | None = None, work: PageWork | None = None) -> PreparedRow:
    """One prepared row from one grouped input row (`rows.InputRow`, plus `path`); `work` is the task's page work
    (its processors and what it already prepared), a fresh one without patches by default."""
    work = work if work is not None else PageWork()
    decoded, processed = work.decoded, work.processed
    candidates = row.get("candidates") or []
    error = _query_error(row.get("query_id"), row.get("query"), candidates, settings)
    prepared: list[PreparedCandidate] = []
    if error is None:
        # Budgets go by first-stage position (the `rank` policy favours the top).
        order = first_stage_order([candidate.get("score") for candidate in candidates])
        budgets = [0] * len(candidates)
        for budget, index in zip(settings.budgets(len(candidates)), order):
            budgets[index] = budget
        for candidate, budget in zip(candidates, budgets):
            prepared.append(_prepared_candidate(candidate, row["query"], budget, settings, fetched or {}, work))
        if any(processor is not None for processor in work.processors):
            _attach_patches(prepared, order, settings, work)
        if not any(candidate.usable for candidate in prepared):
            error = "no usable candidate: " + "; ".join(f"{c.doc_id}: {c.error}" for c in prepared)
    if error is not None:
        # Keep the first-stage list (without images) so the dead letter says what was asked.
        prepared = [
            PreparedCandidate(doc_id=_text_or_none(c.get("doc_id")), score=c.get("score") if _is_number(c.get("score")) else None)
            for c in candidates
            if isinstance(c, Mapping)
        ]
    return PreparedRow(
        query_id=_text_or_none(row.get("query_id")),
        query=_text_or_none(row.get("query")),
        source_path=row.get(READ_PATH),
        error=error,
        candidates=prepared,
        pages_decoded=work.decoded - decoded,
        pages_processed=work.processed - processed,
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def cut_to_tokens(text: str, limit: int, tokenizer: Any) -> str:
    """The head of `text` that is at most `limit` tokens of `tokenizer`: cut on the tokens' own character offsets
    (a fast tokenizer's), else on their decoded text, then checked by tokenising the cut again, one token shorter
    while it is too long or ends in a broken character (a byte-level token inside a multi-byte one)."""
    # A token is rarely longer than 16 characters: tokenize a prefix first, the whole text only when it falls short.
    head = text[: limit * 16]
    encoded = _encode(tokenizer, head)
    if len(encoded[0]) <= limit and len(head) < len(text):
        encoded = _encode(tokenizer, text)
    ids, offsets = encoded
    if len(ids) <= limit:
        return text
    for count in range(limit, 0, -1):
        cut = text[: offsets[count - 1][1]] if offsets is not None else str(tokenizer.decode(ids[:count]))
        if cut.endswith("\ufffd") and not text.startswith(cut):
            continue
        if len(tokenizer.encode(cut, add_special_tokens=False)) <= limit:
            return cut
    return ""


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of `text`, and each token's (start, end) characters where the tokenizer tells them (fast ones)."""
    if getattr(tokenizer, "is_fast", False):
        found = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(found["input_ids"]), [tuple(pair) for pair in found["offset_mapping"]]
    return list(tokenizer.encode(text, add_special_tokens=False)), None


def uris_to_fetch(rows: Sequence[Mapping[str, Any]], settings: PrepareSettings) -> list[str]:
    """The image_uri of every candidate that has no image bytes, in order (none when the model sees no pictures)."""
    if not settings.pictures:
        return []
    return [c["image_uri"] for row in rows for c in row.get("candidates") or [] if c and not c.get("image") and c.get("image_uri")]


def group_pairs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One grouped row from the pairs rows (`rows.PairRow`) of one query_id; other columns from its first row."""
    ordered = [rows[index] for index in first_stage_order([row.get("score") for row in rows])]
    first = ordered[0]
    queries = {row.get("query") for row in rows}
    grouped: dict[str, Any] = {
        "query_id": first.get("query_id"),
        # Conflicting query texts for one id make the row unusable; prepare_row reports it.
        "query": first.get("query") if len(queries) == 1 else None,
        "candidates": [{name: row.get(name) for name in CANDIDATE_FIELDS} for row in ordered],
        READ_PATH: first.get(READ_PATH),
    }
    for name, value in first.items():
        if name not in grouped and name not in CANDIDATE_FIELDS:
            grouped[name] = value
    return grouped
