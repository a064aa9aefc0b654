"""The checkpoint's own image processor and tokenizer, loaded once per process for the CPU stage's page work.

The CPU stage (and the in-process `Reranker`) build the engine's image inputs
with transformers' processor for the checkpoint, as vLLM does: the
torchvision backend where torchvision imports (vLLM's own choice, and about
10x faster here), Pillow's otherwise; both give the same uint8 patches
(tests/engines/test_vllm_real.py compares them with vLLM's own processing).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from mmr5_batch.core.preparation import PageWork, PrepareSettings
from mmr5_batch.errors import EngineUnavailable


def _torchvision_imports() -> bool:
    try:
        import torchvision.transforms.v2  # noqa: F401
    except Exception:  # an absent or broken build: Pillow's backend serves
        return False
    return True


@lru_cache(maxsize=4)
def load_image_processor(source: str) -> Any:
    """The image processor of the checkpoint at `source` (a directory or a hub id), one per process."""
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(source, backend="torchvision" if _torchvision_imports() else "pil")
    except (OSError, ValueError, ImportError) as error:
        raise EngineUnavailable(
            f"cannot load the image processor of {source!r} to build the model's inputs in the CPU stage "
            f"({str(error).splitlines()[0]}); make the checkpoint readable from the CPU workers, or set images.processing: engine"
        ) from error


@lru_cache(maxsize=4)
def load_tokenizer(source: str) -> Any:
    """The tokenizer of the checkpoint at `source`, one per process: it counts (and cuts) a document's text tokens."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, ImportError) as error:
        raise EngineUnavailable(
            f"cannot load the tokenizer of {source!r} to cut long documents in the CPU stage "
            f"({str(error).splitlines()[0]}); make the checkpoint readable from the CPU workers"
        ) from error


def page_work(settings: PrepareSettings) -> PageWork:
    """A task's page work with the processors its settings ask for (no image processor when the engine builds the
    patches; no tokenizer when no model reads text, or the scripted test engine, which counts words)."""
    return PageWork(
        processors=tuple(load_image_processor(each.processor_source) if each.processor_source else None for each in settings.pictures),
        tokenizer=load_tokenizer(settings.tokenizer_source) if settings.tokenizer_source and settings.text_tokens is not None else None,
    )
