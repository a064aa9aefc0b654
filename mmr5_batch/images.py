"""Image token budgets and the CPU-side shrinking of candidate images.

Qwen2.5-VL turns an image of H x W pixels (both multiples of 28) into
(H/28)*(W/28) image tokens (plus two vision markers). We compute the target
size with transformers' own `smart_resize`, so the processor downstream finds
the image already on its grid and does not resize it again, and the token
count we report is the one the model sees.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

# One merged token covers a 28 x 28 pixel square (14-px patches, 2 x 2 merge).
GRID = 28
# The processor's own lower bound (min_pixels = 3136 = 4 tokens).
MIN_IMAGE_TOKENS = 4


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
    """The size Qwen2.5-VL would resize to when capped at `max_tokens` image tokens."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if max_tokens < MIN_IMAGE_TOKENS:
        raise ValueError(f"an image budget must be at least {MIN_IMAGE_TOKENS} tokens, got {max_tokens}")
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    try:
        new_height, new_width = smart_resize(
            height, width, factor=GRID, min_pixels=MIN_IMAGE_TOKENS * GRID * GRID, max_pixels=max_tokens * GRID * GRID
        )
    except ValueError as error:  # aspect ratio over 200: the processor refuses it
        raise ImageError(f"image {width}x{height}: {error}") from error
    return FittedSize(new_width, new_height)


def prepare_image(data: bytes, max_tokens: int, jpeg_quality: int = 90) -> PreparedImage:
    """Decode, shrink to the token budget and re-encode as a small JPEG; raises ImageError with a reason."""
    try:
        with Image.open(io.BytesIO(data)) as source:
            target = fit_to_token_budget(source.width, source.height, max_tokens)
            if source.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when the target is that much
                # smaller: far less work than a full decode followed by a resize.
                source.draft("RGB", (target.width, target.height))
            picture = source.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"image too large to decode safely: {error}") from error
    except Exception as error:  # PIL raises many types for corrupt input
        raise ImageError(f"undecodable image: {type(error).__name__}: {error}") from error
    if picture.size != (target.width, target.height):
        picture = picture.resize((target.width, target.height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=jpeg_quality)
    return PreparedImage(buffer.getvalue(), target.width, target.height, target.tokens)
