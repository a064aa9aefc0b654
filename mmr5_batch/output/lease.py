"""One job per output prefix: a lease object with owner, heartbeat and expiry, taken by conditional create.

`_ledger/lease.json` is created only if absent (local files: exclusive
create; S3: a put with `If-None-Match: *`), so of two jobs started at once
exactly one gets it; the other stops with one line naming the holder. The
holder renews the heartbeat in a background thread and removes the lease at
the end. A job that died leaves its lease behind until it expires (at once
when it ran on the same host and its process is gone); a later run then
takes it over (removing the stale lease, then creating its own:
a race between two such runs is again decided by the conditional create).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from mmr5_batch.errors import JobError, error_line
from mmr5_batch.output.layout import LEASE_FILE, OutputLayout
from mmr5_batch.storage.filesystems import Storage

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _holder_is_gone(held: dict[str, Any]) -> bool:
    """A holder on this very host whose process no longer exists (a killed driver) need not be waited for."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@dataclass
class OutputLease:
    """The lease on one output prefix, held by `owner` (a run attempt) while the job runs."""

    storage: Storage
    output: str
    owner: str
    run_id: str
    seconds: float = 600.0  # a lease not renewed for this long is free to take
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return OutputLayout(self.output).ledger(LEASE_FILE)

    def _record(self) -> dict[str, Any]:
        now = _now()
        return {
            "owner": self.owner,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + dt.timedelta(seconds=self.seconds)).isoformat(timespec="seconds"),
        }

    def _create(self) -> bool:
        fs, path = self.storage.filesystem(self.uri)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        try:
            with fs.open(path, "xb") as handle:
                handle.write(json.dumps(self._record()).encode())
        except FileExistsError:
            return False
        return True

    def holder(self) -> dict[str, Any] | None:
        try:
            return self.storage.read_json(self.uri)
        except FileNotFoundError:
            return None
        except ValueError:  # a lease cut off mid-write: nobody can be renewing it
            return {"owner": "unknown", "expires_at": _now().isoformat()}

    def acquire(self) -> None:
        """Take the lease, or raise JobError naming the job that holds it."""
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                return
            held = self.holder()
            if held is None:
                continue  # released in between: try again
            if dt.datetime.fromisoformat(held["expires_at"]) > _now() and not _holder_is_gone(held):
                raise JobError(
                    f"output {self.output} is in use by run {held.get('run_id')} (owner {held.get('owner')}, host {held.get('host')}, "
                    f"pid {held.get('pid')}, last heartbeat {held.get('heartbeat_at')}, expires {held['expires_at']}); "
                    "wait for it to finish, or choose another output"
                )
            log.warning("taking over the lease of run %s (expires %s; its process is gone or it expired)", held.get("run_id"), held["expires_at"])
            self.storage.remove(self.uri)
        raise JobError(f"output {self.output}: could not take the lease ({self.uri}) after three tries")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="mmr5-batch-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """One heartbeat: push the expiry out, if the lease is still ours (False when it is not)."""
        held = self.holder()
        if held is None or held.get("owner") != self.owner:
            log.error("lost the lease on %s (now held by %s)", self.output, held and held.get("owner"))
            return False
        self.storage.write_json(self.uri, self._record())
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                if not self.renew():
                    return
            except Exception as error:  # a storage hiccup: the next beat tries again, well before expiry
                log.warning("lease heartbeat failed: %s", error_line(error))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self.holder()
        if held is not None and held.get("owner") == self.owner:
            self.storage.remove(self.uri)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
