"""MM-R5 (or a pointwise reranker) in process, no Ray: one engine, one query or many, the job's code path.

    from mmr5_batch import Reranker

    with Reranker("i2vec/MM-R5", backend="vllm") as reranker:
        order = reranker.rerank("Which page shows the revenue table?", ["p1.png", "p2.png", "p3.png"])

`rerank(query, images)` takes the arguments MM-R5's own `QueryReranker.rerank`
takes and returns the same thing, the 0-based order of the images, so it is
a drop-in replacement; like MM-R5's script it raises when a page cannot be
read (`PageUnreadable`, naming the page and why), unless asked to rank such
pages last (`unreadable="last"`). `rank` returns the full `RankedResult`; `rank_many`
ranks many queries at once through the same async window scheduler as the
Ray actors (all their windows share the engine). Preparation, prompt,
budgets, windows, cascade, thinking budget, fast mode and parsing are the
job's own (core/), not a copy. With `protocol="pointwise"` (or a Qwen3-VL
reranker checkpoint) each candidate is judged alone and `scores` are its
P(yes); with the two-model cascade (`cascade=True, **{"cascade.first_pass":
"pointwise", "scorer.name": ...}`) a second engine, the scorer, runs first.

The engine runs on an event loop in a thread of its own, so the calls work
the same in a script and in a notebook (which runs a loop of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from mmr5_batch.api.inputs import candidate_rows
from mmr5_batch.config import RerankerConfig, config_from_keywords
from mmr5_batch.config.run import RERANK_STAGE, SCORE_STAGE, ModelRun, resolve_run
from mmr5_batch.core.engine_protocol import AsyncEngine
from mmr5_batch.core.preparation import prepare_row
from mmr5_batch.core.rows import PreparedCandidate, PreparedRow, ResultRow
from mmr5_batch.core.vocabulary import ERROR
from mmr5_batch.engines import create_async_engine
from mmr5_batch.engines.image_processors import page_work
from mmr5_batch.errors import PageUnreadable, QueryFailed
from mmr5_batch.storage.filesystems import Storage

Result = TypeVar("Result")
# A query for `rank_many`: (query, candidates), or a dict with query, candidates and optionally query_id.
QueryInput = Any


@dataclass(frozen=True)
class RankedResult:
    """One query's ranking, as the job's result row holds it (`rows.ResultRow`), plus positions in the input."""

    query_id: str
    status: str  # vocabulary.STATUSES
    doc_ids: list[str]  # best first; flagged candidates last
    order: list[int]  # the same as 0-based positions in the candidates given
    scores: list[float | None]  # MM-R5: rank-derived, 1.0 for the top; pointwise: P(yes) (None: not judged)
    decided_by: list[str]  # per position: vocabulary.DECIDED_BY
    flagged: dict[str, str]  # doc_id -> why it had no usable image
    reason: str | None  # why the query failed (status error)
    reasoning: list[str] | None  # the model's output per window, when asked for
    windows: int
    scored: int  # candidates a pointwise model judged
    image_tokens: int
    prompt_tokens: int
    generated_tokens: int
    forced_answers: int

    @classmethod
    def from_result_row(cls, row: ResultRow, given: Sequence[str]) -> RankedResult:
        position = {doc_id: index for index, doc_id in enumerate(given)}
        doc_ids = [str(doc_id) for doc_id in row.doc_ids or []]
        return cls(
            query_id=row.query_id or "",
            status=row.status or "",
            doc_ids=doc_ids,
            order=[position[doc_id] for doc_id in doc_ids],
            scores=list(row.scores or []),
            decided_by=list(row.decided_by or []),
            flagged={str(doc_id): str(reason) for doc_id, reason in zip(row.flagged_doc_ids or [], row.flag_reasons or [])},
            reason=row.reason,
            reasoning=row.reasoning,
            windows=row.windows or 0,
            scored=row.scored or 0,
            image_tokens=row.image_tokens or 0,
            prompt_tokens=row.prompt_tokens or 0,
            generated_tokens=row.generated_tokens or 0,
            forced_answers=row.forced_answers or 0,
        )


class Reranker:
    """One engine, held until `close()` (or the end of a `with` block)."""

    def __init__(
        self,
        model: str | None = None,
        backend: str | None = None,
        device: str | None = None,
        *,
        config: RerankerConfig | Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        """`model`: a model id or checkpoint directory (default i2vec/MM-R5); `backend`: hf (default), vllm or
        scripted-test; `device`: auto, cpu or cuda. `settings`: any config field by name (`window=5`,
        `image_tokens=512`, `think_tokens=256`, `mode="fast"`, `cascade=True`, ...), over `config`."""
        given = {"model.name": model, "model.backend": backend, "model.device": device}
        self.run = resolve_run(config_from_keywords(RerankerConfig, config, **{name: value for name, value in given.items() if value is not None}, **settings))
        self.config = self.run.config
        self.storage = Storage(self.config.storage.s3_options())
        self._prepare = self.run.prepare
        # The run's model stages (the two-model cascade's scorer, then the main model): the list the Dataset step's
        # actor pools are made from, each with its own engine here.
        self._stages = self.run.stages()
        self._engines: dict[str, AsyncEngine] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mmr5-batch-engine", daemon=True)
        self._thread.start()
        try:
            for stage in self._stages:
                self._engines[stage.name] = self._run(self._start_engine(stage.spec))
        except BaseException:
            self._close_engines()
            self._stop_loop()
            raise

    @property
    def engine(self) -> AsyncEngine | None:
        """The main model's engine (None once closed)."""
        return self._engines.get(RERANK_STAGE)

    @property
    def scorer(self) -> AsyncEngine | None:
        """The two-model cascade's scorer's engine (None without it, or once closed)."""
        return self._engines.get(SCORE_STAGE)

    async def _start_engine(self, spec: ModelRun) -> AsyncEngine:
        # Built on the engine's own loop: vLLM's async engine binds to the loop it starts on.
        return create_async_engine(spec)

    def _run(self, coroutine: Coroutine[Any, Any, Result]) -> Result:
        future: Future[Result] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def rerank(self, query: str, images: Sequence[Any], *, unreadable: str = "raise") -> list[int]:
        """The 0-based order of `images` (paths, URIs, bytes or PIL images), most relevant first; MM-R5's call.

        A page that cannot be read, decoded or shown to the model raises `PageUnreadable` naming it and why (before
        the model runs, where preparing it tells), as MM-R5's script fails on it; with `unreadable="last"` such pages
        are ranked last instead (`rank` always ranks them last and says why in `flagged`). Raises QueryFailed when
        the query cannot be ranked at all.
        """
        if unreadable not in ("raise", "last"):
            raise ValueError(f"unreadable must be 'raise' or 'last', got {unreadable!r}")
        prepared, given = self._prepared([{"query_id": "0", "query": query, "candidates": images}])
        if unreadable == "raise":
            _raise_for_unreadable(prepared[0].candidates or [], images, given[0])
        result = self._ranked(prepared, given, reasoning=False)[0]
        if result.status == ERROR:
            raise QueryFailed(result.reason or "query failed")
        if unreadable == "raise" and result.flagged:  # refused by the engine itself
            _raise_for_unreadable([PreparedCandidate(doc_id=doc, error=why) for doc, why in result.flagged.items()], images, given[0])
        return result.order

    def rank(self, query: str, candidates: Sequence[Any], *, query_id: str = "0", reasoning: bool = False) -> RankedResult:
        """One query's `RankedResult`; candidates are images or dicts (doc_id, image or image_uri, text, score)."""
        return self.rank_many([{"query_id": query_id, "query": query, "candidates": candidates}], reasoning=reasoning)[0]

    def rank_many(self, queries: Sequence[QueryInput], *, reasoning: bool = False) -> list[RankedResult]:
        """Many queries at once, their windows interleaved on the one engine; results in input order."""
        prepared, given = self._prepared(queries)
        return self._ranked(prepared, given, reasoning)

    def _prepared(self, queries: Sequence[QueryInput]) -> tuple[list[PreparedRow], list[list[str]]]:
        """The queries' prepared rows (the CPU stage's work) and each one's doc_ids as given."""
        if self.engine is None:
            raise RuntimeError("this Reranker is closed")
        prepared, given = [], []
        work = page_work(self._prepare)  # the call's queries share it: a page shown to several is prepared once
        for index, item in enumerate(queries):
            query_id, query, candidates = _unpack(item, index)
            rows, fetched = candidate_rows(candidates, self.storage)
            prepared.append(prepare_row({"query_id": query_id, "query": query, "candidates": rows}, self._prepare, fetched, work))
            given.append([row["doc_id"] for row in rows])
        return prepared, given

    def _ranked(self, prepared: list[PreparedRow], given: list[list[str]], reasoning: bool) -> list[RankedResult]:
        if self.engine is None:
            raise RuntimeError("this Reranker is closed")
        rows: Sequence[Any] = prepared
        for stage in self._stages:  # each stage's rows are the next one's; the last gives the result rows
            settings = stage.settings
            if stage.last:
                settings = dataclasses.replace(settings, keep_reasoning=reasoning or settings.keep_reasoning)
            rows = self._run(stage.work(list(rows), self._engines[stage.name], settings))
        return [RankedResult.from_result_row(row, doc_ids) for row, doc_ids in zip(rows, given)]

    def close(self) -> None:
        """Release the engines (vLLM's core processes, the models' memory) and the loop thread."""
        try:
            self._close_engines()
        finally:
            self._stop_loop()

    def _close_engines(self) -> None:
        engines = getattr(self, "_engines", {})
        while engines:
            _, engine = engines.popitem()
            close = getattr(engine, "close", None)
            if close is not None:
                close()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _raise_for_unreadable(candidates: Sequence[PreparedCandidate], images: Sequence[Any], doc_ids: Sequence[str]) -> None:
    """`PageUnreadable` for the first candidate with a reason, named by its position and what the caller gave."""
    for candidate in candidates:
        if candidate.error is None:
            continue
        position = doc_ids.index(candidate.doc_id) if candidate.doc_id in doc_ids else None
        given = images[position] if position is not None else None
        if isinstance(given, Mapping):  # a candidate dict: its path or URI, if it gave one
            given = given.get("image") if isinstance(given.get("image"), str | os.PathLike) else given.get("image_uri")
        shown = os.fspath(given) if isinstance(given, str | os.PathLike) else f"doc_id {candidate.doc_id}"
        raise PageUnreadable(f"page {position} ({shown}): {candidate.error}; pass unreadable='last' to rank such pages last")


def _unpack(item: QueryInput, index: int) -> tuple[str, str, Sequence[Any]]:
    if isinstance(item, Mapping):
        return str(item.get("query_id", index)), item["query"], item["candidates"]
    query, candidates = item
    return str(index), query, candidates
