"""examples/ray_pipeline.py runs as printed: read Parquet -> rerank step -> split errors -> write Parquet (its own local Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.devtools.demo_data import write_demo_dataset
from tests.conftest import read_folder

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ray_pipeline.py"


def test_ray_pipeline_example(tmp_path):
    write_demo_dataset(tmp_path / "in", queries=6, candidates=4, shards=1)
    bad = {"query_id": "bad", "query": "", "candidates": [], "domain": "x", "gold_doc_ids": []}
    schema = pq.read_schema(next((tmp_path / "in").glob("*.parquet")))
    assert set(GROUPED_INPUT_SCHEMA.names) <= set(schema.names)
    pq.write_table(pa.Table.from_pylist([bad], schema=schema), tmp_path / "in" / "bad.parquet")
    env = os.environ | {"RAY_TMPDIR": "/tmp", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "scripted-test"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranked, errors = read_folder(tmp_path / "out" / "ranked"), read_folder(tmp_path / "out" / "errors")
    assert sorted(row["query_id"] for row in ranked) == [f"q{index:04d}" for index in range(6)]
    assert all(sorted(row["doc_ids"]) == sorted(row["first_stage_doc_ids"]) and row["domain"] for row in ranked)
    assert [(row["query_id"], row["status"]) for row in errors] == [("bad", "error")]
    assert "7 queries reranked" in done.stdout
