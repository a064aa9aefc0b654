"""A documented cost model: GPU-seconds per query for MM-R5 (Qwen2.5-VL-7B) on one GPU under vLLM.

An estimate to compare settings, not a measurement. Two terms:

- Prefill is compute-bound: 2 x 7.6 B FLOPs per prompt token for the
  language model, plus the vision encoder, 2 x 0.67 B FLOPs per patch and 4
  patches per image token, at 40% of the GPU's dense bf16 peak.
- Decode is memory-bound: every step reads the weights (15.2 GB, shared by
  the `decode_batch` sequences decoding together) and each sequence's KV
  cache (56 KiB per token of context), at the GPU's memory bandwidth.

Per window: prompt = text (~250 tokens) + image tokens + 2 markers per
image; generated tokens as given (the model's reasoning length is not known
before running it; the same figure is used for every setting compared).

Beside the GPU, the engine actor's own CPU (one process, one event loop
feeding the engine): per request (rendering the prompt, its token ids, the
request objects, handing it to the engine core, parsing the answer) and, for
every picture the engine builds the input of itself (images.processing
'engine', or the few detail-pass pictures of a cascade), its decode and
vLLM's input processing, per image token. Measured with vLLM's CPU build in
the loop by bench/engine_inputs.py on this project's 2-core machine (x86);
the actor needs this many seconds of one core per query, so
`actor_cpu_seconds / gpu_seconds` is the share of a core one GPU keeps busy.

A pointwise scorer (Qwen3-VL-Reranker) generates nothing: one prompt per
candidate, prefill only (~80 tokens of instruction, query and markup plus
the image tokens), priced by the same prefill term with its own sizes: the
2B (1.7 B language-model and 0.4 B vision parameters) or the 8B (8.2 B and
0.58 B). Its images are on Qwen3-VL's 32-px grid, 4 of its 16-px patches
per token, the same patches-per-token as Qwen2.5-VL's 14-px patches. The
text Qwen3-Reranker (0.6 B, 4 B or 8 B language model, no vision encoder)
sees no image; its prompt is the page's text, which the plan does not read:
priced at an assumed 500 tokens of text per page beside the ~80 of the
prompt. jina-reranker-m0 is Qwen2-VL-2B (1.5 B language-model and 0.675 B
vision parameters, 14-px patches, 4 per token) with a score head that costs
nothing beside them; its prompt is ~20 tokens of markup and the query
beside the image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmr5_batch.core.families import JINA_M0_FAMILY, QWEN3_VL_RERANKER, Family

LM_PARAMS = 7.6e9
VISION_PARAMS = 0.675e9
PATCHES_PER_IMAGE_TOKEN = 4
WEIGHT_BYTES = 15.2e9
KV_BYTES_PER_TOKEN = 28 * 2 * 4 * 128 * 2
PROMPT_TEXT_TOKENS = 250
IMAGE_MARKERS = 2
PREFILL_EFFICIENCY = 0.4


# The engine actor's CPU per request, and per image token of a picture the engine decodes and processes itself
# (bench/engine_inputs.py, 2026-12-03: 13.5 ms per 5-page query with the CPU stage's patches, 64.4 ms when the
# actor decodes and vLLM processes its 3,106 image tokens: (64.4 - 13.5) / 3106).
ACTOR_CPU_PER_REQUEST = 0.0135
ACTOR_CPU_PER_ENGINE_IMAGE_TOKEN = 16.4e-6
# The CPU stage's cost of cutting a prepared picture into the model's patches, per image token (one core; the
# same run: 81.3 against 38.4 ms per query).
CPU_STAGE_PATCH_SECONDS_PER_IMAGE_TOKEN = 13.8e-6


def actor_cpu_seconds(requests: int, engine_image_tokens: int) -> float:
    """Estimated CPU-seconds of the engine actor for `requests` (windows or pointwise pairs), of which pictures
    worth `engine_image_tokens` image tokens the engine decodes and processes itself."""
    return requests * ACTOR_CPU_PER_REQUEST + engine_image_tokens * ACTOR_CPU_PER_ENGINE_IMAGE_TOKEN


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_flops: float
    memory_bandwidth: float  # bytes/s


H200 = Gpu("H200", 989e12, 4.8e12)
H100 = Gpu("H100 SXM", 989e12, 3.35e12)
A100 = Gpu("A100 80 GB", 312e12, 2.0e12)


@dataclass(frozen=True)
class WindowCost:
    prompt_tokens: int
    image_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class ScorerSize:
    """A pointwise scorer's sizes, for its prefill-only cost."""

    name: str
    lm_params: float
    vision_params: float
    prompt_text_tokens: int = 80


