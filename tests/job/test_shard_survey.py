"""Surveying one shard (what a planning task returns), without Ray: counts and id hashes, never the ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.job.shard_survey import id_hashes, survey_shard
from mmr5_batch.storage.filesystems import Storage


def grouped_rows(ids):
    return [{"query_id": query_id, "query": "q", "candidates": [{"doc_id": "d", "image_uri": "x.png", "score": 1.0}]} for query_id in ids]


def test_a_grouped_shard_yields_counts_and_hashes(tmp_path):
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(grouped_rows(["a", "b", "b", None, " "])), shard)
    written = tmp_path / "w.parquet"
    pq.write_table(pa.table({"query_id": ["a"], "status": ["ok"]}), written)
    row = survey_shard({"uri": str(shard), "written": [str(written)]}, Storage())
    assert row["problem"] is None and row["layout"] == "grouped"
    assert (row["queries"], row["missing"], row["written"]) == (5, 2, 1)
    assert sorted(np.frombuffer(row["ids"], dtype=np.uint64).tolist()) == sorted(id_hashes(["a", "b", "b"]).tolist())  # one per row
    assert np.frombuffer(row["pending"], dtype=np.uint64).tolist() == id_hashes(["b"]).tolist()  # distinct, not written
    assert pa.ipc.read_schema(pa.py_buffer(row["schema"])).names == ["query_id", "query", "candidates"]


def test_a_pairs_shard_counts_distinct_queries_and_integer_ids_read_as_strings(tmp_path):
    shard = tmp_path / "p.parquet"
    columns = {"query_id": [7, 7, 8], "query": ["t"] * 3, "doc_id": ["x", "y", "z"], "image_uri": ["i"] * 3, "score": [0.1, 0.2, 0.3]}
    pq.write_table(pa.table(columns), shard)
    row = survey_shard({"uri": str(shard), "written": []}, Storage())
    assert row["layout"] == "pairs" and row["queries"] == 2 and row["missing"] == 0
    assert sorted(np.frombuffer(row["ids"], dtype=np.uint64).tolist()) == sorted(id_hashes(["7", "8"]).tolist())


def test_a_shard_that_cannot_be_used_is_a_problem_not_an_exception(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    row = survey_shard({"uri": str(tmp_path / "bad.parquet"), "written": []}, Storage())
    assert "cannot read as Parquet" in row["problem"]
    pq.write_table(pa.table({"query_id": ["a"], "nothing": [1]}), tmp_path / "odd.parquet")
    assert survey_shard({"uri": str(tmp_path / "odd.parquet"), "written": []}, Storage())["problem"]


def test_id_hashes_are_stable_across_processes():
    import subprocess
    import sys

    code = "from mmr5_batch.job.shard_survey import id_hashes; print(id_hashes(['q1', 'q2']).tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"}).stdout
    assert other.strip() == str(id_hashes(["q1", "q2"]).tolist())
