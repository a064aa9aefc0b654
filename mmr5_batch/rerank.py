"""The model stage: windows x engine x parse for a batch of prepared queries.

`rerank_queries_async` is plain Python over an engine, tested without Ray:
every query gets a sliding-window plan and walks it on its own, each answer
parsed, repaired and applied before its next window is sent. Many windows are
in flight at once; a batch engine gets all windows that are ready together
(`BatchingEngine`), vLLM's async engine takes each as it comes and keeps
decoding. `RerankActor` is the thin Ray Data wrapper that owns one engine per
actor; its `__call__` is async, so Ray Data runs several batches through one
actor at once and the engine is never idle while a batch is handed back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import pyarrow as pa

from .answer_constraint import ANSWER_LIST_OPEN
from .engines import ANSWER_STOP, AsyncEngine, Completion, Engine, EngineRequest, SamplingSettings
from .engines.batching import BatchingEngine
from .parse import FALLBACK, OK, REPAIRED, parse_ranking
from .prompt import build_messages
from .schema import PREPARED_COLUMNS, RESULT_COLUMNS, SOURCE_PATH, append_passthrough
from .windows import SlidingWindowRanking, first_stage_order

ERROR = "error"
# Fast mode's status: ranked from first-token scores, not by the reasoning mode.
FAST = "fast"
# A query's status is its worst window's.
_SEVERITY = {OK: 0, FAST: 0, REPAIRED: 1, FALLBACK: 2}
# Fast mode skips the reasoning: an empty think block, then the answer list begins.
FAST_PREFIX = "<think></think><answer>["


@dataclass(frozen=True)
class Cascade:
    """The details-inspection cascade: a cheap first pass over the whole list, then the top again in detail."""

    first_window: int  # candidates per prompt in the first pass (small images)
    first_stride: int
    detail_top: int  # how many of the first pass's best are reranked with the full budget


# Which pass put a candidate at its final position (the output's `decided_by`).
DETAIL, FIRST_PASS, MODEL, FIRST_STAGE, FLAGGED = "detail", "first_pass", "model", "first_stage", "flagged"


@dataclass
class QueryState:
    row: dict[str, Any]
    ranking: SlidingWindowRanking | None = None
    # "single" without a cascade; "first" then "detail" with one.
    stage: str = "single"
    depth: int = 0  # positions reranked at all (top_k)
    tail: list[int] = field(default_factory=list)  # the first pass's order below the detail pass's top
    status: str = OK
    error: str | None = None
    windows: int = 0
    image_tokens: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    forced_answers: int = 0
    reasoning: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.error is None and self.ranking is not None and not self.ranking.done


def _plan(row: dict[str, Any], window: int, stride: int, top_k: int | None, cascade: Cascade | None = None) -> QueryState:
    state = QueryState(row)
    if row.get("error"):
        state.error = row["error"]
        return state
    candidates = row["candidates"]
    order = first_stage_order([candidate["score"] for candidate in candidates])
    usable = [index for index in order if candidate_ok(candidates[index])]
    state.depth = len(usable) if top_k is None else min(top_k, len(usable))
    if cascade is not None and state.depth > cascade.detail_top:
        state.stage = "first"
        state.ranking = SlidingWindowRanking(usable, cascade.first_window, cascade.first_stride, rerank_depth=top_k)
    else:
        state.ranking = SlidingWindowRanking(usable, window, stride, rerank_depth=top_k)
    return state


def _to_detail_pass(state: QueryState, cascade: Cascade, window: int, stride: int) -> None:
    """After the first pass: rerank its top `detail_top` again with the full-budget images."""
    assert state.ranking is not None
    top = state.ranking.order[: cascade.detail_top]
    state.tail = state.ranking.order[cascade.detail_top :]
    state.ranking = SlidingWindowRanking(top, window, stride)
    state.stage = "detail"


def _image_field(state: QueryState) -> str:
    return "first_image" if state.stage == "first" else "image"


def _decided_by(state: QueryState, positions: int, flagged: int) -> list[str]:
    reranked = state.depth if state.windows else 0
    if state.stage == "detail":
        detail = len(state.ranking.order)  # type: ignore[union-attr]
        labels = [DETAIL] * detail + [FIRST_PASS] * (reranked - detail)
    else:
        labels = [MODEL] * reranked
    labels += [FIRST_STAGE] * (positions - flagged - len(labels))
    return labels + [FLAGGED] * flagged


def candidate_ok(candidate: dict[str, Any]) -> bool:
    return candidate["error"] is None


def _request(state: QueryState, window_indices: list[int], sampling: SamplingSettings) -> EngineRequest:
    candidates = state.row["candidates"]
    return EngineRequest(
        messages=build_messages(state.row["query"], len(window_indices)),
        images=tuple(candidates[index][_image_field(state)] for index in window_indices),
        sampling=sampling,
    )


def _result(state: QueryState, model_id: str, run_id: str, keep_reasoning: bool) -> dict[str, Any]:
    row = state.row
    candidates = row["candidates"]
    first_stage = first_stage_order([candidate["score"] for candidate in candidates])
    result: dict[str, Any] = {
        "query_id": row["query_id"],
        "first_stage_doc_ids": [candidates[index]["doc_id"] for index in first_stage],
        "first_stage_scores": [candidates[index]["score"] for index in first_stage],
        "candidate_image_tokens": [candidates[index]["image_tokens"] for index in first_stage],
        "windows": state.windows,
        "image_tokens": state.image_tokens,
        "prompt_tokens": state.prompt_tokens,
        "generated_tokens": state.generated_tokens,
        "forced_answers": state.forced_answers,
        "model": model_id,
        "run_id": run_id,
        SOURCE_PATH: row[SOURCE_PATH],
        "query": row["query"],
        "reasoning": state.reasoning if keep_reasoning else None,
    }
    if state.error is not None:
        return result | {"status": ERROR, "reason": state.error, "doc_ids": None, "scores": None}
    assert state.ranking is not None
    flagged = [index for index in first_stage if not candidate_ok(candidates[index])]
    final = state.ranking.order + state.tail + flagged
    # MM-R5 is listwise and gives no calibrated per-document score: the score
    # is rank-derived, 1.0 for the top and falling evenly, so higher is better.
    scores = [(len(final) - position) / len(final) for position in range(len(final))]
    return result | {
        "status": state.status,
        "reason": None,
        "doc_ids": [candidates[index]["doc_id"] for index in final],
        "scores": scores,
        "flagged_doc_ids": [candidates[index]["doc_id"] for index in flagged],
        "decided_by": _decided_by(state, len(final), len(flagged)),
        "flag_reasons": [candidates[index]["error"] for index in flagged],
    }


def _record(state: QueryState, indices: list[int], completion: Completion) -> None:
    """Fold one window's completion into its query: counts, reasoning, status, new order."""
    state.windows += 1
    tokens = "first_image_tokens" if state.stage == "first" else "image_tokens"
    state.image_tokens += sum(state.row["candidates"][index][tokens] or 0 for index in indices)
    state.prompt_tokens += completion.prompt_tokens
    state.generated_tokens += completion.generated_tokens
    state.reasoning.append(completion.text)
    if completion.error is not None:
        state.error = f"window {state.windows}: {completion.error}"
        return
    if completion.id_scores is not None:
        # Highest first-token score first; ties keep the current order.
        state.status = FAST
        state.ranking.apply(sorted(range(len(indices)), key=lambda position: -completion.id_scores[position]))  # type: ignore[union-attr, index]
        return
    parsed = parse_ranking(completion.text, len(indices))
    if _SEVERITY[parsed.status] > _SEVERITY[state.status]:
        state.status = parsed.status
    state.ranking.apply(parsed.order)  # type: ignore[union-attr]


