from __future__ import annotations

import io

import pytest
from PIL import Image

from mmr5_batch.images import ImageError, fit_to_token_budget, image_tokens, prepare_image


def jpeg(size, color=(200, 200, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "size, budget",
    [((1240, 1754), 1024), ((1654, 2339), 256), ((600, 400), 4096), ((300, 120), 64), ((2000, 30), 512), ((57, 57), 16)],
)
def test_job_token_count_equals_the_qwen_processor(tiny_model_dir, size, budget):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    prepared = prepare_image(jpeg(size), budget)
    assert prepared.tokens <= budget
    assert prepared.width % 28 == 0 and prepared.height % 28 == 0
    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_model_dir)
    picture = Image.open(io.BytesIO(prepared.data))
    grid = processor(images=[picture], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid.prod()) // processor.merge_size**2 == prepared.tokens
    # already on the grid: the processor keeps the size (no second resize)
    assert (int(grid[1]) * 14, int(grid[2]) * 14) == (prepared.height, prepared.width)


def test_budget_caps_tokens_and_keeps_aspect_ratio():
    fitted = fit_to_token_budget(1240, 1754, 1024)
    assert fitted.tokens <= 1024 and fitted.tokens > 900
    assert abs(fitted.height / fitted.width - 1754 / 1240) < 0.05


def test_small_images_are_not_shrunk():
    assert fit_to_token_budget(280, 280, 1024) == fit_to_token_budget(280, 280, 100)
    assert image_tokens(280, 280) == 100


def test_jpeg_draft_decoding_gives_the_same_target_size():
    prepared = prepare_image(jpeg((2480, 3508)), 64)
    assert Image.open(io.BytesIO(prepared.data)).size == (prepared.width, prepared.height)


@pytest.mark.parametrize("data", [b"", b"not an image at all", jpeg((100, 100))[:60]])
def test_undecodable_bytes_raise_image_error(data):
    with pytest.raises(ImageError, match="undecodable image"):
        prepare_image(data, 256)


def test_extreme_aspect_ratio_is_padded_not_failed(tiny_model_dir):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    prepared = prepare_image(jpeg((8000, 20)), 256)
    assert prepared.width / prepared.height <= 200 and prepared.tokens <= 256
    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_model_dir)
    grid = processor(images=[Image.open(io.BytesIO(prepared.data))], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid.prod()) // 4 == prepared.tokens
    with pytest.raises(ImageError, match="aspect ratio"):
        fit_to_token_budget(8000, 20, 256)


def test_never_larger_than_the_source_except_to_the_minimum():
    assert fit_to_token_budget(300, 200, 4096) == fit_to_token_budget(300, 200, 100000)
    fitted = fit_to_token_budget(300, 200, 4096)
    assert (fitted.width, fitted.height) == (280, 196)  # floored to the grid, not rounded up to 308 x 196
    tiny = fit_to_token_budget(20, 20, 1024)
    assert tiny.tokens == 4  # the model's minimum


def test_a_decompression_bomb_is_refused_from_its_header():
    buffer = io.BytesIO()
    Image.new("1", (12000, 10000)).save(buffer, format="PNG")  # 120 Mpx, a few KB compressed
    with pytest.raises(ImageError, match="image too large to decode safely: 12000x10000"):
        prepare_image(buffer.getvalue(), 256)
