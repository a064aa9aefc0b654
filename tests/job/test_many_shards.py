"""Many small shards at test size: grouped read tasks, the driver's work in Ray tasks, the ledger index.

The same guarantees as with one shard per task: every query exactly once,
resume after a crash processes only what is missing, a rerun over ledgered
shards does nothing, and a run writes a few ledger files whatever its shard count.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch import run_job
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from tests.conftest import grey_jpeg, read_folder
from tests.support.ledger_support import done_keys, forget_done

SHARDS, PER_SHARD = 24, 3


def write_input(folder: Path, shards: int = SHARDS, first: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = grey_jpeg(90, (16, 16))
    for shard in range(first, shards):
        rows = [
            {
                "query_id": f"s{shard:03d}q{query}",
                "query": "which page?",
                "candidates": [{"doc_id": f"d{doc}", "image": image, "image_uri": None, "text": None, "score": 1.0 - doc / 10} for doc in range(2)],
            }
            for query in range(PER_SHARD)
        ]
        pq.write_table(pa.Table.from_pylist(rows, schema=GROUPED_INPUT_SCHEMA), folder / f"part-{shard:03d}.parquet")


def settings(tmp_path: Path) -> dict:
    return {
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "model.backend": "scripted-test",
        "images.image_tokens": 16,
        "execution.actors": 1,
        "execution.shards_per_read_task": 5,  # several shards per read task
        "execution.rows_per_write": 10,  # write tasks spanning shards
    }


def written_ids(output: Path) -> Counter:
    return Counter(row["query_id"] for folder in ("ranked", "dead_letter") for row in read_folder(output / folder))


def test_grouped_reads_resume_and_a_noop_rerun(ray_session, tmp_path):
    write_input(tmp_path / "in")
    out = tmp_path / "out"
    first = run_job(**settings(tmp_path))
    assert first["failed"] is None and first["totals"]["queries"] == SHARDS * PER_SHARD
    assert set(written_ids(out).values()) == {1} and len(written_ids(out)) == SHARDS * PER_SHARD
    assert len(done_keys(out)) == SHARDS
    # Rows of several shards per write task, one file per shard in each: never more files than shards x tasks.
    ranked_files = list((out / "ranked").rglob("*.parquet"))
    assert SHARDS <= len(ranked_files) < SHARDS * 3
    assert sorted(p.name.split("-")[1] for p in (out / "_ledger" / "index").glob("*.jsonl")) == ["done", "started"]
    assert set(first["timings"]) == {"plan_seconds", "pipeline_seconds", "readback_seconds", "waves"} and first["timings"]["waves"] == 1

    # A crash before accounting, with some written files lost: only their queries run again.
    lost = sorted(ranked_files)[::4]
    lost_ids = {row["query_id"] for path in lost for row in pq.read_table(path).to_pylist()}
    for path in lost:
        path.unlink()
    forget_done(out)
    resumed = run_job(**settings(tmp_path))
    assert resumed["totals"]["queries"] == len(lost_ids) and resumed["incomplete_shards"] == []
    assert set(written_ids(out).values()) == {1} and len(written_ids(out)) == SHARDS * PER_SHARD

    # Everything ledgered: a rerun reads no shard, writes no ledger file but its run record.
    index_before = sorted(p.name for p in (out / "_ledger" / "index").glob("*.jsonl"))
    again = run_job(**settings(tmp_path))
    assert again["shards"]["skipped_done_earlier"] == SHARDS and again["shards"]["processed"] == 0 and again["totals"]["queries"] == 0
    assert sorted(p.name for p in (out / "_ledger" / "index").glob("*.jsonl")) == index_before


def test_a_repeated_id_across_grouped_shards_is_found_on_its_hash(ray_session, tmp_path):
    write_input(tmp_path / "in", shards=6)
    shard = tmp_path / "in" / "part-005.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.set_column(0, "query_id", pa.array(["s000q1", "s005q1", "s005q2"])), shard)  # s000q1 twice
    summary = run_job(**settings(tmp_path), **{"execution.max_error_rate": 0.5})
    letters = read_folder(tmp_path / "out" / "dead_letter")
    assert sorted((row["query_id"], row["source_path"].rsplit("/", 1)[-1]) for row in letters) == [
        ("s000q1", "part-000.parquet"),
        ("s000q1", "part-005.parquet"),
    ]
    assert all("appears 2 times" in row["reason"] for row in letters)
    assert summary["planner_dead_letters"] == 2 and summary["incomplete_shards"] == []


def test_waves_of_whole_shards_each_read_back_and_ledgered_when_they_end(ray_session, tmp_path):
    write_input(tmp_path / "in", shards=8)
    out = tmp_path / "out"
    # 3 queries per shard, up to 7 per wave: waves of two shards.
    summary = run_job(**settings(tmp_path), **{"execution.queries_per_wave": 7})
    assert summary["timings"]["waves"] == 4 and summary["failed"] is None
    assert summary["totals"]["queries"] == 8 * PER_SHARD and summary["incomplete_shards"] == []
    assert set(written_ids(out).values()) == {1} and len(written_ids(out)) == 8 * PER_SHARD
    # Each wave wrote its own `done` events when it ended: a crash in wave 3 keeps waves 1 and 2 done.
    done_files = sorted((out / "_ledger" / "index").glob("*-done-*.jsonl"))
    assert [len(path.read_text().splitlines()) for path in done_files] == [2, 2, 2, 2]
    assert len(done_keys(out)) == 8


def test_a_relative_output_is_read_back_and_overwritten_like_an_absolute_one(ray_session, tmp_path, monkeypatch):
    """`make demo` writes to `demo/output`: the listing spells its files absolute, and the readback must still
    find each shard's files (else every shard reads as unaccounted for), an --overwrite each shard's old ones."""
    write_input(tmp_path / "in", shards=3)
    monkeypatch.chdir(tmp_path)
    relative = {**settings(tmp_path), "input": "in", "output": "out"}
    first = run_job(**relative)
    assert first["failed"] is None and first["incomplete_shards"] == [] and len(done_keys(tmp_path / "out")) == 3
    files = sorted(p.name for p in (tmp_path / "out" / "ranked").rglob("*.parquet"))
    again = run_job(**relative, overwrite=True)
    assert again["failed"] is None and again["incomplete_shards"] == [] and again["totals"]["queries"] == 3 * PER_SHARD
    # Each shard's old files went once its new rows were complete: one generation of files is left.
    after = sorted(p.name for p in (tmp_path / "out" / "ranked").rglob("*.parquet"))
    assert len(after) == len(files) and not set(after) & set(files)
    assert set(written_ids(tmp_path / "out").values()) == {1}
