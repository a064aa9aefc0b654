"""The async window scheduler: every query walks its own windows, all of them sharing one engine.

`rerank_queries_async` is plain Python over an `AsyncEngine`, tested without
Ray: every query gets a window plan and walks it on its own, each answer
parsed, repaired and applied before its next window is sent. Many windows are
in flight at once; a batch engine gets all windows that are ready together
(`BatchingEngine`), vLLM's async engine takes each as it comes and keeps
decoding. The Ray actor, the Python API and the benchmarks all call it.

Under the pointwise protocol a query sends all its pairs at once and is done
when they are judged; `score_queries_async` is the two-model cascade's first
stage: the scorer's judgements written onto the prepared rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mmr5_batch.core.batching import BatchingEngine
from mmr5_batch.core.engine_protocol import AsyncEngine, Completion, Engine, EngineRequest, RequestObserver, SamplingSettings
from mmr5_batch.core.families import MM_R5_FAMILY, PROTOCOL_DEFAULT, Family, family_named
from mmr5_batch.core.model_inputs import candidate_patches
from mmr5_batch.core.pointwise import pointwise_request
from mmr5_batch.core.pointwise_prompt import DEFAULT_INSTRUCTION
from mmr5_batch.core.ranking import SCORING, Cascade, QueryState, WindowPlan, next_pass, plan_query, record, record_relevance, result_row, scored_row
from mmr5_batch.core.rows import MAIN_PICTURES, PreparedRow, ResultRow
from mmr5_batch.core.vocabulary import ANSWER_LIST_OPEN, ANSWER_OPEN, ANSWER_STOP, FAST, FAST_PREFIX, FORCED_ANSWER, MM_R5, POINTWISE, THINK_CLOSE

__all__ = ["Cascade", "RankingSettings", "answer_tokens", "forced_prefix", "rerank_queries", "rerank_queries_async", "score_queries_async"]


@dataclass(frozen=True)
class RankingSettings:
    """Everything about how windows are asked and answered, beside the rows themselves."""

    window: int
    stride: int
    sampling: SamplingSettings
    model_id: str
    run_id: str = ""
    backend: str = ""
    top_k: int | None = None
    keep_reasoning: bool = False
    # Reasoning cut at this many tokens gets a forced answer; None: only max_new_tokens caps it.
    think_tokens: int | None = None
    # A forced answer may only be a permutation of the window's ids (answer_constraint.py).
    constrain_answer: bool = False
    # "fast" ranks each window from one forward pass (first-token scores of the ids).
    mode: str = "reasoning"
    cascade: Cascade | None = None
    # "mm-r5" (listwise reasoning windows) or "pointwise" (each pair judged alone, order by P(yes)).
    protocol: str = MM_R5
    instruction: str = DEFAULT_INSTRUCTION  # the pointwise protocol's task instruction
    # Which family speaks the protocol (core/families.py): its prompts, whether it sees pictures, how a window is
    # read. Empty: the protocol's default family.
    family: str = ""
    # The two-model cascade: the candidates arrive scored; MM-R5 reranks this many of the best.
    after_scorer: int | None = None
    # The engine decodes and processes the pictures it gets without their patches (hf, vLLM; not the scripted one).
    engine_reads_pixels: bool = False
    # The two-model cascade's scorer ranks windows (ZipRerank) over the first-pass pictures; its order becomes the
    # candidates' relevance. And the label of the positions the scorer decided in the rerank stage.
    scorer_windows: bool = False
    scorer_label: str = POINTWISE
    # The picture pass whose pictures this stage's windows or pairs show (`PreparedCandidate.pictures`; a same-model
    # cascade's first pass shows `cascade.first_picture`'s).
    picture: int = MAIN_PICTURES

    @property
    def family_record(self) -> Family:
        return family_named(self.family) if self.family else PROTOCOL_DEFAULT[self.protocol]

    @property
    def plan(self) -> WindowPlan:
        family = self.family_record
        return WindowPlan(
            self.window,
            self.stride,
            self.top_k,
            self.cascade,
            pointwise=self.protocol == POINTWISE,
            after_scorer=self.after_scorer,
            label=family.decided_by,
            count_scores=family.rank_scores == "count",
            full_last_window=family.full_last_window,
            scorer_windows=self.scorer_windows,
            scorer_label=self.scorer_label,
            picture=self.picture,
        )


def forced_prefix(text: str, restart_answer: bool = False) -> str | None:
    """What to append to a cut-off output so the model must answer next; None when it already answered.

    An answer already begun is left to finish, or, with `restart_answer` (the
    answer constraint, which starts from an empty list), started over.
    """
    if ANSWER_STOP in text:
        return None
    if ANSWER_OPEN in text:
        if not restart_answer:
            return text  # the answer began: let it finish
        return text[: text.rfind(ANSWER_OPEN)] + ANSWER_LIST_OPEN
    return text + (ANSWER_LIST_OPEN if THINK_CLOSE in text else FORCED_ANSWER)


def answer_tokens(window: int) -> int:
    """Tokens a forced answer may take: a bracketed list of `window` ids and the closing tag, with room."""
    return max(32, 4 * window + 16)


async def _send(state: QueryState, engine: AsyncEngine, request: EngineRequest, settings: RankingSettings) -> Completion:
    """One request to the engine, its pictures counted as sent (and, where the engine builds their inputs, as decoded
    and processed there)."""
    state.pages_sent += len(request.images)
    if settings.engine_reads_pixels and not request.image_inputs:
        state.pages_decoded += len(request.images)
        state.pages_processed += len(request.images)
    observer = state.observer
    if observer is None:
        return await engine.generate_async(request)
    started = observer.request_started()
    try:
        return await engine.generate_async(request)
    finally:
        observer.request_done(started)


def _request(state: QueryState, window_indices: list[int], sampling: SamplingSettings, family: Family = MM_R5_FAMILY) -> EngineRequest:
    """One window's request in `family`'s messages (MM-R5's, ZipRerank's); a family ranked by its labels' scores gets
    its answer's opening and the labels to score instead of a generation."""
    candidates = state.candidates
    patches = [candidate_patches(candidates[index], state.picture) for index in window_indices]
    assert family.window_messages is not None
    labels = family.score_labels(len(window_indices)) if family.score_labels is not None else ()
    return EngineRequest(
        messages=family.window_messages(state.row.query or "", len(window_indices)),
        assistant_prefix=family.answer_prefix,
        score_labels=labels,
        images=tuple(candidates[index].picture(state.picture) for index in window_indices),  # type: ignore[misc]  # usable: pictured
        sampling=sampling,
        image_inputs=tuple(patches) if all(patches) else (),  # type: ignore[arg-type]
    )


