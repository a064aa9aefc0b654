"""Reading the planned shards into a Ray Dataset, each read as the run's one schema, many small shards per read task.

Ray Data's `read_parquet` merges the files' schemas before reading, so one
shard with an integer `doc_id` or an extra struct field would stop every
shard. Here each read task opens its shards itself with pyarrow's native
filesystem (storage/arrow_filesystems.py), conforms each to the run schema
the planner chose (casts that lose nothing: integer ids as strings, widths,
struct fields by name; a shard needing more was marked bad in planning),
records the shard's path per row, and drops the rows already written (it
reads their ids from the files planning found) or dead-lettered by the
planner. Shards are grouped into read tasks (shard_groups.py) of up to
`execution.read_task_bytes` and `execution.shards_per_read_task`. With
`execution.group_by`, each read task orders its own rows by the key
(core/group_key.py), so queries over one document that share a read task
meet in the same preparation tasks and actor batches, and no page is moved
between workers to get there (a dataset-wide sort would shuffle every page).
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mmr5_batch.core.arrow_types import conform_table
from mmr5_batch.core.group_key import sorted_by_group
from mmr5_batch.core.rows import READ_PATH
from mmr5_batch.job.planner import InputPlan, ShardPlan
from mmr5_batch.job.shard_survey import query_ids
from mmr5_batch.job.shard_tasks import shard_groups_dataset
from mmr5_batch.storage.arrow_filesystems import read_parquet
from mmr5_batch.storage.filesystems import Storage

if TYPE_CHECKING:
    from ray.data import Dataset


def drop_query_ids(table: pa.Table, drop: frozenset[str | None]) -> pa.Table:
    """`table` without the rows whose query_id is in `drop` (a missing or blank id counts as None)."""
    if not drop or table.num_rows == 0:
        return table
    keep = [query_id not in drop for query_id in query_ids(table["query_id"])]
    return table.filter(pa.array(keep, type=pa.bool_()))


def read_shard(descriptor: dict[str, Any], storage: Storage, schema: pa.Schema) -> pa.Table:
    """One shard's rows still to process, as `schema` plus its path (`READ_PATH`)."""
    drop: set[str | None] = set(descriptor["unaddressable"])
    for file in descriptor["written"]:
        drop.update(read_parquet(storage, file, ["query_id"])["query_id"].to_pylist())
    table = drop_query_ids(conform_table(read_parquet(storage, descriptor["uri"]), schema), frozenset(drop))
    return table.append_column(pa.field(READ_PATH, pa.string()), pa.array([descriptor["path"]] * table.num_rows, pa.string()))


def read_shard_group(batch: pa.Table, storage: Storage, schema: pa.Schema, group_by: str | None = None) -> pa.Table:
    """Ray Data UDF: one group of shard descriptors (JSON) in, their rows out (ordered by `group_by` where given)."""
    tables = [read_shard(descriptor, storage, schema) for group in batch["shards"].to_pylist() for descriptor in json.loads(group)]
    if not tables:
        return schema.append(pa.field(READ_PATH, pa.string())).empty_table()
    rows = pa.concat_tables(tables)
    return sorted_by_group(rows, group_by) if group_by else rows


def _descriptor(shard: ShardPlan) -> dict[str, Any]:
    return {"uri": shard.uri, "path": shard.path, "written": shard.written_files, "unaddressable": list(shard.unaddressable)}


def read_shards(plan: InputPlan, storage: Storage, max_bytes: int, max_shards: int, group_by: str | None = None) -> Dataset | None:
    """The rows of every planned shard that has work left, lazily, in read tasks of up to `max_bytes` of shards
    and `max_shards` shards (at least two tasks per cluster CPU where there are shards enough), each task's rows
    ordered by `group_by` where given; None when no shard has work."""
    shards = [shard for shard in plan.to_run if shard.has_work()]
    if not shards:
        return None
    descriptors = shard_groups_dataset([_descriptor(shard) for shard in shards], [shard.size for shard in shards], max_bytes, max_shards)
    return descriptors.map_batches(partial(read_shard_group, storage=storage, schema=plan.schema, group_by=group_by), batch_size=1, batch_format="pyarrow")
