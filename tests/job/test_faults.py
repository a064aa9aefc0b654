"""Faults on a local multi-node Ray (`ray.cluster_utils.Cluster`, as Ray's own tests do).

The scripted test engine takes time per call so each run is still going when
the test strikes: a worker node holding the rerank actor is removed, or the
actor's process is killed. Each time the output must hold every input query
exactly once. (The killed driver is in test_driver_kill.py: it needs no Ray
of the test's own.)
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from mmr5_batch.config import load_config
from mmr5_batch.devtools.demo_data import write_demo_dataset
from tests.support.fault_support import QUERIES, assert_exactly_once, job_values, wait_for, written_rows


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": "/tmp/ray-faults"},
    )
    ray.init(address=cluster.address, logging_level="ERROR")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def run_in_thread(config) -> tuple[threading.Thread, dict]:
    from mmr5_batch.job.runner import run_job

    outcome: dict = {}

    def target():
        try:
            outcome["summary"] = run_job(config)
        except BaseException as error:  # surfaced by the test after join
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_losing_the_node_of_the_rerank_actor(cluster, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=QUERIES, candidates=4, shards=3)
    # Rerank actors need the 'reranker' resource: only worker A has it at first.
    node_a = cluster.add_node(num_cpus=1, resources={"reranker": 1})
    cluster.wait_for_nodes()
    config = load_config(None, job_values(tmp_path, **{"execution.actor_resources": {"reranker": 1}}))
    thread, outcome = run_in_thread(config)
    wait_for(lambda: written_rows(tmp_path / "out"), "the first results")
    # The job is mid-run: give the actor somewhere to go, then take node A away.
    cluster.add_node(num_cpus=1, resources={"reranker": 1})
    cluster.remove_node(node_a)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert len(list((tmp_path / "pids").glob("*.pid"))) == 2  # the actor was rebuilt on node B
    assert_exactly_once(tmp_path / "out")
    assert outcome["summary"]["incomplete_shards"] == [] and outcome["summary"]["failed"] is None


def test_killing_the_rerank_actor(cluster, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=QUERIES, candidates=4, shards=3)
    config = load_config(None, job_values(tmp_path, **{"execution.actor_resources": {"reranker": 1}}))
    thread, outcome = run_in_thread(config)
    wait_for(lambda: written_rows(tmp_path / "out"), "the first results")
    [pid_file] = list((tmp_path / "pids").glob("*.pid"))
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert len(list((tmp_path / "pids").glob("*.pid"))) == 2  # the actor came back in a new process
    assert_exactly_once(tmp_path / "out")
    assert outcome["summary"]["failed"] is None


def test_gpu_actors_land_only_on_gpu_nodes_one_per_gpu(cluster, tmp_path):
    """Two nodes declare a GPU, the head is CPU only: with actors unset there is one actor per GPU, each on a GPU node."""
    write_demo_dataset(tmp_path / "in", queries=QUERIES, candidates=4, shards=3)
    gpu_nodes = {cluster.add_node(num_cpus=1, num_gpus=1).node_id for _ in range(2)}
    cluster.wait_for_nodes()
    overrides = {
        "execution.gpus_per_actor": 1,
        "model.engine_kwargs": {"pid_dir": str(tmp_path / "pids")},
        "execution.concurrent_batches": 2,
    }
    from mmr5_batch.job.runner import run_job

    summary = run_job(load_config(None, job_values(tmp_path, **overrides)))
    assert summary["failed"] is None
    assert_exactly_once(tmp_path / "out")
    actor_nodes = [path.read_text() for path in (tmp_path / "pids").glob("*.node")]
    assert len(actor_nodes) == 2 and set(actor_nodes) == gpu_nodes
