"""The hf backend on the tiny offline Qwen2.5-VL: batched, left-padded generation on CPU."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from mmr5_batch.config import ModelConfig
from mmr5_batch.core.images import prepare_image
from mmr5_batch.core.prompt import build_messages
from mmr5_batch.core.ranking import WindowPlan
from mmr5_batch.core.rows import PassPicture, PreparedCandidate
from mmr5_batch.engines import EngineRequest, EngineUnavailable, SamplingSettings
from mmr5_batch.engines.hf import HFEngine, expand_image_pads
from mmr5_batch.engines.shared import label_token_ids
from tests.conftest import grey_jpeg


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine.from_config(ModelConfig(name=tiny_model_dir, device="cpu", max_batch_size=4))


def request(question, sizes, sampling):
    images = tuple(prepare_image(grey_jpeg(90, size), 64).data for size in sizes)
    return EngineRequest(build_messages(question, len(images)), images, sampling)


def test_batched_generation_with_mixed_image_sizes(engine):
    sampling = SamplingSettings(max_new_tokens=6, min_new_tokens=6)
    requests = [
        request("short?", [(120, 160), (300, 200)], sampling),
        request("a much longer question about the third quarter revenue?", [(56, 56), (200, 500), (400, 400)], sampling),
        request("q", [(280, 280)], sampling),
    ]
    completions = engine.generate(requests)
    assert len(completions) == 3
    for completion in completions:
        assert completion.error is None
        assert completion.generated_tokens == 6 and completion.finish_reason == "length"
        assert completion.image_tokens > 0
        assert completion.prompt_tokens > completion.image_tokens
    # the engine's image-token count is the CPU stage's count
    sizes = [(56, 56), (200, 500), (400, 400)]
    assert completions[1].image_tokens == sum(prepare_image(grey_jpeg(90, size), 64).tokens for size in sizes)


def test_batching_beyond_max_batch_size(engine):
    sampling = SamplingSettings(max_new_tokens=2, min_new_tokens=2)
    completions = engine.generate([request(f"q{i}", [(100, 100)], sampling) for i in range(6)])
    assert [c.generated_tokens for c in completions] == [2] * 6


def test_a_broken_request_fails_alone(engine):
    sampling = SamplingSettings(max_new_tokens=2, min_new_tokens=2)
    good = request("q", [(100, 100)], sampling)
    broken = EngineRequest(build_messages("q", 2), (grey_jpeg(10),), sampling)  # 2 placeholders, 1 image
    completions = engine.generate([good, broken, good])
    assert [c.error is None for c in completions] == [True, False, True]
    assert "engine rejected the request" in completions[1].error


def test_expand_image_pads():
    assert expand_image_pads("a<|image_pad|>b<|image_pad|>", [2, 1]) == "a<|image_pad|><|image_pad|>b<|image_pad|>"
    with pytest.raises(ValueError):
        expand_image_pads("a<|image_pad|>", [1, 2])


def test_missing_model_is_an_actionable_error(tmp_path):
    with pytest.raises(EngineUnavailable, match="cannot load model"):
        HFEngine.from_config(ModelConfig(name=str(tmp_path / "missing"), device="cpu"))


def test_thinking_budget_forces_an_answer_on_the_tiny_model(engine):
    """Random weights never close their reasoning: every window hits the budget and gets a forced answer."""
    from mmr5_batch.core.batching import BatchingEngine
    from mmr5_batch.core.scheduler import rerank_queries_async

    row = {
        "query_id": "q",
        "query": "which page?",
        "source_path": "s",
        "error": None,
        "candidates": [
            {"doc_id": f"d{i}", "pictures": [{"image": prepare_image(grey_jpeg(40 * i + 10), 16).data, "tokens": 16}], "score": 1 - i / 10, "error": None}
            for i in range(3)
        ],
    }
    import asyncio

    [result] = asyncio.run(
        rerank_queries_async(
            [row],
            BatchingEngine(engine),
            window=3,
            stride=2,
            top_k=None,
            sampling=SamplingSettings(max_new_tokens=64, min_new_tokens=2),
            model_id="m",
            run_id="r",
            keep_reasoning=True,
            think_tokens=3,
        )
    )
    assert result.forced_answers == 1 and result.windows == 1
    [text] = result.reasoning
    assert "</think><answer>[" in text or "<answer>[" in text
    # 3 thinking tokens, then at most the forced answer's allowance
    assert 3 < result.generated_tokens <= 3 + 32
    assert sorted(result.doc_ids) == ["d0", "d1", "d2"]


def test_fast_mode_scores_are_the_models_first_token_log_probabilities(engine):
    """The one-pass scores equal the log-softmax of generate's first-step logits at the id tokens."""
    import torch

    from mmr5_batch.core.vocabulary import FAST_PREFIX

    base = request("which page?", [(120, 160), (200, 100), (90, 90)], SamplingSettings())
    scored = EngineRequest(base.messages, base.images, base.sampling, assistant_prefix=FAST_PREFIX, score_labels=("1", "2", "3"))
    [completion] = engine.generate([scored])
    assert completion.error is None and len(completion.id_scores) == 3 and completion.generated_tokens == 0
    inputs, _ = engine._encode([scored])
    with torch.inference_mode():
        out = engine.model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=engine.tokenizer.pad_token_id
        )
    first = torch.log_softmax(out.scores[0][0].float(), dim=-1)
    expected = [float(first[token]) for token in label_token_ids(engine.tokenizer, ("1", "2", "3"))]
    assert completion.id_scores == pytest.approx(expected, abs=1e-4)
    assert engine.render(scored).endswith("<|im_start|>assistant\n" + FAST_PREFIX)


