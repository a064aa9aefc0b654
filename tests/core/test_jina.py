"""jina-reranker-m0 as a family: told by its architecture, its prompt, token ids and scores exact to its reference.

The reference is the checkpoint's own modeling code (`modeling.py` beside
its weights, run with trust_remote_code), which cannot be imported here (no
hub, and it is remote code): what it computes is re-implemented, and said
so at each place: `reference_prompt` (`formatting_prompts_func`),
`reference_ids` (`compute_score`: its processor over the prompt and the
picture at min_pixels 3136 and max_pixels 602112, then token id 100
appended; the processor's image-pad expansion is done as the processor
does, because the combined processor class needs torchvision),
`reference_cut` (`compute_score`'s text truncation) and `reference_scores`
(`JinaVLForRanking.forward`: the base model's last hidden layer at the last
position, its `score` MLP, sigmoid(value - 2.65)).
"""

from __future__ import annotations

import pytest

from mmr5_batch.config import RerankerConfig, config_from_keywords
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.families import JINA_M0_FAMILY, MM_R5_FAMILY, QWEN3_VL_RERANKER, detect_family
from mmr5_batch.core.images import prepare_image
from mmr5_batch.core.pointwise import pointwise_request
from mmr5_batch.core.preparation import PageWork, prepare_row
from mmr5_batch.core.rows import PassPicture, PreparedCandidate
from tests.conftest import grey_jpeg

REFERENCE_MAX_PIXELS, REFERENCE_MIN_PIXELS = 602112, 3136


def reference_prompt(query: str, doc: str, doc_type: str) -> str:
    """`formatting_prompts_func(query, doc, query_type='text', doc_type=...)`, re-implemented."""
    query_part = f"**Query**:\n{query}"
    doc_part = "**Document**:\n<|vision_start|><|image_pad|><|vision_end|>" if doc_type == "image" else f"**Document**:\n{doc}"
    return doc_part + "\n" + query_part


def reference_ids(tokenizer, image_processor, query: str, doc: str | bytes, doc_type: str) -> tuple[list[int], dict]:
    """`compute_score`'s inputs for one pair: the processor's ids (pads expanded by the picture's grid) and 100 after."""
    import io

    from PIL import Image

    prompt = reference_prompt(query, doc if isinstance(doc, str) else "", doc_type)
    vision = {}
    if doc_type == "image":
        assert isinstance(doc, bytes)
        vision = image_processor(images=[Image.open(io.BytesIO(doc)).convert("RGB")], return_tensors="pt")
        tokens = int(vision["image_grid_thw"].prod()) // image_processor.merge_size**2
        prompt = prompt.replace("<|image_pad|>", "<|image_pad|>" * tokens)
    return tokenizer(prompt)["input_ids"] + [100], vision


def reference_cut(tokenizer, doc: str, max_doc_length: int) -> str:
    """`compute_score`'s text truncation: the first `max_doc_length` ids, decoded when the text reached the limit."""
    tokens = tokenizer(doc, truncation=True, max_length=max_doc_length)
    return tokenizer.decode(tokens["input_ids"]) if len(tokens["input_ids"]) >= max_doc_length else doc


def test_told_by_its_architecture_or_name_never_by_its_model_type_alone():
    assert detect_family(None, "qwen2_vl", "/x", ("JinaVLForRanking",)) is JINA_M0_FAMILY
    assert detect_family(None, None, "jinaai/jina-reranker-m0") is JINA_M0_FAMILY
    assert detect_family(None, "qwen2_vl", "/x") is MM_R5_FAMILY  # a generative Qwen2-VL is not a reranker
    # Set by hand: 'jina-m0' names the family; 'pointwise' on its checkpoint is it too (it is pointwise).
    assert detect_family("jina-m0", "qwen3_vl", "/x") is JINA_M0_FAMILY
    assert detect_family("pointwise", "qwen2_vl", "/x", ("JinaVLForRanking",)) is JINA_M0_FAMILY
    assert detect_family("pointwise", "qwen3_vl", "/x") is QWEN3_VL_RERANKER


def test_resolved_once_with_its_defaults_and_its_name_on_what_it_decides(tiny_jina_dir):
    run = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": tiny_jina_dir, "backend": "hf", "device": "cpu"}))
    assert run.main.family is JINA_M0_FAMILY and run.protocol == "pointwise" and run.config.model.protocol == "jina-m0"
    # Its reference's 768-token pictures unless the config says otherwise; the resolved config resolves to itself.
    assert run.config.images.image_tokens == 768 and run.main.passes[0].image_tokens == 768
    assert resolve_run(run.config).config == run.config
    ranking = run.ranking()
    assert ranking.plan.pointwise and ranking.plan.label == "jina-m0" and ranking.family == JINA_M0_FAMILY.name
    set_budget = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": tiny_jina_dir, "image_tokens": 256}))
    assert set_budget.config.images.image_tokens == 256
    # As the two-model cascade's scorer: the positions it decides carry its name.
    cascade = resolve_run(config_from_keywords(RerankerConfig, **{"cascade": True, "cascade.first_pass": "pointwise", "scorer.name": tiny_jina_dir}))
    assert cascade.scorer is not None and cascade.scorer.family is JINA_M0_FAMILY and cascade.ranking().scorer_label == "jina-m0"


