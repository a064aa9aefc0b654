"""What the Python API accepts as a candidate: an image as a path, an fsspec URI, bytes or a PIL image, or a candidate dict.

Images passed to the Python API are the caller's own arguments, so they are
read as given (a local path, `s3://...`, any fsspec URI). The allow-list of
`images.allowed_uri_prefixes` guards the Dataset step and the job, where
URIs come from the data itself.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mmr5_batch.core.rows import CANDIDATE_FIELDS
from mmr5_batch.errors import error_line
from mmr5_batch.storage.filesystems import Storage

# An image as the API takes it.
ImageInput = Any  # str | os.PathLike | bytes | bytearray | memoryview | PIL.Image.Image


def encoded_image(image: ImageInput) -> bytes | None:
    """The bytes of an image given in memory (bytes or a PIL image); None for a path or URI."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return None
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: lossless, decoded again when prepared
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"an image must be a path, a URI, bytes or a PIL image, got {type(image).__name__}")


def candidate_rows(candidates: Sequence[Any], storage: Storage) -> tuple[list[dict[str, Any]], dict[str, bytes | str]]:
    """Input candidates (`rows.InputCandidate` dicts) from images or candidate dicts, and what each path or URI held.

    A bare image gets its position as doc_id ("0", "1", ...). A dict may give
    `image` (any image input) or `image_uri`, plus `doc_id`, `text`, `score`.
    A path or URI that cannot be read maps to the reason (the candidate is
    then flagged, as in the job).
    """
    rows: list[dict[str, Any]] = []
    fetched: dict[str, bytes | str] = {}
    for position, item in enumerate(candidates):
        candidate = dict(item) if isinstance(item, Mapping) else {"image": item}
        unknown = set(candidate) - set(CANDIDATE_FIELDS)
        if unknown:
            raise ValueError(f"candidate {position}: unknown field(s) {sorted(unknown)}; a candidate has {list(CANDIDATE_FIELDS)}")
        row = {name: candidate.get(name) for name in CANDIDATE_FIELDS}
        row["doc_id"] = str(row["doc_id"]) if row["doc_id"] is not None else str(position)
        if row["image"] is not None:
            data = encoded_image(row["image"])
            if data is None:  # a path or URI given as the image
                row["image_uri"] = os.fspath(row["image"])
            row["image"] = data
        uri = row["image_uri"]
        if row["image"] is None and uri and uri not in fetched:
            try:
                fetched[uri] = storage.read_bytes(uri)
            except Exception as error:  # the candidate is flagged with the reason, the query goes on
                fetched[uri] = f"cannot read {uri}: {error_line(error)}"
        rows.append(row)
    return rows, fetched