def test_a_constrained_forced_answer_is_a_full_permutation_on_the_tiny_model(engine):
    """Random weights write anything; constrained, the forced answer is a well-formed permutation every time."""
    from mmr5_batch.core.parsing import parse_ranking
    from mmr5_batch.core.scheduler import answer_tokens
    from mmr5_batch.core.vocabulary import OK

    prefix = "<think>the pages look alike</think><answer>["
    sampling = SamplingSettings(max_new_tokens=answer_tokens(4))
    requests = [replace(request(f"which page {number}?", [(120, 160)] * 4, sampling), assistant_prefix=prefix, constrain_answer=4) for number in range(3)]
    free = replace(request("which page?", [(120, 160)] * 4, sampling), assistant_prefix=prefix)
    *constrained, unconstrained = engine.generate([*requests, free])
    for completion in constrained:
        assert completion.text.endswith("]</answer>"), completion.text
        assert parse_ranking(prefix + completion.text, 4).status == OK
    # The same prompt without the constraint: random weights do not write an answer.
    assert parse_ranking(prefix + unconstrained.text, 4).status != OK


def test_requests_with_different_sampling_share_a_call_per_setting(engine):
    short, long = SamplingSettings(max_new_tokens=2, min_new_tokens=2), SamplingSettings(max_new_tokens=5, min_new_tokens=5)
    requests = [request("a?", [(64, 64)], short), request("b?", [(64, 64)], long), request("c?", [(64, 64)], short)]
    completions = engine.generate(requests)
    assert [completion.generated_tokens for completion in completions] == [2, 5, 2]
    assert all(completion.error is None for completion in completions)


def test_image_tokens_get_their_m_rope_positions(engine):
    """The inputs mark where the image tokens are (`mm_token_type_ids`), as Qwen's processor does: without it
    transformers 5.x lays the image tokens out as plain text positions."""
    inputs, _ = engine._encode([request("where?", [(120, 160)], SamplingSettings())])
    image = inputs["input_ids"] == engine.model.config.image_token_id
    assert image.any() and (inputs["mm_token_type_ids"] == image.int()).all()


def test_pointwise_relevance_equals_a_direct_forward_pass(tiny_pointwise_dir):
    """P(yes) from the engine equals the reranker's own formula, sigmoid((w_yes - w_no) . h_last), computed here
    from the model's last hidden state and output head, for image, text and both, alone or batched."""
    import torch

    from mmr5_batch.core.pointwise import pointwise_request
    from mmr5_batch.core.pointwise_prompt import DEFAULT_INSTRUCTION

    engine = HFEngine.from_config(ModelConfig(name=tiny_pointwise_dir, device="cpu", max_batch_size=4))
    prepared = prepare_image(grey_jpeg(70, (200, 300)), 16, grid=32)
    image = prepared.data
    requests = [
        pointwise_request("which page shows revenue?", PreparedCandidate(pictures=[PassPicture(image=image)], text="Q3 revenue"), DEFAULT_INSTRUCTION),
        pointwise_request("which page?", PreparedCandidate(text="a page of text about revenue"), DEFAULT_INSTRUCTION),
        pointwise_request("which page?", PreparedCandidate(pictures=[PassPicture(image=image)]), DEFAULT_INSTRUCTION),
    ]
    batched = engine.generate(requests)
    no, yes = engine.relevance_token_ids()
    head = engine.model.get_output_embeddings().weight
    for request_, completion in zip(requests, batched):
        inputs, _ = engine._encode([request_])
        with torch.inference_mode():
            hidden = engine.model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]
            expected = torch.sigmoid((head[yes] - head[no]) @ hidden).item()
        assert completion.error is None and completion.relevance == pytest.approx(expected, abs=1e-5)
        assert engine.generate([request_])[0].relevance == pytest.approx(completion.relevance, abs=1e-5)  # batching changes nothing
    # Fitted on Qwen3-VL's 32-px grid, the image is kept as it is by the model's processor: the tokens we count are its.
    assert batched[0].image_tokens == prepared.tokens == 12 and batched[1].image_tokens == 0


