"""The real vLLM engine on the tiny checkpoint, alone and through the whole pipeline.

Runs only where vLLM is installed and a CUDA GPU is visible (marked `gpu`);
the CPU machines check the same requests at the engine boundary in
tests/unit/test_vllm_engine.py.
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (GPU machines only)")
torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
]

from mmr5_batch.config import load_config  # noqa: E402
from mmr5_batch.demo_data import write_demo_dataset  # noqa: E402
from mmr5_batch.engines import EngineRequest, SamplingSettings  # noqa: E402
from mmr5_batch.engines.vllm import AsyncVLLMEngine, VLLMEngine  # noqa: E402
from mmr5_batch.images import prepare_image  # noqa: E402
from mmr5_batch.pipeline import run_job  # noqa: E402
from mmr5_batch.prompt import build_messages  # noqa: E402
from tests.conftest import grey_jpeg  # noqa: E402


def gpu_config(tiny_model_dir, tmp_path, **overrides):
    values = {
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "model.name": tiny_model_dir,
        "model.backend": "vllm",
        "model.max_new_tokens": 16,
        "model.min_new_tokens": 4,
        "model.gpu_memory_utilization": 0.3,
        "images.image_tokens": 64,
        **overrides,
    }
    return load_config(None, values)


def test_tiny_model_generates_through_real_vllm(tiny_model_dir, tmp_path):
    engine = VLLMEngine.from_config(gpu_config(tiny_model_dir, tmp_path))
    images = tuple(prepare_image(grey_jpeg(level, (200, 300)), 64).data for level in (30, 90, 150))
    sampling = SamplingSettings(max_new_tokens=16, min_new_tokens=4)
    requests = [EngineRequest(build_messages(f"question {i}?", 3), images, sampling) for i in range(8)]
    completions = engine.generate(requests)
    assert len(completions) == 8
    for completion in completions:
        assert completion.error is None
        assert 4 <= completion.generated_tokens <= 16
        assert completion.prompt_tokens > sum(prepare_image(grey_jpeg(1, (200, 300)), 64).tokens for _ in range(3))


def test_tiny_model_generates_through_real_async_vllm(tiny_model_dir, tmp_path):
    import asyncio

    engine = AsyncVLLMEngine.from_config(gpu_config(tiny_model_dir, tmp_path))
    images = tuple(prepare_image(grey_jpeg(level, (200, 300)), 64).data for level in (30, 90, 150))
    sampling = SamplingSettings(max_new_tokens=16, min_new_tokens=4)
    requests = [EngineRequest(build_messages(f"question {i}?", 3), images, sampling) for i in range(8)]

    async def submit_all():
        return await asyncio.gather(*(engine.generate_async(request) for request in requests))

    completions = asyncio.run(submit_all())
    assert [completion.error for completion in completions] == [None] * 8
    assert all(4 <= completion.generated_tokens <= 16 for completion in completions)


@pytest.mark.parametrize("vllm_engine", ["async", "offline"])
def test_whole_pipeline_on_vllm(ray_session, tiny_model_dir, tmp_path, vllm_engine):
    write_demo_dataset(tmp_path / "in", queries=8, candidates=6, shards=2)
    summary = run_job(gpu_config(tiny_model_dir, tmp_path, **{"model.vllm_engine": vllm_engine}))
    assert summary["totals"]["queries"] == 8 and summary["totals"]["error"] == 0
    assert summary["totals"]["windows"] == 16


def test_thinking_budget_and_fast_mode_on_real_vllm(ray_session, tiny_model_dir, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=4, candidates=5, shards=1)
    forced = run_job(gpu_config(tiny_model_dir, tmp_path, **{"model.think_tokens": 2, "output": str(tmp_path / "forced")}))
    assert forced["totals"]["queries"] == 4 and forced["totals"]["error"] == 0
    constrained = run_job(
        gpu_config(tiny_model_dir, tmp_path, **{"model.think_tokens": 2, "model.constrain_answer": True, "output": str(tmp_path / "constrained")})
    )
    # Random weights, constrained: every forced answer is a whole permutation.
    assert constrained["totals"]["ok"] == 4
    fast = run_job(gpu_config(tiny_model_dir, tmp_path, **{"ranking.mode": "fast", "output": str(tmp_path / "fast")}))
    assert fast["totals"]["fast"] == 4 and fast["totals"]["generated_tokens"] == 0
