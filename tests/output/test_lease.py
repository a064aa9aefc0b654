"""One job per output prefix: the lease is taken by conditional create, refused while held, taken over once expired."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from mmr5_batch.errors import JobError
from mmr5_batch.output.layout import LEASE_FILE, LEDGER
from mmr5_batch.output.lease import OutputLease
from mmr5_batch.storage.filesystems import Storage


def lease(output, owner, seconds=600.0):
    return OutputLease(Storage(), str(output), owner, f"run-{owner}", seconds)


def test_a_second_job_is_refused_naming_the_holder(tmp_path):
    first = lease(tmp_path / "out", "a")
    first.acquire()
    try:
        with pytest.raises(JobError, match=r"in use by run run-a \(owner a, host .*pid \d+.*\); wait for it to finish") as raised:
            lease(tmp_path / "out", "b").acquire()
        assert "\n" not in str(raised.value)
    finally:
        first.release()
    assert not (tmp_path / "out" / LEDGER / LEASE_FILE).exists()
    with lease(tmp_path / "out", "b"):  # free again
        assert json.loads((tmp_path / "out" / LEDGER / LEASE_FILE).read_text())["owner"] == "b"


def test_an_expired_lease_is_taken_over(tmp_path):
    path = tmp_path / "out" / LEDGER / LEASE_FILE
    path.parent.mkdir(parents=True)
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    path.write_text(json.dumps({"owner": "dead", "run_id": "r0", "expires_at": stale.isoformat()}))
    with lease(tmp_path / "out", "c"):
        assert json.loads(path.read_text())["owner"] == "c"
    path.write_text("{half a lea")  # cut off mid-write: nobody can be renewing it
    with lease(tmp_path / "out", "d"):
        assert json.loads(path.read_text())["owner"] == "d"


def test_renewing_pushes_the_expiry_and_notices_a_lost_lease(tmp_path):
    held = lease(tmp_path / "out", "e", seconds=60)
    held.acquire()
    try:
        path = tmp_path / "out" / LEDGER / LEASE_FILE
        record = json.loads(path.read_text())
        path.write_text(json.dumps(record | {"expires_at": "2000-01-01T00:00:00+00:00"}))
        assert held.renew()
        assert dt.datetime.fromisoformat(json.loads(path.read_text())["expires_at"]) > dt.datetime.now(dt.UTC)
        path.write_text(json.dumps(record | {"owner": "thief"}))
        assert not held.renew()
    finally:
        held.release()
    assert json.loads(path.read_text())["owner"] == "thief"  # not ours: left alone


def test_a_lease_whose_process_is_gone_on_this_host_is_taken_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    path = tmp_path / "out" / LEDGER / LEASE_FILE
    path.parent.mkdir(parents=True)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    record = {"owner": "killed", "run_id": "r", "host": socket.gethostname(), "pid": int(gone.stdout), "expires_at": soon.isoformat()}
    path.write_text(json.dumps(record))
    with lease(tmp_path / "out", "next"):
        assert json.loads(path.read_text())["owner"] == "next"
    path.write_text(json.dumps(record | {"host": "another-host"}))  # elsewhere: wait for the expiry
    with pytest.raises(JobError, match="in use by run r"):
        lease(tmp_path / "out", "next").acquire()
