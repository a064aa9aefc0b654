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

from . import __version__
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
from .placement import ActorPlacement, ClusterGpus, gpus_wanted_at_start, place_actors
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


def cluster_gpus(wanted: float, wait_seconds: float) -> ClusterGpus:
    """GPUs in the Ray cluster now, and the most it can have.

    An autoscaling cluster may have no GPU node until something asks for one
    (a GPU worker group scaled to zero between scheduled runs). Given
    `wait_seconds`, the autoscaler is asked for `wanted` GPUs and the job
    waits that long for them. Without it nothing is waited for: a local or
    fixed cluster without GPUs fails at once instead of hanging.
    """
    now = _gpus_now()
    reachable = max(now, float(_autoscaler_limits().get("GPU", 0) or 0))
    waited = 0.0
    if wanted > 0 and now < wanted and wait_seconds > 0:
        from ray.autoscaler.sdk import request_resources

        log.info("the Ray cluster has %g GPU(s): asking the autoscaler for %g GPU(s), waiting up to %gs", now, wanted, wait_seconds)
        request_resources(bundles=[{"GPU": wanted}])
        started = time.monotonic()
        while now < wanted and time.monotonic() - started < wait_seconds:
            time.sleep(2.0)
            now = _gpus_now()
        waited = time.monotonic() - started
        # The request is persistent: drop it, the rerank actors hold the nodes from here on.
        request_resources(bundles=[])
        reachable = max(reachable, now)
        log.info("GPUs in the cluster after %.0fs: %g", waited, now)
    return ClusterGpus(now=now, reachable=reachable, waited_seconds=waited)


def _gpus_now() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def _autoscaler_limits() -> dict[str, Any]:
    """The most resources per kind the autoscaler can reach, where Ray publishes its node types (Ray Data reads the same).

    The v1 autoscaler (KubeRay's default, the cluster launcher's) does not
    publish them: then this is empty and `execution.max_actors` bounds growth.
    """
    import ray

    try:
        return ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception as error:  # a private API: never let it stop the job
        log.debug("no autoscaler limits: %s", error)
        return {}


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


def _run_pipeline(config: JobConfig, plan: InputPlan, storage: Storage, attempt: str, placement: ActorPlacement) -> RerankOutputDatasink:
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
            min_size=placement.min_actors,
            max_size=placement.max_actors,
            max_concurrent_calls_per_actor=execution.concurrent_batches,
            max_tasks_in_flight_per_actor=execution.concurrent_batches,
        ),
        batch_size=execution.batch_size,
        batch_format="pyarrow",
        num_cpus=placement.cpus,
        num_gpus=placement.gpus,
        **placement.remote_args,
    )
    dataset.write_datasink(sink)
    return sink


def _has_work(shard: Any) -> bool:
    """Rows of the shard neither written already nor dead-lettered by the planner."""
    skip = set(shard.done) | set(shard.unaddressable)
    return any((query_id not in skip) for query_id in shard.query_ids)


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run the whole job and return the run summary (also written to OUTPUT/summary.json)."""
    config = config.with_run_id()
    attempt = f"{config.run_id}-{uuid.uuid4().hex[:6]}"
    storage = Storage(config.storage.s3_options())
    state = OutputState(storage, config.output)
    fingerprint = job_fingerprint(public_dump(config))
    plan = plan_input(config, storage, state)
    check_same_job(state, fingerprint, config.overwrite)
    for uri, reason in plan.bad.items():
        log.warning("skipping shard: %s", reason)
    # Which code runs: in a submitted job, the uploaded working dir's or the image's.
    log.info("mmr5-batch %s from %s", __version__, os.path.dirname(os.path.abspath(__file__)))
    log.info(
        "input %s: %d shards, %d to run (%d changed), %d done earlier, %d unreadable",
        config.input, plan.shards, len(plan.to_run), len(plan.changed), len(plan.skipped), len(plan.bad),
    )
    started = time.monotonic()
    ensure_ray(config.execution.address)
    placement = place_actors(config, cluster_gpus(gpus_wanted_at_start(config), config.execution.gpu_wait_seconds))
    log.info("rerank actors: %d to %d, each %g CPU and %g GPU", placement.min_actors, placement.max_actors, placement.cpus, placement.gpus)

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

    sink = _run_pipeline(config, plan, storage, attempt, placement)
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
