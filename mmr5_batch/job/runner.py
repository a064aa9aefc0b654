"""The exactly-once job: plan -> the rerank step -> the exactly-once sink -> accounting.

Planning (planner.py: the driver lists and reads the ledger, Ray tasks
survey the shards) decides which shards run: done in an earlier run are
skipped, changed ones reprocessed, bad ones recorded, and queries already
written by an interrupted run dropped. A problem that stops everything (no
input, no readable shard, an output prefix holding another job's results,
no GPU) stops the job with one line (`JobError`) before the output prefix
changes. Then:

    read the shards (shard_reader.py: grouped read tasks, each shard as the
    run's schema, rows already done dropped) -> the rerank step
    (stages/step.py: prepare, rerank) -> write (datasink: ranked rows and
    dead letters per source shard and write task)

and finally every processed shard's written rows are read back and counted
in Ray tasks (readback.py): shards whose every query is there exactly once
go into the ledger, in one write. Every write to the output prefix is a step
of one transaction (output/transaction.py: plan, open, begin, commit a wave,
finish), whose type allows only the crash-safe order.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import pyarrow as pa

from mmr5_batch.config import JobConfig, config_from_keywords, config_to_yaml, load_config
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.layouts import GROUPED, layout_schema
from mmr5_batch.core.vocabulary import ERROR
from mmr5_batch.engines.factory import check_importable
from mmr5_batch.errors import JobError
from mmr5_batch.job.accounting import COUNTERS, RunOutcome, failures, merge_counters, now_iso, totals
from mmr5_batch.job.dead_letters import write_unaddressable
from mmr5_batch.job.fingerprint import run_fingerprint
from mmr5_batch.job.planner import InputPlan, plan_input
from mmr5_batch.job.progress import ProgressLines, ProgressReporter, ProgressWatch
from mmr5_batch.job.readback import read_back
from mmr5_batch.job.shard_reader import read_shards
from mmr5_batch.job.sink import RerankOutputDatasink
from mmr5_batch.output.records import RunSummary, ShardStats
from mmr5_batch.output.transaction import OutputTransaction
from mmr5_batch.stages.batch_guard import clear_batch_markers
from mmr5_batch.stages.cluster import cluster_gpus, ensure_ray, ray_is_local
from mmr5_batch.stages.placement import ActorPlacement, gpus_wanted_at_start, place_actors, place_scorer
from mmr5_batch.stages.progress_tally import ProgressFeed
from mmr5_batch.stages.run_metrics import JobMetrics
from mmr5_batch.stages.step import RerankStep
from mmr5_batch.storage.filesystems import Storage
from mmr5_batch.version import __version__

log = logging.getLogger(__name__)


def _run_pipeline(
    config: JobConfig,
    plan: InputPlan,
    storage: Storage,
    attempt: str,
    placements: tuple[ActorPlacement, ActorPlacement | None],
    progress: ProgressFeed | None,
) -> RerankOutputDatasink:
    """One wave's pipeline: its shards read, reranked by the step (its batch markers this attempt's), written."""
    shards = {shard.path: (shard.uri, shard.key) for shard in plan.to_run}
    relabel = config.relabel
    pairs = (relabel.positives_top_k, relabel.label_column) if relabel.emit == "pairs" else None
    sink = RerankOutputDatasink(config.output, attempt, shards, storage, pairs, config.execution.rows_per_write)
    # Grouped shards are ordered by execution.group_by inside each read task, moving no page between workers; pairs
    # are regrouped by query across the dataset anyway, so the step sorts them after that.
    group_in_reader = config.execution.group_by if plan.layout == GROUPED else None
    # A shard whose every query is written (or dead-lettered by the planner) is not read at all.
    dataset = read_shards(plan, storage, config.execution.read_task_bytes, config.execution.shards_per_read_task, group_in_reader)
    if dataset is None:
        return sink
    placement, scorer = placements
    step = RerankStep(
        config,
        layout=plan.layout,
        run_id=config.run_id or "",
        attempt=attempt,
        placement=placement,
        scorer_placement=scorer,
        progress=progress,
        rows_grouped=group_in_reader is not None,
    )
    step(dataset).write_datasink(sink)
    return sink


def _passthrough(plan: InputPlan) -> pa.Schema:
    """The passthrough columns' types to record: the run schema's, which planning built on the earlier runs' types."""
    own = set(layout_schema(plan.layout).names)
    return pa.schema([field for field in plan.schema if field.name not in own])


