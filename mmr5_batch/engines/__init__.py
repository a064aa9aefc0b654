"""Inference backends (hf, vllm) behind the engine interfaces of core/engine_protocol.py."""

from mmr5_batch.core.engine_protocol import AsyncEngine, Completion, Engine, EngineRequest, SamplingSettings
from mmr5_batch.core.vocabulary import ANSWER_STOP
from mmr5_batch.engines.factory import create_async_engine, create_engine
from mmr5_batch.errors import EngineUnavailable

__all__ = [
    "ANSWER_STOP",
    "AsyncEngine",
    "Completion",
    "Engine",
    "EngineRequest",
    "EngineUnavailable",
    "SamplingSettings",
    "create_async_engine",
    "create_engine",
]
