"""Choosing and building the configured backend; backends are imported only when chosen.

So the job never imports vllm or torch unless the configured backend needs
them, and a missing package is an `EngineUnavailable` that says what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmr5_batch.core.batching import BatchingEngine
from mmr5_batch.core.engine_protocol import AsyncEngine, Engine
from mmr5_batch.errors import EngineUnavailable

if TYPE_CHECKING:
    from mmr5_batch.config import ModelConfig, RerankerConfig


def create_engine(config: RerankerConfig, model: ModelConfig | None = None) -> Engine:
    """Build the configured backend for the config's model (or `model`: the two-model cascade's scorer);
    raises EngineUnavailable with an actionable message."""
    model = model or config.model
    if model.backend == "hf":
        from mmr5_batch.engines.hf import HFEngine

        return HFEngine.from_config(model)
    if model.backend == "vllm":
        from mmr5_batch.engines.vllm import VLLMEngine

        return VLLMEngine.from_config(config, model=model)
    if model.backend == "scripted-test":
        from mmr5_batch.devtools.scripted_engine import ScriptedTestEngine

        return ScriptedTestEngine(**model.engine_kwargs)
    raise EngineUnavailable(f"unknown backend {model.backend!r}")


def create_async_engine(config: RerankerConfig, model: ModelConfig | None = None) -> AsyncEngine:
    """The engine the scheduler drives: vLLM's async engine, or a batch engine behind `BatchingEngine`."""
    model = model or config.model
    if model.backend == "vllm" and model.vllm_engine == "async":
        from mmr5_batch.engines.vllm import AsyncVLLMEngine

        return AsyncVLLMEngine.from_config(config, model=model)
    return BatchingEngine(create_engine(config, model))
