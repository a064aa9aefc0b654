"""Which reranker protocol a model speaks (`model.protocol`, 'auto' resolved), and the image grid that goes with it.

'auto' looks at the checkpoint: a local directory's config.json names its
architecture (Qwen3-VL: the pointwise Qwen3-VL-Reranker; Qwen2.5-VL: MM-R5);
a hub id is judged by its name, since nothing may be downloaded to decide.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from mmr5_batch.config.sections import ImageConfig, ModelConfig
from mmr5_batch.core.images import GRID, QWEN3_VL_GRID
from mmr5_batch.core.vocabulary import MM_R5, POINTWISE

# config.json model types of the pointwise rerankers' base models.
POINTWISE_MODEL_TYPES = ("qwen3_vl",)


@lru_cache(maxsize=64)
def _detected(name: str) -> str:
    config_file = os.path.join(name, "config.json")
    if os.path.isfile(config_file):
        try:
            with open(config_file) as handle:
                model_type = json.load(handle).get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type is not None:
            return POINTWISE if model_type in POINTWISE_MODEL_TYPES else MM_R5
    return POINTWISE if "qwen3-vl-reranker" in name.lower() else MM_R5


def model_protocol(model: ModelConfig) -> str:
    """The protocol of a `model` section (`ModelConfig`, `ScorerConfig`): as set, or detected for 'auto'.
    Only validation and `config/run.py: resolve_run` call it; everything else reads the resolved run."""
    return model.protocol if model.protocol != "auto" else _detected(model.name)


def spelled_protocol(model: ModelConfig, section: str) -> str:
    """How an error names a section's protocol: 'auto' with what it resolves to, or the value as set."""
    resolved = model_protocol(model)
    if model.protocol == "auto":
        return f"{section}.protocol 'auto' (resolved to {resolved!r} for {model.name!r})"
    return f"{section}.protocol {resolved!r}"


def protocol_grid(protocol: str) -> int:
    """Pixels per side of one image token for the protocol's model family: Qwen2.5-VL 28, Qwen3-VL 32."""
    return QWEN3_VL_GRID if protocol == POINTWISE else GRID


# Backends that take a picture's patches from the CPU stage (the scripted test engine reads no pixels).
PATCH_BACKENDS = ("hf", "vllm")


def patches_in_cpu_stage(images: ImageConfig, model: ModelConfig) -> bool:
    """Whether the CPU stage builds `model`'s image inputs (its patches): `images.processing` for a backend that reads pixels."""
    return bool(images.processing == "cpu-stage" and model.backend in PATCH_BACKENDS)
