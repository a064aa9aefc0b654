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
once and the engine is never idle while a batch is handed back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pyarrow as pa

from mmr5_batch.config import RerankerConfig
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.layouts import append_passthrough
from mmr5_batch.core.rows import PREPARED_COLUMNS, RESULT_COLUMNS, PreparedRow, ResultRow, to_table
from mmr5_batch.core.scheduler import RankingSettings, rerank_queries_async, score_queries_async
from mmr5_batch.engines import create_async_engine
from mmr5_batch.stages.contracts import StageContract

RERANK = StageContract("rerank", reads=PREPARED_COLUMNS, writes=RESULT_COLUMNS)
# It reads the prepared rows and writes them back with the scorer's fields filled in.
SCORE = StageContract("score", reads=PREPARED_COLUMNS, writes=PREPARED_COLUMNS)

# The stage's work over one batch: the scheduler's rerank or score.
Work = Callable[..., Awaitable[Sequence[Any]]]


class ModelActor:
    """Ray Data callable class: one engine per actor, built from a resolved `RerankerConfig` (as JSON) for its `stage`:
    'rerank' (the main model) or 'score' (the two-model cascade's scorer)."""

    def __init__(self, config_json: str, run_id: str = "", stage: str = RERANK.stage) -> None:
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
        self.engine = create_async_engine(spec)
        self._checked = False

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if not self._checked:  # the columns of one dataset's batches agree: the first one tells
            self.contract.check_input(batch.schema)
        own = set(PREPARED_COLUMNS.names)
        rows = [PreparedRow.of(row) for row in batch.select([name for name in batch.column_names if name in own]).to_pylist()]
        table = to_table(list(await self.work(rows, self.engine, self.settings)), self.row_type)
        if not self._checked:
            self.contract.check_output(table.schema)
            self._checked = True
        return append_passthrough(table, batch, own)
