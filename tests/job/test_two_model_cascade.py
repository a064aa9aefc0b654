"""The pointwise protocol and the two-model cascade through the Ray pipeline: both actor pools, every way in.

Scripted engines prove the bookkeeping (which pass decided each position,
the scorer's counts, exactly once with resume); the tiny offline
checkpoints prove the real hf engines run in the scorer and rerank pools.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch import Reranker, build_reranker, run_job
from mmr5_batch.cli.main import main
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from tests.conftest import grey_jpeg, read_folder
from tests.support.ledger_support import forget_done
from tests.support.queries import grey_queries

# Darkness decides the scripted answers: darker is more relevant, to the scorer and to MM-R5 alike.
LEVELS = [(200, 20, 140, 60, 180, 100, 240, 5), (30, 90, 150, 210, 240, 120, 70, 10), (250, 5)]
TWO_MODELS = {
    "backend": "scripted-test",
    "window": 3,
    "stride": 2,
    "image_tokens": 64,
    "actors": 1,
    "batch_size": 2,
    "prepare_batch_size": 2,
    "cascade": True,
    "cascade.first_pass": "pointwise",
    "cascade.first_image_tokens": 16,
    "cascade.detail_top": 3,
    "scorer.backend": "scripted-test",
    "scorer.batch_size": 2,
}


def queries():
    return grey_queries(LEVELS)


def write_input(folder: Path, rows: list[dict], shards: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        part = rows[shard::shards]
        pq.write_table(pa.Table.from_pylist(part, schema=GROUPED_INPUT_SCHEMA), folder / f"part-{shard}.parquet")


def darkest_first(levels):
    return [f"d{index}" for index in sorted(range(len(levels)), key=lambda index: levels[index])]


def test_two_model_cascade_api_step_job_and_cli_agree_and_say_who_decided(ray_session, tmp_path):
    rows = queries()
    api_settings = {key: value for key, value in TWO_MODELS.items() if key not in ("actors", "batch_size", "prepare_batch_size", "scorer.batch_size")}
    with Reranker(**api_settings) as reranker:
        api = {result.query_id: result for result in reranker.rank_many(rows)}
    step = {
        row["query_id"]: row
        for row in build_reranker(TWO_MODELS)(ray_session.data.from_arrow(pa.Table.from_pylist(rows, schema=GROUPED_INPUT_SCHEMA))).take_all()
    }
    write_input(tmp_path / "in", rows)
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "job")}, **TWO_MODELS)
    job = {row["query_id"]: row for row in read_folder(tmp_path / "job" / "ranked")}
    flags = ["--backend", "scripted-test", "--window", "3", "--stride", "2", "--image-tokens", "64", "--actors", "1", "--batch-size", "2"]
    flags += ["--cascade", "--first-pass", "pointwise", "--detail-top", "3", "--scorer-backend", "scripted-test"]
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "cli"), *flags]) == 0
    cli = {row["query_id"]: row for row in read_folder(tmp_path / "cli" / "ranked")}

    for query_id, levels in zip(("q0", "q1", "q2"), LEVELS):
        assert api[query_id].doc_ids == step[query_id]["doc_ids"] == job[query_id]["doc_ids"] == cli[query_id]["doc_ids"] == darkest_first(levels)
    # Eight candidates: MM-R5 reasoned over the scorer's best three (one window), the scorer placed the rest.
    assert job["q0"]["decided_by"] == ["detail"] * 3 + ["pointwise"] * 5 and job["q0"]["windows"] == 1 and job["q0"]["scored"] == 8
    # Two candidates, at most detail_top: MM-R5 looks at both.
    assert job["q2"]["decided_by"] == ["detail", "detail"] and job["q2"]["scored"] == 2
    assert api["q0"].decided_by == job["q0"]["decided_by"] and api["q0"].scored == 8
    assert summary["totals"]["scored"] == 18 and summary["totals"]["windows"] == 3 and summary["totals"]["ok"] == 3


def test_two_model_cascade_job_is_exactly_once_and_resumes_only_what_is_missing(ray_session, tmp_path):
    rows = [dict(row, query_id=f"{row['query_id']}-{copy}") for copy in range(4) for row in queries()]
    write_input(tmp_path / "in", rows, shards=3)
    out = tmp_path / "out"
    settings = {"input": str(tmp_path / "in"), "output": str(out), **TWO_MODELS}
    first = run_job(settings)
    assert first["failed"] is None and first["totals"]["queries"] == 12 and first["incomplete_shards"] == []
    lost = sorted((out / "ranked").rglob("*.parquet"))[0]
    lost_ids = {row["query_id"] for row in pq.read_table(lost).to_pylist()}
    lost.unlink()
    forget_done(out)
    resumed = run_job(settings)
    assert resumed["totals"]["queries"] == len(lost_ids) and resumed["totals"]["scored"] > 0
    written = Counter(row["query_id"] for row in read_folder(out / "ranked"))
    assert set(written.values()) == {1} and len(written) == 12


def test_pointwise_protocol_job_ranks_images_and_text_by_p_yes(ray_session, tmp_path):
    rows = [
        {
            "query_id": "q",
            "query": "revenue table",
            "candidates": [
                {"doc_id": "light", "image": grey_jpeg(230), "image_uri": None, "text": None, "score": 0.9},
                {"doc_id": "text", "image": None, "image_uri": None, "text": "the revenue table", "score": 0.8},
                {"doc_id": "dark", "image": grey_jpeg(10), "image_uri": None, "text": None, "score": 0.7},
                {"doc_id": "nothing", "image": None, "image_uri": None, "text": None, "score": 0.6},
            ],
        }
    ]
    write_input(tmp_path / "in", rows)
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, backend="scripted-test", protocol="pointwise", actors=1)
    [row] = read_folder(tmp_path / "out" / "ranked")
    # Scripted P(yes): darkness / 255 for images, the share of query words in the text: dark, text (1.0 beats 0.96), light.
    assert row["doc_ids"] == ["text", "dark", "light", "nothing"] and row["status"] == "pointwise"
    assert row["scores"][0] == 1.0 and row["scores"][3] is None and row["decided_by"] == ["pointwise"] * 3 + ["flagged"]
    assert "neither image bytes, image_uri nor text" in row["flag_reasons"][0]
    assert summary["totals"]["pointwise"] == 1 and summary["totals"]["scored"] == 3


def every_page_pictured(rows: list[dict]) -> list[dict]:
    """The rows with a picture for each page that has none: MM-R5 needs a picture of every page it is shown."""
    for row in rows:
        for index, candidate in enumerate(row["candidates"]):
            candidate["image"] = candidate["image"] or grey_jpeg(60 + 30 * index)
    return rows


def tiny_hf_cascade(model_dir: str, scorer_dir: str, **scorer: str) -> dict:
    """The two-model cascade's settings on the hf engine over tiny checkpoints: `scorer_dir` first (with `scorer`'s
    other settings), then MM-R5 reasoning 8 tokens per window."""
    settings = dict(TWO_MODELS, backend="hf", device="cpu", max_new_tokens=8, min_new_tokens=8, **{"model.name": model_dir})
    settings.update({"scorer.backend": "hf", "scorer.device": "cpu", "scorer.name": scorer_dir, **{f"scorer.{key}": value for key, value in scorer.items()}})
    return settings


def test_two_model_cascade_on_the_tiny_checkpoints_with_hf_in_both_pools(ray_session, tmp_path, tiny_model_dir, tiny_pointwise_dir):
    rows = queries()[:2]
    write_input(tmp_path / "in", rows)
    settings = tiny_hf_cascade(tiny_model_dir, tiny_pointwise_dir)
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, **settings)
    ranked = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    assert summary["failed"] is None and set(ranked) == {"q0", "q1"}
    for row in ranked.values():
        # Random weights: the order is the models' own, but the bookkeeping is fixed.
        assert sorted(row["doc_ids"]) == sorted(f"d{index}" for index in range(8)) and row["backend"] == "hf"
        assert row["decided_by"] == ["detail"] * 3 + ["pointwise"] * 5 and row["scored"] == 8 and row["windows"] == 1
        assert row["generated_tokens"] == 8 and row["status"] in ("ok", "repaired", "fallback")


def test_a_300000_character_document_is_cut_to_the_reference_limit_and_its_query_ranked(ray_session, tmp_path, tiny_pointwise_dir):
    """A text-only pointwise job on the hf engine where one document is 300,000 characters of OCR: cut in the CPU stage to
    the model's document_tokens (the reference's 8192 by default) by its own tokenizer, never sent whole to an actor."""
    from transformers import AutoTokenizer

    huge = " ".join(f"revenue line {index} of the quarterly table" for index in range(7_000))[:300_000]
    rows = [
        {
            "query_id": f"q{query}",
            "query": "revenue table",
            "candidates": [
                {"doc_id": "huge", "image": None, "image_uri": None, "text": huge if query == 1 else "a short page", "score": 0.9},
                {"doc_id": "short", "image": None, "image_uri": None, "text": "the revenue table", "score": 0.8},
            ],
        }
        for query in range(3)
    ]
    write_input(tmp_path / "in", rows)
    limit = 512
    settings = {"backend": "hf", "device": "cpu", "model.name": tiny_pointwise_dir, "model.document_tokens": limit, "actors": 1}
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, **settings)
    ranked = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    assert summary["failed"] is None and set(ranked) == {"q0", "q1", "q2"} and read_folder(tmp_path / "out" / "dead_letter") == []
    assert all(row["status"] == "pointwise" and row["scored"] == 2 and None not in row["scores"] for row in ranked.values())
    # The prompts the engine got: the short pair's plus the cut document's, a few dozen tokens of prompt around each.
    tokenizer = AutoTokenizer.from_pretrained(tiny_pointwise_dir)
    assert len(tokenizer.encode(huge, add_special_tokens=False)) > 40 * limit
    assert ranked["q1"]["prompt_tokens"] - ranked["q0"]["prompt_tokens"] <= limit


def text_rows(count: int) -> list[dict]:
    """Queries over text pages (and one page that is only an image, which a text model cannot judge)."""
    texts = ["the quarterly revenue table", "a lease signed in May", "minutes of the board meeting", "revenue by region"]
    return [
        {
            "query_id": f"q{query}",
            "query": "revenue table",
            "candidates": [
                {"doc_id": f"t{index}", "image": None, "image_uri": None, "text": text, "score": 1.0 - index / 10} for index, text in enumerate(texts)
            ]
            + [{"doc_id": "picture", "image": grey_jpeg(40), "image_uri": None, "text": None, "score": 0.1}],
        }
        for query in range(count)
    ]


def test_the_text_qwen3_reranker_runs_from_the_cli_on_hf(ray_session, tmp_path, tiny_text_reranker_dir):
    """`mmr5-batch rerank` on the tiny text Qwen3-Reranker ('auto' tells it from the checkpoint): every text page judged,
    the image-only page flagged; the result is the hf engine's own P(yes) order."""
    write_input(tmp_path / "in", text_rows(2))
    flags = ["--model", tiny_text_reranker_dir, "--backend", "hf", "--device", "cpu", "--actors", "1"]
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *flags]) == 0
    ranked = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    assert set(ranked) == {"q0", "q1"} and read_folder(tmp_path / "out" / "dead_letter") == []
    for row in ranked.values():
        assert row["status"] == "pointwise" and row["scored"] == 4 and row["doc_ids"][-1] == "picture"
        assert row["decided_by"] == ["pointwise"] * 4 + ["flagged"] and row["flag_reasons"] == ["candidate has no text, which a text reranker needs"]
        assert row["scores"][:4] == sorted(row["scores"][:4], reverse=True) and row["image_tokens"] == 0
    assert ranked["q0"]["doc_ids"] == ranked["q1"]["doc_ids"] and ranked["q0"]["scores"] == ranked["q1"]["scores"]


