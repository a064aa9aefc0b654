"""A driver SIGKILLed mid-run (with the local Ray it started), then the same command again, on local files and on S3.

The rerun must finish only the remaining work, and the output must hold every
input query exactly once. This module starts no Ray of its own: each driver
subprocess starts one (with the S3 environment, when used) and takes it down
when killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from mmr5_batch.devtools.demo_data import write_demo_dataset
from tests.support.fault_support import QUERIES, assert_exactly_once, job_values, wait_for, written_rows


@pytest.fixture(params=["local", "s3"])
def prefixes(request, tmp_path):
    """(input, output) URIs holding the demo shards: a local folder, or a bucket on the loopback S3 server."""
    write_demo_dataset(tmp_path / "in", queries=QUERIES, candidates=4, shards=3)
    if request.param == "local":
        return str(tmp_path / "in"), str(tmp_path / "out")
    request.getfixturevalue("s3_endpoint")
    import boto3
    import s3fs

    boto3.client("s3").create_bucket(Bucket="driver-kill")
    s3fs.S3FileSystem().put(str(tmp_path / "in") + "/", "driver-kill/in/", recursive=True)
    return "s3://driver-kill/in/", "s3://driver-kill/out"


def read_summary(output: str) -> dict:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(output)
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{root}/summary.json"))


def test_killing_the_driver_then_rerunning(tmp_path, prefixes):
    """No shared Ray here: the driver subprocess starts its own, and dies with it."""
    source, output = prefixes
    values = job_values(tmp_path, input=source, output=output)
    (tmp_path / "job.yaml").write_text(json.dumps(_nested(values)))
    command = [sys.executable, "-m", "mmr5_batch.cli", "rerank", "--config", str(tmp_path / "job.yaml")]
    environment = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(command, start_new_session=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: written_rows(output) or driver.poll() is not None, "the first results", timeout=240)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    done_before = len(written_rows(output))
    assert 0 < done_before < QUERIES

    rerun = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exactly_once(output)
    summary = read_summary(output)
    assert summary["totals"]["queries"] == QUERIES - done_before  # only the remaining work
    assert summary["processed_shards_now_hold"]["queries"] == QUERIES


def _nested(values: dict) -> dict:
    tree: dict = {}
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


# The CLI as a terminal starts it: Ctrl-C raises KeyboardInterrupt. A process started in the background by a shell
# without job control (`cmd &` in a script, as some CI runners do) inherits SIGINT ignored, and Python then installs no
# handler for it: the test's Ctrl-C would be ignored by the driver it starts, as a background job's is.
AS_AT_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('mmr5_batch.cli', run_name='__main__', alter_sys=True)"
)


def test_runs_interrupted_while_their_first_batch_is_in_flight_leave_no_death_behind(tmp_path):
    """Ctrl-C three times while the first batch is in the engine, then the whole run: nothing is dead-lettered.
    Each driver starts its own Ray, so every one of these jobs has the same Ray job id; the batch markers belong
    to the attempt, so an interrupted batch is never taken for an actor's death."""
    import tempfile

    write_demo_dataset(tmp_path / "in", queries=8, candidates=3, shards=1)
    short = tempfile.mkdtemp(prefix="mg-", dir="/tmp")  # the runs' temp dir (Ray's socket paths must stay short)
    environment = {**os.environ, "RAY_ADDRESS": "", "TMPDIR": short}

    def command(name: str, **engine) -> list[str]:
        values = job_values(tmp_path, **{"model.engine_kwargs": engine, "execution.batch_size": 4, "execution.prepare_batch_size": 4})
        (tmp_path / f"{name}.yaml").write_text(json.dumps(_nested(values)))
        return [sys.executable, "-c", AS_AT_A_TERMINAL, "rerank", "--config", str(tmp_path / f"{name}.yaml")]

    for attempt in range(3):
        first_call = tmp_path / f"first-call-{attempt}"
        driver = subprocess.Popen(
            command(f"slow-{attempt}", seconds_per_call=120.0, first_call_file=str(first_call)),
            start_new_session=True,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: first_call.exists() or driver.poll() is not None, "the first batch in the engine", timeout=240)
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole process group
            driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
    finished = subprocess.run(command("whole"), env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = read_summary(str(tmp_path / "out"))
    assert summary["processed_shards_now_hold"]["queries"] == 8 and summary["processed_shards_now_hold"]["error"] == 0
    assert [row for row in written_rows(tmp_path / "out") if row["query_id"]] and not list((tmp_path / "out").glob("dead_letter/*/*.parquet"))
