"""Shared by the fault tests: a slow scripted job, waiting on a condition, the exactly-once check."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

QUERIES = 24


def written_rows(output: Path | str) -> list[dict]:
    """(query_id, source_path) of every result row under an output prefix, local or s3://."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(str(output))
    fs.invalidate_cache()
    rows = []
    for folder in ("ranked", "dead_letter"):
        if not fs.exists(f"{root}/{folder}"):
            continue
        for name in sorted(fs.find(f"{root}/{folder}")):
            if name.endswith(".parquet") and not name.rsplit("/", 1)[-1].startswith("."):
                with fs.open(name, "rb") as handle:
                    rows += pq.read_table(handle, columns=["query_id", "source_path"]).to_pylist()
    return rows


def assert_exactly_once(output: Path | str) -> None:
    counts = Counter((row["source_path"], row["query_id"]) for row in written_rows(output))
    assert len(counts) == QUERIES and set(counts.values()) == {1}


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def job_values(tmp_path: Path, **overrides) -> dict:
    return {
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "model.backend": "scripted-test",
        "model.engine_kwargs": {"seconds_per_call": 0.4, "pid_dir": str(tmp_path / "pids")},
        "ranking.window": 3,
        "ranking.stride": 2,
        "execution.batch_size": 2,
        "execution.prepare_batch_size": 2,
        "execution.concurrent_batches": 1,
        "execution.rows_per_write": 2,  # a file per batch, so results appear while the job still runs
        **overrides,
    }
