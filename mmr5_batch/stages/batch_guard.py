"""No single query can stall a job by killing its actor: a batch that killed its actor twice is split until the query
that does it is found, and that query alone becomes a dead letter.

Ray Data restarts a dead actor and retries the batch on it, for ever: one
query that makes the engine run out of memory would take its batch, the
actor and the job's progress down in a loop. So before a batch runs, the
actor leaves a marker for it on the node's disk, which outlives the process,
and removes it when the batch is done. A batch that finds its own marker on
arrival was in flight when the actor died: one death may be anything (a node
under pressure), so the batch runs again as it is; after a second death its
queries run one at a time, each alone on the engine (no other batch runs
meanwhile), the marker naming the one running. A death then names the query
that did it: on the next retry that query is a dead letter with the reason,
and the rest of the batch is ranked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

# Deaths of the actor with a batch in flight before its queries run one at a time.
DEATHS_BEFORE_SPLITTING = 2
# Marker folders of other jobs older than this are removed when an actor starts.
STALE_SECONDS = 24 * 3600


@dataclass
class BatchMarker:
    """What the node remembers of one batch across its actor's deaths."""

    deaths: int = 0
    killers: list[str] = field(default_factory=list)  # queries the actor died on while they ran alone
    running: str | None = None  # the query running alone now

    @property
    def split(self) -> bool:
        return self.deaths >= DEATHS_BEFORE_SPLITTING


class BatchGuard:
    """The markers of one job's batches on this node (`folder`), and the turns that let a query run alone."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._turns = asyncio.Condition()
        self._shared = 0
        self._alone = False

    @classmethod
    def for_job(cls, job_id: str, stage: str) -> BatchGuard:
        root = os.path.join(tempfile.gettempdir(), "mmr5-batch-guard")
        _remove_stale(root)
        return cls(os.path.join(root, f"{job_id}-{stage}"))

    @staticmethod
    def key(query_ids: Sequence[str | None]) -> str:
        return hashlib.blake2b("\n".join(str(query_id) for query_id in query_ids).encode(), digest_size=16).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, f"{key}.json")

    def enter(self, key: str) -> BatchMarker:
        """The batch's marker: new, or (it was in flight when the actor died) one more death, and the query that ran alone then."""
        path = self._path(key)
        marker = BatchMarker()
        if os.path.exists(path):
            with open(path) as handle:
                marker = BatchMarker(**json.load(handle))
            marker.deaths += 1
            if marker.running is not None:
                marker.killers.append(marker.running)
                marker.running = None
        self._write(key, marker)
        return marker

    def running(self, key: str, marker: BatchMarker, query_id: str | None) -> None:
        marker.running = query_id
        self._write(key, marker)

    def leave(self, key: str) -> None:
        with suppress(FileNotFoundError):
            os.remove(self._path(key))

    def _write(self, key: str, marker: BatchMarker) -> None:
        temporary = f"{self._path(key)}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump({"deaths": marker.deaths, "killers": marker.killers, "running": marker.running}, handle)
        os.replace(temporary, self._path(key))

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """A batch running as a whole, beside the actor's other batches (never beside a query running alone)."""
        async with self._turns:
            await self._turns.wait_for(lambda: not self._alone)
            self._shared += 1
        try:
            yield
        finally:
            async with self._turns:
                self._shared -= 1
                self._turns.notify_all()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """One query with the engine to itself, so a death names it."""
        async with self._turns:
            await self._turns.wait_for(lambda: not self._alone and self._shared == 0)
            self._alone = True
        try:
            yield
        finally:
            async with self._turns:
                self._alone = False
                self._turns.notify_all()


def _remove_stale(root: str) -> None:
    if not os.path.isdir(root):
        return
    cutoff = time.time() - STALE_SECONDS
    for name in os.listdir(root):
        path = os.path.join(root, name)
        try:
            if os.path.getmtime(path) < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # another actor removed it first
