"""Tiny random-weights checkpoints, built offline in seconds: Qwen2.5-VL (MM-R5), a Qwen3-VL reranker, a text Qwen3 reranker.

The first has MM-R5's real architecture (Qwen2.5-VL: windowed ViT, patch merger,
M-RoPE text decoder) at toy sizes, a byte-level BPE tokenizer carrying
Qwen's special tokens, the official Qwen2.5-VL chat template and image
processor settings, so everything that loads MM-R5 (transformers here, vLLM
on a GPU machine) loads it too. Its answers are random: it exercises the
machinery, not the ranking quality.

The second (`build_tiny_pointwise_model`, `tiny-model --kind pointwise`) is
Qwen3-VL-Reranker's architecture at toy sizes: Qwen3-VL (16-px patches, the
deepstack ViT, interleaved M-RoPE) saved as `Qwen3VLForConditionalGeneration`
as the reranker checkpoints are, with "yes" and "no" single tokens, so both
the hf engine (a forward pass) and vLLM's pooling runner (the two rows of the
output head as a classifier) load and score with it.

The third (`build_tiny_text_reranker_model`, `tiny-model --kind
qwen3-reranker`) is the text Qwen3-Reranker's: a Qwen3 causal LM at toy
sizes, with the same tokenizer (trained on its prompt's words too).

ZipRerank's (`--kind ziprerank`) is a Qwen3-VL generative model, and
jina-reranker-m0's (`--kind jina-m0`) a Qwen2-VL model with its score head,
saved as the published checkpoint is: `architectures: ["JinaVLForRanking"]`
and the original weight names (`visual.*`, `model.*`, `lm_head`, `score.0`,
`score.2`), which both transformers (the base model) and vLLM's native class
load; in transformers 5's own layout vLLM would misplace the vision tower.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Qwen/Qwen2.5-VL-7B-Instruct, which MM-R5 keeps).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5's special tokens, in Qwen's id order (ids differ in the tiny vocab).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL-7B's image processor settings (preprocessor_config.json).
IMAGE_PROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

# Text the tokenizer learns its merges from: the prompt, the answer format and
# common English, so prompts tokenize into a realistic number of pieces.
_TRAINING_TEXT = (
    "Please rank the following images according to their relevance to the question. "
    "<think> reasoning </think><answer>[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]</answer> Image 1 Image 2 Image 3 "
    "the of and to in is was for on that with as by at from it an be this which or are have has "
    "page document report revenue table figure chart section summary total year quarter annual "
    "what how when where who why does did show shows most relevant because question answer id "
    "yes no yes no Judge whether the Document meets the requirements based on the Query and the Instruct provided "
    "<Instruct>: Given a search query, retrieve relevant candidates that answer the query. <Query>: <Document>: "
)


def _train_tokenizer(vocab_size: int, extra_text: str = ""):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    from mmr5_batch.core.pointwise_prompt import POINTWISE_SYSTEM_PROMPT
    from mmr5_batch.core.prompt import QUESTION_TEMPLATE, SYSTEM_PROMPT

    corpus = [SYSTEM_PROMPT, QUESTION_TEMPLATE, POINTWISE_SYSTEM_PROMPT, _TRAINING_TEXT, *([extra_text] if extra_text else [])] * 4
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def _save_tokenizer(backend: Any, output: Path) -> None:
    """The trained tokenizer as a transformers tokenizer with Qwen's end and pad tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens={})
    tokenizer.padding_side = "left"
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    tokenizer.save_pretrained(output)


def _toy_text_config(backend: Any, **family: Any) -> dict[str, Any]:
    """The text decoder at toy sizes, with the trained tokenizer's ids; `family`: the model family's own entries.

    Head dims of 32 keep every attention kernel vLLM ships usable; the M-RoPE
    sections must add up to half the text head dim."""
    token_id = backend.token_to_id
    return {
        "vocab_size": backend.get_vocab_size(),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
        **family,
    }


def _vision_token_ids(backend: Any) -> dict[str, Any]:
    """The image and video placeholder and vision marker ids, as the model config names them."""
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: backend.token_to_id(token) for key, token in names.items()}


