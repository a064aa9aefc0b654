"""Image token budgets and the CPU-side shrinking of candidate images.

Qwen2.5-VL turns an image of H x W pixels (both multiples of 28) into
(H/28)*(W/28) image tokens (plus two vision markers). We pick a size on that
grid within the budget, never larger than the source (except up to the
model's minimum of 4 tokens), keeping the aspect ratio; transformers' own
`smart_resize` then confirms the processor downstream keeps that size, so it
does not resize again and the token count we report is the one the model
sees. Images longer than 200:1 (which the processor refuses) are padded.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

# One merged token covers a 28 x 28 pixel square (14-px patches, 2 x 2 merge).
GRID = 28
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

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    width: int
    height: int
    tokens: int


def image_tokens(width: int, height: int) -> int:
    """Image tokens of a picture already on the 28-px grid (the two vision markers not counted)."""
    return (width // GRID) * (height // GRID)


def fit_to_token_budget(width: int, height: int, max_tokens: int) -> FittedSize:
    """The largest size on the 28-px grid within `max_tokens`, no larger than the source, same aspect ratio."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if max_tokens < MIN_IMAGE_TOKENS:
        raise ValueError(f"an image budget must be at least {MIN_IMAGE_TOKENS} tokens, got {max_tokens}")
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max(width, height) / min(width, height) > PAD_RATIO:
        raise ImageError(f"image {width}x{height}: aspect ratio above {PAD_RATIO} (pad it first: pad_to_ratio)")
    scale = min(1.0, math.sqrt(max_tokens * GRID * GRID / (width * height)))
    new_width, new_height = _on_grid(width * scale), _on_grid(height * scale)
    while image_tokens(new_width, new_height) > max_tokens:  # flooring both sides rarely overshoots; guard anyway
        if new_width >= new_height:
            new_width -= GRID
        else:
            new_height -= GRID
    if image_tokens(new_width, new_height) < MIN_IMAGE_TOKENS:
        # Tiny images go up to the model's minimum, keeping the aspect ratio roughly.
        new_height, new_width = smart_resize(
            height, width, factor=GRID, min_pixels=MIN_IMAGE_TOKENS * GRID * GRID, max_pixels=max(MIN_IMAGE_TOKENS, max_tokens) * GRID * GRID
        )
    # The processor keeps a size that is on its grid and within its bounds: confirm with its own math.
    assert smart_resize(new_height, new_width, factor=GRID, min_pixels=MIN_IMAGE_TOKENS * GRID * GRID, max_pixels=max_tokens * GRID * GRID) == (
        new_height,
        new_width,
    )
    return FittedSize(new_width, new_height)


def _on_grid(length: float) -> int:
    return max(GRID, int(length) // GRID * GRID)


# Strips are padded to half the processor's limit: flooring the short side
# to the grid can at most halve it, so the fitted size stays within the limit.
PAD_RATIO = MAX_ASPECT_RATIO // 2 - 1


def pad_to_ratio(picture: "Image.Image", max_ratio: int = PAD_RATIO) -> "Image.Image":
    """A very long or tall strip padded with white so that the processor accepts it (the content is kept whole)."""
    width, height = picture.size
    if max(width, height) / min(width, height) <= max_ratio:
        return picture
    if width > height:
        size = (width, math.ceil(width / max_ratio))
    else:
        size = (math.ceil(height / max_ratio), height)
    canvas = Image.new("RGB", size, "white")
    canvas.paste(picture, (0, 0))
    return canvas


def decode_jpeg_near(data: bytes, target: FittedSize) -> "Image.Image | None":
    """A JPEG decoded at the smallest of libjpeg-turbo's M/8 scales that still covers `target`, or None.

    For targets between half and full size (a 150 dpi page at 1024 tokens
    decodes at 5/8), where Pillow's draft mode (1/2, 1/4, 1/8 only) cannot
    help: about 2.5x faster than Pillow's full decode. For YCbCr and grey
    JPEGs; None where simplejpeg refuses the file (damaged): Pillow decodes
    it then, and reports what is wrong.
    """
    import simplejpeg

    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=target.width, min_height=target.height)
    except ValueError:
        return None
    return Image.fromarray(pixels, "RGB")


def prepare_image(data: bytes, max_tokens: int, jpeg_quality: int = 90) -> PreparedImage:
    """Decode, shrink to the token budget and re-encode as a small JPEG; raises ImageError with a reason."""
    try:
        with Image.open(io.BytesIO(data)) as source:
            # The header alone gives the size: refuse a bomb before decoding it.
            if source.width * source.height > MAX_SOURCE_PIXELS:
                raise ImageError(f"image too large to decode safely: {source.width}x{source.height} pixels (limit {MAX_SOURCE_PIXELS:,})")
            long_strip = max(source.size) / max(1, min(source.size)) > PAD_RATIO
            picture = None
            if source.format == "JPEG" and not long_strip:
                target = fit_to_token_budget(source.width, source.height, max_tokens)
                if source.width >= 2 * target.width and source.height >= 2 * target.height:
                    # Decode at 1/2, 1/4 or 1/8 scale when the target is that much
                    # smaller: far less work than a full decode followed by a resize.
                    source.draft("RGB", (target.width, target.height))
                elif source.mode in ("RGB", "L"):  # CMYK and the like: Pillow's own colour conversion
                    picture = decode_jpeg_near(data, target)
            picture = pad_to_ratio(picture if picture is not None else source.convert("RGB"))
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"image too large to decode safely: {error}") from error
    except Exception as error:  # PIL raises many types for corrupt input
        raise ImageError(f"undecodable image: {type(error).__name__}: {error}") from error
    target = fit_to_token_budget(picture.width, picture.height, max_tokens)
    if picture.size != (target.width, target.height):
        # Shrinking: area averaging (BOX) is 2-3x faster than bicubic and as
        # faithful for a downscale (mean difference to Lanczos under 1/255 on
        # text pages); enlarging tiny images: bicubic.
        shrinking = target.width <= picture.width and target.height <= picture.height
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        picture = picture.resize((target.width, target.height), resample)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=jpeg_quality)
    return PreparedImage(buffer.getvalue(), target.width, target.height, target.tokens)
