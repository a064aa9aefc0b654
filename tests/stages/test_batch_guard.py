"""Batch markers belong to one attempt: another attempt's, or a file another local user planted, decide nothing.

The marker store is Ray's key-value store of the module's local Ray; the
job runs the scripted test engine (plumbing), the markers' logic is the
real one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch import run_job
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.stages.batch_guard import DEATHS_BEFORE_SPLITTING, BatchGuard, ProcessMarkers, RayMarkers, clear_batch_markers
from tests.conftest import grey_jpeg, read_folder


def test_a_marker_counts_within_its_attempt_only(ray_session):
    first = BatchGuard.for_attempt("attempt-1", "rerank")
    assert isinstance(first.markers, RayMarkers)
    key = BatchGuard.key(["q1", "q2"])
    assert first.enter(key).deaths == 0  # in flight when the driver was interrupted: never left
    # The same batch in another attempt (the next run of the same job, same query ids): a fresh start.
    assert BatchGuard.for_attempt("attempt-2", "rerank").enter(key).deaths == 0
    # In its own attempt, a restarted actor finds it: one death; the next finds two and splits.
    assert BatchGuard.for_attempt("attempt-1", "rerank").enter(key).deaths == 1
    again = BatchGuard.for_attempt("attempt-1", "rerank").enter(key)
    assert again.deaths == DEATHS_BEFORE_SPLITTING and again.split
    clear_batch_markers("attempt-1")
    assert BatchGuard.for_attempt("attempt-1", "rerank").enter(key).deaths == 0  # removed at the attempt's end
    clear_batch_markers("attempt-1")
    clear_batch_markers("attempt-2")


def test_markers_in_the_process_count_deaths_alike():
    markers = ProcessMarkers()
    guard = BatchGuard("a/rerank", markers)
    key = BatchGuard.key(["q"])
    guard.enter(key)
    assert BatchGuard("a/rerank", markers).enter(key).deaths == 1


def test_markers_planted_by_another_attempt_or_user_dead_letter_nothing(ray_session, tmp_path):
    import ray

    table = [
        {
            "query_id": f"q{index}",
            "query": "which page?",
            "candidates": [
                {"doc_id": f"d{doc}", "image": grey_jpeg(40 * doc + 20, (32, 32)), "image_uri": None, "text": None, "score": 1.0 - doc} for doc in range(2)
            ],
        }
        for index in range(2)
    ]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(table, schema=GROUPED_INPUT_SCHEMA), tmp_path / "in" / "s.parquet")
    batches = [["q0"], ["q1"], ["q0", "q1"], ["q1", "q0"]]  # every batch the job may form
    deadly = json.dumps({"deaths": 5, "killers": ["q0", "q1"], "running": None})
    # What earlier versions read: a file under the shared temp dir named by Ray's job id, which anyone may create.
    planted = Path(tempfile.gettempdir()) / "mmr5-batch-guard" / f"{ray.get_runtime_context().get_job_id()}-rerank"
    planted.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        (planted / f"{BatchGuard.key(batch)}.json").write_text(deadly)
    # Another attempt's markers in Ray's store, for the same batches.
    other = RayMarkers()
    for batch in batches:
        other.put(f"someone-else/rerank/{BatchGuard.key(batch)}", deadly.encode())
    try:
        summary = run_job(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **{"model.backend": "scripted-test", "execution.actors": 1})
    finally:
        for path in planted.glob("*.json"):
            os.remove(path)
        clear_batch_markers("someone-else")
    assert summary["totals"]["error"] == 0 and read_folder(tmp_path / "out" / "dead_letter") == []
    assert sorted(row["query_id"] for row in read_folder(tmp_path / "out" / "ranked")) == ["q0", "q1"]
