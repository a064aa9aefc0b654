"""One query's reranking state: its window plan, the answers folded in, and its result row.

Plain functions over a `QueryState`; the async scheduler (scheduler.py)
decides when windows run, this module what each answer changes. A query
starts from its prepared row (`rows.PreparedRow`): candidates without a
usable image are left out of the windows and flagged at the end; with a
cascade, a first pass over small images precedes a detail pass over its top.
With the pointwise protocol a query has no windows: every candidate is
judged alone and the order is by P(yes). In the two-model cascade the
candidates arrive scored by the pointwise scorer (their `relevance`), and
MM-R5's windows run over the scorer's best `detail_top` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmr5_batch.core.engine_protocol import Completion, RequestObserver
from mmr5_batch.core.parsing import parse_ranking
from mmr5_batch.core.pointwise import relevance_order
from mmr5_batch.core.rows import FIRST_PASS_PICTURES, MAIN_PICTURES, PreparedCandidate, PreparedRow, ResultRow
from mmr5_batch.core.vocabulary import DETAIL, ERROR, FAST, FIRST_PASS, FIRST_STAGE, FLAGGED, MODEL, OK, POINTWISE, SEVERITY
from mmr5_batch.core.windows import SlidingWindowRanking, first_stage_order

# A query's pass: "single" without a cascade; "first" then "detail" with one; "scoring" under the pointwise protocol.
SINGLE, FIRST, DETAIL_PASS, SCORING = "single", "first", "detail", "scoring"


@dataclass(frozen=True)
class Cascade:
    """The details-inspection cascade: a cheap first pass over the whole list, then the top again in detail."""

    first_window: int  # candidates per prompt in the first pass (small images)
    first_stride: int
    detail_top: int  # how many of the first pass's best are reranked with the full budget
    first_picture: int = FIRST_PASS_PICTURES  # the picture pass whose (small) pictures the first pass shows (PreparedCandidate.pictures)


@dataclass(frozen=True)
class WindowPlan:
    """How a query's windows are laid out: the model's window and stride, the depth, the cascade."""

    window: int
    stride: int
    top_k: int | None = None
    cascade: Cascade | None = None
    pointwise: bool = False  # the pointwise protocol: each candidate judged alone, no windows
    after_scorer: int | None = None  # the two-model cascade: MM-R5 over this many of the scorer's best
    # The family's `decided_by` label for its windows' positions, and whether its scores count n..1 (ZipRerank's).
    label: str = MODEL
    count_scores: bool = False
    full_last_window: bool = True  # the last window full size (MM-R5 here) or what is left (ZipRerank's reference)
    scorer_windows: bool = False  # the two-model cascade's scorer ranks windows over the first-pass pictures (ZipRerank)
    scorer_label: str = POINTWISE  # `decided_by` of the positions the two-model cascade's scorer decided
    picture: int = MAIN_PICTURES  # the picture pass whose pictures its windows or pairs show (the cascade's first pass: its own)


@dataclass
class QueryState:
    row: PreparedRow
    ranking: SlidingWindowRanking | None = None
    stage: str = SINGLE
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
    scored: int = 0  # candidates a pointwise model judged
    to_score: list[int] = field(default_factory=list)  # the pointwise protocol's candidates still to judge
    relevance: dict[int, float] | None = None  # the pointwise protocol's P(yes) per candidate index
    scorer_depth: int = 0  # the two-model cascade: candidates its scorer ranked
    # Pictures sent to engines; source pages decoded and pictures processed into patches (CPU stage and engines).
    pages_sent: int = 0
    pages_decoded: int = 0
    pages_processed: int = 0
    observer: RequestObserver | None = None  # who watches its requests (the actor's metrics)
    plan: WindowPlan = field(default_factory=lambda: WindowPlan(2, 1))  # how it is ranked: its labels and scores too

    @property
    def active(self) -> bool:
        return self.error is None and self.ranking is not None and not self.ranking.done

    @property
    def picture(self) -> int:
        """The picture pass whose pictures the current pass shows (`PreparedCandidate.pictures`)."""
        cascade = self.plan.cascade
        return cascade.first_picture if self.stage == FIRST and cascade is not None else self.plan.picture

    @property
    def candidates(self) -> list[PreparedCandidate]:
        return self.row.candidates or []

    def fail(self, reason: str) -> None:
        self.error = reason


def plan_query(row: PreparedRow | Mapping[str, Any], plan: WindowPlan) -> QueryState:
    """The starting state of one prepared row: no windows at all when the row carries an error."""
    # The state's own list of candidates: one the engine refuses is flagged in it, never in the caller's row.
    row = PreparedRow.of(row)
    row = dataclasses.replace(row, candidates=list(row.candidates or []))
    state = QueryState(
        row,
        pages_sent=row.pages_sent or 0,
        pages_decoded=row.pages_decoded or 0,
        pages_processed=row.pages_processed or 0,
        plan=plan,
    )
    if row.error:
        state.error = row.error
        return state
    candidates = state.candidates
    order = first_stage_order([candidate.score for candidate in candidates])
    usable = [index for index in order if candidates[index].usable]
    state.depth = len(usable) if plan.top_k is None else min(plan.top_k, len(usable))
    # What the two-model cascade's scorer spent before this stage.
    state.scored = row.scored or 0
    state.prompt_tokens = row.scorer_prompt_tokens or 0
    state.image_tokens = row.scorer_image_tokens or 0
    if plan.pointwise:
        state.stage = SCORING
        state.to_score, state.tail = usable[: state.depth], usable[state.depth :]
        return state
    if plan.after_scorer is not None:
        relevance = {index: score for index in usable if (score := candidates[index].relevance) is not None}
        ordered = relevance_order(list(relevance), relevance) + [index for index in usable if index not in relevance]
        state.scorer_depth = len(relevance)
        state.stage = DETAIL_PASS
        state.tail = ordered[plan.after_scorer :]
        state.ranking = SlidingWindowRanking(ordered[: plan.after_scorer], plan.window, plan.stride)
        return state
    if plan.scorer_windows:
        # The two-model cascade's listwise scorer (ZipRerank): its windows over the first-pass pictures, no pass after.
        state.stage = FIRST
        state.ranking = SlidingWindowRanking(usable, plan.window, plan.stride, rerank_depth=plan.top_k, full_last=plan.full_last_window)
        return state
    cascade = plan.cascade
    if cascade is not None and state.depth > cascade.detail_top:
        state.stage = FIRST
        state.ranking = SlidingWindowRanking(usable, cascade.first_window, cascade.first_stride, rerank_depth=plan.top_k)
    else:
        state.ranking = SlidingWindowRanking(usable, plan.window, plan.stride, rerank_depth=plan.top_k, full_last=plan.full_last_window)
    return state


def next_pass(state: QueryState, plan: WindowPlan) -> bool:
    """After the cascade's first pass: rerank its top `detail_top` again with the full-budget images. False when done."""
    if state.stage != FIRST or state.error is not None or plan.cascade is None or state.ranking is None:
        return False
    top = state.ranking.order[: plan.cascade.detail_top]
    state.tail = state.ranking.order[plan.cascade.detail_top :]
    state.ranking = SlidingWindowRanking(top, plan.window, plan.stride)
    state.stage = DETAIL_PASS
    return True


