"""A driver SIGKILLed mid-run (with the local Ray it started), then the same command again.

The rerun must finish only the remaining work, and the output must hold every
input query exactly once. This module starts no Ray of its own: each driver
subprocess starts one and takes it down when killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from mmr5_batch.demo_data import write_demo_dataset
from tests.integration.fault_support import QUERIES, assert_exactly_once, job_values, wait_for, written_rows


def test_killing_the_driver_then_rerunning(tmp_path):
    """No shared Ray here: the driver subprocess starts its own, and dies with it."""
    write_demo_dataset(tmp_path / "in", queries=QUERIES, candidates=4, shards=3)
    (tmp_path / "job.yaml").write_text(json.dumps(_nested(job_values(tmp_path))))
    command = [sys.executable, "-m", "mmr5_batch.cli", "rerank", "--config", str(tmp_path / "job.yaml")]
    environment = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(command, start_new_session=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: written_rows(tmp_path / "out") or driver.poll() is not None, "the first results", timeout=240)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    done_before = len(written_rows(tmp_path / "out"))
    assert 0 < done_before < QUERIES

    rerun = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exactly_once(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
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
