"""The Python API in process: MM-R5's `rerank(query, images)`, `rank`, `rank_many`, on the scripted engine and the tiny model."""

from __future__ import annotations

import io
import re
import threading

import pytest
from PIL import Image

from mmr5_batch import ConfigError, PageUnreadable, QueryFailed, RankedResult, Reranker
from tests.conftest import grey_jpeg

# The scripted test engine ranks darker pages first: this order is [1, 2, 0].
LEVELS = [200, 20, 120]


@pytest.fixture(scope="module")
def reranker():
    with Reranker(backend="scripted-test", keep_reasoning=False) as shared:
        yield shared


def test_rerank_takes_paths_uris_bytes_and_pil_images(reranker, tmp_path):
    paths = []
    for index, level in enumerate(LEVELS):
        paths.append(tmp_path / f"page{index}.jpg")
        paths[-1].write_bytes(grey_jpeg(level))
    pictures = [Image.open(io.BytesIO(grey_jpeg(level))) for level in LEVELS]
    for images in (
        [str(path) for path in paths],
        paths,  # pathlib paths
        [f"file://{path}" for path in paths],
        [grey_jpeg(level) for level in LEVELS],
        pictures,
        [str(paths[0]), grey_jpeg(LEVELS[1]), pictures[2]],  # mixed
    ):
        assert reranker.rerank("Which page is darkest?", images) == [1, 2, 0]


def test_rank_gives_the_whole_result(reranker):
    candidates = [{"doc_id": f"p{index}", "image": grey_jpeg(level), "score": 1.0 - index / 10} for index, level in enumerate(LEVELS)]
    result = reranker.rank("which page?", candidates, reasoning=True)
    assert isinstance(result, RankedResult)
    assert result.doc_ids == ["p1", "p2", "p0"] and result.order == [1, 2, 0]
    assert result.status == "ok" and result.decided_by == ["model"] * 3 and result.windows == 1
    assert result.scores == [1.0, 2 / 3, 1 / 3]
    assert result.reasoning and "<answer>" in result.reasoning[0]
    assert result.image_tokens > 0 and result.prompt_tokens > 0 and result.generated_tokens > 0


def test_unreadable_images_are_flagged_last_not_fatal(reranker, tmp_path):
    result = reranker.rank("q", [grey_jpeg(200), str(tmp_path / "missing.png"), b"not an image", grey_jpeg(10)])
    assert result.order == [3, 0, 1, 2]
    assert result.decided_by == ["model", "model", "flagged", "flagged"]
    assert "FileNotFoundError" in result.flagged["1"] and "undecodable image" in result.flagged["2"]


def test_rerank_raises_naming_an_unreadable_page_unless_asked_to_rank_it_last(reranker, tmp_path):
    """MM-R5's drop-in: a missing file is an error naming it, not a silent last place (`rank` flags it)."""
    missing = tmp_path / "missing.png"
    pages = [grey_jpeg(200), str(missing), grey_jpeg(120), grey_jpeg(10)]
    engine = reranker.engine.engine
    before = len(engine.calls)
    with pytest.raises(PageUnreadable, match=rf"^page 1 \({re.escape(str(missing))}\): cannot read {re.escape(str(missing))}: FileNotFoundError") as raised:
        reranker.rerank("q", pages)
    assert "unreadable='last'" in str(raised.value) and isinstance(raised.value, QueryFailed)
    assert len(engine.calls) == before  # refused before the model ran
    with pytest.raises(PageUnreadable, match=r"^page 0 \(doc_id 0\): undecodable image"):
        reranker.rerank("q", [b"not an image", grey_jpeg(10)])
    with pytest.raises(PageUnreadable, match=rf"^page 1 \({re.escape(str(tmp_path / 'gone.png'))}\)"):
        reranker.rerank("q", [grey_jpeg(10), {"doc_id": "p", "image_uri": str(tmp_path / "gone.png")}])
    assert reranker.rerank("q", pages, unreadable="last") == [3, 2, 0, 1]
    assert reranker.rank("q", pages).flagged.keys() == {"1"}
    with pytest.raises(ValueError, match="unreadable must be"):
        reranker.rerank("q", pages, unreadable="skip")


def test_a_query_that_cannot_be_ranked_raises_from_rerank_and_is_an_error_from_rank(reranker):
    assert reranker.rank("q", [b"junk"]).status == "error"
    with pytest.raises(QueryFailed, match="no usable candidate"):
        reranker.rerank("q", [b"junk", b"more junk"], unreadable="last")
    with pytest.raises(ValueError, match="unknown field"):
        reranker.rank("q", [{"doc_id": "a", "picture": b""}])