def test_text_qwen3_reranker_first_then_mm_r5_on_the_tiny_checkpoints(ray_session, tmp_path, tiny_model_dir, tiny_text_reranker_dir):
    """The two-model cascade with the text reranker as its scorer: it judges the pages with text, the image-only page
    goes after them unjudged; MM-R5 reasons over the top 3 (pictures at full budget only)."""
    write_input(tmp_path / "in", every_page_pictured(text_rows(2)))
    settings = tiny_hf_cascade(tiny_model_dir, tiny_text_reranker_dir)
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, **settings)
    ranked = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    assert summary["failed"] is None and set(ranked) == {"q0", "q1"}
    for row in ranked.values():
        assert sorted(row["doc_ids"]) == sorted(["t0", "t1", "t2", "t3", "picture"]) and row["scored"] == 4 and row["windows"] == 1
        # The scorer's fourth page after MM-R5's three; the unjudged picture last, where its first-stage score puts it.
        assert row["decided_by"] == ["detail"] * 3 + ["pointwise", "first_stage"] and row["doc_ids"][-1] == "picture"


def test_ziprerank_runs_from_the_cli_on_hf_with_its_own_windows(ray_session, tmp_path, tiny_ziprerank_dir):
    """`mmr5-batch rerank --protocol ziprerank` on the tiny ZipRerank checkpoint: 25 pages per query, its reference's
    windows (20 at stride 10 from the end: two), each one forward pass; scores n - rank; positions labelled by it."""
    levels = [(30 + 9 * index) % 250 for index in range(25)]
    rows = [
        {
            "query_id": f"q{query}",
            "query": "which page shows the total?",
            "candidates": [
                {"doc_id": f"d{index}", "image": grey_jpeg(level, (64, 96)), "image_uri": None, "text": None, "score": 1.0 - index / 100}
                for index, level in enumerate(levels)
            ],
        }
        for query in range(2)
    ]
    write_input(tmp_path / "in", rows)
    flags = ["--model", tiny_ziprerank_dir, "--protocol", "ziprerank", "--backend", "hf", "--device", "cpu", "--actors", "1", "--image-tokens", "16"]
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *flags]) == 0
    ranked = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    assert set(ranked) == {"q0", "q1"} and read_folder(tmp_path / "out" / "dead_letter") == []
    for row in ranked.values():
        assert row["status"] == "ziprerank" and row["windows"] == 2 and row["generated_tokens"] == 0
        assert row["decided_by"] == ["ziprerank"] * 25 and row["scores"] == [float(25 - rank) for rank in range(25)]
        assert sorted(row["doc_ids"]) == sorted(f"d{index}" for index in range(25))
    # The same pages and query: the same order (one forward pass per window, deterministic).
    assert ranked["q0"]["doc_ids"] == ranked["q1"]["doc_ids"]


