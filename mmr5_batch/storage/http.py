"""Reading an image over HTTP(S) where every redirect is checked against the allow-list again.

fsspec's HTTP filesystem follows redirects wherever they point, so a URL
inside an allowed prefix could hand the job to any host or path. Here each
hop's target must itself be allowed; the body is read up to a size limit.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from typing import Any

from mmr5_batch.storage.allow_list import allowed_location

# An image bigger than this is not a page image; refusing it bounds the task's memory.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 5
TIMEOUT_SECONDS = 30


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def __init__(self, allowed_prefixes: Sequence[str]) -> None:
        self.allowed_prefixes = allowed_prefixes

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        checked = allowed_location(newurl, self.allowed_prefixes)  # raises UriNotAllowed: the fetch stops here
        return super().redirect_request(req, fp, code, msg, headers, checked)


def read_http(url: str, allowed_prefixes: Sequence[str], max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The body at `url` (already checked), following only redirects that are allowed too."""
    opener = urllib.request.build_opener(_CheckedRedirects(allowed_prefixes))
    with opener.open(urllib.request.Request(url, headers={"User-Agent": "mmr5-batch"}), timeout=TIMEOUT_SECONDS) as response:
        body: bytes = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise ValueError(f"image larger than {max_bytes:,} bytes")
    return body
