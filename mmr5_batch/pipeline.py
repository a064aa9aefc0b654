"""The one place that wires the Ray Data stages together: plan, read, prepare, rerank, write.

Planning happens on the driver before any Ray work: list the shards, check
each one's schema, find query_ids that occur more than once. A problem there
stops the job with one line (`JobError`). Then:

    read_parquet (with source paths) -> [groupby query_id for the pairs layout]
    -> repartition into small blocks (every actor gets work)
    -> prepare (CPU tasks) -> rerank (actor pool, one engine each) -> write (datasink)
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from .config import JobConfig, config_to_yaml
from .outputs import RerankOutputDatasink, totals
from .prepare import PrepareSettings, group_pairs, prepare_batch
from .rerank import RerankActor
from .schema import GROUPED, InputSchemaError, detect_layout
from .storage import InputNotFound, filesystem_for, join, list_shards, write_json, write_text

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """A job-level failure, reported as one line and a non-zero exit."""


@dataclass(frozen=True)
class InputPlan:
    shards: list[str]
    layout: str
    duplicate_query_ids: dict[str, int]
    filesystem: Any


def plan_input(uri: str) -> InputPlan:
    """Shards, their common layout and the query_ids occurring more than once; raises JobError."""
    try:
        fs, shards = list_shards(uri)
    except InputNotFound as error:
        raise JobError(str(error)) from None
    layouts = {}
    ids: Counter[str] = Counter()
    for shard in shards:
        try:
            with fs.open(shard, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                layouts[shard] = detect_layout(parquet.schema_arrow, shard).layout
                if layouts[shard] == GROUPED:
                    ids.update(value for value in parquet.read(columns=["query_id"])["query_id"].to_pylist() if value)
        except InputSchemaError as error:
            raise JobError(str(error)) from None
        except Exception as error:  # not Parquet, truncated
            raise JobError(f"{shard}: cannot read as Parquet: {error}") from None
    kinds = set(layouts.values())
    if len(kinds) > 1:
        raise JobError(f"shards mix the grouped and pairs layouts: {layouts}")
    duplicates = {query_id: count for query_id, count in ids.items() if count > 1}
    return InputPlan(shards, kinds.pop(), duplicates, fs)


RESULT_FOLDERS = ("ranked", "dead_letter")


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse an output prefix that holds an earlier run's results, or clear it when overwriting.

    Two runs' files side by side would list some queries twice.
    """
    fs, path = filesystem_for(output)
    earlier = [folder for folder in RESULT_FOLDERS if fs.exists(join(path, folder))]
    if earlier and not overwrite:
        raise JobError(f"{output} already holds results ({', '.join(earlier)}); choose another output or pass --overwrite")
    for folder in earlier:
        fs.rm(join(path, folder), recursive=True)


def ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)


def actor_resources(config: JobConfig, cluster_gpus: float) -> tuple[float, float]:
    """(cpus, gpus) per rerank actor; raises JobError when the backend needs a GPU the cluster lacks."""
    execution, model = config.execution, config.model
    wants_gpu = model.backend == "vllm" or (model.backend == "hf" and model.device == "cuda")
    needed = model.tensor_parallel_size if model.backend == "vllm" else 1
    if wants_gpu and cluster_gpus < needed:
        raise JobError(
            f"the {model.backend} backend needs {needed} GPU(s) per actor but the Ray cluster has {cluster_gpus:g}; "
            "use --backend hf (CPU) or add GPU workers"
        )
    gpus = execution.gpus_per_actor
    if gpus is None:
        on_gpu = cluster_gpus >= 1 and model.backend != "scripted-test" and model.device != "cpu"
        gpus = float(model.tensor_parallel_size if model.backend == "vllm" else 1) if on_gpu else 0.0
    cpus = execution.cpus_per_actor
    if cpus is None:
        # Whole CPUs for CPU-only actors starve the read and prepare tasks on
        # small machines (2 actors x 1 CPU deadlock a 2-core node).
        cpus = 1.0 if gpus else 0.5
    return cpus, gpus


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run the whole job and return the run summary (also written to OUTPUT/summary.json)."""
    import ray
    from ray.data import ActorPoolStrategy
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    config = config.with_run_id()
    plan = plan_input(config.input)
    started = time.monotonic()
    ensure_ray(config.execution.address)
    cpus, gpus = actor_resources(config, ray.cluster_resources().get("GPU", 0.0))
    prepare_output(config.output, config.overwrite)
    write_text(join(config.output, "config.yaml"), config_to_yaml(config))

    settings = PrepareSettings(
        image_tokens=config.images.image_tokens,
        jpeg_quality=config.images.jpeg_quality,
        allowed_uri_prefixes=tuple(config.images.allowed_uri_prefixes),
        duplicate_query_ids=plan.duplicate_query_ids,
    )
    dataset = ray.data.read_parquet(
        plan.shards, filesystem=PyFileSystem(FSSpecHandler(plan.filesystem)), include_paths=True
    )
    if plan.layout != GROUPED:
        dataset = dataset.groupby("query_id").map_groups(group_pairs, batch_format="pyarrow")
    execution = config.execution
    dataset = dataset.repartition(target_num_rows_per_block=execution.prepare_batch_size)
    dataset = dataset.map_batches(
        prepare_batch, fn_kwargs={"settings": settings}, batch_format="pyarrow", batch_size=execution.prepare_batch_size
    )
    dataset = dataset.map_batches(
        RerankActor,
        fn_constructor_kwargs={"config_json": config.model_dump_json()},
        # The actor's __call__ is async: several batches run through one
        # engine at once, so a batch's last answers overlap the next batch.
        compute=ActorPoolStrategy(
            size=execution.actors,
            max_concurrent_calls_per_actor=execution.concurrent_batches,
            max_tasks_in_flight_per_actor=execution.concurrent_batches,
        ),
        batch_size=execution.batch_size,
        batch_format="pyarrow",
        num_cpus=cpus,
        num_gpus=gpus,
    )
    sink = RerankOutputDatasink(config.output, config.run_id or "")
    dataset.write_datasink(sink)

    wall = time.monotonic() - started
    total = totals(sink.per_shard)
    summary = {
        "run_id": config.run_id,
        "model": config.model.name,
        "backend": config.model.backend,
        "input": config.input,
        "output": config.output,
        "shards": len(plan.shards),
        "wall_seconds": round(wall, 3),
        "queries_per_second": round(total["queries"] / wall, 3) if wall > 0 else 0.0,
        "totals": total,
        "per_shard": sink.per_shard,
        "files": sink.files,
    }
    write_json(join(config.output, "summary.json"), summary)
    return summary
