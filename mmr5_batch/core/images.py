"""Image token budgets and the CPU-side shrinking of candidate images.

Qwen2.5-VL turns an image of H x W pixels (both multiples of 28) into
(H/28)*(W/28) image tokens (plus two vision markers); Qwen3-VL (the pointwise
reranker) does the same on a 32-px grid (16-px patches merged 2 x 2), so every
function here takes the model's `grid`. We pick a size on that grid within the budget, never larger than the source (except up to the
model's minimum of 4 tokens), keeping the aspect ratio; transformers' own
`smart_resize` then confirms the processor downstream keeps that size, so it
does not resize again and the token count we report is the one the model
sees. Images longer than 200:1 (which the processor refuses) are padded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# One merged token covers a 28 x 28 pixel square (14-px patches, 2 x 2 merge) in Qwen2.5-VL (MM-R5)...
GRID = 28
# ...and a 32 x 32 one in Qwen3-VL (16-px patches, 2 x 2 merge): Qwen3-VL-Reranker.
QWEN3_VL_GRID = 32
# The processor's own lower bound (min_pixels = 3136 = 4 tokens).
MIN_IMAGE_TOKENS = 4
# The processor refuses images whose long side exceeds 200x the short one.
MAX_ASPECT_RATIO = 200
# Decoding is refused above this many source pixels (a decompression bomb
# would take the CPU task's memory): 100 Mpx, an A0 poster at 300 dpi.
MAX_SOURCE_PIXELS = 100_000_000


class ImageError(ValueError):
    """A candidate image that cannot be used; the message is the reason recorded on the candidate."""


@dataclass(frozen=True)
class FittedSize:
    width: int
    height: int
    grid: int = GRID

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height, self.grid)


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    width: int
    height: int
    tokens: int


def image_tokens(width: int, height: int, grid: int = GRID) -> int:
    """Image tokens of a picture already on the model's grid (the two vision markers not counted)."""
    return (width // grid) * (height // grid)


def fit_to_token_budget(width: int, height: int, max_tokens: int, grid: int = GRID) -> FittedSize:
    """The largest size on the model's grid within `max_tokens`, no larger than the source, same aspect ratio."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if max_tokens < MIN_IMAGE_TOKENS:
        raise ValueError(f"an image budget must be at least {MIN_IMAGE_TOKENS} tokens, got {max_tokens}")
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max(width, height) / min(width, height) > PAD_RATIO:
        raise ImageError(f"image {width}x{height}: aspect ratio above {PAD_RATIO} (fit its padded_size instead)")
    scale = min(1.0, math.sqrt(max_tokens * grid * grid / (width * height)))
    new_width, new_height = _on_grid(width * scale, grid), _on_grid(height * scale, grid)
    while image_tokens(new_width, new_height, grid) > max_tokens:  # flooring both sides rarely overshoots; guard anyway
        if new_width >= new_height:
            new_width -= grid
        else:
            new_height -= grid
    if image_tokens(new_width, new_height, grid) < MIN_IMAGE_TOKENS:
        new_width, new_height = _smallest_allowed(width, height, max_tokens, grid)
    # The processor keeps a size that is on its grid and within its bounds: confirm with its own math.
    kept = smart_resize(new_height, new_width, factor=grid, min_pixels=MIN_IMAGE_TOKENS * grid * grid, max_pixels=max_tokens * grid * grid)
    if kept != (new_height, new_width):
        raise ImageError(f"image {width}x{height}: no size within {max_tokens} tokens that the processor keeps (it makes {kept[1]}x{kept[0]})")
    return FittedSize(new_width, new_height, grid)


def _smallest_allowed(width: int, height: int, max_tokens: int, grid: int) -> tuple[int, int]:
    """For tiny images or budgets: the grid size of at least the model's minimum tokens (and at most the budget)
    closest to the picture's aspect ratio, the smaller on a tie. (smart_resize's own answer can fall below
    the minimum, which the processor would then enlarge past the budget.)"""
    most = max(MIN_IMAGE_TOKENS, min(max_tokens, 2 * MIN_IMAGE_TOKENS))
    shapes = [(across, down) for across in range(1, most + 1) for down in range(1, most + 1) if MIN_IMAGE_TOKENS <= across * down <= most]
    across, down = min(shapes, key=lambda shape: (abs(math.log(shape[0] / shape[1]) - math.log(width / height)), shape[0] * shape[1]))
    return across * grid, down * grid


def _on_grid(length: float, grid: int) -> int:
    return max(grid, int(length) // grid * grid)


# Strips are padded to half the processor's limit: flooring the short side
# to the grid can at most halve it, so the fitted size stays within the limit.
PAD_RATIO = MAX_ASPECT_RATIO // 2 - 1


def padded_size(width: int, height: int, max_ratio: int = PAD_RATIO) -> tuple[int, int]:
    """The size of a picture padded with white to at most `max_ratio`:1: unchanged unless it is a strip longer than that."""
    if max(width, height) / max(1, min(width, height)) <= max_ratio:
        return width, height
    if width > height:
        return width, math.ceil(width / max_ratio)
    return math.ceil(height / max_ratio), height


def _strip_on_canvas(strip: Image.Image, padded: tuple[int, int], max_tokens: int, grid: int) -> Image.Image:
    """A strip longer than PAD_RATIO:1, shrunk and padded straight to its fit within `max_tokens`.

    Padding at full size first would cost the padded area: a 1 x 150,000 px
    strip (a few hundred bytes of PNG) padded to 98:1 is 150,000 x 1,531 px,
    0.7 GB of RGB. Shrinking the strip first keeps every step within the
    output's size (plus the source's own pixels).
    """
    target = fit_to_token_budget(padded[0], padded[1], max_tokens, grid)
    scale = min(target.width / padded[0], target.height / padded[1])
    shrunk = strip.resize((max(1, round(strip.width * scale)), max(1, round(strip.height * scale))), Image.Resampling.BOX)
    canvas = Image.new(strip.mode, (target.width, target.height), "white")
    canvas.paste(shrunk, (0, 0))
    return canvas


def decode_jpeg_near(data: bytes, target: FittedSize, grey: bool = False) -> np.ndarray | None:
    """A JPEG's pixels (H x W x 3, or x 1 when `grey`) decoded at the smallest of libjpeg-turbo's M/8 scales covering `target`.

    Any of the eight scales, where Pillow's draft mode has only 1/2, 1/4 and
    1/8: a 150 dpi page at 1024 tokens decodes at 5/8, about 2.5x faster
    than a full decode. For YCbCr and grey JPEGs; None where simplejpeg
    refuses the file (damaged): Pillow decodes it then, and says what is wrong.
    """
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB", min_width=target.width, min_height=target.height)
    except ValueError:
        return None


def resize_pixels(pixels: np.ndarray, target: FittedSize) -> np.ndarray:
    """`pixels` (H x W x C, uint8) at the target size.

    Shrinking by at most 4/3 (what follows a scaled decode at 4/8 or more:
    the decoder covers the target with the next M/8 up): OpenCV's SIMD
    bilinear, 4-5x faster than Pillow's area averaging and closer to a
    Lanczos resize of the full page (mean difference 1.6/255 vs 2.1 at 5/8,
    1.4 vs 2.0 at 3/8). Shrinking further (small scales, non-JPEG sources):
    Pillow's area averaging, where bilinear would start to skip pixels and
    OpenCV's own area mode is slower than Pillow's. Enlarging tiny images:
    bicubic.
    """
    height, width = pixels.shape[:2]
    size = (target.width, target.height)
    if size == (width, height):
        return pixels
    if 4 * target.width < 3 * width or 4 * target.height < 3 * height:
        picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        resized = np.asarray(picture.resize(size, Image.Resampling.BOX, reducing_gap=2.0))
    else:
        cv2 = _opencv()
        shrinking = target.width <= width and target.height <= height
        resized = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR if shrinking else cv2.INTER_CUBIC)
    return resized if resized.ndim == 3 else resized[:, :, None]  # both drop a single channel's axis


def _opencv():
    import cv2

    # A CPU task has one core reserved; OpenCV would otherwise start a thread per core of the machine.
    cv2.setNumThreads(1)
    return cv2


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    grey = pixels.shape[2] == 1
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="GRAY" if grey else "RGB", colorsubsampling="420")


def decode_for(data: bytes, max_tokens: int, grid: int = GRID) -> tuple[np.ndarray, tuple[int, int]]:
    """The picture's pixels at a size that covers its fit to `max_tokens`, and its (padded) full size; raises ImageError."""
    try:
        with Image.open(io.BytesIO(data)) as source:
            # The header alone gives the size: refuse a bomb before decoding it.
            if source.width * source.height > MAX_SOURCE_PIXELS:
                raise ImageError(f"image too large to decode safely: {source.width}x{source.height} pixels (limit {MAX_SOURCE_PIXELS:,})")
            full_size = padded_size(*source.size)
            grey = source.mode in ("1", "L")
            if source.format == "JPEG" and full_size == source.size:
                target = fit_to_token_budget(source.width, source.height, max_tokens, grid)
                if source.mode in ("RGB", "L"):  # CMYK and the like: Pillow's own colour conversion
                    pixels = decode_jpeg_near(data, target, grey)
                    if pixels is not None:
                        return pixels, full_size
                if source.width >= 2 * target.width and source.height >= 2 * target.height:
                    source.draft("RGB", (target.width, target.height))  # 1/2, 1/4 or 1/8 scale
            picture = source.convert("L" if grey else "RGB")
            if full_size != source.size:
                picture = _strip_on_canvas(picture, full_size, max_tokens, grid)
            pixels = np.asarray(picture)
            return (pixels[:, :, None] if grey else pixels), full_size
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"image too large to decode safely: {error}") from error
    except Exception as error:  # PIL raises many types for corrupt input
        raise ImageError(f"undecodable image: {type(error).__name__}: {error}") from error


