"""The model's image inputs, built where the CPUs are: a prepared picture as the patches the engine consumes.

Qwen2.5-VL and Qwen3-VL cut an image on the model's grid into patches
(`patch_size` px square, `temporal_patch_size` frames, 3 channels) and merge
`merge_size`^2 of them into one image token. vLLM (>= 0.32) asks its
processor for the raw uint8 patches and rescales and normalises them on the
device, so what its input processing produces for one image is exactly:
`pixel_values`, uint8, one row of 3 x temporal x patch x patch values per
patch, and `image_grid_thw` = (frames, rows, columns) of patches. We compute
those with the checkpoint's own transformers image processor, called as vLLM
calls it (no rescale, no normalisation, no resize: our pictures are already
on the grid within budget), from the same pixels the engine would decode
from the prepared JPEG, so the model gets identical input whichever side
builds it.

`ImagePatches` travels between stages as plain Arrow columns (the patch
bytes, the grid, a content key); nothing here holds a tensor.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmr5_batch.core.images import ImageError
from mmr5_batch.core.rows import PreparedCandidate

# The token Qwen's chat templates place once per image, which the processor expands to one per merged patch group.
IMAGE_PAD = "<|image_pad|>"


@dataclass(frozen=True)
class ImagePatches:
    """One picture as the engine's input: uint8 patch rows, their (frames, rows, columns) grid, and a content key."""

    patches: bytes
    grid: tuple[int, int, int]
    key: str

    def tokens(self, merge_size: int) -> int:
        """Image tokens of the picture: patches / merge_size^2 (the pads the prompt gets for it)."""
        frames, rows, columns = self.grid
        return frames * rows * columns // (merge_size * merge_size)


def image_key(prepared: bytes, processor_signature: str) -> str:
    """A content key for a prepared picture under one model's processor: equal keys mean equal patches.

    The engine uses it as the picture's identity (its encoder cache and prefix cache), the
    CPU stage to process a recurring page once."""
    digest = hashlib.blake2b(processor_signature.encode() + b"\0", digest_size=16)
    digest.update(prepared)
    return digest.hexdigest()


def processor_signature(processor: Any) -> str:
    """What about an image processor changes its patches: class, patch, frame and merge sizes."""
    return f"{type(processor).__name__}:{processor.patch_size}:{processor.temporal_patch_size}:{processor.merge_size}"


def raw_patch_kwargs(grid: int, max_tokens: int) -> dict[str, Any]:
    """The processor call vLLM makes on a device-normalising engine: raw pixels, pixel bounds of our budgets."""
    return {"do_rescale": False, "do_normalize": False, "size": {"shortest_edge": 4 * grid * grid, "longest_edge": max_tokens * grid * grid}}


def patch_image(prepared: bytes, processor: Any, grid: int, max_tokens: int, key: str | None = None) -> ImagePatches:
    """A prepared (already budgeted, on-grid) JPEG as the engine's patches, decoded as the engine decodes it (Pillow, RGB);
    `key`: its `image_key` when the caller has it already."""
    from PIL import Image

    with Image.open(io.BytesIO(prepared)) as picture:
        rgb = picture.convert("RGB")
    try:
        output = processor(images=[rgb], return_tensors="np", **raw_patch_kwargs(grid, max_tokens))
    except ValueError as error:  # the processor's refusals (sizes, ratios) are about this picture
        raise ImageError(f"the model's image processor refuses the picture: {error}") from error
    pixel_values = np.asarray(output["pixel_values"])
    grid_thw = tuple(int(value) for value in np.asarray(output["image_grid_thw"]).reshape(-1))
    if pixel_values.dtype != np.uint8:
        # Pillow's backend hands back float32 (exact integers 0..255 without rescaling); the engine takes uint8.
        pixel_values = pixel_values.astype(np.uint8)
    key = key or image_key(prepared, processor_signature(processor))
    return ImagePatches(np.ascontiguousarray(pixel_values).tobytes(), grid_thw, key)  # type: ignore[arg-type]


def patch_rows(patches: bytes | memoryview, grid: Sequence[int]) -> np.ndarray:
    """The patch bytes as a (patches, values per patch) uint8 array, without a copy."""
    count = int(np.prod(list(grid)))
    flat = np.frombuffer(patches, dtype=np.uint8)
    if count == 0 or flat.size % count:
        raise ValueError(f"{flat.size} patch bytes do not split into {count} patches")
    return flat.reshape(count, flat.size // count)


def expand_image_pad_ids(token_ids: Sequence[int], pad_id: int, counts: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """The prompt's token ids with the i-th image pad repeated counts[i] times, and each image's (offset, length) in them."""
    expanded: list[int] = []
    placeholders: list[tuple[int, int]] = []
    for token in token_ids:
        if token != pad_id:
            expanded.append(token)
            continue
        if len(placeholders) == len(counts):
            raise ValueError(f"the prompt has more image placeholders than the {len(counts)} image(s) given")
        placeholders.append((len(expanded), counts[len(placeholders)]))
        expanded.extend([pad_id] * counts[len(placeholders) - 1])
    if len(placeholders) != len(counts):
        raise ValueError(f"the prompt has {len(placeholders)} image placeholders but {len(counts)} images were given")
    return expanded, placeholders


def candidate_patches(candidate: PreparedCandidate, picture: int = 0) -> ImagePatches | None:
    """A prepared candidate's patches for the picture of picture pass `picture`, None when not built."""
    found = candidate.patches(picture)
    if found is None:
        return None
    patches, grid, key = found
    frames, rows, columns = grid
    return ImagePatches(patches, (frames, rows, columns), key)