ZIPRERANK_FIRST = dict(TWO_MODELS, **{"scorer.protocol": "ziprerank", "scorer.name": "mtri-admin/ZipRerank"})


def test_ziprerank_first_then_mm_r5_says_who_decided_and_orders_by_the_scorers_windows(ray_session, tmp_path):
    """The cross-family cascade with scripted engines (ZipRerank's label scores and MM-R5's answers both by darkness):
    ZipRerank's windows rank every candidate on its small pictures, MM-R5 reasons over its best three; `decided_by`
    names who placed each page; the API and the job agree."""
    rows = queries()
    write_input(tmp_path / "in", rows)
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, **ZIPRERANK_FIRST)
    job = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    api_settings = {key: value for key, value in ZIPRERANK_FIRST.items() if key not in ("actors", "batch_size", "prepare_batch_size", "scorer.batch_size")}
    with Reranker(**api_settings) as reranker:
        api = {result.query_id: result for result in reranker.rank_many(rows)}
    for query_id, levels in zip(("q0", "q1", "q2"), LEVELS):
        assert job[query_id]["doc_ids"] == api[query_id].doc_ids == darkest_first(levels)
    # Eight candidates: ZipRerank's one window (8 < its 20) ranked all eight; MM-R5 reasoned over its best three.
    assert job["q0"]["decided_by"] == ["detail"] * 3 + ["ziprerank"] * 5 and job["q0"]["scored"] == 8 and job["q0"]["windows"] == 1
    assert job["q2"]["decided_by"] == ["detail", "detail"] and summary["totals"]["scored"] == 18 and summary["failed"] is None


