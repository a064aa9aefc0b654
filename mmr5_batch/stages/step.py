"""The reranker as one step of a Ray Data pipeline, in the style of `ray.data.llm` processors.

`build_reranker(config)` returns a `RerankStep`, a callable `Dataset ->
Dataset` that composes with whatever comes before and after. Applying it
places the actor pools, so it joins (or starts) Ray and, when the actors need
GPUs the cluster does not have yet, waits for them up to
`execution.gpu_wait_seconds`; the rows themselves are processed only when the
returned dataset is consumed, as for any Ray Data transform:

    rows in the grouped layout (or mapped to it: `ColumnMapping`)
    -> [pairs layout: groupby query_id]
    -> repartition into small blocks (every actor gets work)
    -> prepare (CPU tasks) -> [score (the two-model cascade's pointwise
    scorer: its own actor pool)] -> rerank (actor pool, one engine each)
    -> result rows (`rows.ResultRow`) plus every passthrough column

Rows that cannot be reranked come out with `status == "error"` and a
`reason`; the caller decides where they go. The exactly-once job
(`job/runner.py`) is this step between its planner and its sink.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mmr5_batch.config import RerankerConfig, config_from_keywords
from mmr5_batch.config.run import ModelStage, ResolvedRun, resolve_run
from mmr5_batch.core.group_key import group_key, group_key_problem
from mmr5_batch.core.layouts import GROUPED, PAIRS
from mmr5_batch.core.preparation import PrepareSettings
from mmr5_batch.core.rows import CANDIDATE_FIELDS, InputCandidate, struct_type
from mmr5_batch.errors import ConfigError, ContractError
from mmr5_batch.stages.cluster import cluster_gpus, ensure_ray
from mmr5_batch.stages.model_actor import ModelActor
from mmr5_batch.stages.placement import ActorPlacement, ClusterGpus, gpus_wanted_at_start, place_actors, place_scorer
from mmr5_batch.stages.prepare_stage import PREPARE, FetchSettings, group_pairs_batch, prepare_batch
from mmr5_batch.stages.progress_tally import ProgressFeed

if TYPE_CHECKING:
    from ray.data import Dataset


@dataclass(frozen=True)
class ColumnMapping:
    """Where the grouped layout's columns are in a dataset with other names (defaults: the grouped layout's own)."""

    query_id: str = "query_id"
    query: str = "query"
    candidates: str = "candidates"
    # Field names inside each candidate struct.
    doc_id: str = "doc_id"
    image: str = "image"
    image_uri: str = "image_uri"
    text: str = "text"
    score: str = "score"

    @property
    def is_identity(self) -> bool:
        return self == ColumnMapping()

    def to_grouped(self, batch: pa.Table) -> pa.Table:
        """The batch with the mapped columns renamed to the grouped layout, candidate fields included."""
        renames = {self.query_id: "query_id", self.query: "query", self.candidates: "candidates"}
        missing = [name for name in renames if name not in batch.column_names]
        clashing = [name for name in batch.column_names if name in renames.values() and name not in renames]
        if missing or clashing:
            problem = f"lacks column(s) {missing}" if missing else f"has column(s) {clashing} besides the ones mapped onto them"
            raise ContractError(f"stage 'columns' (ColumnMapping {renames}): the batch {problem}; it has {batch.column_names}")
        columns = {renames.get(name, name): batch.column(name) for name in batch.column_names}
        columns["candidates"] = self._candidates(batch.column(self.candidates))
        return pa.table(columns)

    def _candidates(self, column: pa.ChunkedArray) -> pa.Array:
        lists = column.combine_chunks() if column.num_chunks else pa.array([], type=pa.list_(struct_type(InputCandidate)))
        if not (pa.types.is_list(lists.type) or pa.types.is_large_list(lists.type)) or not pa.types.is_struct(lists.type.value_type):
            return lists  # not list<struct>: the prepare stage's contract names the problem
        structs = lists.values
        source = {getattr(self, name): name for name in CANDIDATE_FIELDS}
        children, names = [], []
        for index in range(structs.type.num_fields):
            field_name = structs.type.field(index).name
            if field_name in source:
                children.append(structs.field(index))
                names.append(source[field_name])
        rebuilt = pa.StructArray.from_arrays(children, names=names, mask=structs.is_null()) if children else structs
        return type(lists).from_arrays(lists.offsets, rebuilt, mask=lists.is_null())


class RerankStep:
    """`Dataset -> Dataset`: prepare and rerank every row; see the module docstring."""

    def __init__(
        self,
        config: RerankerConfig,
        *,
        columns: ColumnMapping | None = None,
        layout: str = GROUPED,
        run_id: str = "",
        attempt: str | None = None,
        placement: ActorPlacement | None = None,
        prepare: PrepareSettings | None = None,
        scorer_placement: ActorPlacement | None = None,
        progress: ProgressFeed | None = None,
        rows_grouped: bool = False,
    ) -> None:
        if layout not in (GROUPED, PAIRS):
            raise ConfigError(f"layout must be {GROUPED!r} or {PAIRS!r}, got {layout!r}")
        self.run: ResolvedRun[RerankerConfig] = resolve_run(config.reranker_only())
        self.config = self.run.config
        self.columns = columns or ColumnMapping()
        self.layout = layout
        self.run_id = run_id
        # Whose batch markers the actors keep (batch_guard.py): the job's attempt, else one made each time it is applied.
        self.attempt = attempt
        self.placement = placement
        self.scorer_placement = scorer_placement
        self.prepare = prepare or self.run.prepare
        self.progress = progress  # told of every batch the rerank pool finishes (the exactly-once job's progress line)
        # The rows arrive already grouped by execution.group_by (the job's reader groups within its read tasks).
        self.rows_grouped = rows_grouped

    def __call__(self, dataset: Dataset) -> Dataset:
        execution = self.config.execution
        if self.placement is None:
            self.placement, self.scorer_placement = self._place()
        placement = self.placement
        attempt = self.attempt or f"step-{uuid.uuid4().hex}"
        if self.layout == PAIRS:
            dataset = dataset.groupby(self.columns.query_id).map_groups(group_pairs_batch, batch_format="pyarrow")
        if not self.columns.is_identity:
            dataset = dataset.map_batches(self.columns.to_grouped, batch_format="pyarrow")
        self._check_known_schema(dataset)
        if execution.group_by and not self.rows_grouped:
            dataset = group_rows(dataset, execution.group_by)
        dataset = dataset.repartition(target_num_rows_per_block=execution.prepare_batch_size)
        dataset = dataset.map_batches(
            partial(prepare_batch, settings=self.prepare, fetch=FetchSettings.from_config(self.config)),
            batch_format="pyarrow",
            batch_size=execution.prepare_batch_size,
            num_cpus=execution.cpus_per_prepare_task,
        )
        # The run's model stages, each its own actor pool (the scorer's, then the main model's), in the order the
        # resolved run gives them; the in-process Reranker runs the same list.
        for stage in self.run.stages(self.run_id):
            if stage.last:
                dataset = self._actor_stage(dataset, stage, placement, attempt, self.progress)
            else:
                scorer = self.scorer_placement or place_scorer(self.run, _cluster_gpus(self.run))
                dataset = self._actor_stage(dataset, stage, scorer, attempt)
        return dataset

    def _actor_stage(self, dataset: Dataset, stage: ModelStage, placement: ActorPlacement, attempt: str, progress: ProgressFeed | None = None) -> Dataset:
        """An actor pool for `stage` (one engine each, built for that stage as the run resolved it) over the dataset's
        batches. The stage carries the model section without storage credentials: the engines need none."""
        from ray.data import ActorPoolStrategy

        concurrent = self.config.execution.concurrent_batches
        return dataset.map_batches(
            ModelActor,
            fn_constructor_kwargs={"stage": stage, "attempt": attempt, "progress": progress},
            # The actor's __call__ is async: several batches run through one
            # engine at once, so a batch's last answers overlap the next batch.
            compute=ActorPoolStrategy(
                min_size=placement.min_actors,
                max_size=placement.max_actors,
                max_concurrent_calls_per_actor=concurrent,
                max_tasks_in_flight_per_actor=concurrent,
            ),
            batch_size=stage.batch_size,
            batch_format="pyarrow",
            num_cpus=placement.cpus,
            num_gpus=placement.gpus,
            **placement.remote_args,
        )

    def _place(self) -> tuple[ActorPlacement, ActorPlacement | None]:
        gpus = _cluster_gpus(self.run)
        return place_actors(self.run, gpus), place_scorer(self.run, gpus) if self.run.two_models else None

    def _check_known_schema(self, dataset: Dataset) -> None:
        """Check the prepare stage's contract now when the schema is known without running anything."""
        if self.layout == PAIRS:
            return
        schema = dataset.schema(fetch_if_missing=False)
        if schema is not None and isinstance(getattr(schema, "base_schema", None), pa.Schema):
            PREPARE.check_input(schema.base_schema)
            group_by = self.config.execution.group_by
            if group_by and (problem := group_key_problem(group_by, schema.base_schema)) is not None:
                raise ContractError(problem)


