"""The write stage: ranked rows and dead letters per write task and source shard, and their counters.

Every result row goes to exactly one of two tables: `ranked/` (every status
but error: ok, repaired, fallback, fast, pointwise) or `dead_letter/`
(status error, with the reason), each partitioned by source shard
(`ranked/<shard key>/`), which is what resume and incremental runs read back
(output/store.py), and the manifest names once committed (output/transaction.py). A file name is the
run attempt plus the write task's index, so a retried task replaces its own
file instead of adding one; each file is written whole or not at all. Each
task returns its counters per source shard (accounting.py); the driver merges them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from mmr5_batch.core.rows import DEAD_LETTER_KEEP, RANKED_DROP, RESULT_COLUMNS, SOURCE_PATH
from mmr5_batch.core.vocabulary import ERROR
from mmr5_batch.job.accounting import merge_counters, shard_counters
from mmr5_batch.job.relabel import pairs_table
from mmr5_batch.output.layout import DEAD_LETTER, PAIRS, RANKED, OutputLayout, write_file_name
from mmr5_batch.storage.filesystems import Storage


class RerankOutputDatasink(Datasink[dict]):
    """Writes result rows as ranked rows and dead letters per source shard; collects per-shard counters."""

    def __init__(
        self,
        output: str,
        attempt: str,
        shards: dict[str, tuple[str, str]],
        storage: Storage,
        pairs: tuple[int, str | None] | None = None,
        rows_per_write: int | None = None,
    ) -> None:
        """`shards`: filesystem path -> (URI recorded as source_path, shard key naming its folder);
        `pairs`: (positives_top_k, label_column) to also write relabel pairs, else None;
        `rows_per_write`: rows Ray Data gathers into one write task (None: each block is one)."""
        self.output = output
        self.rows_per_write = rows_per_write
        self.pairs = pairs
        self.attempt = attempt
        self.shards = shards
        self.storage = storage
        self.per_shard: dict[str, dict[str, int]] = {}
        self.files: list[str] = []

    @property
    def min_rows_per_write(self) -> int | None:
        return self.rows_per_write

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return {"stats": {}, "files": []}
        table = pa.concat_tables(tables, promote_options="permissive")
        paths = table[SOURCE_PATH].to_pylist()
        uris = [self.shards[path][0] for path in paths]
        table = table.set_column(table.schema.get_field_index(SOURCE_PATH), SOURCE_PATH, pa.array(uris, pa.string()))
        passthrough = [name for name in table.column_names if name not in RESULT_COLUMNS.names]
        name = write_file_name(self.attempt, ctx.task_idx)
        layout = OutputLayout(self.output)
        files = []
        for path in sorted(set(paths)):
            key = self.shards[path][1]
            part = table.filter(pc.equal(table[SOURCE_PATH], self.shards[path][0]))
            is_error = pc.equal(part["status"], ERROR)
            ranked = part.filter(pc.invert(is_error)).drop_columns(list(RANKED_DROP))
            dead = part.filter(is_error).select(list(DEAD_LETTER_KEEP) + passthrough)
            # The ranked file goes last: it commits the task's pairs (the transaction drops pairs without one, the manifest never names them).
            outputs = [(DEAD_LETTER, dead)]
            if self.pairs is not None and ranked.num_rows:
                outputs.append((PAIRS, pairs_table(ranked, *self.pairs)))
            outputs.append((RANKED, ranked))
            for folder, rows in outputs:
                if rows.num_rows:
                    uri = layout.result_file(folder, key, name)
                    self.storage.write_parquet(rows, uri)
                    files.append(uri)
        return {"stats": shard_counters(table), "files": files}

    def on_write_complete(self, write_result: Any) -> None:
        returns = [result for result in write_result.write_returns if result]
        self.per_shard = merge_counters(result["stats"] for result in returns)
        self.files = sorted(uri for result in returns for uri in result["files"])
