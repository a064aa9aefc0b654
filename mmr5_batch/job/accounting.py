"""Counting what a run wrote: per-shard counters, the exactly-once readback, the failure rules and the run summary.

Stats are data: every shard's counters have the same keys (`COUNTERS`), the
write tasks return them per source shard, and the end of the run reads every
processed shard's rows back to decide whether each query is there exactly
once (then the shard goes into the ledger).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mmr5_batch.core.rows import SOURCE_PATH
from mmr5_batch.core.vocabulary import ERROR, STATUSES
from mmr5_batch.output.records import ShardStats
from mmr5_batch.storage.filesystems import join

# Fixed counter names: the same keys in every shard's stats and the summary.
SUMMED = ("windows", "scored", "image_tokens", "prompt_tokens", "generated_tokens", "pages_sent", "pages_decoded", "pages_processed")
COUNTERS = ("queries", *STATUSES, "candidates", "flagged_candidates", *SUMMED)
# The result columns the counters read (dead letters lack some: they count as 0).
COUNTED_COLUMNS = ("query_id", "status", "first_stage_doc_ids", "flagged_doc_ids", *SUMMED)


def count_row(counters: dict[str, int], row: dict[str, Any]) -> None:
    """Add one result row to a shard's counters."""
    counters["queries"] += 1
    counters[row["status"]] += 1
    counters["candidates"] += len(row.get("first_stage_doc_ids") or [])
    counters["flagged_candidates"] += len(row.get("flagged_doc_ids") or [])
    for name in SUMMED:
        counters[name] += row.get(name) or 0


def shard_counters(table: pa.Table) -> dict[str, dict[str, int]]:
    """Counters per source shard for a table of result rows."""
    stats: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for row in table.select([*COUNTED_COLUMNS, SOURCE_PATH]).to_pylist():
        count_row(stats[row[SOURCE_PATH] or "<unknown>"], row)
    return dict(stats)


def merge_counters(parts: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for part in parts:
        for shard, counters in part.items():
            for name, value in counters.items():
                merged[shard][name] = merged[shard].get(name, 0) + value
    return dict(sorted(merged.items()))


def totals(per_shard: dict[str, dict[str, int]]) -> dict[str, int]:
    return merge_counters({"all": counters} for counters in per_shard.values()).get("all", dict.fromkeys(COUNTERS, 0))


def shard_summary(uri: str, fingerprint: str, expected: int, unaddressable: set[str | None], written: pa.Table | None) -> dict[str, Any]:
    """Counters for one shard over everything written for it (`written`: its COUNTED_COLUMNS), and whether every
    one of its `expected` queries is there exactly once (only the planner's dead letters, `unaddressable`, may repeat)."""
    counters = dict.fromkeys(COUNTERS, 0)
    ids: Counter[str | None] = Counter()
    if written is not None:
        for row in written.to_pylist():
            count_row(counters, row)
            ids[row["query_id"]] += 1
    repeated = sum(count - 1 for query_id, count in ids.items() if count > 1 and query_id not in unaddressable)
    return {
        "shard": uri,
        "fingerprint": fingerprint,
        "expected_queries": expected,
        "written_queries": counters["queries"],
        "repeated_queries": repeated,
        "complete": counters["queries"] == expected and repeated == 0,
        "counters": counters,
    }


@dataclass(frozen=True)
class RunOutcome:
    """What this run did, as the summary reports it."""

    this_run: dict[str, int]  # counters over the rows this run wrote
    planner_letters: int  # dead letters the planner wrote itself
    shard_stats: dict[str, ShardStats]  # shard URI -> its readback summary

    @property
    def processed(self) -> int:
        return self.this_run["queries"] + self.planner_letters

    @property
    def errors(self) -> int:
        return self.this_run[ERROR] + self.planner_letters

    @property
    def incomplete(self) -> list[str]:
        return sorted(uri for uri, stats in self.shard_stats.items() if not stats.complete)


def failures(outcome: RunOutcome, bad_shards: int, total_shards: int, limit: float, output: str) -> list[str]:
    """Why the run counts as failed (`--max-error-rate`, shards not accounted for); empty when it did not."""
    found = []
    error_rate = outcome.errors / outcome.processed if outcome.processed else 0.0
    if error_rate > limit:
        found.append(
            f"{outcome.errors} of {outcome.processed} queries ({error_rate:.1%}) ended as dead letters, above --max-error-rate {limit:.1%}; "
            f"see {join(output, 'dead_letter')}"
        )
    bad_rate = bad_shards / total_shards if total_shards else 0.0
    if bad_rate > limit:
        found.append(f"{bad_shards} of {total_shards} shards could not be read ({bad_rate:.1%}), above --max-error-rate {limit:.1%}")
    if outcome.incomplete:
        found.append(f"{len(outcome.incomplete)} shard(s) not fully accounted for: {outcome.incomplete[:3]}")
    return found


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
