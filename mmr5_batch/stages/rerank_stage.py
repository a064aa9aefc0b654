"""The model stage: a Ray Data callable class owning one engine, prepared rows in, result rows out.

Its `__call__` is async, so Ray Data runs several batches through one actor
at once and the engine is never idle while a batch is handed back. The work
itself is `core.scheduler.rerank_queries_async`, the same code the Python
API runs in process.
"""

from __future__ import annotations

import pyarrow as pa

from mmr5_batch.core.layouts import append_passthrough
from mmr5_batch.core.rows import PREPARED_COLUMNS, RESULT_COLUMNS, ResultRow, to_table
from mmr5_batch.core.scheduler import RankingSettings, rerank_queries_async
from mmr5_batch.stages.contracts import StageContract

RERANK = StageContract("rerank", reads=PREPARED_COLUMNS, writes=RESULT_COLUMNS)


class RerankActor:
    """Ray Data callable class: one engine per actor (built from a `RerankerConfig` as JSON)."""

    def __init__(self, config_json: str, run_id: str = "") -> None:
        from mmr5_batch.config import RerankerConfig
        from mmr5_batch.engines import create_async_engine

        config = RerankerConfig.model_validate_json(config_json)
        self.engine = create_async_engine(config)
        self.settings = RankingSettings.from_config(config, run_id)
        self._checked = False

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if not self._checked:  # the columns of one dataset's batches agree: the first one tells
            RERANK.check_input(batch.schema)
        own = set(PREPARED_COLUMNS.names)
        rows = batch.select([name for name in batch.column_names if name in own]).to_pylist()
        results = await rerank_queries_async(rows, self.engine, self.settings)
        table = to_table(results, ResultRow)
        if not self._checked:
            RERANK.check_output(table.schema)
            self._checked = True
        return append_passthrough(table, batch, own)
