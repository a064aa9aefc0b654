"""Per-shard work of the driver's phases (planning's survey, the end-of-run readback) as Ray Data tasks.

The driver sends each group of shard descriptors to a task and gets back one
small row per shard, streamed, so what it holds grows with the number of
shards, never with the rows inside them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pyarrow as pa

from mmr5_batch.job.shard_groups import group_shards


def cluster_cpus() -> int:
    """CPUs of the Ray cluster (the driver's phases size their groups by it)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def shard_groups_dataset(descriptors: list[dict[str, Any]], sizes: list[int], max_bytes: int, max_shards: int) -> Any:
    """A Ray Dataset of one row (and block) per group of descriptors (`shards`: the group as JSON), at least two
    groups per cluster CPU where there are descriptors enough."""
    import ray

    groups = group_shards(descriptors, sizes, max_bytes, max_shards, 2 * cluster_cpus())
    return ray.data.from_items([{"shards": json.dumps(group)} for group in groups], override_num_blocks=len(groups))


def _run_group(batch: pa.Table, fn: Callable[..., dict[str, Any]], schema: pa.Schema, arguments: dict[str, Any]) -> pa.Table:
    rows = [fn(descriptor, **arguments) for group in batch["shards"].to_pylist() for descriptor in json.loads(group)]
    return pa.Table.from_pylist(rows, schema=schema)


def map_shards(
    descriptors: list[dict[str, Any]],
    fn: Callable[..., dict[str, Any]],
    schema: pa.Schema,
    max_shards: int,
    sizes: list[int] | None = None,
    max_bytes: int = 1 << 62,
    **arguments: Any,
) -> Iterator[dict[str, Any]]:
    """`fn(descriptor, **arguments)` for every descriptor (JSON-able dicts) in Ray Data tasks of up to `max_shards`
    descriptors each; its rows (of `schema`) as they come. Each task takes one CPU, so a phase never runs more
    tasks at once than the cluster has cores."""
    if not descriptors:
        return
    dataset = shard_groups_dataset(descriptors, sizes or [0] * len(descriptors), max_bytes, max_shards)
    mapped = dataset.map_batches(partial(_run_group, fn=fn, schema=schema, arguments=arguments), batch_size=1, batch_format="pyarrow")
    for batch in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
        assert isinstance(batch, pa.Table)
        yield from batch.to_pylist()
