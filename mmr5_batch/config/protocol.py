"""Which reranker family a model is (`model.protocol`, 'auto' resolved), and the protocol it speaks.

'auto' looks at the checkpoint: a local directory's config.json names its
architecture (`JinaVLForRanking`: jina-reranker-m0) and model type (Qwen3-VL:
the pointwise Qwen3-VL-Reranker, or ZipRerank when so named; Qwen3: the text
Qwen3-Reranker, pointwise too; Qwen2.5-VL or anything else: MM-R5); a hub id
is judged by its name, since nothing may be downloaded to decide. A protocol
set by hand still takes its family from the checkpoint (a text Qwen3
checkpoint set to 'pointwise' is the text reranker). The families are
records (`core/families.py`); this module only finds which one.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from mmr5_batch.config.backends import backend_record
from mmr5_batch.config.sections import ImageConfig, ModelConfig
from mmr5_batch.core.families import Family, detect_family


@lru_cache(maxsize=64)
def _checkpoint_kind(name: str) -> tuple[str | None, tuple[str, ...]]:
    """The `model_type` and `architectures` of a local checkpoint's config.json; (None, ()) for a hub id (or an
    unreadable file)."""
    config_file = os.path.join(name, "config.json")
    if not os.path.isfile(config_file):
        return None, ()
    try:
        with open(config_file) as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return None, ()
    if not isinstance(found, dict):
        return None, ()
    model_type, architectures = found.get("model_type"), found.get("architectures")
    return (
        model_type if isinstance(model_type, str) else None,
        tuple(item for item in architectures if isinstance(item, str)) if isinstance(architectures, list) else (),
    )


def model_family(model: ModelConfig) -> Family:
    """The family of a `model` section (`ModelConfig`, `ScorerConfig`). Only validation and `config/run.py:
    resolve_run` call it; everything else reads the resolved run."""
    model_type, architectures = _checkpoint_kind(model.name)
    return detect_family(None if model.protocol == "auto" else model.protocol, model_type, model.name, architectures)


def model_protocol(model: ModelConfig) -> str:
    """The protocol of a `model` section: as set, or its family's for 'auto'."""
    return model_family(model).protocol


def spelled_protocol(model: ModelConfig, section: str) -> str:
    """How an error names a section's protocol: 'auto' with what it resolves to, or the value as set."""
    resolved = model_protocol(model)
    if model.protocol == "auto":
        return f"{section}.protocol 'auto' (resolved to {resolved!r} for {model.name!r})"
    return f"{section}.protocol {resolved!r}"


def patches_in_cpu_stage(images: ImageConfig, model: ModelConfig) -> bool:
    """Whether the CPU stage builds `model`'s image inputs (its patches): `images.processing` for a backend that reads
    pixels (not the scripted test engine)."""
    return bool(images.processing == "cpu-stage" and backend_record(model.backend).reads_pixels)