def test_the_prompts_token_ids_are_the_references_for_an_image_and_a_text_document(tiny_jina_dir):
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmr5_batch.engines.hf import HFEngine

    engine = HFEngine.from_config(config_from_keywords(RerankerConfig, **{"model.name": tiny_jina_dir, "device": "cpu"}).model, JINA_M0_FAMILY)
    tokenizer = AutoTokenizer.from_pretrained(tiny_jina_dir)
    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_jina_dir, min_pixels=REFERENCE_MIN_PIXELS, max_pixels=REFERENCE_MAX_PIXELS)
    # A page within its reference's budget is left as it is by the reference's processor: the same picture either way.
    page = prepare_image(grey_jpeg(80, (300, 420)), 768).data
    cases = [
        (PreparedCandidate(pictures=[PassPicture(image=page)], text="ignored beside a picture"), page, "image"),
        (PreparedCandidate(text="Q3 revenue rose 12% — naïve 東京"), "Q3 revenue rose 12% — naïve 東京", "text"),
    ]
    for candidate, doc, doc_type in cases:
        request = pointwise_request("what was the revenue?", candidate, "", family=JINA_M0_FAMILY)
        assert request.prompt == reference_prompt("what was the revenue?", doc if isinstance(doc, str) else "", doc_type)
        assert request.prompt_suffix_ids == (100,) and request.relevance
        inputs, _ = engine._encode([request])
        expected, vision = reference_ids(tokenizer, processor, "what was the revenue?", doc, doc_type)
        assert inputs["input_ids"][0].tolist() == expected
        if vision:
            assert inputs["image_grid_thw"].tolist() == vision["image_grid_thw"].tolist()
            assert (inputs["pixel_values"] - vision["pixel_values"]).abs().max() < 1e-5


def test_a_long_text_document_is_cut_as_the_reference_cuts_it(tiny_jina_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_jina_dir)
    limit = 120
    run = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": tiny_jina_dir, "model.document_tokens": limit}))
    long_text = " ".join(f"revenue line {index} of the quarterly table" for index in range(200))
    row = {"query_id": "q", "query": "revenue", "candidates": [{"doc_id": "long", "text": long_text, "score": 1.0}]}
    prepared = prepare_row(row, run.prepare, {}, PageWork(tokenizer=tokenizer))
    cut = prepared.candidates[0].text
    assert prepared.error is None and cut == reference_cut(tokenizer, long_text, limit) and len(tokenizer.encode(cut)) == limit


def reference_scores(model_dir: str, ids: list[int], vision: dict) -> float:
    """`JinaVLForRanking.forward` on one pair: hidden_states[-1] at the last position, `score`, sigmoid(x - 2.65)."""
    import torch
    import transformers
    from safetensors.torch import load_file

    model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    weights = load_file(f"{model_dir}/model.safetensors")
    score = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1))
    score.load_state_dict({key.removeprefix("score."): value for key, value in weights.items() if key.startswith("score.")})
    input_ids = torch.tensor([ids])
    extra = {}
    if vision:
        extra = dict(vision, mm_token_type_ids=(input_ids == model.config.image_token_id).int())
    with torch.inference_mode():
        hidden = model(input_ids=input_ids, output_hidden_states=True, **extra).hidden_states[-1][:, -1]
        return torch.sigmoid(score(hidden).squeeze(-1) - 2.65).item()


def test_the_hf_engines_scores_are_the_references_alone_or_batched(tiny_jina_dir):
    """The base model plus the head read from the checkpoint's weights (no remote code) gives the reference's score;
    left padding in a batch changes nothing (every row ends with the score token)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmr5_batch.engines.hf import HFEngine

    model = config_from_keywords(RerankerConfig, **{"model.name": tiny_jina_dir, "device": "cpu", "model.max_batch_size": 4}).model
    engine = HFEngine.from_config(model, JINA_M0_FAMILY)
    tokenizer = AutoTokenizer.from_pretrained(tiny_jina_dir)
    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_jina_dir, min_pixels=REFERENCE_MIN_PIXELS, max_pixels=REFERENCE_MAX_PIXELS)
    pages = [prepare_image(grey_jpeg(level, (200, 300)), 64).data for level in (40, 200)]
    pairs = [
        ("which page shows revenue?", PreparedCandidate(pictures=[PassPicture(image=pages[0])]), pages[0], "image"),
        ("who signed the lease?", PreparedCandidate(pictures=[PassPicture(image=pages[1])]), pages[1], "image"),
        ("q", PreparedCandidate(text="a page of text about the revenue of the year"), "a page of text about the revenue of the year", "text"),
    ]
    requests = [pointwise_request(query, candidate, "", family=JINA_M0_FAMILY) for query, candidate, _, _ in pairs]
    batched = engine.generate(requests)
    scores = []
    for (query, _, doc, doc_type), completion in zip(pairs, batched):
        ids, vision = reference_ids(tokenizer, processor, query, doc, doc_type)
        expected = reference_scores(tiny_jina_dir, ids, vision)
        assert completion.error is None and completion.relevance == pytest.approx(expected, abs=1e-5)
        assert completion.prompt_tokens == len(ids)
        scores.append(completion.relevance)
    assert len(set(scores)) == 3  # the random head tells the pairs apart: an order, not ties
