"""The pointwise protocol and the two-model cascade in the core: prompt bytes, order by P(yes), bookkeeping."""

from __future__ import annotations

import asyncio
import json

import pytest

from mmr5_batch.config import RerankerConfig, config_from_keywords
from mmr5_batch.config.protocol import model_family, model_protocol
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.batching import BatchingEngine
from mmr5_batch.core.engine_protocol import Completion, SamplingSettings
from mmr5_batch.core.images import prepare_images
from mmr5_batch.core.pointwise import pointwise_request, relevance_order
from mmr5_batch.core.pointwise_prompt import DEFAULT_INSTRUCTION, render_pointwise_prompt
from mmr5_batch.core.preparation import prepare_row
from mmr5_batch.core.rows import PassPicture, PreparedCandidate
from mmr5_batch.core.scheduler import RankingSettings, rerank_queries_async, score_queries_async
from mmr5_batch.devtools.scripted_engine import ScriptedTestEngine
from mmr5_batch.errors import ConfigError
from tests.conftest import grey_jpeg


def test_the_prompt_is_qwen3_vl_rerankers_format_byte_for_byte():
    prompt = render_pointwise_prompt("Where is revenue?", image=True, text="Q3 table")
    assert prompt == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. "
        'Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n<Instruct>: Given a search query, retrieve relevant candidates that answer the query.<Query>:Where is revenue?\n"
        "<Document>:<|vision_start|><|image_pad|><|vision_end|>Q3 table<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<Document>:Q3 table<|im_end|>" in render_pointwise_prompt("q", image=False, text="Q3 table", instruction="Find pages.")
    with pytest.raises(ValueError, match="image or text"):
        render_pointwise_prompt("q", image=False, text=None)


def test_a_request_carries_the_image_when_there_is_one_and_asks_for_relevance():
    with_image = pointwise_request("q", PreparedCandidate(pictures=[PassPicture(image=b"jpeg")]), DEFAULT_INSTRUCTION)
    text_only = pointwise_request("q", PreparedCandidate(text="words"), DEFAULT_INSTRUCTION)
    assert with_image.relevance and with_image.images == (b"jpeg",) and with_image.prompt.count("<|image_pad|>") == 1
    assert text_only.images == () and "<|image_pad|>" not in text_only.prompt and text_only.prompt.endswith("assistant\n")
    # The picture of the picture pass asked for (the two-model cascade's scorer: the first pass's).
    two = PreparedCandidate(pictures=[PassPicture(image=b"big"), PassPicture(image=b"small")])
    assert pointwise_request("q", two, DEFAULT_INSTRUCTION, 1).images == (b"small",)
    assert pointwise_request("q", two, DEFAULT_INSTRUCTION).images == (b"big",)


def test_relevance_orders_highest_first_and_ties_keep_their_order():
    assert relevance_order([4, 2, 7, 1], {4: 0.2, 2: 0.9, 7: 0.2, 1: 0.5}) == [2, 1, 4, 7]


def prepared(levels, texts=None, query="which page?", query_id="q"):
    texts = texts or [None] * len(levels)
    return {
        "query_id": query_id,
        "query": query,
        "source_path": "s.parquet",
        "error": None,
        "candidates": [
            {
                "doc_id": f"d{index}",
                "pictures": [{"image": grey_jpeg(level), "tokens": 20}, {"image": grey_jpeg(level, (32, 32)), "tokens": 4}] if level is not None else None,
                "score": 1.0 - index / 10,
                "error": None,
                "text": text,
            }
            for index, (level, text) in enumerate(zip(levels, texts))
        ],
    }


def pointwise_settings(**fields):
    return RankingSettings(window=5, stride=3, sampling=SamplingSettings(max_new_tokens=1, stop=()), model_id="m", protocol="pointwise", **fields)


def test_pointwise_ranks_by_p_yes_and_reports_it_as_the_scores():
    # The scripted engine's P(yes) is an image's darkness / 255: darker first.
    [row] = asyncio.run(rerank_queries_async([prepared([200, 20, 120])], BatchingEngine(ScriptedTestEngine()), pointwise_settings()))
    assert row.status == "pointwise" and row.doc_ids == ["d1", "d2", "d0"]
    assert row.scores == pytest.approx([(255 - 20) / 255, (255 - 120) / 255, (255 - 200) / 255], abs=0.02)
    assert row.decided_by == ["pointwise"] * 3 and row.scored == 3 and row.windows == 0
    assert row.image_tokens == 60