QWEN3_VL_RERANKER_2B = ScorerSize("Qwen3-VL-Reranker-2B", 1.7e9, 0.4e9)
QWEN3_VL_RERANKER_8B = ScorerSize("Qwen3-VL-Reranker-8B", 8.2e9, 0.58e9)
# The text reranker's prompt: ~80 tokens of instruction, query and markup, and a page's text (assumed 500 tokens).
TEXT_PAGE_TOKENS = 500
QWEN3_RERANKER_SIZES = {
    size: ScorerSize(f"Qwen3-Reranker-{size.upper()}", params, 0.0, 80 + TEXT_PAGE_TOKENS) for size, params in (("0.6b", 0.6e9), ("4b", 4.0e9), ("8b", 8.2e9))
}


JINA_RERANKER_M0 = ScorerSize("jina-reranker-m0", 1.5e9, 0.675e9, 20)


def scorer_size(name: str, family: Family = QWEN3_VL_RERANKER) -> ScorerSize:
    """The sizes to price a pointwise model of `family` by: Qwen3-VL-Reranker's 8B for a name with '8b', else its 2B;
    the text Qwen3-Reranker (a family without pictures) by the size its name says (0.6B unless 4B or 8B);
    jina-reranker-m0's one size."""
    lowered = name.lower()
    if family is JINA_M0_FAMILY:
        return JINA_RERANKER_M0
    if not family.reads_pictures:
        return next((size for key, size in QWEN3_RERANKER_SIZES.items() if key != "0.6b" and key in lowered), QWEN3_RERANKER_SIZES["0.6b"])
    return QWEN3_VL_RERANKER_8B if "8b" in lowered else QWEN3_VL_RERANKER_2B


def pointwise_gpu_seconds(image_tokens: int, gpu: Gpu | None = None, scorer: ScorerSize = QWEN3_VL_RERANKER_2B) -> float:
    """Estimated GPU-seconds of judging one candidate (one prefill, no generation)."""
    gpu = gpu or H200
    prompt = scorer.prompt_text_tokens + image_tokens + IMAGE_MARKERS
    flops = 2 * scorer.lm_params * prompt + 2 * scorer.vision_params * PATCHES_PER_IMAGE_TOKEN * image_tokens
    return flops / (gpu.bf16_flops * PREFILL_EFFICIENCY)


def prompt_tokens(image_tokens_per_candidate: list[int]) -> int:
    return PROMPT_TEXT_TOKENS + sum(tokens + IMAGE_MARKERS for tokens in image_tokens_per_candidate)


def gpu_seconds(window: WindowCost, gpu: Gpu = H200, decode_batch: int = 64) -> float:
    """Estimated GPU-seconds of one window (prompt plus answer) on `gpu`."""
    prefill_flops = 2 * LM_PARAMS * window.prompt_tokens + 2 * VISION_PARAMS * PATCHES_PER_IMAGE_TOKEN * window.image_tokens
    prefill = prefill_flops / (gpu.bf16_flops * PREFILL_EFFICIENCY)
    mean_context = window.prompt_tokens + window.generated_tokens / 2
    per_token = WEIGHT_BYTES / decode_batch / gpu.memory_bandwidth + mean_context * KV_BYTES_PER_TOKEN / gpu.memory_bandwidth
    return prefill + window.generated_tokens * per_token
