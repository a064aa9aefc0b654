"""A submitted job on an autoscaling cluster whose GPU worker group is scaled to zero.

The head runs Ray's fake multi-node autoscaler with one worker type, a
one-GPU node, none running. The job is submitted as the KubeRay RayJob
manifest submits it: the code comes installed (here: this checkout's
jobs/rerank.py by absolute path), the runtime env is the manifest's own.
The job must ask the autoscaler for a GPU node, wait for it, and run its
rerank actor there.
"""

from __future__ import annotations

import json

import pytest
import yaml

from mmr5_batch.devtools.demo_data import write_demo_dataset
from tests.support.ray_head import REPO, job_info, ranked_query_ids, ray_cli, start_head, stop_head, submit


@pytest.fixture(scope="module")
def head():
    head = start_head(autoscaling_worker={"CPU": 1, "GPU": 1})
    yield head
    stop_head(head)


def test_gpu_actors_wait_for_the_autoscaler_and_run_on_the_gpu_node_it_adds(head, tmp_path):
    rayjob = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    (tmp_path / "runtime_env.yaml").write_text(rayjob["spec"]["runtimeEnvYAML"])
    write_demo_dataset(tmp_path / "in", queries=6, candidates=4, shards=2)
    (tmp_path / "job.yaml").write_text(json.dumps({"model": {"engine_kwargs": {"pid_dir": str(tmp_path / "pids")}}}))
    args = ["--config", str(tmp_path / "job.yaml"), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    entrypoint = ["python", str(REPO / "jobs" / "rerank.py"), *args, "--backend", "scripted-test", "--gpus-per-actor", "1", "--gpu-wait-seconds", "180"]
    done = submit(head, "mmr5-gpu", entrypoint, tmp_path / "runtime_env.yaml")
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-3000:]
    assert job_info(head, "mmr5-gpu")["status"] == "SUCCEEDED"
    assert "asking the autoscaler for 1 GPU(s)" in logs and "rerank actors: 1 to 1, each 1 CPU and 1 GPU" in logs
    nodes = json.loads(ray_cli(head, "list", "nodes", "--format", "json").stdout)
    gpu_nodes = {node["node_id"] for node in nodes if node["resources_total"].get("GPU")}
    [actor_node] = [path.read_text() for path in (tmp_path / "pids").glob("*.node")]
    assert gpu_nodes and actor_node in gpu_nodes
    assert sum(ranked_query_ids(tmp_path / "out").values()) == 6
