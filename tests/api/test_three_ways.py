"""One data set, three ways in: the Python API, the Ray Dataset step and the job (Python and CLI) rank alike.

Also proves the CLI and jobs/ are thin callers: they reach `run_job`, which
runs the same `RerankStep` the Dataset users apply.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import mmr5_batch.job.runner as runner
from mmr5_batch import Reranker, build_reranker, run_job
from mmr5_batch.cli.main import main
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.stages.step import RerankStep
from tests.conftest import read_folder
from tests.support.queries import grey_queries

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"backend": "scripted-test", "window": 3, "stride": 2, "image_tokens": 64, "actors": 1, "batch_size": 3, "prepare_batch_size": 2}
LEVELS = [(200, 20, 140, 60, 180, 100), (30, 90, 150, 210, 240, 120), (250, 5)]


def queries():
    return grey_queries(LEVELS)


def test_python_api_dataset_step_and_job_rank_identically(ray_session, tmp_path, monkeypatch):
    rows = queries()
    with Reranker(**{key: value for key, value in SETTINGS.items() if key not in ("actors", "batch_size", "prepare_batch_size")}) as reranker:
        api = {result.query_id: result.doc_ids for result in reranker.rank_many(rows)}

    step_rows = build_reranker(SETTINGS)(ray_session.data.from_arrow(pa.Table.from_pylist(rows, schema=GROUPED_INPUT_SCHEMA))).take_all()
    step = {row["query_id"]: row["doc_ids"] for row in step_rows}

    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=GROUPED_INPUT_SCHEMA), tmp_path / "in" / "shard.parquet")
    steps = []
    original = RerankStep.__call__

    def spy(self, dataset):
        steps.append(self)
        return original(self, dataset)

    monkeypatch.setattr(RerankStep, "__call__", spy)
    run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "job")}, **SETTINGS)
    job = {row["query_id"]: row["doc_ids"] for row in read_folder(tmp_path / "job" / "ranked")}
    assert len(steps) == 1  # the job ran the Dataset step

    flags = ["--backend", "scripted-test", "--window", "3", "--stride", "2", "--image-tokens", "64", "--actors", "1", "--batch-size", "3"]
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "cli"), *flags]) == 0
    cli = {row["query_id"]: row["doc_ids"] for row in read_folder(tmp_path / "cli" / "ranked")}

    assert api == step == job == cli
    assert api["q0"][0] == "d1" and api["q2"] == ["d1", "d0"]  # darkest first: the scripted engine's rule


def test_cli_and_jobs_call_run_job(monkeypatch, tmp_path):
    seen = []

    def fake_run_job(config, **options):  # options: how the run is shown (progress)
        seen.append(config)
        return {
            "failed": None,
            "totals": dict.fromkeys(
                (
                    "queries",
                    "ok",
                    "repaired",
                    "fallback",
                    "fast",
                    "error",
                    "candidates",
                    "flagged_candidates",
                    "windows",
                    "image_tokens",
                    "prompt_tokens",
                    "generated_tokens",
                ),
                0,
            ),
            "run_id": "r",
            "model": "m",
            "backend": "b",
            "output": "o",
            "wall_seconds": 0.0,
            "queries_per_second": 0.0,
            "shards": {"total": 0, "processed": 0, "reprocessed_changed": 0, "skipped_done_earlier": 0, "bad": 0},
            "bad_shards": {},
            "planner_dead_letters": 0,
        }

    monkeypatch.setattr(runner, "run_job", fake_run_job)
    assert main(["rerank", "--input", "in", "--output", "out", "--window", "4"]) == 0
    for script, extra in (("rerank.py", []), ("relabel.py", ["--positives-top-k", "2"])):
        monkeypatch.setattr(sys, "argv", [script, "--input", "in", "--output", "out", *extra])
        try:
            runpy.run_path(str(REPO / "jobs" / script), run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0
    assert [config.ranking.window for config in seen] == [4, 5, 5]
    assert seen[2].relabel.emit == "pairs" and seen[2].relabel.positives_top_k == 2
