"""The write stage: ranked rows and dead letters per write task, and the counters that become the run summary.

Every result row goes to exactly one of two tables: `ranked/` (status ok,
repaired or fallback) or `dead_letter/` (status error, with the reason).
File names derive from the run id and the write task's index, so a retried
task replaces its own file instead of adding one. Each task returns its
counters per source shard; the driver merges them into `summary.json`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from .schema import DEAD_LETTER_KEEP, RANKED_DROP, RESULT_COLUMNS, SOURCE_PATH
from .storage import join, write_parquet

# Fixed counter names: the same keys in every shard's stats and the summary.
COUNTERS = (
    "queries",
    "ok",
    "repaired",
    "fallback",
    "error",
    "candidates",
    "flagged_candidates",
    "windows",
    "image_tokens",
    "prompt_tokens",
    "generated_tokens",
)


def shard_counters(table: pa.Table) -> dict[str, dict[str, int]]:
    """Counters per source shard for a table of result rows."""
    stats: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    columns = ("status", SOURCE_PATH, "first_stage_doc_ids", "flagged_doc_ids", "windows", "image_tokens", "prompt_tokens", "generated_tokens")
    for row in table.select(list(columns)).to_pylist():
        counters = stats[row[SOURCE_PATH] or "<unknown>"]
        counters["queries"] += 1
        counters[row["status"]] += 1
        counters["candidates"] += len(row["first_stage_doc_ids"] or [])
        counters["flagged_candidates"] += len(row["flagged_doc_ids"] or [])
        for name in ("windows", "image_tokens", "prompt_tokens", "generated_tokens"):
            counters[name] += row[name] or 0
    return dict(stats)


def merge_counters(parts: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for part in parts:
        for shard, counters in part.items():
            for name, value in counters.items():
                merged[shard][name] += value
    return dict(sorted(merged.items()))


def totals(per_shard: dict[str, dict[str, int]]) -> dict[str, int]:
    return merge_counters({"all": counters} for counters in per_shard.values()).get("all", dict.fromkeys(COUNTERS, 0))


class RerankOutputDatasink(Datasink[dict]):
    """Writes result rows as ranked rows and dead letters; collects per-shard counters."""

    def __init__(self, output: str, run_id: str) -> None:
        self.output = output
        self.run_id = run_id
        self.per_shard: dict[str, dict[str, int]] = {}
        self.files: list[str] = []

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return {"stats": {}, "files": []}
        table = pa.concat_tables(tables, promote_options="permissive")
        is_error = pc.equal(table["status"], "error")
        ranked = table.filter(pc.invert(is_error)).drop_columns(list(RANKED_DROP))
        passthrough = [name for name in table.column_names if name not in RESULT_COLUMNS.names]
        dead = table.filter(is_error).select(list(DEAD_LETTER_KEEP) + passthrough)
        name = f"part-{self.run_id}-{ctx.task_idx:05d}.parquet"
        files = []
        for folder, part in (("ranked", ranked), ("dead_letter", dead)):
            if part.num_rows:
                uri = join(self.output, folder, name)
                write_parquet(part, uri)
                files.append(uri)
        return {"stats": shard_counters(table), "files": files}

    def on_write_complete(self, write_result: Any) -> None:
        returns = [result for result in write_result.write_returns if result]
        self.per_shard = merge_counters(result["stats"] for result in returns)
        self.files = sorted(uri for result in returns for uri in result["files"])