def forced_prefix(text: str, restart_answer: bool = False) -> str | None:
    """What to append to a cut-off output so the model must answer next; None when it already answered.

    An answer already begun is left to finish, or, with `restart_answer` (the
    answer constraint, which starts from an empty list), started over.
    """
    if ANSWER_STOP in text:
        return None
    if "<answer>" in text:
        if not restart_answer:
            return text  # the answer began: let it finish
        return text[: text.rfind("<answer>")] + ANSWER_LIST_OPEN
    closing = "" if "</think>" in text else "</think>"
    return f"{text}{closing}{ANSWER_LIST_OPEN}"


def answer_tokens(window: int) -> int:
    """Tokens a forced answer may take: a bracketed list of `window` ids and the closing tag, with room."""
    return max(32, 4 * window + 16)


async def _window(
    state: QueryState,
    indices: list[int],
    engine: AsyncEngine,
    sampling: SamplingSettings,
    think_tokens: int | None,
    mode: str,
    constrain_answer: bool = False,
) -> Completion:
    """One window's completion; with a thinking budget, a cut-off reasoning gets a forced answer (optionally constrained)."""
    if mode == FAST:
        request = replace(_request(state, indices, sampling), assistant_prefix=FAST_PREFIX, score_ids=len(indices))
        return await engine.generate_async(request)
    if think_tokens is None:
        return await engine.generate_async(_request(state, indices, sampling))
    cap = min(think_tokens, sampling.max_new_tokens)
    first = await engine.generate_async(
        _request(state, indices, replace(sampling, max_new_tokens=cap, min_new_tokens=min(cap, sampling.min_new_tokens)))
    )
    prefix = forced_prefix(first.text, constrain_answer) if first.error is None and first.finish_reason == "length" else None
    if prefix is None:
        return first
    # The prompt grows by the reasoning so far; vLLM's prefix cache keeps the prefill of the part it has seen.
    request = replace(
        _request(state, indices, replace(sampling, max_new_tokens=answer_tokens(len(indices)), min_new_tokens=0)),
        assistant_prefix=prefix,
        constrain_answer=len(indices) if constrain_answer else 0,
    )
    second = await engine.generate_async(request)
    state.forced_answers += 1
    return Completion(
        text=prefix + second.text,
        finish_reason=second.finish_reason,
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        image_tokens=first.image_tokens,
        generated_tokens=first.generated_tokens + second.generated_tokens,
        error=second.error,
    )


