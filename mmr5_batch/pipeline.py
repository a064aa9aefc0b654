"""The one place that wires the Ray Data stages together: plan, read, prepare, rerank, write, account.

Planning happens on the driver before any Ray work (planner.py): shards
done in an earlier run are skipped, changed ones reprocessed, bad ones
recorded, and queries already written by an interrupted run dropped. A
problem that stops everything (no input, no readable shard, an output
prefix holding another job's results) stops the job with one line
(`JobError`). Then:

    read_parquet (with source paths) -> drop rows already done
    -> [groupby query_id for the pairs layout]
    -> repartition into small blocks (every actor gets work)
    -> prepare (CPU tasks) -> rerank (actor pool, one engine each) -> write (datasink)

and finally every processed shard's written rows are read back and counted:
a shard whose every query is there exactly once goes into the ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from typing import Any

from .config import JobConfig, config_to_yaml, public_dump
from .outputs import COUNTED_COLUMNS, COUNTERS, RerankOutputDatasink, merge_counters, totals
from .planner import (
    InputPlan,
    JobError,
    drop_rows,
    plan_input,
    rows_to_drop,
    shard_summary,
    write_unaddressable,
)
from .prepare import PrepareSettings, group_pairs, prepare_batch
from .progress import OutputState, describe_difference, job_fingerprint
from .rerank import RerankActor
from .schema import GROUPED
from .storage import Storage, join

log = logging.getLogger(__name__)

__all__ = ["JobError", "run_job"]


def check_same_job(state: OutputState, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Refuse to add rows to a prefix that holds results made with other settings (they would mix)."""
    try:
        earlier = state.job()
    except Exception as error:  # missing bucket, rejected credentials, unreachable endpoint
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise JobError(f"cannot read output {state.output}: {type(error).__name__}: {text}") from None
    if earlier is not None and earlier.get("digest") != fingerprint["digest"] and not overwrite:
        raise JobError(
            f"{state.output} holds results of a run with other settings ({describe_difference(earlier, fingerprint)}); "
            "choose another output or pass --overwrite"
        )


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


def _prepare_settings(config: JobConfig, storage: Storage) -> PrepareSettings:
    images = config.images
    return PrepareSettings(
        image_tokens=images.image_tokens,
        jpeg_quality=images.jpeg_quality,
        allowed_uri_prefixes=tuple(images.allowed_uri_prefixes),
        # The planner dead-letters these rows itself; the pipeline never sees them.
        duplicate_query_ids={},
        storage=storage,
        fetch_concurrency=images.fetch_concurrency,
        fetch_retries=images.fetch_retries,
        window=config.ranking.window,
        prompt_image_tokens=images.prompt_image_tokens,
        policy=images.policy,
        first_image_tokens=config.cascade.first_image_tokens if config.cascade.enabled else None,
    )


def _run_pipeline(config: JobConfig, plan: InputPlan, storage: Storage, attempt: str, cpus: float, gpus: float) -> RerankOutputDatasink:
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.data import ActorPoolStrategy

    execution = config.execution
    shards = {shard.path: (shard.uri, shard.key) for shard in plan.to_run}
    relabel = config.relabel
    pairs = (relabel.positives_top_k, relabel.label_column) if relabel.emit == "pairs" else None
    sink = RerankOutputDatasink(config.output, attempt, shards, storage, pairs)
    # A shard whose every query is written (or dead-lettered by the planner) is not read at all.
    paths = [shard.path for shard in plan.to_run if _has_work(shard)]
    if not paths:
        return sink
    dataset = ray.data.read_parquet(paths, filesystem=PyFileSystem(FSSpecHandler(plan.filesystem)), include_paths=True)
    drop = rows_to_drop(plan)
    if drop:
        dataset = dataset.map_batches(drop_rows, fn_kwargs={"drop": drop}, batch_format="pyarrow")
    if plan.layout != GROUPED:
        dataset = dataset.groupby("query_id").map_groups(group_pairs, batch_format="pyarrow")
    dataset = dataset.repartition(target_num_rows_per_block=execution.prepare_batch_size)
    dataset = dataset.map_batches(
        prepare_batch,
        fn_kwargs={"settings": _prepare_settings(config, storage)},
        batch_format="pyarrow",
        batch_size=execution.prepare_batch_size,
        num_cpus=execution.cpus_per_prepare_task,
    )
    dataset = dataset.map_batches(
        RerankActor,
        # Credentials stay with the driver and the storage tasks; the engine needs none.
        fn_constructor_kwargs={"config_json": config.model_dump_json(exclude={"storage"})},
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
        **({"resources": dict(execution.actor_resources)} if execution.actor_resources else {}),
    )
    dataset.write_datasink(sink)
    return sink


