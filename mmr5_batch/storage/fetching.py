"""Fetching candidates' image_uri: the allow-list, retries of transient errors, bounded concurrency.

A URI comes from the data, so it is read only when it lies within a prefix
the config allows (allow_list.py), and HTTP redirects are checked again
(http.py); every failure becomes the candidate's reason, never the task's
failure.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from mmr5_batch.errors import error_line
from mmr5_batch.storage.allow_list import UriNotAllowed, allowed_location
from mmr5_batch.storage.filesystems import Storage, protocol_of
from mmr5_batch.storage.http import read_http

# Errors that say the object is missing, forbidden or malformed: retrying cannot help.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    UriNotAllowed,
    ValueError,
)


def is_transient(error: BaseException) -> bool:
    """Connection resets, timeouts, throttling and 5xx are worth retrying; missing or forbidden objects are not."""
    if isinstance(error, PERMANENT_ERRORS):
        return False
    if isinstance(error, OSError) and error.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):
        return False
    return isinstance(error, (OSError, TimeoutError, ConnectionError))


def fetch_with_retries(read: Callable[[], bytes], retries: int, backoff_s: float = 0.2) -> bytes:
    """`read()`, retried after transient errors with exponential backoff; permanent errors raise at once."""
    for attempt in range(retries + 1):
        try:
            return read()
        except Exception as error:
            if attempt == retries or not is_transient(error):
                raise
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def fetch_images(storage: Storage, uris: Sequence[str], allowed_prefixes: Sequence[str], concurrency: int, retries: int) -> dict[str, bytes | Exception]:
    """Each distinct URI's bytes, or the error that stopped it; at most `concurrency` fetches in flight."""
    distinct = list(dict.fromkeys(uris))

    def one(uri: str) -> bytes | Exception:
        try:
            location = allowed_location(uri, allowed_prefixes)  # what is checked is what is read
            if protocol_of(location) in ("http", "https"):
                return fetch_with_retries(lambda: read_http(location, allowed_prefixes), retries)
            return fetch_with_retries(lambda: storage.read_bytes(location), retries)
        except Exception as error:  # becomes the candidate's flag, never the task's failure
            return error

    if not distinct:
        return {}
    with ThreadPoolExecutor(max_workers=min(concurrency, len(distinct))) as pool:
        return dict(zip(distinct, pool.map(one, distinct)))


def fetch_reason(uri: str, error: Exception) -> str:
    """The reason recorded on a candidate whose image_uri could not be read."""
    if isinstance(error, UriNotAllowed):
        return str(error)
    return f"cannot read image_uri {uri}: {error_line(error)}"


def fetch_for_preparation(storage: Storage, uris: Sequence[str], allowed_prefixes: Sequence[str], concurrency: int, retries: int) -> dict[str, bytes | str]:
    """`fetch_images`, each failure turned into its reason (what `core.preparation` takes)."""
    fetched = fetch_images(storage, uris, allowed_prefixes, concurrency, retries)
    return {uri: fetch_reason(uri, result) if isinstance(result, Exception) else result for uri, result in fetched.items()}