def prepare_images(data: bytes, budgets: Sequence[int], jpeg_quality: int = 90, grids: Sequence[int] | None = None) -> list[PreparedImage]:
    """The image shrunk to each token budget (on each one's model grid, 28 px by default) and re-encoded as a
    small JPEG, decoding it once; raises ImageError with a reason.

    Sizes are fitted to the source's own size (what `plan` reads from the
    header), so the job and the estimate agree token for token.
    """
    grids = list(grids) if grids is not None else [GRID] * len(budgets)
    # Decode at a size covering the largest of the fits.
    largest = max(range(len(budgets)), key=lambda index: budgets[index] * grids[index] ** 2)
    pixels, (width, height) = decode_for(data, budgets[largest], grids[largest])
    prepared = []
    for budget, grid in zip(budgets, grids, strict=True):
        target = fit_to_token_budget(width, height, budget, grid)
        encoded = encode_jpeg(resize_pixels(pixels, target), jpeg_quality)
        prepared.append(PreparedImage(encoded, target.width, target.height, target.tokens))
    return prepared


def prepare_image(data: bytes, max_tokens: int, jpeg_quality: int = 90, grid: int = GRID) -> PreparedImage:
    """Decode, shrink to the token budget and re-encode as a small JPEG; raises ImageError with a reason."""
    return prepare_images(data, [max_tokens], jpeg_quality, [grid])[0]
