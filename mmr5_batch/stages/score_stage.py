"""The two-model cascade's scorer stage: a Ray Data callable class owning the pointwise scorer's engine.

Prepared rows in, the same rows out with each candidate's `relevance` (the
scorer's P(yes), judged on its first-pass image and text) and the scorer's
counts; the rerank stage then runs MM-R5 over each query's best
`cascade.detail_top`. Its own actor pool, GPU share and batch size
(`scorer.*`), so neither model waits on the other: Ray Data streams batches
from this pool to the rerank pool. The work is
`core.scheduler.score_queries_async`.
"""

from __future__ import annotations

import pyarrow as pa

from mmr5_batch.core.layouts import append_passthrough
from mmr5_batch.core.rows import PREPARED_COLUMNS, PreparedRow, to_table
from mmr5_batch.core.scheduler import RankingSettings, score_queries_async
from mmr5_batch.stages.contracts import StageContract

# It reads the prepared rows and writes them back with the scorer's fields filled in.
SCORE = StageContract("score", reads=PREPARED_COLUMNS, writes=PREPARED_COLUMNS)


class ScoreActor:
    """Ray Data callable class: one pointwise scorer engine per actor (from a `RerankerConfig` as JSON: its `scorer`)."""

    def __init__(self, config_json: str, run_id: str = "") -> None:
        from mmr5_batch.config import RerankerConfig
        from mmr5_batch.engines import create_async_engine

        config = RerankerConfig.model_validate_json(config_json)
        self.engine = create_async_engine(config, config.scorer)
        self.settings = RankingSettings.for_scorer(config, run_id)
        self._checked = False

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if not self._checked:
            SCORE.check_input(batch.schema)
        own = set(PREPARED_COLUMNS.names)
        rows = batch.select([name for name in batch.column_names if name in own]).to_pylist()
        table = to_table(await score_queries_async(rows, self.engine, self.settings), PreparedRow)
        if not self._checked:
            SCORE.check_output(table.schema)
            self._checked = True
        return append_passthrough(table, batch, own)
