"""`ray job submit` against a real Ray head, as users run the job on a cluster.

The head is started with `ray start --head` and Ray's defaults (so token
authentication on, the dashboard's job server on loopback); jobs go in over
HTTP with this checkout as the working dir and cluster/runtime_env.yaml as
the runtime env, from a client holding only what docs/cluster.md tells a
user to set, exactly as the docs say. The scripted test engine stands in for the model;
everything else is real.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest

from mmr5_batch.devtools.demo_data import write_demo_dataset
from tests.support.ray_head import REPO, job_info, job_logs, ranked_query_ids, start_head, stop_head, submit


@pytest.fixture(scope="module")
def head():
    head = start_head()
    yield head
    stop_head(head)


def submit_rerank(head, submission_id, *job_args):
    return submit(head, submission_id, ["python", "jobs/rerank.py", *job_args], REPO / "cluster" / "runtime_env.yaml", working_dir=REPO)


def test_a_submitted_rerank_job_runs_the_uploaded_code_and_writes_every_query_once(head, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=12, candidates=5, shards=3)
    done = submit_rerank(head, "mmr5-ok", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "scripted-test")
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-3000:]
    assert job_info(head, "mmr5-ok")["status"] == "SUCCEEDED"
    # Progress in the job's log: our lines, Ray Data's, and the closing summary.
    assert "mmr5-batch: input " in logs and "3 shards, 3 to run" in logs and "queries/second" in logs
    # The code that ran is the uploaded working dir, which left environments and caches behind.
    [uploaded] = [path for path in (head.temp_dir / "session_latest").resolve().joinpath("runtime_resources", "working_dir_files").iterdir() if path.is_dir()]
    assert f"from {uploaded / 'mmr5_batch'}" in logs
    assert (uploaded / "mmr5_batch" / "job" / "runner.py").is_file() and (uploaded / "cluster" / "runtime_env.yaml").is_file()
    assert not any((uploaded / name).exists() for name in (".venv", ".git", "demo", ".pytest_cache"))
    assert not list(uploaded.rglob("__pycache__"))
    counts = ranked_query_ids(tmp_path / "out")
    assert sorted(counts) == [f"q{i:04d}" for i in range(12)] and set(counts.values()) == {1}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failed"] is None and summary["totals"]["queries"] == 12


def test_a_bad_job_fails_with_its_one_line_reason_and_exit_code(head, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=2, candidates=3, shards=1)
    done = submit_rerank(head, "mmr5-bad", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--window", "3", "--stride", "3")
    assert done.returncode == 1  # `ray job submit` exits 1 when the job fails
    assert "mmr5-batch: error: " in done.stdout and "stride (3) must be smaller than window (3)" in done.stdout
    info = job_info(head, "mmr5-bad")
    assert info["status"] == "FAILED" and "exit code 2" in info["message"]
    assert not (tmp_path / "out").exists()


def test_a_gpu_job_on_a_cluster_without_gpus_says_so_instead_of_hanging(head, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=2, candidates=3, shards=1)
    done = submit_rerank(head, "mmr5-nogpu", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "vllm")
    assert done.returncode == 1
    assert "mmr5-batch: error: no GPU available: the rerank actors need 1 GPU(s) each, the Ray cluster has 0" in done.stdout
    info = job_info(head, "mmr5-nogpu")
    assert info["status"] == "FAILED" and "exit code 2" in info["message"]


def test_an_engine_the_cluster_cannot_import_is_said_in_one_line_after_the_first_actor_tries(head, tmp_path, tiny_model_dir):
    """The driver of a submitted job cannot tell what the actors' Python holds, so the first actor's attempt says it:
    the job's log (its console) is our few lines and the one error line; the actor's traceback is in the log file it
    names."""
    if find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")
    write_demo_dataset(tmp_path / "in", queries=2, candidates=3, shards=1)
    args = ("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", tiny_model_dir, "--backend", "vllm", "--device", "cpu")
    done = submit_rerank(head, "mmr5-noengine", *args)
    assert done.returncode == 1
    logged = job_logs(head, "mmr5-noengine").splitlines()
    # Ray's job manager writes its own lines first (the runtime env, the entrypoint); the job's console follows.
    console = logged[next(index for index, line in enumerate(logged) if line.startswith("Running entrypoint for job")) + 1 :]
    [error] = [line for line in console if "error" in line]
    assert error.startswith("mmr5-batch: error: the vllm backend needs vllm (No module named 'vllm')"), console
    log = Path(error.rsplit("(log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "EngineUnavailable" in log.read_text()
    # The log line, what runs (version, input, actors), the progress so far, the error.
    assert len(console) <= 6 and not [line for line in console if "Traceback" in line or "pid=" in line], console


def test_scheduled_submissions_rerank_only_the_shards_that_arrived_since_the_last(head, tmp_path):
    """cluster/schedule/submit.sh, as cron runs it, over a prefix that grows between two slots."""
    shards = write_demo_dataset(tmp_path / "all", queries=9, candidates=3, shards=3)
    (tmp_path / "in").mkdir()
    for shard in shards[:2]:
        shutil.copy(shard, tmp_path / "in")
    env = {
        **head.env,
        "RAY_ADDRESS": head.address,
        "MMR5_INPUT": str(tmp_path / "in"),
        "MMR5_OUTPUT": str(tmp_path / "out"),
        "MMR5_ARGS": "--backend scripted-test",
        "MMR5_LOCK": str(tmp_path / "lock"),
    }

    def slot() -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "cluster" / "schedule" / "submit.sh")], env=env, capture_output=True, text=True, timeout=600)

    first = slot()
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert "input " + str(tmp_path / "in") + ": 2 shards, 2 to run (0 changed), 0 done earlier" in first.stdout
    shutil.copy(shards[2], tmp_path / "in")
    second = slot()
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "3 shards, 1 to run (0 changed), 2 done earlier" in second.stdout
    counts = ranked_query_ids(tmp_path / "out")
    assert sorted(counts) == [f"q{i:04d}" for i in range(9)] and set(counts.values()) == {1}
    # A slot that comes while a run still holds the lock does nothing.
    with open(tmp_path / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        skipped = slot()
    assert skipped.returncode == 75 and "this slot skips" in skipped.stderr and "ray job submit" not in skipped.stdout


def test_a_client_without_the_token_setting_gets_the_error_the_docs_explain(head, tmp_path):
    """docs/cluster.md, "Token authentication": without RAY_AUTH_MODE=token, `ray job submit` fails at once with this."""
    env = {key: value for key, value in head.env.items() if key != "RAY_AUTH_MODE"}
    done = subprocess.run(
        ["ray", "job", "submit", "--address", head.address, "--", "python", "-c", "pass"], env=env, capture_output=True, text=True, timeout=300
    )
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Token authentication is enabled but no authentication token was found" in said and "RAY_AUTH_MODE is currently 'disabled'" in said
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert "Token authentication is enabled but no authentication token was found" in docs and "export RAY_AUTH_MODE=token" in docs