# The sort key `group_rows` adds and drops again: the grouping column's values as bytes (core/group_key.py).
GROUP_KEY = "__mmr5_group_key"


def _with_group_key(batch: pa.Table, column: str) -> pa.Table:
    problem = group_key_problem(column, batch.schema)
    if problem is not None:
        raise ContractError(problem)
    return batch.append_column(GROUP_KEY, group_key(batch.column(column)))


def group_rows(dataset: Dataset, column: str) -> Dataset:
    """The rows sorted by `column` across the dataset (a Ray Data sort: a shuffle of whole rows), so equal values
    (queries over one document) land in the same blocks and batches. The job groups within its read tasks instead
    (`rows_grouped`), moving no page between workers."""
    keyed = dataset.map_batches(partial(_with_group_key, column=column), batch_format="pyarrow")
    return keyed.sort(GROUP_KEY).drop_columns([GROUP_KEY])


def _cluster_gpus(run: ResolvedRun) -> ClusterGpus:
    execution = run.config.execution
    ensure_ray(execution.address)
    return cluster_gpus(gpus_wanted_at_start(run), execution.gpu_wait_seconds)


def build_reranker(
    config: RerankerConfig | dict[str, Any] | None = None,
    *,
    columns: ColumnMapping | dict[str, str] | None = None,
    layout: str = GROUPED,
    run_id: str = "",
    **settings: Any,
) -> RerankStep:
    """A `RerankStep` from a config (or a dict of one) and flat settings (`window=5`, `backend="vllm"`, ...)."""
    resolved = config_from_keywords(RerankerConfig, config, **settings)
    mapping = ColumnMapping(**columns) if isinstance(columns, dict) else columns
    return RerankStep(resolved, columns=mapping, layout=layout, run_id=run_id)


def rerank_dataset(dataset: Dataset, config: RerankerConfig | dict[str, Any] | None = None, **options: Any) -> Dataset:
    """`build_reranker(config, **options)(dataset)`: the reranked dataset (actors placed now, rows processed when it is consumed)."""
    return build_reranker(config, **options)(dataset)