def test_pointwise_judges_text_only_documents_and_leaves_what_is_below_top_k_unjudged():
    rows = [prepared([None, None, None], texts=["nothing here", "which page? this one", "which one"])]
    [row] = asyncio.run(rerank_queries_async(rows, BatchingEngine(ScriptedTestEngine()), pointwise_settings(top_k=2)))
    # Query words found in the text: d1 has both, d0 none; d2 is below top_k, unjudged, in first-stage order.
    assert row.doc_ids == ["d1", "d0", "d2"] and row.scores[2] is None and row.scored == 2
    assert row.decided_by == ["pointwise", "pointwise", "first_stage"]


class RefusingEngine:
    async def generate_async(self, request):
        # The candidate drawn at level 20 (d1 below), at either size.
        refused = any(data in (grey_jpeg(20), grey_jpeg(20, (32, 32))) for data in request.images)
        return Completion("", "error", error="too long") if refused else Completion("", "stop", relevance=0.5)


def test_a_refused_pair_flags_that_candidate_and_the_query_is_ranked_over_the_rest():
    [row] = asyncio.run(rerank_queries_async([prepared([200, 20, 120])], RefusingEngine(), pointwise_settings()))
    assert row.status == "pointwise" and row.doc_ids == ["d0", "d2", "d1"] and row.scores == [0.5, 0.5, None]
    assert row.flagged_doc_ids == ["d1"] and row.flag_reasons == ["too long"] and row.decided_by == ["pointwise", "pointwise", "flagged"]
    # Only when the engine refuses every pair is the query a dead letter.
    [alone] = asyncio.run(rerank_queries_async([prepared([20])], RefusingEngine(), pointwise_settings()))
    assert alone.status == "error" and alone.reason == "pointwise scoring: every pair was refused (d0: too long)"


def two_model_settings(detail_top=2, top_k=None):
    config = config_from_keywords(
        RerankerConfig,
        backend="scripted-test",
        window=3,
        stride=2,
        top_k=top_k,
        cascade=True,
        **{"cascade.first_pass": "pointwise", "cascade.detail_top": detail_top, "scorer.backend": "scripted-test"},
    )
    run = resolve_run(config)
    return run.scoring(), run.ranking()


def test_two_model_cascade_mm_r5_reasons_over_the_scorers_best_only():
    scorer, reranker = two_model_settings(detail_top=2)
    engine = BatchingEngine(ScriptedTestEngine())
    # Darkness: d3 (10) > d1 (40) > d2 (90) > d0 (250); the scorer sees the first-pass images.
    [scored] = asyncio.run(score_queries_async([prepared([250, 40, 90, 10])], engine, scorer))
    assert [c.relevance for c in scored.candidates] == pytest.approx([5 / 255, 215 / 255, 165 / 255, 245 / 255], abs=0.02)
    assert scored.scored == 4 and scored.scorer_image_tokens == 16 and scored.scorer_prompt_tokens > 0
    [row] = asyncio.run(rerank_queries_async([scored], engine, reranker))
    assert row.doc_ids == ["d3", "d1", "d2", "d0"] and row.status == "ok"
    assert row.decided_by == ["detail", "detail", "pointwise", "pointwise"]
    # One MM-R5 window over the two best; the scorer's counts carried into the result.
    assert row.windows == 1 and row.scored == 4 and row.image_tokens == 16 + 2 * 20


def test_a_pair_the_scorer_refuses_is_flagged_through_to_the_result_and_a_scorer_failure_is_a_dead_letter():
    scorer, reranker = two_model_settings()
    [scored] = asyncio.run(score_queries_async([prepared([200, 20, 120])], RefusingEngine(), scorer))
    assert scored.error is None and scored.candidates[1].error == "too long" and scored.candidates[1].pictures is None
    [row] = asyncio.run(rerank_queries_async([scored], BatchingEngine(ScriptedTestEngine()), reranker))
    assert row.status == "ok" and row.flagged_doc_ids == ["d1"] and row.doc_ids[-1] == "d1"
    [failed] = asyncio.run(score_queries_async([prepared([20])], RefusingEngine(), scorer))
    assert failed.error == "scorer: pointwise scoring: every pair was refused (d0: too long)"
    [row] = asyncio.run(rerank_queries_async([failed], BatchingEngine(ScriptedTestEngine()), reranker))
    assert row.status == "error" and row.reason.startswith("scorer: ")