def run_job(
    config: JobConfig | dict[str, Any] | str | os.PathLike[str] | None = None, *, progress: ProgressReporter | None = None, **settings: Any
) -> dict[str, Any]:
    """Run the whole exactly-once job and return the run summary (also written to OUTPUT/summary.json).

    `config` is a `JobConfig`, a dict of one (as in the YAML file), the path
    of a YAML file, or None; keyword settings override it (`input=...,
    output=..., window=5`). The summary's `failed` is None, or why the run
    counts as failed (too many dead letters or bad shards; see the CLI's exit 3).
    `progress` shows the run while it runs (job/progress.py); by default a log
    line every `execution.progress_seconds`.
    """
    if isinstance(config, str | os.PathLike):
        config = load_config(os.fspath(config))
    run = resolve_run(config_from_keywords(JobConfig, config, **settings).with_run_id().with_local_output_absolute())
    config = run.config  # every later step reads the resolved run ('auto' decided here, once)
    attempt = f"{config.run_id}-{uuid.uuid4().hex[:6]}"
    storage = Storage(config.storage.s3_options())
    # Before Ray starts (planning starts it): an output that cannot be written, or (where the actors will run in this
    # Python, a Ray of our own) an engine that cannot be imported, is the whole story.
    problem = storage.writability_problem(config.output)
    if problem is not None:
        raise JobError(f"cannot write to output {config.output}: {problem}")
    if ray_is_local(config.execution.address):
        for spec in (run.main, run.scorer):
            if spec is not None:
                check_importable(spec)
    transaction = OutputTransaction(
        storage, config.output, attempt, run_fingerprint(run), overwrite=config.overwrite, planner=partial(plan_input, config, storage)
    )
    timings: dict[str, float] = {}
    started = time.monotonic()
    plan = transaction.plan()
    timings["plan_seconds"] = time.monotonic() - started
    _log_plan(config, plan)
    ensure_ray(config.execution.address)
    metrics = JobMetrics.start(config.run_id or "", config.model.name, run.protocol)
    gpus = cluster_gpus(gpus_wanted_at_start(run), config.execution.gpu_wait_seconds)
    placement = place_actors(run, gpus)
    scorer = place_scorer(run, gpus) if run.two_models else None
    log.info("rerank actors: %d to %d, each %g CPU and %g GPU", placement.min_actors, placement.max_actors, placement.cpus, placement.gpus)
    if scorer is not None:
        log.info("scorer actors: %d, each %g CPU and %g GPU", scorer.max_actors, scorer.cpus, scorer.gpus)
    with transaction:
        plan = transaction.open(config.run_id or "", config.execution.lease_seconds) or plan
        reporter = progress or ProgressLines(config.execution.progress_seconds)
        try:
            return _write(config, plan, transaction, (placement, scorer), started, timings, metrics, reporter)
        finally:
            clear_batch_markers(attempt)


