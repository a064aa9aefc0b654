from __future__ import annotations

import io

import pytest
from PIL import Image

from mmr5_batch.core.images import ImageError, fit_to_token_budget, image_tokens, prepare_image


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


def text_page_jpeg(size) -> bytes:
    from mmr5_batch.devtools.demo_data import draw_page

    page = Image.open(io.BytesIO(draw_page("Annual report", [f"Line {i}: revenue {i * 17} units" for i in range(30)]))).convert("RGB")
    buffer = io.BytesIO()
    page.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def mean_difference(first: Image.Image, second: Image.Image) -> float:
    import numpy as np

    return float(np.abs(np.asarray(first, dtype=np.float32) - np.asarray(second, dtype=np.float32)).mean())


def test_scaled_decoding_between_half_and_full_size_matches_a_full_decode():
    """A 150 dpi page at 1024 tokens: decoded at 5/8 scale (Pillow's draft cannot), then fitted; same size, same look."""
    from mmr5_batch.core.images import decode_jpeg_near

    data = text_page_jpeg((1240, 1754))
    target = fit_to_token_budget(1240, 1754, 1024)
    scaled = decode_jpeg_near(data, target)
    assert scaled is not None and scaled.shape == (1097, 775, 3)  # 5/8 of 1754 x 1240, rounded up
    assert (target.height, target.width) < scaled.shape[:2]
    prepared = prepare_image(data, 1024)
    ours = Image.open(io.BytesIO(prepared.data)).convert("RGB")
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize(ours.size, Image.Resampling.LANCZOS)
    assert ours.size == (target.width, target.height) and prepared.tokens == target.tokens
    assert mean_difference(ours, reference) < 3.0  # of 255: JPEG noise, not lost text


