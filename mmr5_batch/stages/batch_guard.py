"""No single query can stall a job by killing its actor: a batch that killed its actor twice is split until the query
that does it is found, and that query alone becomes a dead letter.

Ray Data restarts a dead actor and retries the batch on it, for ever: one
query that makes the engine run out of memory would take its batch, the
actor and the job's progress down in a loop. So before a batch runs, the
actor leaves a marker for it in Ray's key-value store (in the cluster's
control store: it outlives the actor, every node sees it, and only a
process of this Ray cluster can write it), and removes it when the batch is
done. A batch that finds its own marker on arrival was in flight when the
actor died: one death may be anything (a node under pressure), so the batch
runs again as it is; after a second death its queries run one at a time,
each alone on the engine (no other batch runs meanwhile), the marker naming
the one running. A death then names the query that did it: on the next
retry that query is a dead letter with the reason, and the rest of the
batch is ranked.

Markers belong to one attempt: the id the step is applied with (the job's
attempt; the library's step makes its own each time it is applied). A batch
the driver's end interrupted (Ctrl-C, SIGTERM, a killed driver) left its
marker under an attempt no later run has, so it never counts as a death;
the job removes its attempt's markers when it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

# Deaths of the actor with a batch in flight before its queries run one at a time.
DEATHS_BEFORE_SPLITTING = 2
# Ray's key-value store namespace of the markers; keys are `<attempt>/<stage>/<batch key>`.
NAMESPACE = "mmr5-batch-guard"


@dataclass
class BatchMarker:
    """What the node remembers of one batch across its actor's deaths."""

    deaths: int = 0
    killers: list[str] = field(default_factory=list)  # queries the actor died on while they ran alone
    running: str | None = None  # the query running alone now

    @property
    def split(self) -> bool:
        return self.deaths >= DEATHS_BEFORE_SPLITTING


class MarkerStore(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def delete(self, key: str) -> None: ...


class RayMarkers:
    """Markers in Ray's internal key-value store (a private API, guarded: see `markers_for`)."""

    def __init__(self) -> None:
        from ray.experimental import internal_kv

        self.kv = internal_kv

    def get(self, key: str) -> bytes | None:
        return self.kv._internal_kv_get(key, namespace=NAMESPACE)

    def put(self, key: str, value: bytes) -> None:
        self.kv._internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)

    def delete(self, key: str) -> None:
        self.kv._internal_kv_del(key, namespace=NAMESPACE)


class ProcessMarkers:
    """Markers in this process only (outside Ray, or where Ray's store cannot be reached): they do not outlive the
    actor, so a batch that kills it is retried as Ray Data retries it."""

    def __init__(self) -> None:
        self.markers: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.markers.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.markers[key] = value

    def delete(self, key: str) -> None:
        self.markers.pop(key, None)


def markers_for() -> MarkerStore:
    """Ray's key-value store where this process is in a Ray cluster, else this process's memory."""
    try:
        import ray

        if ray.is_initialized():
            store = RayMarkers()
            store.get("probe")
            return store
    except Exception as error:  # a private API: never let it stop the job
        log.warning("batch markers kept in the actor's memory (Ray's key-value store: %s): a query that kills its actor is not singled out", error)
    return ProcessMarkers()


def clear_batch_markers(attempt: str) -> None:
    """Remove an attempt's markers (its end); nothing where Ray is not running."""
    try:
        import ray

        if ray.is_initialized():
            from ray.experimental import internal_kv

            internal_kv._internal_kv_del(f"{attempt}/", del_by_prefix=True, namespace=NAMESPACE)
    except Exception as error:  # a private API: a marker left behind is never read by another attempt
        log.debug("batch markers of %s not removed: %s", attempt, error)


class BatchGuard:
    """The markers of one attempt's batches in one stage (`scope`: `<attempt>/<stage>`), and the turns that let a
    query run alone."""

    def __init__(self, scope: str, markers: MarkerStore | None = None) -> None:
        self.scope = scope
        self.markers = markers if markers is not None else markers_for()
        self._turns = asyncio.Condition()
        self._shared = 0
        self._alone = False

    @classmethod
    def for_attempt(cls, attempt: str, stage: str) -> BatchGuard:
        return cls(f"{attempt}/{stage}")

    @staticmethod
    def key(query_ids: Sequence[str | None]) -> str:
        return hashlib.blake2b("\n".join(str(query_id) for query_id in query_ids).encode(), digest_size=16).hexdigest()

    def _name(self, key: str) -> str:
        return f"{self.scope}/{key}"

    def enter(self, key: str) -> BatchMarker:
        """The batch's marker: new, or (it was in flight when the actor died) one more death, and the query that ran alone then."""
        found = self.markers.get(self._name(key))
        marker = BatchMarker()
        if found is not None:
            marker = BatchMarker(**json.loads(found))
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
        self.markers.delete(self._name(key))

    def _write(self, key: str, marker: BatchMarker) -> None:
        self.markers.put(self._name(key), json.dumps({"deaths": marker.deaths, "killers": marker.killers, "running": marker.running}).encode())

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