def record(state: QueryState, indices: list[int], completion: Completion) -> None:
    """Fold one window's completion into its query: counts, reasoning, status, new order (by the labels' scores for
    fast mode and for a family ranked by them, ZipRerank, whose label is then the status)."""
    assert state.ranking is not None
    state.windows += 1
    state.image_tokens += sum(state.candidates[index].picture_tokens(state.picture) for index in indices)
    state.prompt_tokens += completion.prompt_tokens
    state.generated_tokens += completion.generated_tokens
    state.reasoning.append(completion.text)
    if completion.error is not None:
        state.error = f"window {state.windows}: {completion.error}"
        return
    if completion.id_scores is not None:
        # Highest first-token score first; ties keep the current order.
        scores = completion.id_scores
        state.status = FAST if state.plan.label == MODEL else state.plan.label
        state.ranking.apply(sorted(range(len(indices)), key=lambda position: -scores[position]))
        return
    parsed = parse_ranking(completion.text, len(indices))
    if SEVERITY[parsed.status] > SEVERITY[state.status]:
        state.status = parsed.status
    state.ranking.apply(parsed.order)


def record_relevance(state: QueryState, indices: list[int], completions: list[Completion]) -> None:
    """Fold a query's pointwise judgements in: counts, then its order by P(yes) (or the first refusal as its error)."""
    candidates = state.candidates
    state.scored += len(indices)
    state.image_tokens += sum(candidates[index].picture_tokens(state.picture) for index in indices)
    state.prompt_tokens += sum(completion.prompt_tokens for completion in completions)
    relevance: dict[int, float] = {}
    for index, completion in zip(indices, completions, strict=True):
        if completion.error is not None:
            # The engine refused this pair alone (too long, a picture it will not take): that candidate is flagged
            # with the reason, ranked last, and the query is ranked over the rest.
            candidates[index] = candidates[index].flagged(completion.error)
        elif completion.relevance is None:
            raise ValueError(f"the engine's completion for {candidates[index].doc_id} carries no relevance")
        else:
            relevance[index] = float(completion.relevance)
    if not relevance and indices:
        state.error = f"pointwise scoring: every pair was refused ({candidates[indices[0]].doc_id}: {candidates[indices[0]].error})"
        return
    state.relevance = relevance
    state.status = POINTWISE
    state.ranking = SlidingWindowRanking.settled(relevance_order(list(relevance), relevance))