def test_the_protocol_comes_from_the_checkpoint_unless_set(tmp_path):
    (tmp_path / "qwen3-vl-reranker").mkdir()
    (tmp_path / "qwen3-vl-reranker" / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    (tmp_path / "qwen25").mkdir()
    (tmp_path / "qwen25" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    section = lambda model, **kw: config_from_keywords(RerankerConfig, name=model, **kw).model
    protocol = lambda model, **kw: model_protocol(section(model, **kw))
    family = lambda model, **kw: model_family(section(model, **kw)).name
    assert protocol(model=str(tmp_path / "qwen3-vl-reranker")) == "pointwise" and protocol(model=str(tmp_path / "qwen25")) == "mm-r5"
    assert protocol(model="Qwen/Qwen3-VL-Reranker-8B") == "pointwise" and protocol(model="i2vec/MM-R5") == "mm-r5"
    assert protocol(model=str(tmp_path / "qwen3-vl-reranker"), protocol="mm-r5") == "mm-r5"
    # The text Qwen3-Reranker: pointwise, its own family, by model type or by hub name; set by hand too.
    assert family(model=str(tmp_path / "text")) == family(model="Qwen/Qwen3-Reranker-0.6B") == "qwen3-reranker"
    assert family(model=str(tmp_path / "text"), protocol="pointwise") == "qwen3-reranker" and protocol(model=str(tmp_path / "text")) == "pointwise"
    assert family(model="Qwen/Qwen3-VL-Reranker-2B") == family(model=str(tmp_path / "qwen25"), protocol="pointwise") == "qwen3-vl-reranker"
    assert model_family(section("Qwen/Qwen3-VL-Reranker-2B")).grid == 32 and model_family(section("i2vec/MM-R5")).grid == 28


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"protocol": "pointwise", "cascade": True}, "same-model cascade is MM-R5's"),
        ({"protocol": "pointwise", "cascade": True, "cascade.first_pass": "pointwise"}, "model must be MM-R5"),
        ({"protocol": "pointwise", "mode": "fast"}, "scores MM-R5's answer ids"),
        ({"scorer.protocol": "mm-r5"}, "scorer.protocol .mm-r5.: the scorer ranks every candidate before MM-R5, it must be a pointwise model or ZipRerank"),
    ],
)
def test_protocol_settings_that_cannot_work_stop_at_config_time(settings, message):
    with pytest.raises(ConfigError, match=message):
        config_from_keywords(RerankerConfig, **settings)


