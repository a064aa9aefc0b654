"""The CPU stage: validate each query row, fit candidate images to their budget, flag what is bad.

Per-query problems (no id, empty query, no candidates, duplicate doc_id, a
query_id seen more than once in the input, no usable candidate) put a reason
on the row, which later becomes a dead letter. Per-candidate problems (no
image, undecodable bytes, a refused URI) put a reason on the candidate, which
is kept, ranked last and flagged. Nothing here raises on bad data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa

from .budgets import candidate_budgets
from .images import ImageError, prepare_images
from .schema import CANDIDATE_FIELDS, PREPARED_COLUMNS, SOURCE_PATH, append_passthrough
from .storage import Storage, UriNotAllowed, fetch_images
from .windows import first_stage_order


@dataclass(frozen=True)
class PrepareSettings:
    image_tokens: int  # the per-candidate cap
    jpeg_quality: int
    allowed_uri_prefixes: tuple[str, ...]
    # query_id -> why every row with it is a dead letter (seen more than once, spans shards)
    duplicate_query_ids: Mapping[str, str]
    storage: Storage = Storage()
    fetch_concurrency: int = 8
    fetch_retries: int = 3
    window: int = 5
    prompt_image_tokens: int | None = None
    policy: str = "uniform"
    # The cascade's first-pass budget: each candidate is also prepared at this size.
    first_image_tokens: int | None = None

    def budgets(self, count: int) -> list[int]:
        return candidate_budgets(count, cap=self.image_tokens, window=self.window, prompt_total=self.prompt_image_tokens, policy=self.policy)


def _fetch_reason(uri: str, error: Exception) -> str:
    if isinstance(error, UriNotAllowed):
        return str(error)
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"cannot read image_uri {uri}: {type(error).__name__}{': ' + detail if detail else ''}"


def _candidate_image(
    candidate: Mapping[str, Any], budgets: tuple[int, int | None], settings: PrepareSettings, fetched: Mapping[str, bytes | Exception]
) -> dict[str, Any]:
    """The candidate's image at its budget (and at the cascade's first-pass budget), or the reason it has none."""
    empty = {"image": None, "image_tokens": 0, "first_image": None, "first_image_tokens": None}
    data = candidate.get("image")
    uri = candidate.get("image_uri")
    if not data:
        if not uri:
            return empty | {"error": "candidate has neither image bytes nor image_uri"}
        result = fetched.get(uri)
        if isinstance(result, Exception) or result is None:
            return empty | {"error": _fetch_reason(uri, result or RuntimeError("not fetched"))}
        data = result
    budget, first_budget = budgets
    try:
        # One decode serves both of the cascade's sizes.
        prepared, *rest = prepare_images(data, [budget, first_budget] if first_budget else [budget], settings.jpeg_quality)
        first = rest[0] if rest else None
    except ImageError as error:
        return empty | {"error": str(error)}
    return {
        "image": prepared.data,
        "image_tokens": prepared.tokens,
        "first_image": first.data if first else None,
        "first_image_tokens": first.tokens if first else None,
        "error": None,
    }


def _query_error(query_id: Any, query: Any, candidates: Any, settings: PrepareSettings) -> str | None:
    if not isinstance(query_id, str) or not query_id.strip():
        return "missing query_id"
    if query_id in settings.duplicate_query_ids:
        return settings.duplicate_query_ids[query_id]
    if not isinstance(query, str) or not query.strip():
        return "empty query (or conflicting query texts for one query_id in the pairs layout)"
    if not candidates:
        return "no candidates"
    doc_ids = [candidate.get("doc_id") for candidate in candidates]
    missing = [position for position, doc_id in enumerate(doc_ids, 1) if not doc_id]
    if missing:
        return f"candidate(s) {missing} have no doc_id"
    repeated = sorted(doc_id for doc_id, count in Counter(doc_ids).items() if count > 1)
    if repeated:
        return f"duplicate doc_id(s) within the query: {repeated}"
    return None


def prepare_row(
    row: Mapping[str, Any], settings: PrepareSettings, fetched: Mapping[str, bytes | Exception] | None = None
) -> dict[str, Any]:
    """One prepared row (see schema.PREPARED_COLUMNS) from one grouped input row; `fetched`: image_uri -> bytes or error."""
    candidates = row.get("candidates") or []
    error = _query_error(row.get("query_id"), row.get("query"), candidates, settings)
    prepared = []
    if error is None:
        # Budgets go by first-stage position (the `rank` policy favours the top).
        order = first_stage_order([candidate.get("score") for candidate in candidates])
        budgets = [0] * len(candidates)
        for budget, index in zip(settings.budgets(len(candidates)), order):
            budgets[index] = budget
        for candidate, budget in zip(candidates, budgets):
            images = _candidate_image(candidate, (budget, settings.first_image_tokens), settings, fetched or {})
            prepared.append({"doc_id": candidate["doc_id"], "score": candidate.get("score")} | images)
        if all(candidate["error"] for candidate in prepared):
            error = "no usable candidate: " + "; ".join(f"{c['doc_id']}: {c['error']}" for c in prepared)
    if error is not None:
        # Keep the first-stage list (without images) so the dead letter says what was asked.
        prepared = [
            {"doc_id": c.get("doc_id"), "image": None, "image_tokens": 0, "first_image": None, "first_image_tokens": None, "score": c.get("score"), "error": None}
            for c in candidates
        ]
    return {
        "query_id": row.get("query_id"),
        "query": row.get("query"),
        SOURCE_PATH: row.get("path"),
        "error": error,
        "candidates": prepared,
    }


def prepare_batch(batch: pa.Table, settings: PrepareSettings) -> pa.Table:
    """The Ray Data UDF: grouped input rows in, prepared rows out, extra columns passed through."""
    own = {"query_id", "query", "candidates", "path"}
    rows = batch.select([name for name in batch.column_names if name in own]).to_pylist()
    # Fetch every image_uri of the batch at once, a bounded number in flight.
    uris = [c["image_uri"] for row in rows for c in row.get("candidates") or [] if not c.get("image") and c.get("image_uri")]
    fetched = fetch_images(
        settings.storage, uris, settings.allowed_uri_prefixes, settings.fetch_concurrency, settings.fetch_retries
    )
    table = pa.Table.from_pylist([prepare_row(row, settings, fetched) for row in rows], schema=PREPARED_COLUMNS)
    return append_passthrough(table, batch, own)


def group_pairs(group: pa.Table) -> pa.Table:
    """One grouped row from the pairs rows of one query_id (used with Ray Data's groupby)."""
    rows = group.to_pylist()
    ordered = [rows[index] for index in first_stage_order([row.get("score") for row in rows])]
    first = ordered[0]
    queries = {row.get("query") for row in rows}
    grouped: dict[str, Any] = {
        "query_id": first.get("query_id"),
        # Conflicting query texts for one id make the row unusable; prepare_row reports it.
        "query": first.get("query") if len(queries) == 1 else None,
        "candidates": [
            {field: row.get(field) for field in CANDIDATE_FIELDS} for row in ordered
        ],
        "path": first.get("path"),
    }
    for name in group.column_names:
        if name not in grouped and name not in CANDIDATE_FIELDS:
            grouped[name] = first.get(name)
    return pa.Table.from_pylist([grouped])
