"""The job's metrics arrive in a local Ray's own Prometheus export with the values its run summary reports, and the
Grafana dashboard names only metrics that arrive."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch import run_job
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.stages.run_metrics import reason_class
from tests.conftest import grey_jpeg, read_folder
from tests.support.metrics_export import DASHBOARD, dashboard_metrics, scrape, total, wait_for


def write_input(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [
        {
            "query_id": f"q{index}",
            "query": "which page?" + {3: " #reject", 4: " #repair", 5: " #ramble"}.get(index, ""),
            "candidates": [
                {"doc_id": f"d{doc}", "image": grey_jpeg(30 * doc + 20), "image_uri": None, "text": None, "score": 1.0 - doc / 10} for doc in range(7)
            ],
        }
        for index in range(6)
    ]
    for shard in range(2):
        pq.write_table(pa.Table.from_pylist(rows[shard::2], schema=GROUPED_INPUT_SCHEMA), folder / f"part-{shard}.parquet")


def test_the_metrics_in_rays_export_are_the_run_summarys(ray_session, tmp_path):
    write_input(tmp_path / "in")
    settings = {"backend": "scripted-test", "actors": 1, "batch_size": 2, "image_tokens": 16, "max_error_rate": 0.5, "think_tokens": 8}
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, **settings, run_id="metrics-test")
    totals = summary["totals"]
    forced = sum(row["forced_answers"] for row in read_folder(tmp_path / "out" / "ranked"))
    assert totals["queries"] == 6 and totals["error"] == 1 and totals["repaired"] == 1 and totals["windows"] > 6 and forced > 0
    # The same input, pointwise: every pair judged.
    pointwise = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "pointwise")}, **settings, protocol="pointwise", run_id="metrics-pointwise")
    assert pointwise["totals"]["pointwise"] == 5 and pointwise["totals"]["scored"] >= 5 * 7

    expected = {("ray_mmr5_queries_total", (("status", status),)): float(totals[status]) for status in ("ok", "repaired", "error")}
    counters = ("windows", "image_tokens", "prompt_tokens", "generated_tokens")
    expected |= {(f"ray_mmr5_{name}_total", ()): float(totals[name]) for name in counters}
    expected[("ray_mmr5_forced_answers_total", ())] = float(forced)
    expected[("ray_mmr5_dead_letters_total", (("reason", "engine_rejected"),))] = 1.0
    expected[("ray_mmr5_shards", (("state", "done"),))] = 2.0
    expected[("ray_mmr5_shards", (("state", "pending"),))] = 0.0
    wait_for({(name, (*labels, ("run_id", "metrics-test"))): value for (name, labels), value in expected.items()}, "mmr5_")
    judged = {
        ("ray_mmr5_scored_pairs_total", (("run_id", "metrics-pointwise"),)): float(pointwise["totals"]["scored"]),
        ("ray_mmr5_queries_total", (("status", "pointwise"), ("run_id", "metrics-pointwise"))): 5.0,
    }
    wait_for(judged, "mmr5_")
    samples = scrape("mmr5_")

    # Every engine request and every query that reached the engine was timed; none is in flight now.
    assert total(samples, "ray_mmr5_request_seconds_count", run_id="metrics-test") >= totals["windows"]
    assert total(samples, "ray_mmr5_query_seconds_count", run_id="metrics-test") == totals["queries"]
    assert total(samples, "ray_mmr5_requests_in_flight", run_id="metrics-test") == 0
    labels = samples["ray_mmr5_queries_total"][0][0]
    assert labels["model"] == "i2vec/MM-R5" and labels["protocol"] == "mm-r5" and labels["pass"] == "rerank"

    # The dashboard names only metrics that arrive (histograms through their buckets); vLLM's: tests/engines/test_vllm_real.py.
    named = dashboard_metrics("ray_mmr5_")
    assert named and named <= set(samples), sorted(named - set(samples))
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    assert titles >= {"Queries per second, by status", "Progress: shards", "Query latency"}


def test_a_dead_letters_reason_is_one_of_a_few_classes():
    assert reason_class("window 2: engine rejected the request: too long") == "engine_rejected"
    assert reason_class("no usable candidate: d0: undecodable image") == "no_usable_candidate"
    assert reason_class("the rerank actor died on this query's batch 3 times") == "actor_died"
    assert reason_class("scorer: pointwise scoring: every pair was refused (d0: x)") == "scorer"
    assert reason_class("query_id appears 2 times in the input") == "repeated_query_id"
    assert reason_class("empty query") == "bad_row" and reason_class(None) == "unknown"