def test_images_are_fitted_on_each_models_grid_and_text_only_candidates_are_kept_for_pointwise():
    big, small = prepare_images(grey_jpeg(90, (300, 200)), [64, 16], 90, [28, 32])
    assert big.width % 28 == 0 and big.height % 28 == 0 and big.tokens == (big.width // 28) * (big.height // 28) <= 64
    assert small.width % 32 == 0 and small.height % 32 == 0 and small.tokens == (small.width // 32) * (small.height // 32) <= 16
    row = {"query_id": "q", "query": "which?", "candidates": [{"doc_id": "t", "text": "words"}, {"doc_id": "i", "image": grey_jpeg(90)}]}
    pointwise = prepare_row(row, resolve_run(config_from_keywords(RerankerConfig, protocol="pointwise", image_tokens=16)).prepare)
    assert pointwise.error is None and [c.error for c in pointwise.candidates] == [None, None]
    assert pointwise.candidates[0].text == "words" and pointwise.candidates[1].picture_tokens() <= 16
    listwise = prepare_row(row, resolve_run(config_from_keywords(RerankerConfig, image_tokens=16)).prepare)
    assert "neither image bytes nor image_uri" in listwise.candidates[0].error


def test_an_empty_instruction_is_the_references_default():
    """Every reference falls back to its default instruction for an empty one; so does the resolved run, once."""
    for empty in ("", "   "):
        run = resolve_run(config_from_keywords(RerankerConfig, protocol="pointwise", instruction=empty, **{"scorer.instruction": empty}))
        assert run.config.model.instruction == run.config.scorer.instruction == DEFAULT_INSTRUCTION
        request = pointwise_request("which page?", PreparedCandidate(text="words"), run.ranking().instruction)
        assert f"<Instruct>: {DEFAULT_INSTRUCTION}<Query>:which page?\n<Document>:words" in request.prompt


def test_document_text_is_cut_in_the_cpu_stage_to_the_reference_limit(tiny_pointwise_dir):
    from mmr5_batch.config import ModelConfig
    from mmr5_batch.engines.image_processors import load_tokenizer, page_work

    assert ModelConfig().document_tokens == 8192  # Qwen3-VL-Reranker's reference cuts a pair at 8192 tokens
    run = resolve_run(config_from_keywords(RerankerConfig, backend="scripted-test", protocol="pointwise", **{"model.document_tokens": 16}))
    assert run.prepare.text_tokens == 16 and run.prepare.tokenizer_source is None  # the scripted engine counts words
    long_text = " ".join(f"w{index}" for index in range(100))
    row = {"query_id": "q", "query": "q", "candidates": [{"doc_id": "a", "text": long_text, "score": 1.0}, {"doc_id": "b", "text": "short", "score": 0.5}]}
    prepared = prepare_row(row, run.prepare)
    assert prepared.candidates[0].text == " ".join(f"w{index}" for index in range(16)) and prepared.candidates[1].text == "short"
    # A real checkpoint's text is cut by its own tokenizer.
    real = resolve_run(
        config_from_keywords(RerankerConfig, backend="hf", protocol="pointwise", **{"model.name": tiny_pointwise_dir, "model.document_tokens": 16})
    )
    assert real.prepare.tokenizer_source == tiny_pointwise_dir
    cut = prepare_row(row, real.prepare, work=page_work(real.prepare)).candidates[0].text
    tokenizer = load_tokenizer(tiny_pointwise_dir)
    assert len(tokenizer.encode(cut, add_special_tokens=False)) <= 16 and long_text.startswith(cut.strip()[:20])
    # MM-R5 alone reads no text, so nothing is cut; the two-model cascade's scorer reads it.
    assert resolve_run(config_from_keywords(RerankerConfig)).prepare.text_tokens is None
    two = resolve_run(config_from_keywords(RerankerConfig, cascade=True, **{"cascade.first_pass": "pointwise", "scorer.backend": "hf"}))
    assert two.prepare.text_tokens == 8192 and two.prepare.tokenizer_source == "Qwen/Qwen3-VL-Reranker-2B"


class TokenizerWithoutOffsets:
    """A real tokenizer seen through encode and decode only, as a slow (Python) tokenizer is: no character offsets."""

    is_fast = False

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text, add_special_tokens=False):
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids):
        return self.tokenizer.decode(ids)


def test_a_cut_inside_a_multi_byte_character_is_exact(tiny_pointwise_dir):
    """Cut on ids, the head decodes to text that tokenises to at most the limit again, and no character is broken
    (decoding a byte-level token inside one gives U+FFFD, which re-tokenises longer)."""
    from mmr5_batch.core.preparation import cut_to_tokens
    from mmr5_batch.engines.image_processors import load_tokenizer

    tokenizer = load_tokenizer(tiny_pointwise_dir)
    text = "Prix: 12 € — 東京の資料 🙂 página número " * 6
    ids = tokenizer.encode(text, add_special_tokens=False)
    naive_over = [limit for limit in range(1, 60) if len(tokenizer.encode(tokenizer.decode(ids[:limit]), add_special_tokens=False)) > limit]
    assert naive_over  # decoding the first N ids is not exact on this text: what the cut must avoid
    for which in (tokenizer, TokenizerWithoutOffsets(tokenizer)):
        for limit in range(1, 60):
            cut = cut_to_tokens(text, limit, which)
            assert len(tokenizer.encode(cut, add_special_tokens=False)) <= limit, (limit, cut)
            assert text.startswith(cut) and "\ufffd" not in cut
            assert len(cut) > 0
    assert cut_to_tokens("short", 16, tokenizer) == "short"


def test_a_blank_document_without_an_image_is_flagged_and_a_blank_query_is_a_dead_letter():
    run = resolve_run(config_from_keywords(RerankerConfig, backend="scripted-test", protocol="pointwise"))
    row = {"query_id": "q", "query": "which?", "candidates": [{"doc_id": "a", "text": " \n\t ", "score": 1.0}, {"doc_id": "b", "text": "words", "score": 0.5}]}
    prepared = prepare_row(row, run.prepare)
    assert prepared.error is None
    assert prepared.candidates[0].error == "candidate has neither image bytes, image_uri nor text (its text is blank)"
    assert prepared.candidates[1].usable
    assert prepare_row(dict(row, query="  "), run.prepare).error.startswith("empty query")