async def _window(state: QueryState, indices: list[int], engine: AsyncEngine, settings: RankingSettings) -> Completion:
    """One window's completion; with a thinking budget, a cut-off reasoning gets a forced answer (optionally constrained)."""
    sampling = settings.sampling
    family = settings.family_record
    if family.score_labels is not None:  # ZipRerank: the letters' scores after "[", one forward pass
        return await _send(state, engine, _request(state, indices, replace(sampling, max_new_tokens=1, min_new_tokens=0), family), settings)
    if settings.mode == FAST:
        labels = tuple(str(position) for position in range(1, len(indices) + 1))
        request = replace(_request(state, indices, sampling), assistant_prefix=FAST_PREFIX, score_labels=labels)
        return await _send(state, engine, request, settings)
    if settings.think_tokens is None:
        return await _send(state, engine, _request(state, indices, sampling), settings)
    cap = min(settings.think_tokens, sampling.max_new_tokens)
    first = await _send(
        state, engine, _request(state, indices, replace(sampling, max_new_tokens=cap, min_new_tokens=min(cap, sampling.min_new_tokens))), settings
    )
    prefix = forced_prefix(first.text, settings.constrain_answer) if first.error is None and first.finish_reason == "length" else None
    if prefix is None:
        return first
    # The prompt grows by the reasoning so far; vLLM's prefix cache keeps the prefill of the part it has seen.
    request = replace(
        _request(state, indices, replace(sampling, max_new_tokens=answer_tokens(len(indices)), min_new_tokens=0)),
        assistant_prefix=prefix,
        constrain_answer=len(indices) if settings.constrain_answer else 0,
    )
    second = await _send(state, engine, request, settings)
    state.forced_answers += 1
    return Completion(
        text=prefix + second.text,
        finish_reason=second.finish_reason,
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        image_tokens=first.image_tokens,
        generated_tokens=first.generated_tokens + second.generated_tokens,
        error=second.error,
    )