def test_rank_many_shares_the_engine_across_queries(reranker):
    engine = reranker.engine.engine  # the scripted engine behind the batching adapter
    before = len(engine.calls)
    queries = [("q one", [grey_jpeg(level) for level in LEVELS]), {"query_id": "two", "query": "q two", "candidates": [grey_jpeg(9), grey_jpeg(99)]}]
    first, second = reranker.rank_many(queries)
    assert first.query_id == "0" and first.order == [1, 2, 0]
    assert second.query_id == "two" and second.order == [0, 1]
    assert engine.calls[before:] == [2]  # both queries' windows went in one engine call


def test_settings_reach_the_job_code_path():
    pages = [grey_jpeg(level) for level in (200, 170, 140, 110, 80, 50, 20, 230)]
    with Reranker(backend="scripted-test", mode="fast") as fast:
        result = fast.rank("q", pages)
    assert result.status == "fast" and result.order[0] == 6
    with Reranker(backend="scripted-test", cascade=True, first_window=4, first_stride=2, detail_top=3) as cascade:
        result = cascade.rank("q", pages)
    assert result.order[0] == 6 and sorted(result.order) == list(range(8))
    assert result.decided_by == ["detail"] * 3 + ["first_pass"] * 5
    with Reranker(backend="scripted-test", think_tokens=4) as budget:
        assert budget.rank("q #ramble", pages[:3]).forced_answers == 1


def test_bad_settings_are_one_line_before_any_engine():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['windw'\]"):
        Reranker(backend="scripted-test", windw=5)
    with pytest.raises(ConfigError, match="stride"):
        Reranker(backend="scripted-test", window=3, stride=3)


def test_close_releases_the_engine_and_its_thread():
    reranker = Reranker(backend="scripted-test")
    assert any(thread.name == "mmr5-batch-engine" for thread in threading.enumerate())
    reranker.close()
    assert reranker.engine is None
    with pytest.raises(RuntimeError, match="closed"):
        reranker.rank("q", [grey_jpeg(1)])


def test_hf_backend_on_the_tiny_model(tiny_model_dir):
    with Reranker(tiny_model_dir, backend="hf", device="cpu", max_new_tokens=4, min_new_tokens=4, image_tokens=64) as reranker:
        order = reranker.rerank("Which page?", [grey_jpeg(level) for level in (10, 90, 170, 250)])
        result = reranker.rank("Which page?", [grey_jpeg(10), grey_jpeg(90)])
    assert sorted(order) == [0, 1, 2, 3]
    assert result.status in ("ok", "repaired", "fallback") and result.generated_tokens == 4


def test_the_text_qwen3_reranker_in_process(tiny_text_reranker_dir):
    """One query in a notebook with the text reranker: pages as dicts with their text, told apart from the
    checkpoint; a page with only an image is flagged (the text model cannot read it), `rerank` raises naming it."""
    pages = [{"doc_id": "a", "text": "the quarterly revenue table"}, {"doc_id": "b", "text": "minutes of a meeting"}]
    with Reranker(tiny_text_reranker_dir, backend="hf", device="cpu") as reranker:
        result = reranker.rank("revenue table", [*pages, {"doc_id": "picture", "image": grey_jpeg(40)}])
        assert result.status == "pointwise" and result.doc_ids[-1] == "picture" and result.scored == 2
        assert result.scores[0] >= result.scores[1] and 0.0 < result.scores[1] < 1.0
        assert result.flagged == {"picture": "candidate has no text, which a text reranker needs"}
        assert sorted(reranker.rerank("revenue table", pages)) == [0, 1]
        with pytest.raises(PageUnreadable, match="page 2 .*a text reranker needs"):
            reranker.rerank("revenue table", [*pages, grey_jpeg(40)])


def test_ziprerank_in_process_keeps_its_reference_windows(tiny_ziprerank_dir):
    """The notebook user's ZipRerank: 23 pages, its windows of 20 at stride 10 (two), one forward pass each."""
    with Reranker(tiny_ziprerank_dir, backend="hf", device="cpu", image_tokens=16) as reranker:
        result = reranker.rank("which page?", [grey_jpeg((10 * index) % 250, (64, 96)) for index in range(23)])
        order = reranker.rerank("which page?", [grey_jpeg(level, (64, 96)) for level in (10, 90, 170)])
    assert result.status == "ziprerank" and result.windows == 2 and result.generated_tokens == 0
    assert result.scores == [float(23 - rank) for rank in range(23)] and sorted(order) == [0, 1, 2]
