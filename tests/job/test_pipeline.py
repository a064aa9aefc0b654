"""The whole job on a local Ray: read -> prepare -> rerank (actor pool) -> write.

One Ray session serves the module. The hf backend runs the real tiny
Qwen2.5-VL; the scripted test engine drives the ok / repaired / fallback /
error paths through the same pipeline.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmr5_batch.cli.main import main
from mmr5_batch.config import load_config
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.devtools.demo_data import write_demo_dataset
from mmr5_batch.job.runner import JobError, run_job
from tests.conftest import grey_jpeg, read_folder
from tests.support.ledger_support import forget_done


def outputs(output: Path) -> tuple[list[dict], list[dict], dict]:
    summary = json.loads((output / "summary.json").read_text())
    return read_folder(output / "ranked"), read_folder(output / "dead_letter"), summary


def candidate(doc_id, level=None, score=None, image=None):
    data = image if image is not None else (grey_jpeg(level) if level is not None else None)
    return {"doc_id": doc_id, "image": data, "image_uri": None, "text": None, "score": score}


def grouped_row(query_id, query, candidates, domain="test"):
    return {"query_id": query_id, "query": query, "candidates": candidates, "domain": domain}


def write_shard(path: Path, rows: list[dict]) -> None:
    schema = GROUPED_INPUT_SCHEMA.append(pa.field("domain", pa.string()))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_hf_backend_on_the_tiny_model_end_to_end(ray_session, tiny_model_dir, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=6, candidates=6, shards=2)
    config = load_config(
        None,
        {
            "input": str(tmp_path / "in"),
            "output": str(tmp_path / "out"),
            "model.name": tiny_model_dir,
            "model.backend": "hf",
            "model.device": "cpu",
            "model.max_new_tokens": 4,
            "model.min_new_tokens": 4,
            "images.image_tokens": 64,
            "execution.batch_size": 4,
            "execution.prepare_batch_size": 2,
        },
    )
    summary = run_job(config)
    ranked, dead, written = outputs(tmp_path / "out")
    assert written == summary
    assert sorted(r["query_id"] for r in ranked + dead) == [f"q{i:04d}" for i in range(6)]
    assert dead == []
    for row in ranked:
        assert sorted(row["doc_ids"]) == sorted(row["first_stage_doc_ids"])
        assert row["status"] in ("ok", "repaired", "fallback")
        assert row["windows"] == 2 and row["generated_tokens"] == 8
        assert 0 < row["image_tokens"] <= 2 * 5 * 64 and row["prompt_tokens"] > row["image_tokens"]
        assert len(row["candidate_image_tokens"]) == 6 and all(0 < tokens <= 64 for tokens in row["candidate_image_tokens"])
        assert row["model"] == tiny_model_dir and row["run_id"] == summary["run_id"]
        assert row["gold_doc_ids"]  # passthrough column survives
    totals = summary["totals"]
    assert totals["queries"] == 6 and totals["windows"] == 12
    assert totals["image_tokens"] == sum(r["image_tokens"] for r in ranked)
    # The CPU stage built every shown picture's patches (images.processing: cpu-stage): each page decoded and
    # processed once there, none again in the engine, however many windows showed it.
    for row in ranked:
        assert row["pages_sent"] == 10 and 0 < row["pages_processed"] == row["pages_decoded"] <= 6
    assert totals["pages_sent"] == 60 and totals["pages_processed"] == sum(r["pages_processed"] for r in ranked)
    assert set(summary["per_shard"]) == {str(tmp_path / "in" / f"shard-0000{i}.parquet") for i in range(2)}
    resolved = load_config(tmp_path / "out" / "config.yaml")
    assert resolved.run_id == summary["run_id"] and resolved.images.image_tokens == 64


def test_scripted_engine_drives_every_status_exactly_once(ray_session, tmp_path):
    (tmp_path / "in").mkdir()
    levels = [200, 170, 140, 110, 80, 50, 20]  # d6 is the darkest: the scripted engine's favourite
    good = lambda qid, query="which page?": grouped_row(qid, query, [candidate(f"d{i}", lvl, 1 - i / 10) for i, lvl in enumerate(levels)])
    write_shard(
        tmp_path / "in" / "a.parquet",
        [
            *[good(f"ok{i}") for i in range(5)],
            good("rep", "which page? #repair"),
            good("gar", "which page? #garbage"),
            good("rej", "which page? #reject"),
            good("dup"),
            grouped_row("flag", "q", [candidate("x", 10), candidate("broken", image=b"\x00junk"), candidate("none")]),
        ],
    )
    write_shard(
        tmp_path / "in" / "b.parquet",
        [
            good("dup"),
            grouped_row("empty", " ", [candidate("x", 10)]),
            grouped_row("nocands", "q", []),
            grouped_row("dupdoc", "q", [candidate("x", 10), candidate("x", 20)]),
            grouped_row(None, "q", [candidate("x", 10)]),
        ],
    )
    config = load_config(
        None,
        {
            "input": str(tmp_path / "in"),
            "output": str(tmp_path / "out"),
            "model.backend": "scripted-test",
            "ranking.keep_reasoning": True,
            "execution.actors": 2,
            "execution.batch_size": 3,
            "execution.prepare_batch_size": 2,
        },
    )
    summary = run_job(config)
    ranked, dead, _ = outputs(tmp_path / "out")
    # every input row accounted for exactly once
    assert Counter(r["query_id"] for r in ranked + dead) == Counter(
        [f"ok{i}" for i in range(5)] + ["rep", "gar", "rej", "dup", "dup", "flag", "empty", "nocands", "dupdoc", None]
    )
    status = {r["query_id"]: r["status"] for r in ranked}
    assert [status[f"ok{i}"] for i in range(5)] == ["ok"] * 5
    assert status["rep"] == "repaired" and status["gar"] == "fallback" and status["flag"] == "ok"
    by_id = {r["query_id"]: r for r in ranked}
    assert by_id["ok0"]["doc_ids"][0] == "d6"
    assert by_id["ok0"]["domain"] == "test" and by_id["ok0"]["reasoning"][0].startswith("<think>")
    assert by_id["flag"]["doc_ids"] == ["x", "broken", "none"]
    assert by_id["flag"]["flagged_doc_ids"] == ["broken", "none"]
    reasons = {(r["query_id"], r["source_path"].rsplit("/", 1)[-1]): r["reason"] for r in dead}
    assert "scripted rejection" in reasons[("rej", "a.parquet")]
    assert "appears 2 times" in reasons[("dup", "a.parquet")] and "appears 2 times" in reasons[("dup", "b.parquet")]
    assert "empty query" in reasons[("empty", "b.parquet")]
    assert reasons[("nocands", "b.parquet")] == "no candidates"
    assert "duplicate doc_id" in reasons[("dupdoc", "b.parquet")]
    assert reasons[(None, "b.parquet")] == "missing query_id"
    assert all(r["status"] == "error" and r["run_id"] == summary["run_id"] for r in dead)
    assert next(r for r in dead if r["query_id"] == "rej")["first_stage_doc_ids"][0] == "d0"
    # The two "dup" rows and the id-less row are dead-lettered by the planner, the rest by the pipeline.
    totals = summary["totals"]
    assert (totals["ok"], totals["repaired"], totals["fallback"], totals["error"]) == (6, 1, 1, 4)
    assert totals["queries"] == 12 and totals["flagged_candidates"] == 2 and summary["planner_dead_letters"] == 3
    held = summary["processed_shards_now_hold"]
    assert held["queries"] == 15 and held["error"] == 7 and summary["incomplete_shards"] == []
    assert summary["error_rate"] == round(7 / 15, 6) and "7 of 15 queries" in summary["failed"]


def test_pairs_layout_is_grouped_by_query(ray_session, tmp_path):
    rows = [
        {"query_id": f"q{q}", "query": "which?", "doc_id": f"d{d}", "image": grey_jpeg(200 - 40 * d), "image_uri": None, "text": None, "score": 1 - d / 10}
        for q in range(3)
        for d in range(4)
    ]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "pairs.parquet")
    run_job(load_config(None, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "model.backend": "scripted-test"}))
    ranked, dead, _ = outputs(tmp_path / "out")
    assert dead == [] and sorted(r["query_id"] for r in ranked) == ["q0", "q1", "q2"]
    for row in ranked:
        assert row["first_stage_doc_ids"] == ["d0", "d1", "d2", "d3"]
        assert row["doc_ids"] == ["d3", "d2", "d1", "d0"]


def test_cli_rerank_prints_the_summary(ray_session, tmp_path, capsys):
    write_demo_dataset(tmp_path / "in", queries=4, candidates=3, shards=1)
    code = main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "scripted-test", "--window", "3", "--stride", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "queries/second" in out and "  ok" in out
    assert (tmp_path / "out" / "summary.json").exists()
    # a second run with other settings into the same output is refused unless it overwrites
    args = ["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "scripted-test"]
    assert main(args) == 2
    assert "holds results of a run with other settings (ranking.stride: 2 -> 3, ranking.window: 3 -> 5)" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    ranked = read_folder(tmp_path / "out" / "ranked")
    assert sorted(r["query_id"] for r in ranked) == [f"q{i:04d}" for i in range(4)]
    assert all(r["windows"] == 1 for r in ranked)  # the window-5 run's rows replaced the window-3 run's


def test_job_level_problems_stop_before_any_work(ray_session, tmp_path, capsys):
    assert main(["rerank", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"), "--backend", "scripted-test"]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"query": ["q"]}), tmp_path / "bad" / "s.parquet")
    with pytest.raises(JobError, match="no readable shard: .*s.parquet: missing column"):
        run_job(load_config(None, {"input": str(tmp_path / "bad"), "output": str(tmp_path / "out"), "model.backend": "scripted-test"}))
    (tmp_path / "bad" / "s.parquet").write_bytes(b"not parquet")
    with pytest.raises(JobError, match="cannot read as Parquet"):
        run_job(load_config(None, {"input": str(tmp_path / "bad"), "output": str(tmp_path / "out"), "model.backend": "scripted-test"}))
    write_demo_dataset(tmp_path / "ok", queries=1, candidates=2, shards=1)
    assert main(["rerank", "--input", str(tmp_path / "ok"), "--output", str(tmp_path / "out"), "--backend", "vllm"]) == 2
    assert "no GPU available: the rerank actors need 1 GPU(s) each, the Ray cluster has 0" in capsys.readouterr().err
    assert main(["rerank", "--input", str(tmp_path / "ok"), "--output", str(tmp_path / "out"), "--window", "3", "--stride", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stride (3) must be smaller than window (3)" in err
    assert not (tmp_path / "out").exists()


def test_error_rate_above_the_threshold_exits_3_after_writing(ray_session, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    rows = [grouped_row(f"g{i}", "which?", [candidate("a", 10, 0.9), candidate("b", 200, 0.1)]) for i in range(3)]
    rows.append(grouped_row("bad", "which? #reject", [candidate("a", 10, 0.9), candidate("b", 200, 0.1)]))
    write_shard(tmp_path / "in" / "s.parquet", rows)
    args = ["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "scripted-test"]
    assert main(args) == 3
    # Progress lines come first; the reason is the one error line, and the last.
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "error:" in line] == err[-1:]
    assert "1 of 4 queries (25.0%) ended as dead letters, above --max-error-rate 1.0%" in err[-1]
    ranked, dead, _ = outputs(tmp_path / "out")
    assert len(ranked) == 3 and [r["query_id"] for r in dead] == ["bad"]
    assert main([*args, "--overwrite", "--max-error-rate", "0.3"]) == 0


def test_fast_mode_through_the_pipeline_on_the_tiny_model(ray_session, tiny_model_dir, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=3, candidates=6, shards=1)
    values = {
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "model.name": tiny_model_dir,
        "model.device": "cpu",
        "images.image_tokens": 64,
        "ranking.mode": "fast",
    }
    summary = run_job(load_config(None, values))
    ranked, dead, _ = outputs(tmp_path / "out")
    assert dead == [] and [r["status"] for r in ranked] == ["fast"] * 3
    assert all(r["generated_tokens"] == 0 and r["windows"] == 2 for r in ranked)
    assert summary["totals"]["fast"] == 3


def test_cascade_through_the_pipeline(ray_session, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    levels = [200, 170, 140, 110, 80, 50, 20, 230]  # d6 darkest, then d5, d4
    write_shard(tmp_path / "in" / "s.parquet", [grouped_row("q", "which?", [candidate(f"d{i}", lvl, 1 - i / 10) for i, lvl in enumerate(levels)])])
    (tmp_path / "job.yaml").write_text("cascade: {first_window: 6, first_stride: 3, first_image_tokens: 16, detail_top: 3}\n")
    args = ["rerank", "--config", str(tmp_path / "job.yaml"), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main([*args, "--backend", "scripted-test", "--cascade", "--window", "3", "--stride", "2", "--image-tokens", "64"]) == 0
    [row], _, _ = outputs(tmp_path / "out")
    assert row["doc_ids"][:3] == ["d6", "d5", "d4"]
    assert row["decided_by"] == ["detail"] * 3 + ["first_pass"] * 5
    assert row["windows"] == 3  # 8 candidates in windows of 6 step 3 (2), then the top 3 once
    assert max(row["candidate_image_tokens"]) <= 64 and row["image_tokens"] <= 2 * 6 * 16 + 3 * 64


def test_relabel_pairs_are_exactly_once_across_a_crashed_write(ray_session, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=8, candidates=4, shards=1)
    values = {
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "model.backend": "scripted-test",
        "relabel.emit": "pairs",
        "relabel.label_column": "gold_doc_ids",
        "execution.batch_size": 2,
        "execution.prepare_batch_size": 2,
    }
    run_job(load_config(None, values))
    pairs = read_folder(tmp_path / "out" / "pairs")
    assert len(pairs) == 8 * 4 and Counter(p["label"] for p in pairs) == {1: 8, 0: 24}
    ranked = {r["query_id"]: r for r in read_folder(tmp_path / "out" / "ranked")}
    for pair in pairs:
        assert pair["doc_id"] == ranked[pair["query_id"]]["doc_ids"][pair["reranked_rank"] - 1]
        gold = ranked[pair["query_id"]]["gold_doc_ids"]
        assert pair["existing_label"] == int(pair["doc_id"] in gold) and pair["disagrees"] == (pair["existing_label"] != pair["label"])

    # A write task that crashed after its pairs and before its ranked file: no ranked file, no ledger entry.
    [key] = [folder.name for folder in (tmp_path / "out" / "ranked").iterdir()]
    lost = sorted((tmp_path / "out" / "ranked" / key).glob("*.parquet"))[0]
    lost_ids = {row["query_id"] for row in pq.read_table(lost).to_pylist()}
    lost.unlink()
    assert forget_done(tmp_path / "out") == 1
    summary = run_job(load_config(None, values))
    assert summary["totals"]["queries"] == len(lost_ids)
    pairs = read_folder(tmp_path / "out" / "pairs")
    assert Counter(p["query_id"] for p in pairs) == {f"q{i:04d}": 4 for i in range(8)}


def test_group_by_puts_queries_over_one_document_in_one_preparation_task(ray_session, tmp_path):
    """Queries over two documents, interleaved in the input: with execution.group_by each preparation task holds one
    document's queries, so its pages are decoded once per task instead of in every task."""
    pages = {"A": [grey_jpeg(level) for level in (30, 60, 90)], "B": [grey_jpeg(level) for level in (120, 150, 180)]}
    rows = [
        grouped_row(f"q{i}", f"question {i}?", [candidate(f"{doc}{p}", image=page, score=1 - p / 10) for p, page in enumerate(pages[doc])], domain=doc)
        for i, doc in enumerate("ABABABAB")
    ]
    (tmp_path / "in").mkdir()
    write_shard(tmp_path / "in" / "part-0.parquet", rows)

    def decoded(output, **settings):
        values = {"input": str(tmp_path / "in"), "output": str(tmp_path / output), "model.backend": "scripted-test", "execution.prepare_batch_size": 2}
        summary = run_job(load_config(None, values | settings))
        assert summary["totals"]["queries"] == 8 and summary["totals"]["error"] == 0
        return summary["totals"]["pages_decoded"]

    assert decoded("grouped", **{"execution.group_by": "domain"}) == 4 * 3 < decoded("input-order")
    with pytest.raises(JobError, match="execution.group_by: the input has no column 'document'"):
        decoded("bad", **{"execution.group_by": "document"})


