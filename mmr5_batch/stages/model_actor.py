"""The model stages: one Ray Data callable class owning one engine, for both actor pools.

`rerank` (every run): prepared rows in, result rows out; the work is
`core.scheduler.rerank_queries_async`, the same code the Python API runs in
process. Both read their batch through `core.arrow_rows`: the small fields
as Python values, each picture's patches as a view of the batch's own buffer,
which reaches the engine without a copy. `score` (the two-model cascade only, its own pool between prepare
and rerank): prepared rows in, the same rows out with each candidate's
`relevance` (the pointwise scorer's P(yes) on its first-pass image and
text) and the scorer's counts; the work is `core.scheduler.score_queries_async`.
Each pool has its own GPU share and batch size, so neither model waits on the
other: Ray Data streams batches from one pool to the next.

`__call__` is async, so Ray Data runs several batches through one actor at
once and the engine is never idle while a batch is handed back. Each actor
has one observer (stage_observer.py) that hears of every request and counts
each batch once, for Ray's metrics and, in the rerank pool when the job gives
one, the progress tally. A batch
that kills its actor twice is split until the query that does it is found
(batch_guard.py): that query is a dead letter, the rest are ranked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pyarrow as pa

from mmr5_batch.config.run import RERANK_STAGE, SCORE_STAGE, ModelStage
from mmr5_batch.core.arrow_rows import prepared_rows, scored_table
from mmr5_batch.core.layouts import append_passthrough
from mmr5_batch.core.rows import PREPARED_COLUMNS, RESULT_COLUMNS, PreparedRow, ResultRow, to_table
from mmr5_batch.core.scheduler import RankingSettings
from mmr5_batch.engines import create_async_engine
from mmr5_batch.stages.batch_guard import BatchGuard
from mmr5_batch.stages.contracts import StageContract
from mmr5_batch.stages.progress_tally import ProgressFeed
from mmr5_batch.stages.run_metrics import StageMetrics
from mmr5_batch.stages.stage_observer import StageObserver

RERANK = StageContract(RERANK_STAGE, reads=PREPARED_COLUMNS, writes=RESULT_COLUMNS)
# It reads the prepared rows and writes them back with the scorer's fields filled in.
SCORE = StageContract(SCORE_STAGE, reads=PREPARED_COLUMNS, writes=PREPARED_COLUMNS)
CONTRACTS = {contract.stage: contract for contract in (RERANK, SCORE)}

# The stage's work over one batch: the scheduler's rerank or score.
Work = Callable[..., Awaitable[Sequence[Any]]]


class ModelActor:
    """Ray Data callable class: one engine per actor, built for its `stage` of the resolved run (config/run.py:
    `ModelStage`, sent as it is: the model, its family, its settings; nothing is resolved again here): 'rerank' (the
    main model) or 'score' (the two-model cascade's scorer); `attempt` owns its batch markers (batch_guard.py);
    `progress`, where given, hears of every batch's finished queries."""

    def __init__(self, stage: ModelStage, attempt: str, progress: ProgressFeed | None = None) -> None:
        self.contract = CONTRACTS[stage.name]
        self.work: Work = stage.work
        self.settings: RankingSettings = stage.settings
        self.stage = stage.name
        self.guard = BatchGuard.for_attempt(attempt, stage.name)
        spec = stage.spec
        self.observer = StageObserver(StageMetrics.start(stage.settings.run_id, spec.model.name, spec.protocol, stage.name), progress)
        self.engine = create_async_engine(spec)
        self._checked = False

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if not self._checked:  # the columns of one dataset's batches agree: the first one tells
            self.contract.check_input(batch.schema)
        results = await self._guarded(prepared_rows(batch))
        table = scored_table(results, batch) if self.contract is SCORE else to_table(results, ResultRow)
        if not self._checked:
            self.contract.check_output(table.schema)
            self._checked = True
        self.observer.batch_done(results)
        return append_passthrough(table, batch, set(PREPARED_COLUMNS.names))

    async def _guarded(self, rows: list[PreparedRow]) -> list[Any]:
        """The stage's work on the batch, under its marker (see batch_guard.py): whole, or one query at a time once the
        batch has killed the actor twice, the query it died on last time a dead letter."""
        key = self.guard.key([row.query_id for row in rows])
        marker = self.guard.enter(key)
        try:
            if not marker.split:
                async with self.guard.shared():
                    results = list(await self.work(rows, self.engine, self.settings, observer=self.observer))
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
                        results.extend(await self.work([row], self.engine, self.settings, observer=self.observer))
        except BaseException:
            self.guard.leave(key)  # an exception is no death: Ray does not retry it, the batch fails with it
            raise
        self.guard.leave(key)
        return results
