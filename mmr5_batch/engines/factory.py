"""Choosing and building the configured backend; backends are imported only when chosen.

So the job never imports vllm or torch unless the configured backend needs
them, and a missing package is an `EngineUnavailable` that says what to install.
hf and vllm are built in; any other backend name is looked up among the
installed `mmr5_batch.backends` entry points (the development aids register
the scripted test engine there), so production code never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec

from mmr5_batch.config.backends import BACKEND_ENTRY_POINTS, backend_record, registered_builder
from mmr5_batch.config.run import ModelRun
from mmr5_batch.core.batching import BatchingEngine
from mmr5_batch.core.engine_protocol import AsyncEngine, Engine
from mmr5_batch.errors import EngineUnavailable


def registered_backend(name: str) -> Callable[[ModelRun], Engine]:
    """The engine builder an installed package registered for `name` (entry point group `mmr5_batch.backends`)."""
    builder: Callable[[ModelRun], Engine] | None = registered_builder(name)
    if builder is None:
        raise EngineUnavailable(f"unknown backend {name!r}: no installed package registers it (entry point group {BACKEND_ENTRY_POINTS!r})")
    return builder


def check_importable(spec: ModelRun) -> None:
    """Raise EngineUnavailable, without importing anything, when this Python cannot import the backend's packages (its
    record's): where the actors run in the driver's environment (a local Ray), the job says so before any data is read."""
    record = backend_record(spec.model.backend)
    missing = [name for name in record.packages if find_spec(name) is None]
    if missing:
        raise EngineUnavailable(f"the {record.name} backend needs {', '.join(missing)}, which this Python cannot import; install with: {record.install}")


def create_engine(spec: ModelRun) -> Engine:
    """Build the backend for one model of the resolved run (its main model or the two-model cascade's scorer);
    raises EngineUnavailable with an actionable message."""
    backend = spec.model.backend
    if backend == "hf":
        from mmr5_batch.engines.hf import HFEngine

        return HFEngine.from_config(spec.model, spec.family)
    if backend == "vllm":
        from mmr5_batch.engines.vllm import VLLMEngine

        return VLLMEngine.from_run(spec)
    return registered_backend(backend)(spec)


def create_async_engine(spec: ModelRun) -> AsyncEngine:
    """The engine the scheduler drives: vLLM's async engine, or a batch engine behind `BatchingEngine`."""
    if spec.model.backend == "vllm" and spec.model.vllm_engine == "async":
        from mmr5_batch.engines.vllm import AsyncVLLMEngine

        return AsyncVLLMEngine.from_run(spec)
    return BatchingEngine(create_engine(spec))
