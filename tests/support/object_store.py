"""What a run puts in Ray's object store, read from the raylet's own counters while it runs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


def store_stats() -> Any:
    """The local Ray's object store counters (the raylet's reply to `ray memory`)."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    return get_memory_info_reply(get_state_from_address()).store_stats


@dataclass
class ObjectStoreWatch:
    """While open: the most bytes the object store held at any reading (every `interval` seconds), and the bytes
    created in it in all (a counter, so nothing between two readings is missed)."""

    interval: float = 0.05
    peak: int = 0
    created: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _created_before: int = 0

    def __enter__(self) -> ObjectStoreWatch:
        self._created_before = store_stats().cumulative_created_bytes
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, store_stats().object_store_bytes_used)
            self._stop.wait(self.interval)

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        stats = store_stats()
        self.peak = max(self.peak, stats.object_store_bytes_used)
        self.created = stats.cumulative_created_bytes - self._created_before