def test_cmyk_and_damaged_jpegs_take_pillows_decoder():
    from mmr5_batch.core.images import decode_jpeg_near

    buffer = io.BytesIO()
    Image.new("CMYK", (900, 1200), (0, 0, 0, 40)).save(buffer, format="JPEG")
    target = fit_to_token_budget(900, 1200, 1024)
    prepared = prepare_image(buffer.getvalue(), 1024)
    through_pillow = Image.open(buffer).convert("RGB").resize((target.width, target.height), Image.Resampling.BOX)
    assert mean_difference(Image.open(io.BytesIO(prepared.data)).convert("RGB"), through_pillow) < 2.0
    damaged = text_page_jpeg((1240, 1754))
    assert decode_jpeg_near(damaged[: len(damaged) // 2], fit_to_token_budget(1240, 1754, 1024)) is None
    with pytest.raises(ImageError, match="undecodable image: OSError: image file is truncated"):
        prepare_image(damaged[: len(damaged) // 2], 1024)


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


@pytest.mark.parametrize("budget", [1024, 256, 64])
def test_every_shrink_path_looks_like_a_lanczos_resize_of_the_full_page(budget):
    """5/8 decode + bilinear (1024), 3/8 decode + bilinear (256), 2/8 decode + area averaging (64): same size, same look."""
    data = text_page_jpeg((1240, 1754))
    prepared = prepare_image(data, budget)
    ours = Image.open(io.BytesIO(prepared.data)).convert("RGB")
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize(ours.size, Image.Resampling.LANCZOS)
    assert (ours.size, prepared.tokens) == (
        (fit_to_token_budget(1240, 1754, budget).width, fit_to_token_budget(1240, 1754, budget).height),
        fit_to_token_budget(1240, 1754, budget).tokens,
    )
    assert mean_difference(ours, reference) < 3.0


def test_a_png_shrunk_far_goes_through_area_averaging():
    from mmr5_batch.devtools.demo_data import draw_page

    page = Image.open(io.BytesIO(draw_page("Slides", ["one", "two"]))).convert("RGB").resize((2480, 3508))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    prepared = prepare_image(buffer.getvalue(), 64)
    ours = Image.open(io.BytesIO(prepared.data)).convert("RGB")
    assert ours.size == (prepared.width, prepared.height) and prepared.tokens <= 64
    assert mean_difference(ours, page.resize(ours.size, Image.Resampling.LANCZOS)) < 3.0


def test_grey_jpegs_stay_grey_and_tiny_ones_are_enlarged_to_the_minimum(tiny_model_dir):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    buffer = io.BytesIO()
    Image.new("L", (1240, 1754), 90).save(buffer, format="JPEG")
    grey = prepare_image(buffer.getvalue(), 1024)
    picture = Image.open(io.BytesIO(grey.data))
    assert picture.mode == "L" and picture.size == (grey.width, grey.height)
    assert abs(int(picture.getpixel((10, 10))) - 90) <= 2
    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_model_dir)  # the processor takes grey pictures as they are
    assert int(processor(images=[picture], return_tensors="pt")["image_grid_thw"][0].prod()) // 4 == grey.tokens
    tiny = prepare_image(jpeg((20, 20), (10, 120, 240)), 1024)
    assert (tiny.width, tiny.height, tiny.tokens) == (56, 56, 4)
    assert Image.open(io.BytesIO(tiny.data)).size == (56, 56)


def test_one_decode_serves_several_budgets_exactly_as_separate_preparations():
    from mmr5_batch.core.images import prepare_images

    data = text_page_jpeg((1654, 2339))
    together = prepare_images(data, [1024, 128])
    apart = [prepare_image(data, 1024), prepare_image(data, 128)]
    assert [(p.width, p.height, p.tokens) for p in together] == [(p.width, p.height, p.tokens) for p in apart]
    assert together[0].data == apart[0].data
    small_together, small_apart = (Image.open(io.BytesIO(p.data)).convert("RGB") for p in (together[1], apart[1]))
    assert mean_difference(small_together, small_apart) < 3.0  # from the 1024 decode rather than a 1/8 one


STRIP_MEMORY = """
import io, resource, sys
from PIL import Image
from mmr5_batch.core.images import fit_to_token_budget, prepare_image
fit_to_token_budget(100, 100, 64)  # transformers' resize math imported before measuring
buffer = io.BytesIO()
Image.new("RGB", tuple(map(int, sys.argv[1:3])), "black").save(buffer, format="PNG")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepared = prepare_image(buffer.getvalue(), 1024)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(buffer.getvalue()), prepared.width, prepared.height, prepared.tokens, grown // 1024)
"""


@pytest.mark.parametrize("size", [(1, 150_000), (150_000, 1), (3, 120_000)])
def test_a_tiny_file_describing_a_long_strip_is_prepared_in_small_memory(size):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STRIP_MEMORY, *map(str, size)], capture_output=True, text=True, check=True)
    file_bytes, width, height, tokens, grown_mb = map(int, done.stdout.split())
    assert file_bytes < 2_000  # a few hundred bytes on disk
    assert 0 < tokens <= 1024 and max(width, height) / min(width, height) <= 200
    # Padding at full size first took 0.65-2 GB here; now the output's size bounds it.
    assert grown_mb < 64, f"peak memory grew by {grown_mb} MB"


@pytest.mark.parametrize("size, budget", [((120, 160), 4), ((20, 20), 1024), ((10, 300), 4), ((300, 10), 6), ((1, 1), 4), ((90, 60), 5)])
def test_tiny_budgets_and_images_get_a_size_the_processor_keeps(size, budget):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    fitted = fit_to_token_budget(*size, budget)
    assert 4 <= fitted.tokens <= max(4, budget)
    # What vLLM's processor does with min_pixels 3136 and max_pixels = budget x 784: nothing.
    assert smart_resize(fitted.height, fitted.width, factor=28, min_pixels=3136, max_pixels=max(4, budget) * 784) == (fitted.height, fitted.width)
    assert prepare_image(grey_jpeg_bytes(size), budget).tokens == fitted.tokens


def grey_jpeg_bytes(size):
    from tests.conftest import grey_jpeg

    return grey_jpeg(90, size)