def _tiny_config(backend: Any) -> Any:
    """A Qwen2.5-VL config at toy sizes, its special token ids from the trained tokenizer."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=_toy_text_config(backend, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}),
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        **_vision_token_ids(backend),
        tie_word_embeddings=True,
    )


def _write_checkpoint(
    output_dir: str | Path, seed: int, vocab_size: int, make_model: Any, processor_config: dict[str, Any] | None, extra_text: str = ""
) -> Path:
    """Train the tokenizer (on `extra_text` too), then write it, the random model `make_model(backend)` builds and the
    processor settings (none for a text model)."""
    import torch

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    backend = _train_tokenizer(vocab_size, extra_text)
    _save_tokenizer(backend, output)
    torch.manual_seed(seed)
    make_model(backend).save_pretrained(output)
    if processor_config is not None:
        (output / "preprocessor_config.json").write_text(json.dumps(processor_config, indent=2))
    return output


def build_tiny_model(output_dir: str | Path, *, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (config, weights, tokenizer, processor) to `output_dir`."""

    def make_model(backend: Any) -> Any:
        from transformers import Qwen2_5_VLForConditionalGeneration

        token_id = backend.token_to_id
        model = Qwen2_5_VLForConditionalGeneration(_tiny_config(backend))
        model.generation_config.eos_token_id = [token_id("<|im_end|>"), token_id("<|endoftext|>")]
        model.generation_config.pad_token_id = token_id("<|endoftext|>")
        return model

    return _write_checkpoint(output_dir, seed, vocab_size, make_model, IMAGE_PROCESSOR_CONFIG)


# Qwen3-VL's image processor settings (16-px patches merged 2x2: one token per 32x32 px).
POINTWISE_IMAGE_PROCESSOR_CONFIG = {
    **IMAGE_PROCESSOR_CONFIG,
    "processor_class": "Qwen3VLProcessor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "min_pixels": 4 * 32 * 32,
    "max_pixels": 16384 * 32 * 32,
    "patch_size": 16,
}


def _tiny_pointwise_config(backend: Any) -> Any:
    """A Qwen3-VL config at toy sizes (head dim 32: its M-RoPE sections add up to 16)."""
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True}
    return Qwen3VLConfig(
        text_config=_toy_text_config(backend, head_dim=32, rope_parameters=rope, tie_word_embeddings=True),
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": 128,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        **_vision_token_ids(backend),
        tie_word_embeddings=True,
    )


def _check_answer_words(backend: Any) -> None:
    from mmr5_batch.core.vocabulary import RELEVANCE_NO, RELEVANCE_YES

    missing = [word for word in (RELEVANCE_YES, RELEVANCE_NO) if backend.token_to_id(word) is None]
    if missing:
        raise RuntimeError(f"the tiny tokenizer has no single token for {missing}")


