"""Reading the planned shards into a Ray Dataset, each read as the run's one schema.

Ray Data's `read_parquet` merges the files' schemas before reading, so one
shard with an integer `doc_id` or an extra struct field would stop every
shard. Here each read task opens its shards itself (the same `Storage`
settings as planning), conforms each to the run schema the planner chose
(casts that lose nothing: integer ids as strings, widths, struct fields by
name; a shard needing more was marked bad in planning), records the shard's
path per row, and drops the rows already written or dead-lettered by the
planner, so the driver ships per-shard id lists, not one big filter.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.core.arrow_types import conform_table
from mmr5_batch.core.rows import READ_PATH
from mmr5_batch.job.planner import InputPlan, ShardPlan, rows_to_drop
from mmr5_batch.storage.filesystems import Storage

if TYPE_CHECKING:
    from ray.data import Dataset


def drop_query_ids(table: pa.Table, drop: frozenset[str | None]) -> pa.Table:
    """`table` without the rows whose query_id is in `drop` (a missing or blank id counts as None)."""
    if not drop or table.num_rows == 0:
        return table
    keep = [(query_id if query_id and query_id.strip() else None) not in drop for query_id in table["query_id"].to_pylist()]
    return table.filter(pa.array(keep, type=pa.bool_()))


def read_shard(uri: str, path: str, drop: frozenset[str | None], storage: Storage, schema: pa.Schema) -> pa.Table:
    """One shard's rows still to process, as `schema` plus its path (`READ_PATH`)."""
    fs, fs_path = storage.filesystem(uri)
    with fs.open(fs_path, "rb") as handle:
        table = pq.read_table(handle)
    table = drop_query_ids(conform_table(table, schema), drop)
    return table.append_column(pa.field(READ_PATH, pa.string()), pa.array([path] * table.num_rows, pa.string()))


def read_shard_batch(batch: pa.Table, storage: Storage, schema: pa.Schema) -> pa.Table:
    """Ray Data UDF: shard descriptors (uri, path, drop) in, their rows out."""
    tables = [
        read_shard(uri, path, frozenset(drop or ()), storage, schema)
        for uri, path, drop in zip(batch["uri"].to_pylist(), batch["path"].to_pylist(), batch["drop"].to_pylist())
    ]
    return pa.concat_tables(tables) if tables else schema.append(pa.field(READ_PATH, pa.string())).empty_table()


def _descriptor(shard: ShardPlan) -> dict[str, Any]:
    return {"uri": shard.uri, "path": shard.path, "drop": list(rows_to_drop(shard))}


def has_work(shard: ShardPlan) -> bool:
    """Rows of the shard neither written already nor dead-lettered by the planner."""
    skip = rows_to_drop(shard)
    return any(query_id not in skip for query_id in shard.query_ids)


def read_shards(plan: InputPlan, storage: Storage) -> Dataset | None:
    """The rows of every planned shard that has work left, lazily; None when no shard has any."""
    import ray

    shards = [shard for shard in plan.to_run if has_work(shard)]
    if not shards:
        return None
    descriptors = pa.Table.from_pylist([_descriptor(shard) for shard in shards], schema=DESCRIPTOR_SCHEMA)
    # One shard per read task: a shard is the unit of planning, resume and the ledger.
    return ray.data.from_arrow(descriptors).map_batches(partial(read_shard_batch, storage=storage, schema=plan.schema), batch_size=1, batch_format="pyarrow")


DESCRIPTOR_SCHEMA = pa.schema([("uri", pa.string()), ("path", pa.string()), ("drop", pa.list_(pa.string()))])