def _has_work(shard: Any) -> bool:
    """Rows of the shard neither written already nor dead-lettered by the planner."""
    skip = set(shard.done) | set(shard.unaddressable)
    return any((query_id not in skip) for query_id in shard.query_ids)


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run the whole job and return the run summary (also written to OUTPUT/summary.json)."""
    import ray

    config = config.with_run_id()
    attempt = f"{config.run_id}-{uuid.uuid4().hex[:6]}"
    storage = Storage(config.storage.s3_options())
    state = OutputState(storage, config.output)
    fingerprint = job_fingerprint(public_dump(config))
    plan = plan_input(config, storage, state)
    check_same_job(state, fingerprint, config.overwrite)
    for uri, reason in plan.bad.items():
        log.warning("skipping shard: %s", reason)
    started = time.monotonic()
    ensure_ray(config.execution.address)
    cpus, gpus = actor_resources(config, ray.cluster_resources().get("GPU", 0.0))

    # Everything is checked: now the output prefix may change.
    if config.overwrite:
        state.clear()
    for shard in plan.changed:
        state.forget_shard(shard.key)
    for shard in plan.to_run:
        state.remove_orphan_pairs(shard.key)
    state.record_job(fingerprint)
    storage.write_text(join(config.output, "config.yaml"), config_to_yaml(config))
    planner_letters = write_unaddressable(plan, state, config.run_id or "", config.model.name)

    sink = _run_pipeline(config, plan, storage, attempt, cpus, gpus)
    wall = time.monotonic() - started
    return _account(config, plan, state, sink, attempt, wall, planner_letters)


def _account(
    config: JobConfig, plan: InputPlan, state: OutputState, sink: RerankOutputDatasink, attempt: str, wall: float, planner_letters: int
) -> dict[str, Any]:
    """Read back what each processed shard holds, record complete shards in the ledger, write the summary."""
    storage = state.storage
    finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    shard_stats = {}
    for shard in plan.to_run:
        stats = shard_summary(shard, state.written(shard.key, COUNTED_COLUMNS))
        stats.update(run_id=config.run_id, finished_at=finished, key=shard.key)
        shard_stats[shard.uri] = stats
        storage.write_json(join(config.output, "stats", f"{shard.key}.json"), stats)
        if stats["complete"]:
            state.record_shard(shard.key, stats)
    incomplete = sorted(uri for uri, stats in shard_stats.items() if not stats["complete"])

    this_run = totals(sink.per_shard)
    processed = this_run["queries"] + planner_letters
    errors = this_run["error"] + planner_letters
    error_rate = errors / processed if processed else 0.0
    bad_rate = len(plan.bad) / plan.shards if plan.shards else 0.0
    limit = config.execution.max_error_rate
    failures = []
    if error_rate > limit:
        failures.append(
            f"{errors} of {processed} queries ({error_rate:.1%}) ended as dead letters, above --max-error-rate {limit:.1%}; "
            f"see {join(config.output, 'dead_letter')}"
        )
    if bad_rate > limit:
        failures.append(f"{len(plan.bad)} of {plan.shards} shards could not be read ({bad_rate:.1%}), above --max-error-rate {limit:.1%}")
    if incomplete:
        failures.append(f"{len(incomplete)} shard(s) not fully accounted for: {incomplete[:3]}")
    output_counters = merge_counters([{uri: stats["counters"]} for uri, stats in shard_stats.items()])
    summary = {
        "run_id": config.run_id,
        "attempt": attempt,
        "model": config.model.name,
        "backend": config.model.backend,
        "input": config.input,
        "output": config.output,
        "finished_at": finished,
        "shards": {
            "total": plan.shards,
            "processed": len(plan.to_run),
            "skipped_done_earlier": len(plan.skipped),
            "reprocessed_changed": len(plan.changed),
            "bad": len(plan.bad),
        },
        "bad_shards": plan.bad,
        "wall_seconds": round(wall, 3),
        "queries_per_second": round(processed / wall, 3) if wall > 0 else 0.0,
        "totals": this_run,
        "planner_dead_letters": planner_letters,
        "per_shard": sink.per_shard,
        "processed_shards_now_hold": totals(output_counters) if output_counters else dict.fromkeys(COUNTERS, 0),
        "incomplete_shards": incomplete,
        "error_rate": round(error_rate, 6),
        "max_error_rate": limit,
        "failed": "; ".join(failures) or None,
        "files": sink.files,
    }
    storage.write_json(join(config.output, "summary.json"), summary)
    storage.write_json(join(config.output, "_ledger", "runs", f"{attempt}.json"), summary)
    return summary
