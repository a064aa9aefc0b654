"""The model stages: one Ray Data callable class owning one engine, for both actor pools.

`rerank` (every run): prepared rows in, result rows out; the work is
`core.scheduler.rerank_queries_async`, the same code the Python API runs in
process. `score` (the two-model cascade only, its own pool between prepare
and rerank): prepared rows in, the same rows out with each candidate's
`relevance` (the pointwise scorer's P(yes) on its first-pass image and
text) and the scorer's counts; the work is `core.scheduler.score_queries_async`.
Each pool has its own GPU share and batch size, so neither model waits on the
other: Ray Data streams batches from one pool to the next.

`__call__` is async, so Ray Data runs several batches through one actor at
once and the engine is never idle while a batch is handed back. Each actor
reports what it did through Ray's metrics API (run_metrics.py), and the
rerank pool also to the job's progress tally when the job gives it one
(progress_tally.py). A batch
that kills its actor twice is split until the query that does it is found
(batch_guard.py): that query is a dead letter, the rest are ranked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pyarrow as pa

from mmr5_batch.config import RerankerConfig
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.layouts import append_passthrough
from mmr5_batch.core.rows import PREPARED_COLUMNS, RESULT_COLUMNS, SOURCE_PATH, PreparedRow, ResultRow, to_table
from mmr5_batch.core.scheduler import RankingSettings, rerank_queries_async, score_queries_async
from mmr5_batch.core.vocabulary import ERROR
from mmr5_batch.engines import create_async_engine
from mmr5_batch.stages.batch_guard import BatchGuard
from mmr5_batch.stages.contracts import StageContract
from mmr5_batch.stages.progress_tally import ProgressFeed
from mmr5_batch.stages.run_metrics import StageMetrics

RERANK = StageContract("rerank", reads=PREPARED_COLUMNS, writes=RESULT_COLUMNS)
# It reads the prepared rows and writes them back with the scorer's fields filled in.
SCORE = StageContract("score", reads=PREPARED_COLUMNS, writes=PREPARED_COLUMNS)

# The stage's work over one batch: the scheduler's rerank or score.
Work = Callable[..., Awaitable[Sequence[Any]]]


class ModelActor:
    """Ray Data callable class: one engine per actor, built from a resolved `RerankerConfig` (as JSON) for its `stage`:
    'rerank' (the main model) or 'score' (the two-model cascade's scorer); `attempt` owns its batch markers
    (batch_guard.py); `progress`, where given, hears of every batch's finished queries."""

    def __init__(self, config_json: str, attempt: str, run_id: str = "", stage: str = RERANK.stage, progress: ProgressFeed | None = None) -> None:
        run = resolve_run(RerankerConfig.model_validate_json(config_json))
        self.row_type: type
        self.work: Work
        if stage == SCORE.stage:
            if run.scorer is None:
                raise ValueError("a score stage without the two-model cascade")
            spec, settings, self.contract, self.row_type, self.work = run.scorer, run.scoring(run_id), SCORE, PreparedRow, score_queries_async
        else:
            spec, settings, self.contract, self.row_type, self.work = run.main, run.ranking(run_id), RERANK, ResultRow, rerank_queries_async
        assert settings is not None
        self.settings: RankingSettings = settings
        self.stage = stage
        self.guard = BatchGuard.for_attempt(attempt, stage)
        self.metrics = StageMetrics.start(run_id, spec.model.name, spec.protocol, stage)
        self.engine = create_async_engine(spec)
        self.progress = progress
        self._checked = False

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if not self._checked:  # the columns of one dataset's batches agree: the first one tells
            self.contract.check_input(batch.schema)
        own = set(PREPARED_COLUMNS.names)
        rows = [PreparedRow.of(row) for row in batch.select([name for name in batch.column_names if name in own]).to_pylist()]
        table = to_table(list(await self._guarded(rows)), self.row_type)
        if not self._checked:
            self.contract.check_output(table.schema)
            self._checked = True
        if self.progress is not None:
            self.progress.tell(batch.column(SOURCE_PATH).to_pylist(), sum(1 for row in table.column("status").to_pylist() if row == ERROR))
        return append_passthrough(table, batch, own)

    async def _guarded(self, rows: list[PreparedRow]) -> list[Any]:
        """The stage's work on the batch, under its marker (see batch_guard.py): whole, or one query at a time once the
        batch has killed the actor twice, the query it died on last time a dead letter."""
        key = self.guard.key([row.query_id for row in rows])
        marker = self.guard.enter(key)
        try:
            if not marker.split:
                async with self.guard.shared():
                    results = list(await self.work(rows, self.engine, self.settings, observer=self.metrics))
            else:
                results = []
                for row in rows:
                    if row.query_id in marker.killers:
                        reason = (
                            f"the {self.stage} actor died on this query's batch {marker.deaths} times, the last time while this "
                            "query ran alone (out of memory?); the rest of its batch was processed"
                        )
                        row = dataclasses.replace(row, error=row.error or reason)
                    async with self.guard.alone():
                        self.guard.running(key, marker, row.query_id)
                        results.extend(await self.work([row], self.engine, self.settings, observer=self.metrics))
        except BaseException:
            self.guard.leave(key)  # an exception is no death: Ray does not retry it, the batch fails with it
            raise
        self.guard.leave(key)
        self.metrics.rows_done(results)
        return results