def scored_row(state: QueryState) -> PreparedRow:
    """The two-model cascade's scorer stage: the prepared row with each candidate's `relevance` and the scorer's counts
    (or, when scoring failed, the reason on the row, which the rerank stage turns into a dead letter)."""
    row = state.row
    relevance = state.relevance or {}
    scored = state.scored
    if state.relevance is None and state.ranking is not None and state.error is None and state.windows:
        # A listwise scorer (ZipRerank): the order of what its windows ranked, as its rank-derived scores (n for its
        # best, down to 1); below --top-k it judged nothing.
        order = state.ranking.order[: state.depth]
        relevance = {index: float(len(order) - position) for position, index in enumerate(order)}
        scored = len(order)
    return dataclasses.replace(
        row,
        error=row.error or (f"scorer: {state.error}" if state.error is not None else None),
        candidates=[dataclasses.replace(candidate, relevance=relevance.get(index)) for index, candidate in enumerate(state.candidates)],
        scored=scored,
        scorer_prompt_tokens=state.prompt_tokens,
        scorer_image_tokens=state.image_tokens,
        pages_sent=state.pages_sent,
        pages_decoded=state.pages_decoded,
        pages_processed=state.pages_processed,
    )


def _decided_by(state: QueryState, positions: int, flagged: int) -> list[str]:
    reranked = state.depth if state.windows else 0
    if state.stage == SCORING and state.ranking is not None:
        # A pointwise family's judgements: 'pointwise' for the yes/no families, the family's own name otherwise.
        labels = [POINTWISE if state.plan.label == MODEL else state.plan.label] * len(state.ranking.order)
    elif state.scorer_depth and state.ranking is not None:
        detail = len(state.ranking.order) if state.windows else 0
        labels = [DETAIL] * detail + [state.plan.scorer_label] * max(0, state.scorer_depth - detail)
    elif state.stage == DETAIL_PASS and state.ranking is not None:
        detail = len(state.ranking.order)
        labels = [DETAIL] * detail + [FIRST_PASS] * (reranked - detail)
    else:
        labels = [state.plan.label] * reranked
    labels += [FIRST_STAGE] * (positions - flagged - len(labels))
    return labels + [FLAGGED] * flagged


def result_row(state: QueryState, model_id: str, run_id: str, keep_reasoning: bool, backend: str = "") -> ResultRow:
    """The query's result: its final order, or an error with the reason (a dead letter)."""
    row = state.row
    candidates = state.candidates
    first_stage = first_stage_order([candidate.score for candidate in candidates])
    result = ResultRow(
        query_id=row.query_id,
        first_stage_doc_ids=[candidates[index].doc_id for index in first_stage],
        first_stage_scores=[candidates[index].score for index in first_stage],
        candidate_image_tokens=[candidates[index].picture_tokens(state.plan.picture) for index in first_stage],
        windows=state.windows,
        scored=state.scored,
        image_tokens=state.image_tokens,
        prompt_tokens=state.prompt_tokens,
        generated_tokens=state.generated_tokens,
        forced_answers=state.forced_answers,
        pages_sent=state.pages_sent,
        pages_decoded=state.pages_decoded,
        pages_processed=state.pages_processed,
        model=model_id,
        backend=backend or None,
        run_id=run_id,
        source_path=row.source_path,
        query=row.query,
        reasoning=state.reasoning if keep_reasoning else None,
    )
    if state.error is not None or state.ranking is None:
        return dataclasses.replace(result, status=ERROR, reason=state.error or "not ranked")
    flagged = [index for index in first_stage if not candidates[index].usable]
    # A candidate the engine refused mid-run is flagged: it leaves the ranked part for the flagged tail.
    final = [index for index in state.ranking.order + state.tail if candidates[index].usable] + flagged
    # MM-R5 is listwise and gives no calibrated per-document score: the score
    # is rank-derived, 1.0 for the top and falling evenly, so higher is better.
    # The pointwise protocol's is the model's P(yes) (null for what it did not judge).
    if state.relevance is not None:
        scores: list[float | None] = [state.relevance.get(index) for index in final]
    elif state.plan.count_scores:
        # ZipRerank's reference reports n - rank: n for the top, 1 for the last.
        scores = [float(len(final) - position) for position in range(len(final))]
    else:
        scores = [(len(final) - position) / len(final) for position in range(len(final))]
    return dataclasses.replace(
        result,
        status=state.status,
        doc_ids=[candidates[index].doc_id for index in final],
        scores=scores,
        flagged_doc_ids=[candidates[index].doc_id for index in flagged],
        decided_by=_decided_by(state, len(final), len(flagged)),
        flag_reasons=[candidates[index].error for index in flagged],
    )
