"""Shared fixtures: one tiny offline checkpoint per test session, small images and datasets."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from mmr5_batch.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


def grey_jpeg(level: int, size: tuple[int, int] = (120, 160)) -> bytes:
    """A uniform grey picture; the scripted test engine ranks darker (lower level) first."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (level, level, level)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def make_grey_jpeg():
    return grey_jpeg
