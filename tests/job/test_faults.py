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


def test_a_query_that_kills_its_actor_is_dead_lettered_when_the_actor_comes_back_on_another_node(cluster, tmp_path):
    """The batch markers are the cluster's (Ray's key-value store), not a node's: the first engine's node is taken
    away as soon as the engine is up, so every later death and restart of the actor happens on another node, and the
    query that kills the engine is still found and dead-lettered alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
    from tests.conftest import grey_jpeg

    rows = [
        {
            "query_id": f"q{index}",
            "query": "which page? #die" if index == 1 else "which page?",
            "candidates": [
                {"doc_id": f"d{doc}", "image": grey_jpeg(40 * doc + 20, (32, 32)), "image_uri": None, "text": None, "score": 1.0 - doc} for doc in range(2)
            ],
        }
        for index in range(3)
    ]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=GROUPED_INPUT_SCHEMA), tmp_path / "in" / "s.parquet")
    node_a = cluster.add_node(num_cpus=1, resources={"die-test": 1})
    cluster.wait_for_nodes()
    overrides = {
        "execution.actor_resources": {"die-test": 1},
        "execution.batch_size": 4,
        "execution.prepare_batch_size": 4,
        "execution.max_error_rate": 0.5,
        "model.engine_kwargs": {"seconds_per_call": 1.0, "pid_dir": str(tmp_path / "pids")},
    }
    thread, outcome = run_in_thread(load_config(None, job_values(tmp_path, **overrides)))
    wait_for(lambda: list((tmp_path / "pids").glob("*.node")), "the first engine")
    cluster.add_node(num_cpus=1, resources={"die-test": 1})
    cluster.remove_node(node_a)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    nodes = {path.read_text() for path in (tmp_path / "pids").glob("*.node")}
    assert len(nodes) >= 2  # the actor came back on the other node
    ranked = sorted(row["query_id"] for row in written_rows(tmp_path / "out") if row["query_id"] != "q1")
    assert ranked == ["q0", "q2"]
    letters = pq.read_table(next((tmp_path / "out" / "dead_letter").rglob("*.parquet"))).to_pylist()
    assert [letter["query_id"] for letter in letters] == ["q1"] and "actor died on this query's batch" in letters[0]["reason"]