def _log_plan(config: JobConfig, plan: InputPlan) -> None:
    for reason in plan.bad.values():
        log.warning("skipping shard: %s", reason)
    if plan.ignored:
        log.info("ignored %d file(s) under the input that are not data ('_' or '.' names, not .parquet): %s", len(plan.ignored), plan.ignored[:5])
    # Which code runs: in a submitted job, the uploaded working dir's or the image's.
    log.info("mmr5-batch %s from %s", __version__, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    log.info(
        "input %s: %d shards, %d to run (%d changed), %d done earlier, %d unreadable",
        config.input,
        plan.shards,
        len(plan.to_run),
        len(plan.changed),
        len(plan.skipped),
        len(plan.bad),
    )


def _write(
    config: JobConfig,
    plan: InputPlan,
    transaction: OutputTransaction[InputPlan],
    placements: tuple[ActorPlacement, ActorPlacement | None],
    started: float,
    timings: dict[str, float],
    metrics: JobMetrics,
    reporter: ProgressReporter,
) -> dict[str, Any]:
    """Holding the lease: begin, run the pipeline wave by wave, commit each, finish."""
    attempt = transaction.attempt
    transaction.begin(
        changed=[shard.key for shard in plan.changed],
        to_run={shard.key: shard.fingerprint for shard in plan.to_run},
        input_layout=plan.layout,
        passthrough=_passthrough(plan),
        config_yaml=config_to_yaml(config),
    )
    planner_letters = write_unaddressable(plan, transaction, config.run_id or "", config.model.name, config.model.backend)

    written = WrittenSoFar()
    waves = plan.waves(config.execution.queries_per_wave)
    metrics.shards(done=len(plan.skipped), pending=len(plan.to_run), bad=len(plan.bad))
    watch = ProgressWatch(reporter, {shard.path: shard.pending for shard in plan.to_run}, planner_letters).start()
    try:
        for number, wave in enumerate(waves, 1):
            if len(waves) > 1:
                log.info("wave %d of %d: %d shards, %d queries", number, len(waves), len(wave.to_run), sum(shard.pending for shard in wave.to_run))
            pipeline_started = time.monotonic()
            sink = _run_pipeline(config, wave, transaction.storage, attempt, placements, watch.feed)
            readback_started = time.monotonic()
            written.add(sink, _read_back(config, wave, transaction, number, len(waves)))
            complete = sum(1 for stats in written.shard_stats.values() if stats.complete)
            metrics.shards(done=len(plan.skipped) + complete, pending=len(plan.to_run) - complete, bad=len(plan.bad))
            timings["pipeline_seconds"] = timings.get("pipeline_seconds", 0.0) + readback_started - pipeline_started
            timings["readback_seconds"] = timings.get("readback_seconds", 0.0) + time.monotonic() - readback_started
    except BaseException:
        watch.stop()
        raise
    watch.stop(written.progress())
    timings["waves"] = len(waves)
    summary = _summary(config, plan, written, attempt, time.monotonic() - started, planner_letters, timings)
    transaction.finish(summary)
    return summary.to_json()


@dataclass
class WrittenSoFar:
    """What the waves wrote: counters and files per shard from the sinks, and each shard as read back."""

    per_shard: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    shard_stats: dict[str, ShardStats] = field(default_factory=dict)

    def progress(self) -> tuple[int, int, int]:
        """This run's queries written, shards complete and the model stage's dead letters: the progress line's last look."""
        counted = totals(self.per_shard)
        return counted["queries"], sum(1 for stats in self.shard_stats.values() if stats.complete), counted[ERROR]

    def add(self, sink: RerankOutputDatasink, shard_stats: dict[str, ShardStats]) -> None:
        # A shard runs in exactly one wave: nothing to merge.
        self.per_shard.update(sink.per_shard)
        self.files.extend(sink.files)
        self.shard_stats.update(shard_stats)


def _read_back(config: JobConfig, plan: InputPlan, transaction: OutputTransaction[InputPlan], wave: int, waves: int) -> dict[str, ShardStats]:
    """Each of the wave's shards' rows as written, counted (Ray tasks); its complete shards committed in one write."""
    finished = now_iso()
    shard_stats = {
        uri: replace(stats, run_id=config.run_id, finished_at=finished)
        for uri, stats in read_back(plan.to_run, transaction.store.written_files(), transaction.storage).items()
    }
    complete = {shard.key: shard_stats[shard.uri] for shard in plan.to_run if shard_stats[shard.uri].complete}
    transaction.commit_wave(complete, wave=wave, waves=waves)
    return shard_stats


def _summary(
    config: JobConfig,
    plan: InputPlan,
    written: WrittenSoFar,
    attempt: str,
    wall: float,
    planner_letters: int,
    timings: dict[str, float],
) -> RunSummary:
    """Count what every processed shard holds now: the run summary."""
    finished = now_iso()
    outcome = RunOutcome(totals(written.per_shard), planner_letters, written.shard_stats)
    limit = config.execution.max_error_rate
    failed = failures(outcome, len(plan.bad), plan.shards, limit, config.output)
    output_counters = merge_counters([{uri: dict(stats.counters)} for uri, stats in outcome.shard_stats.items()])
    return RunSummary(
        run_id=config.run_id,
        attempt=attempt,
        model=config.model.name,
        backend=config.model.backend,
        input=config.input,
        output=config.output,
        finished_at=finished,
        shards={
            "total": plan.shards,
            "processed": len(plan.to_run),
            "skipped_done_earlier": len(plan.skipped),
            "reprocessed_changed": len(plan.changed),
            "bad": len(plan.bad),
        },
        bad_shards=plan.bad,
        # Files under the input that are not data: names starting with '_' or '.', or not ending in .parquet.
        ignored_files={"count": len(plan.ignored), "first": plan.ignored[:20]},
        wall_seconds=round(wall, 3),
        # Where the time went: planning (listing, ledger, survey), the pipeline, the end-of-run readback.
        timings={name: round(value, 3) for name, value in timings.items()},
        queries_per_second=round(outcome.processed / wall, 3) if wall > 0 else 0.0,
        totals=outcome.this_run,
        planner_dead_letters=planner_letters,
        per_shard=written.per_shard,
        processed_shards_now_hold=totals(output_counters) if output_counters else dict.fromkeys(COUNTERS, 0),
        incomplete_shards=outcome.incomplete,
        error_rate=round(outcome.errors / outcome.processed, 6) if outcome.processed else 0.0,
        max_error_rate=limit,
        failed="; ".join(failed) or None,
        files=sorted(written.files),
    )