def test_the_text_rerankers_relevance_is_its_model_cards_score(tiny_text_reranker_dir):
    """The text Qwen3-Reranker on the hf engine (a causal LM, no image processor): P(yes) equals its model card's
    score, re-implemented here (it cannot be imported): the causal LM's logits at the last position, a log-softmax
    over the "no" and "yes" logits, exp of the "yes" one; batched or alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmr5_batch.core.families import QWEN3_RERANKER
    from mmr5_batch.core.pointwise import pointwise_request

    engine = HFEngine.from_config(ModelConfig(name=tiny_text_reranker_dir, device="cpu", max_batch_size=4), QWEN3_RERANKER)
    assert engine.image_processor is None and type(engine.model).__name__ == "Qwen3ForCausalLM"
    pairs = [("which page shows revenue?", "Q3 revenue rose"), ("who signed?", "the lease was signed by the tenant in May"), ("q", "d")]
    requests = [pointwise_request(query, PreparedCandidate(text=text), "", family=QWEN3_RERANKER) for query, text in pairs]
    batched = engine.generate(requests)
    tokenizer = AutoTokenizer.from_pretrained(tiny_text_reranker_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_text_reranker_dir, dtype=torch.float32).eval()
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    for request_, completion in zip(requests, batched):
        ids = torch.tensor([tokenizer.encode(request_.prompt, add_special_tokens=False)])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[:, -1, :]
            expected = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)[:, 1].exp().item()
        assert completion.error is None and completion.relevance == pytest.approx(expected, abs=1e-5)
        assert completion.prompt_tokens == ids.shape[1] and completion.image_tokens == 0
        assert engine.generate([request_])[0].relevance == pytest.approx(completion.relevance, abs=1e-5)


def test_ziprerank_windows_are_ordered_by_the_references_letter_logits(tiny_ziprerank_dir):
    """ZipRerank on the hf engine: one forward pass per window; the letters' scores differ as the model's own logits at
    the last position differ (the reference's logits mode reads those), so the order is the reference's; batching
    changes nothing."""
    import torch

    from mmr5_batch.core.families import ZIPRERANK_FAMILY
    from mmr5_batch.core.ranking import plan_query
    from mmr5_batch.core.rows import PreparedRow
    from mmr5_batch.core.scheduler import _request

    engine = HFEngine.from_config(ModelConfig(name=tiny_ziprerank_dir, device="cpu", max_batch_size=4), ZIPRERANK_FAMILY)
    pictures = [prepare_image(grey_jpeg(level, (200, 300)), 16, grid=32).data for level in (30, 90, 150, 210, 250)]
    candidates = [PreparedCandidate(doc_id=f"d{index}", pictures=[PassPicture(image=data, tokens=12)]) for index, data in enumerate(pictures)]
    requests = []
    for count in (5, 3):
        state = plan_query(PreparedRow(query_id="q", query=f"which of {count} pages?", candidates=candidates[:count]), WindowPlan(count, 1))
        requests.append(_request(state, list(range(count)), SamplingSettings(max_new_tokens=1), ZIPRERANK_FAMILY))
    batched = engine.generate(requests)
    for request_, completion in zip(requests, batched):
        inputs, _ = engine._encode([request_])
        with torch.inference_mode():
            logits = engine.model(**inputs).logits[0, -1].float()
        letters = [engine.tokenizer.encode(letter, add_special_tokens=False)[0] for letter in request_.score_labels]
        reference = [float(logits[token]) for token in letters]
        ours = completion.id_scores
        assert completion.error is None and ours is not None and len(ours) == len(letters) and completion.generated_tokens == 0
        assert [a - ours[0] for a in ours] == pytest.approx([r - reference[0] for r in reference], abs=1e-4)
        order = sorted(range(len(ours)), key=lambda position: -ours[position])
        assert order == sorted(range(len(reference)), key=lambda position: reference[position], reverse=True)
        assert engine.generate([request_])[0].id_scores == pytest.approx(ours, abs=1e-5)


@pytest.mark.parametrize("model_dir", ["tiny_model_dir", "tiny_pointwise_dir"])
def test_patches_from_the_cpu_stage_give_the_processors_pixels_and_the_same_completions(model_dir, request: pytest.FixtureRequest):
    """The CPU stage's raw patches, normalised by the engine, are bit for bit the float patches the image processor's
    own call gives the same picture; so completions through both paths are identical (MM-R5 and the pointwise model)."""
    import torch

    from mmr5_batch.core.model_inputs import patch_image
    from mmr5_batch.engines.image_processors import load_image_processor

    source = request.getfixturevalue(model_dir)
    model = HFEngine.from_config(ModelConfig(name=source, device="cpu", max_batch_size=4))
    grid = 32 if model_dir == "tiny_pointwise_dir" else 28
    pictures = [prepare_image(grey_jpeg(level, size), 48, grid=grid).data for level, size in ((40, (200, 300)), (160, (320, 180)))]
    patches = [patch_image(data, load_image_processor(source), grid, 48) for data in pictures]
    for data, cut in zip(pictures, patches, strict=True):
        from PIL import Image

        own = model.image_processor(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")
        assert torch.equal(model.pixel_values(cut), own["pixel_values"])
        assert list(own["image_grid_thw"][0]) == list(cut.grid)
    if model_dir == "tiny_pointwise_dir":
        from mmr5_batch.core.pointwise import pointwise_request
        from mmr5_batch.core.pointwise_prompt import DEFAULT_INSTRUCTION

        def candidate(index, with_patches):
            fields = {"patches": patches[index].patches, "grid": list(patches[index].grid), "key": patches[index].key} if with_patches else {}
            return PreparedCandidate(pictures=[PassPicture(image=pictures[index], **fields)], text="page")

        requests = [pointwise_request("which?", candidate(index, with_patches), DEFAULT_INSTRUCTION) for with_patches in (False, True) for index in (0, 1)]
        assert [bool(r.image_inputs) for r in requests] == [False, False, True, True]
        relevance = [completion.relevance for completion in model.generate(requests)]
        assert relevance[:2] == relevance[2:]
        return
    sampling = SamplingSettings(max_new_tokens=6, min_new_tokens=6)
    from_jpeg = EngineRequest(build_messages("which?", 2), tuple(pictures), sampling)
    from_patches = replace(from_jpeg, image_inputs=tuple(patches))
    assert [(c.text, c.prompt_tokens, c.image_tokens) for c in model.generate([from_jpeg])] == [
        (c.text, c.prompt_tokens, c.image_tokens) for c in model.generate([from_patches])
    ]


def test_p_yes_is_read_from_an_fp32_difference_so_bf16_leaves_no_false_ties():
    """Qwen3-VL-Reranker's P(yes) is sigmoid(h . (w_yes - w_no)); with the difference in fp32 (as the reference and vLLM
    compute it) a bf16 model still gives distinct scores, where a softmax over its bf16 logits rounds them together."""
    import torch

    from mmr5_batch.core.pointwise import relevance_order
    from mmr5_batch.engines.hf import relevance_from_hidden

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4000, 256, generator=generator).to(torch.bfloat16)
    # Output-head rows whose logits come out around 20, as a real head's do.
    base = torch.randn(256, generator=generator)
    head = torch.stack([base + 0.05 * torch.randn(256, generator=generator), base + 0.05 * torch.randn(256, generator=generator)])
    hidden = (hidden.float() + 20 * base / base.norm() ** 2).to(torch.bfloat16)
    head = head.to(torch.bfloat16)
    no, yes = 0, 1

    exact = torch.sigmoid(hidden.double() @ (head[yes].double() - head[no].double()))
    ours = relevance_from_hidden(hidden, head, no, yes)
    bf16_logits = (hidden @ head.T).float()  # what a bf16 model's logits give
    softmax = torch.softmax(bf16_logits[:, [no, yes]], dim=-1)[:, 1]
    assert bf16_logits.abs().mean() > 10  # ordinary logits, not tiny ones
    assert len(set(ours.tolist())) >= 3990 and len(set(softmax.tolist())) < 1000
    assert (ours.double() - exact).abs().max() < 1e-5 < (softmax.double() - exact).abs().max()
    # Exact ties keep the first-stage order: the order is a stable sort by P(yes).
    assert relevance_order([3, 1, 2, 0], {0: 0.5, 1: 0.9, 2: 0.5, 3: 0.5}) == [1, 3, 2, 0]