def build_tiny_pointwise_model(output_dir: str | Path, *, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a tiny random Qwen3-VL reranker checkpoint (config, weights, tokenizer, processor) to `output_dir`."""

    def make_model(backend: Any) -> Any:
        from transformers import Qwen3VLForConditionalGeneration

        _check_answer_words(backend)
        return Qwen3VLForConditionalGeneration(_tiny_pointwise_config(backend))

    return _write_checkpoint(output_dir, seed, vocab_size, make_model, POINTWISE_IMAGE_PROCESSOR_CONFIG)


def build_tiny_text_reranker_model(output_dir: str | Path, *, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a tiny random text Qwen3-Reranker checkpoint (`Qwen3ForCausalLM`, as the reranker checkpoints are saved;
    config, weights, tokenizer; no image processor) to `output_dir`: "yes" and "no" are single tokens, so the hf
    engine (a forward pass) and vLLM's pooling runner (`Qwen3ForSequenceClassification` from those two rows) load and
    score with it."""
    from mmr5_batch.core.pointwise_prompt import TEXT_DEFAULT_INSTRUCTION, TEXT_PROMPT_SUFFIX

    def make_model(backend: Any) -> Any:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        _check_answer_words(backend)
        config = Qwen3Config(**_toy_text_config(backend, head_dim=32, tie_word_embeddings=True))
        model = Qwen3ForCausalLM(config)
        model.generation_config.eos_token_id = [backend.token_to_id("<|im_end|>"), backend.token_to_id("<|endoftext|>")]
        return model

    return _write_checkpoint(output_dir, seed, vocab_size, make_model, None, extra_text=f"{TEXT_DEFAULT_INSTRUCTION} {TEXT_PROMPT_SUFFIX}")


def build_tiny_ziprerank_model(output_dir: str | Path, *, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a tiny random ZipRerank checkpoint: a Qwen3-VL generative model (`Qwen3VLForConditionalGeneration`, as
    ZipRerank's weights are saved) at the toy sizes of the Qwen3-VL reranker's, its tokenizer trained on ZipRerank's
    prompt too. `auto` tells it from Qwen3-VL-Reranker only by a name with 'ziprerank' (or set model.protocol)."""
    from mmr5_batch.core.ziprerank_prompt import ziprerank_text

    def make_model(backend: Any) -> Any:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration(_tiny_pointwise_config(backend))

    return _write_checkpoint(output_dir, seed, vocab_size, make_model, POINTWISE_IMAGE_PROCESSOR_CONFIG, extra_text=ziprerank_text("query", 20))


def _tiny_qwen2_vl_config(backend: Any) -> Any:
    """A Qwen2-VL config at toy sizes (jina-reranker-m0's base), untied as its checkpoint is."""
    from transformers import Qwen2VLConfig

    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
    return Qwen2VLConfig(
        text_config=_toy_text_config(backend, rope_parameters=rope, tie_word_embeddings=False),
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": 128,
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **_vision_token_ids(backend),
        tie_word_embeddings=False,
    )


def _original_qwen2_vl_names(state: dict[str, Any]) -> dict[str, Any]:
    """transformers 5's Qwen2-VL weight names as the original checkpoints name them (`model.visual.*` -> `visual.*`,
    `model.language_model.*` -> `model.*`)."""
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("model.visual."):
            key = key.removeprefix("model.")
        elif key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        renamed[key] = tensor.contiguous()
    return renamed


def build_tiny_jina_model(output_dir: str | Path, *, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a tiny random jina-reranker-m0 checkpoint (config with `JinaVLForRanking`, weights in the original layout
    with a random score head, tokenizer trained on its prompt too, Qwen2-VL image processor) to `output_dir`."""
    import torch
    from safetensors.torch import save_file

    from mmr5_batch.core.jina_prompt import SCORE_TOKEN_ID, render_jina_prompt

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    backend = _train_tokenizer(vocab_size, render_jina_prompt("query", image=False, text="document"))
    if backend.get_vocab_size() <= SCORE_TOKEN_ID:
        raise RuntimeError(f"the tiny vocabulary must hold the score token id {SCORE_TOKEN_ID}")
    _save_tokenizer(backend, output)
    torch.manual_seed(seed)
    config = _tiny_qwen2_vl_config(backend)
    from transformers import Qwen2VLForConditionalGeneration

    weights = _original_qwen2_vl_names(Qwen2VLForConditionalGeneration(config).state_dict())
    hidden = config.text_config.hidden_size
    # The score head: Linear(hidden, hidden), ReLU, Linear(hidden, 1), at a scale that spreads the scores.
    weights["score.0.weight"] = torch.randn(hidden, hidden) / hidden**0.5
    weights["score.0.bias"] = torch.zeros(hidden)
    weights["score.2.weight"] = torch.randn(1, hidden) / hidden**0.5
    weights["score.2.bias"] = torch.zeros(1)
    config.architectures = ["JinaVLForRanking"]
    config.save_pretrained(output)
    save_file(weights, str(output / "model.safetensors"), metadata={"format": "pt"})
    (output / "preprocessor_config.json").write_text(json.dumps({**IMAGE_PROCESSOR_CONFIG, "processor_class": "Qwen2VLProcessor"}, indent=2))
    return output


# `tiny-model --kind NAME`: the builder of each family's tiny checkpoint.
TINY_MODEL_KINDS = {
    "mm-r5": build_tiny_model,
    "pointwise": build_tiny_pointwise_model,
    "qwen3-reranker": build_tiny_text_reranker_model,
    "ziprerank": build_tiny_ziprerank_model,
    "jina-m0": build_tiny_jina_model,
}