def noise_jpeg(seed: int, size: tuple[int, int] = (240, 320)) -> bytes:
    """A page that does not compress (about 118 KiB as JPEG at this size): its bytes are what a shuffle would move."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_group_by_moves_no_page_through_the_object_store(ray_session, tmp_path):
    """The job groups within its read tasks: with execution.group_by the object store holds no more than without it
    (a dataset-wide sort put every page through it twice more: the issue's 1,150 against 567 MiB)."""
    from tests.support.object_store import ObjectStoreWatch

    pages = [noise_jpeg(seed) for seed in range(25)]
    rows = [
        grouped_row(
            f"q{i:03d}", f"question {i}?", [candidate(f"d{i}-{p}", image=pages[(i + p) % 25], score=1 - p / 10) for p in range(5)], domain=f"doc{i % 7}"
        )
        for i in range(120)
    ]
    (tmp_path / "in").mkdir()
    for shard in range(4):
        write_shard(tmp_path / "in" / f"part-{shard}.parquet", rows[shard::4])

    def run(output, **settings):
        values = {"input": str(tmp_path / "in"), "output": str(tmp_path / output), "model.backend": "scripted-test", "execution.prepare_batch_size": 4}
        with ObjectStoreWatch() as store:
            summary = run_job(load_config(None, values | settings))
        assert summary["totals"]["queries"] == 120 and summary["totals"]["error"] == 0
        return store

    plain = run("plain")
    grouped = run("grouped", **{"execution.group_by": "domain"})
    data = sum(len(page) for page in pages) * 120 * 5 // 25
    assert plain.created >= data  # every page went through the store once, as read
    assert grouped.created <= 1.2 * plain.created, (grouped.created, plain.created)
    assert grouped.peak <= 1.2 * plain.peak, (grouped.peak, plain.peak)
    # Each read task's queries over one document are next to each other in what it hands on.
    ranked = read_folder(tmp_path / "grouped" / "ranked")
    assert sorted(row["query_id"] for row in ranked) == sorted(row["query_id"] for row in rows)


def test_group_by_a_binary_column_groups_raw_bytes_and_a_list_column_is_refused(ray_session, tmp_path):
    from mmr5_batch.core.group_key import sorted_by_group

    keys = [b"\xff\xfe", b"\x00A", b"\xff\xfe", None, b"\x00A"]
    table = pa.table({"query_id": [f"q{i}" for i in range(5)], "key": pa.array(keys, pa.binary())})
    ordered = sorted_by_group(table, "key")
    assert ordered["key"].to_pylist() == [None, b"\x00A", b"\x00A", b"\xff\xfe", b"\xff\xfe"]
    assert ordered["query_id"].to_pylist() == ["q3", "q1", "q4", "q0", "q2"]  # stable within a key
    # Through the job: a binary key (not UTF-8) runs, a list column is refused in one line before the pipeline.
    candidates = [candidate(f"d{p}", level=40 * p + 20, score=1 - p / 10) for p in range(3)]
    rows = [{"query_id": f"q{i}", "query": f"question {i}?", "candidates": candidates, "key": keys[i], "tags": [i]} for i in range(5)]
    schema = GROUPED_INPUT_SCHEMA.append(pa.field("key", pa.binary())).append(pa.field("tags", pa.list_(pa.int64())))
    (tmp_path / "job").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "job" / "part-0.parquet")
    values = {"input": str(tmp_path / "job"), "output": str(tmp_path / "out"), "model.backend": "scripted-test"}
    summary = run_job(load_config(None, values | {"execution.group_by": "key"}))
    assert summary["totals"]["queries"] == 5 and summary["totals"]["error"] == 0
    assert sorted(row["key"] for row in read_folder(tmp_path / "out" / "ranked") if row["key"]) == [b"\x00A", b"\x00A", b"\xff\xfe", b"\xff\xfe"]
    with pytest.raises(JobError) as refused:
        run_job(load_config(None, values | {"output": str(tmp_path / "out-2"), "execution.group_by": "tags"}))
    assert re.fullmatch(
        r"execution\.group_by: column 'tags' is list<\w+: int64>; a grouping key must hold single values \(text, bytes, a number or a date\), not a list or a struct",
        str(refused.value),
    )
    assert not (tmp_path / "out-2" / "ranked").exists()