def test_ziprerank_then_mm_r5_on_the_tiny_checkpoints_with_hf(ray_session, tmp_path, tiny_model_dir, tiny_ziprerank_dir):
    rows = queries()[:2]
    write_input(tmp_path / "in", rows)
    settings = tiny_hf_cascade(tiny_model_dir, tiny_ziprerank_dir, protocol="ziprerank")
    summary = run_job({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, **settings)
    ranked = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    assert summary["failed"] is None and set(ranked) == {"q0", "q1"}
    for row in ranked.values():
        assert sorted(row["doc_ids"]) == sorted(f"d{index}" for index in range(8)) and row["backend"] == "hf"
        assert row["decided_by"] == ["detail"] * 3 + ["ziprerank"] * 5 and row["scored"] == 8 and row["windows"] == 1


def test_jina_m0_from_the_cli_then_first_before_mm_r5_on_the_tiny_checkpoints(ray_session, tmp_path, tiny_model_dir, tiny_jina_dir):
    """`mmr5-batch rerank --protocol jina-m0` on the tiny jina-reranker-m0 (hf): every page judged, pictures and text
    alike, scores its head's values in (0, 1) falling down the list, positions labelled by it; then the two-model
    cascade with it first and MM-R5 reasoning over its best three, `decided_by` naming both."""
    rows = text_rows(2)
    write_input(tmp_path / "in", rows)
    flags = ["--model", tiny_jina_dir, "--protocol", "jina-m0", "--backend", "hf", "--device", "cpu", "--actors", "1", "--image-tokens", "64"]
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *flags]) == 0
    ranked = {row["query_id"]: row for row in read_folder(tmp_path / "out" / "ranked")}
    assert set(ranked) == {"q0", "q1"} and read_folder(tmp_path / "out" / "dead_letter") == []
    for row in ranked.values():
        assert row["status"] == "pointwise" and row["scored"] == 5 and row["decided_by"] == ["jina-m0"] * 5 and row["image_tokens"] > 0
        assert row["scores"] == sorted(row["scores"], reverse=True) and all(0 < score < 1 for score in row["scores"])
    assert ranked["q0"]["doc_ids"] == ranked["q1"]["doc_ids"]

    write_input(tmp_path / "in-pictures", every_page_pictured(rows))
    settings = tiny_hf_cascade(tiny_model_dir, tiny_jina_dir)
    summary = run_job({"input": str(tmp_path / "in-pictures"), "output": str(tmp_path / "cascade")}, **settings)
    cascade = {row["query_id"]: row for row in read_folder(tmp_path / "cascade" / "ranked")}
    assert summary["failed"] is None and set(cascade) == {"q0", "q1"}
    for row in cascade.values():
        assert row["decided_by"] == ["detail"] * 3 + ["jina-m0"] * 2 and row["scored"] == 5 and row["windows"] == 1
