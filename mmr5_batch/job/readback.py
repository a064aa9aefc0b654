"""The end-of-run exactly-once check, per shard in Ray tasks: read back what is written, count, decide completeness.

Each task reads the counted columns of its shards' result files (one
recursive listing per result folder on the driver found them) and returns
each shard's counters and whether every query is there exactly once; the
driver records the complete shards in the ledger with one write.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from mmr5_batch.core.rows import READBACK_SCHEMA
from mmr5_batch.job.accounting import COUNTED_COLUMNS, shard_summary
from mmr5_batch.job.planner import ShardPlan
from mmr5_batch.job.shard_tasks import map_shards
from mmr5_batch.output.records import ShardStats
from mmr5_batch.storage.arrow_filesystems import read_parquet
from mmr5_batch.storage.filesystems import Storage

# Shards per readback task: each reads a few columns of a few files.
READBACK_SHARDS_PER_TASK = 128


def read_back_shard(descriptor: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """One shard's readback summary (accounting.shard_summary), as a READBACK_SCHEMA row."""
    tables = [read_parquet(storage, uri, list(COUNTED_COLUMNS)) for uri in descriptor["files"]]
    written = pa.concat_tables(tables, promote_options="permissive") if tables else None
    stats = shard_summary(descriptor["uri"], descriptor["fingerprint"], descriptor["expected"], set(descriptor["unaddressable"]), written)
    return {"uri": descriptor["uri"], "stats": json.dumps(stats)}


def read_back(shards: list[ShardPlan], files: dict[str, list[str]], storage: Storage) -> dict[str, ShardStats]:
    """Shard URI -> readback summary, for `shards` with their result files `files` (shard key -> URIs)."""
    descriptors = [
        {
            "uri": shard.uri,
            "fingerprint": shard.fingerprint,
            "expected": shard.queries,
            "unaddressable": list(shard.unaddressable),
            "files": files.get(shard.key, []),
        }
        for shard in shards
    ]
    return {
        row["uri"]: ShardStats.from_json(json.loads(row["stats"]))
        for row in map_shards(descriptors, read_back_shard, READBACK_SCHEMA, READBACK_SHARDS_PER_TASK, storage=storage)
    }
