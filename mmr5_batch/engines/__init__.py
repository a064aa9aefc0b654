"""Inference backends behind two interfaces (`Engine.generate`, `AsyncEngine.generate_async`).

Backends are imported only when chosen, so the job never imports vllm or
torch unless the configured backend needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ANSWER_STOP, AsyncEngine, Completion, Engine, EngineRequest, SamplingSettings

if TYPE_CHECKING:
    from ..config import JobConfig, ModelConfig

__all__ = [
    "ANSWER_STOP",
    "AsyncEngine",
    "Completion",
    "Engine",
    "EngineRequest",
    "SamplingSettings",
    "create_async_engine",
    "create_engine",
    "sampling_from_config",
]


class EngineUnavailable(RuntimeError):
    """The chosen backend cannot start here (missing package, bad model); the message says what to do."""


def sampling_from_config(model: "ModelConfig") -> SamplingSettings:
    return SamplingSettings(
        max_new_tokens=model.max_new_tokens,
        min_new_tokens=model.min_new_tokens,
        temperature=model.temperature,
        top_p=model.top_p,
        seed=model.seed,
    )


def create_engine(config: "JobConfig") -> Engine:
    """Build the configured backend; raises EngineUnavailable with an actionable message."""
    model = config.model
    if model.backend == "hf":
        from .hf import HFEngine

        return HFEngine.from_config(model)
    if model.backend == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine.from_config(config)
    if model.backend == "scripted-test":
        from .scripted import ScriptedTestEngine

        return ScriptedTestEngine(**model.engine_kwargs)
    raise EngineUnavailable(f"unknown backend {model.backend!r}")


def create_async_engine(config: "JobConfig") -> AsyncEngine:
    """The engine the rerank actor drives: vLLM's async engine, or a batch engine behind `BatchingEngine`."""
    if config.model.backend == "vllm" and config.model.vllm_engine == "async":
        from .vllm import AsyncVLLMEngine

        return AsyncVLLMEngine.from_config(config)
    from .batching import BatchingEngine

    return BatchingEngine(create_engine(config))