async def _rank_one(
    state: QueryState,
    engine: AsyncEngine,
    sampling: SamplingSettings,
    think_tokens: int | None,
    mode: str,
    detail: Any,
    constrain_answer: bool = False,
) -> None:
    # Each query walks its own windows: its next window goes to the engine as
    # soon as its previous answer is back, not when the slowest query of the
    # batch finishes its window.
    while True:
        while state.active:
            indices = state.ranking.current_window()  # type: ignore[union-attr]
            completion = await _window(state, indices, engine, sampling, think_tokens, mode, constrain_answer)
            _record(state, indices, completion)
        if state.stage != "first" or state.error is not None:
            return
        detail(state)


async def rerank_queries_async(
    rows: Sequence[dict[str, Any]],
    engine: AsyncEngine,
    *,
    window: int,
    stride: int,
    top_k: int | None,
    sampling: SamplingSettings,
    model_id: str,
    run_id: str,
    keep_reasoning: bool = False,
    think_tokens: int | None = None,
    constrain_answer: bool = False,
    mode: str = "reasoning",
    cascade: Cascade | None = None,
) -> list[dict[str, Any]]:
    """Rerank prepared rows; one result row per input row, in order (see schema.RESULT_COLUMNS).

    `mode` "fast" ranks each window from one forward pass (first-token scores of the ids) instead of reasoning.
    With `think_tokens`, reasoning cut at that budget gets a forced answer; `constrain_answer` limits that
    answer to a permutation of the window's ids (answer_constraint.py).
    With a `cascade`, a first pass over small images (`first_image`) precedes a detail pass over its top.
    """
    states = [_plan(dict(row), window, stride, top_k, cascade) for row in rows]

    def detail(state: QueryState) -> None:
        _to_detail_pass(state, cascade, window, stride)  # type: ignore[arg-type]

    await asyncio.gather(*(_rank_one(state, engine, sampling, think_tokens, mode, detail, constrain_answer) for state in states))
    return [_result(state, model_id, run_id, keep_reasoning) for state in states]


def rerank_queries(rows: Sequence[dict[str, Any]], engine: Engine, **settings: Any) -> list[dict[str, Any]]:
    """`rerank_queries_async` over a batch engine, outside any event loop: each round's windows share one call."""
    return asyncio.run(rerank_queries_async(rows, BatchingEngine(engine), **settings))


def cascade_from_config(config: Any) -> Cascade | None:
    settings = config.cascade
    if not settings.enabled:
        return None
    return Cascade(settings.first_window, settings.first_stride, settings.detail_top)


class RerankActor:
    """Ray Data callable class: one engine per actor, prepared rows in, result rows out."""

    def __init__(self, config_json: str) -> None:
        from .config import JobConfig
        from .engines import create_async_engine, sampling_from_config

        self.config = JobConfig.model_validate_json(config_json)
        self.engine = create_async_engine(self.config)
        self.sampling = sampling_from_config(self.config.model)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        own = set(PREPARED_COLUMNS.names)
        rows = batch.select([name for name in batch.column_names if name in own]).to_pylist()
        ranking = self.config.ranking
        results = await rerank_queries_async(
            rows,
            self.engine,
            window=ranking.window,
            stride=ranking.stride,
            top_k=ranking.top_k,
            sampling=self.sampling,
            model_id=self.config.model.name,
            run_id=self.config.run_id or "",
            keep_reasoning=ranking.keep_reasoning,
            think_tokens=self.config.model.think_tokens,
            constrain_answer=self.config.model.constrain_answer,
            mode=ranking.mode,
            cascade=cascade_from_config(self.config),
        )
        return append_passthrough(pa.Table.from_pylist(results, schema=RESULT_COLUMNS), batch, own)