async def _score(state: QueryState, engine: AsyncEngine, settings: RankingSettings) -> None:
    """The pointwise protocol over one query: all its pairs at once (a batch engine takes them in one call)."""
    candidates, family = state.candidates, settings.family_record
    # A text model cannot judge a page without text: as the two-model cascade's scorer it leaves it unjudged (after
    # the judged ones, in first-stage order); as the main model the CPU stage flagged it already.
    indices = [index for index in state.to_score if family.reads_pictures or candidates[index].text]
    requests = [pointwise_request(state.row.query or "", candidates[index], settings.instruction, state.picture, family=family) for index in indices]
    completions = await asyncio.gather(*(_send(state, engine, request, settings) for request in requests))
    record_relevance(state, indices, list(completions))


async def _rank_one(state: QueryState, engine: AsyncEngine, settings: RankingSettings) -> None:
    # Each query walks its own windows: its next window goes to the engine as
    # soon as its previous answer is back, not when the slowest query of the
    # batch finishes its window. A request the engine rejects comes back as an error completion and becomes this
    # query's dead letter (`record`); an exception, from the engine or from this code, is no data problem: it fails
    # the batch, so Ray retries it and the job stops with the error if it persists.
    if state.error is not None:
        return
    started = time.monotonic()
    try:
        await _walk(state, engine, settings)
    finally:
        if state.observer is not None:
            state.observer.query_done(time.monotonic() - started)


async def _walk(state: QueryState, engine: AsyncEngine, settings: RankingSettings) -> None:
    if state.stage == SCORING:
        await _score(state, engine, settings)
        return
    while True:
        while state.active:
            assert state.ranking is not None
            indices = state.ranking.current_window()
            completion = await _window(state, indices, engine, settings)
            if completion.error is not None and len(indices) > 1 and await _set_aside_refused(state, indices, engine, settings):
                continue  # the window again, without the candidates the engine refuses even alone
            record(state, indices, completion)
        if not next_pass(state, settings.plan):
            return


async def _set_aside_refused(state: QueryState, indices: list[int], engine: AsyncEngine, settings: RankingSettings) -> bool:
    """After the engine refused a window: which of its candidates it refuses even alone (a picture it will not take,
    one too large for the context). Those are flagged with the engine's reason and taken out of the ranking, so the
    query goes on without them; False when none (or all) are, and the refusal stays the window's."""
    probe = replace(settings.sampling, max_new_tokens=1, min_new_tokens=0)
    completions = await asyncio.gather(*(_send(state, engine, _request(state, [index], probe, settings.family_record), settings) for index in indices))
    refused = {index: completion.error for index, completion in zip(indices, completions) if completion.error is not None}
    if not refused or len(refused) == len(indices):
        return False
    assert state.ranking is not None
    for index, reason in refused.items():
        state.candidates[index] = state.candidates[index].flagged(reason)
    state.ranking.set_aside(list(refused))
    state.depth -= len(refused)
    return True


async def rerank_queries_async(
    rows: Sequence[PreparedRow | Mapping[str, Any]],
    engine: AsyncEngine,
    settings: RankingSettings | None = None,
    *,
    observer: RequestObserver | None = None,
    **fields: Any,
) -> list[ResultRow]:
    """Rerank prepared rows (`PreparedRow`s, or Arrow rows of them); one `ResultRow` per input row, in order.

    The settings come as a `RankingSettings` or as its fields (`window=5, stride=3, ...`); `observer` watches every
    engine request and query (the actor's metrics).
    """
    settings = settings or RankingSettings(**fields)
    states = [replace(plan_query(row, settings.plan), observer=observer) for row in rows]
    await asyncio.gather(*(_rank_one(state, engine, settings) for state in states))
    return [result_row(state, settings.model_id, settings.run_id, settings.keep_reasoning, settings.backend) for state in states]


async def score_queries_async(
    rows: Sequence[PreparedRow | Mapping[str, Any]], engine: AsyncEngine, settings: RankingSettings, *, observer: RequestObserver | None = None
) -> list[PreparedRow]:
    """The two-model cascade's first stage: prepared rows in, the same rows out with each candidate's `relevance`
    (P(yes) from the pointwise scorer, judged on its first-pass image) and the scorer's counts; a query the scorer
    could not judge carries the reason as its `error`."""
    states = [replace(plan_query(row, settings.plan), observer=observer) for row in rows]
    await asyncio.gather(*(_rank_one(state, engine, settings) for state in states))
    return [scored_row(state) for state in states]


def rerank_queries(rows: Sequence[PreparedRow | Mapping[str, Any]], engine: Engine, settings: RankingSettings | None = None, **fields: Any) -> list[ResultRow]:
    """`rerank_queries_async` over a batch engine, outside any event loop: each round's windows share one call."""
    return asyncio.run(rerank_queries_async(rows, BatchingEngine(engine), settings, **fields))
