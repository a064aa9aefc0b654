"""Storage: transient vs permanent fetch errors, bounded concurrent fetching, atomic writes, shard listing, secrets."""

from __future__ import annotations

import threading

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from mmr5_batch.config import config_to_yaml, load_config, public_dump
from mmr5_batch.storage.allow_list import UriNotAllowed
from mmr5_batch.storage.fetching import fetch_images, fetch_with_retries, is_transient
from mmr5_batch.storage.filesystems import InputNotFound, Storage


class FlakyMemoryFileSystem(MemoryFileSystem):
    """An in-memory filesystem (protocol 'flaky') whose reads of '*-flaky*' objects fail twice with a connection reset."""

    protocol = "flaky"
    failures: dict[str, int] = {}
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol("memory://" + path.removeprefix("flaky://"))

    def cat_file(self, path, start=None, end=None, **kwargs):
        cls = FlakyMemoryFileSystem
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            threading.Event().wait(0.01)  # hold the slot long enough for overlap to show
            if "-flaky" in path:
                cls.failures[path] = cls.failures.get(path, 0) + 1
                if cls.failures[path] <= 2:
                    raise ConnectionResetError(104, "Connection reset by peer")
            return super().cat_file(path, start, end, **kwargs)
        finally:
            with cls.lock:
                cls.in_flight -= 1


@pytest.fixture
def flaky():
    import fsspec

    fsspec.register_implementation("flaky", FlakyMemoryFileSystem, clobber=True)
    FlakyMemoryFileSystem.failures = {}
    FlakyMemoryFileSystem.most_in_flight = 0
    fs = FlakyMemoryFileSystem()
    for name in ("a-flaky.jpg", *[f"p{i}.jpg" for i in range(12)]):
        fs.pipe_file(f"/pages/{name}", b"jpeg-bytes-" + name.encode())
    yield fs
    fs.rm("/pages", recursive=True)


def test_transient_errors_are_retried_and_permanent_ones_are_not(flaky):
    storage = Storage()
    uris = ["flaky://pages/a-flaky.jpg", "flaky://pages/missing.jpg", "s3://elsewhere/x.jpg"]
    fetched = fetch_images(storage, uris, ["flaky://pages/"], concurrency=4, retries=3)
    assert fetched["flaky://pages/a-flaky.jpg"] == b"jpeg-bytes-a-flaky.jpg"
    assert FlakyMemoryFileSystem.failures["/pages/a-flaky.jpg"] == 3  # two resets, then success
    assert isinstance(fetched["flaky://pages/missing.jpg"], FileNotFoundError)
    assert isinstance(fetched["s3://elsewhere/x.jpg"], UriNotAllowed)


def test_retries_run_out():
    calls = []

    def always_reset():
        calls.append(1)
        raise ConnectionResetError(104, "reset")

    with pytest.raises(ConnectionResetError):
        fetch_with_retries(always_reset, retries=2, backoff_s=0)
    assert len(calls) == 3
    assert is_transient(TimeoutError()) and is_transient(OSError(5, "Internal Server Error"))
    assert not is_transient(PermissionError(13, "denied")) and not is_transient(FileNotFoundError())


def test_fetching_is_concurrent_but_bounded(flaky):
    uris = [f"flaky://pages/p{i}.jpg" for i in range(12)] * 2  # duplicates fetched once
    fetched = fetch_images(Storage(), uris, ["flaky://pages"], concurrency=3, retries=0)
    assert len(fetched) == 12 and all(isinstance(value, bytes) for value in fetched.values())
    assert 1 < FlakyMemoryFileSystem.most_in_flight <= 3


def test_writes_are_atomic_and_hidden_files_are_not_data(tmp_path):
    storage = Storage()
    target = str(tmp_path / "out" / "ranked" / "part-1.parquet")
    storage.write_text(target, "complete")
    (tmp_path / "out" / "ranked" / ".part-2.parquet.abc.tmp").write_text("half")
    (tmp_path / "out" / "_ledger").mkdir()
    (tmp_path / "out" / "_ledger" / "x.parquet").write_text("ledger")
    assert storage.list_files(str(tmp_path / "out"), ".parquet") == [target]
    assert (tmp_path / "out" / "ranked" / "part-1.parquet").read_text() == "complete"
    assert storage.temporaries(str(tmp_path / "out")) == [str(tmp_path / "out" / "ranked" / ".part-2.parquet.abc.tmp")]


def test_a_write_that_fails_half_way_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk: the hidden temporary is removed and the error goes on to the caller; the target never appears."""
    import errno

    from fsspec.implementations.local import LocalFileOpener

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileOpener, "write", disk_full)
    storage = Storage()
    with pytest.raises(OSError, match="No space left on device"):
        storage.write_bytes(str(tmp_path / "out" / "ranked" / "part-1.parquet"), b"rows")
    assert [path.name for path in (tmp_path / "out" / "ranked").iterdir()] == []


def test_listing_names_the_problem(tmp_path):
    with pytest.raises(InputNotFound, match="input not found"):
        Storage().list_input(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFound, match="no .parquet files"):
        Storage().list_input(str(tmp_path / "empty"))


def test_credentials_reach_s3fs_but_never_the_written_config():
    config = load_config(
        None,
        {
            "input": "s3://b/in",
            "output": "s3://b/out",
            "storage.endpoint_url": "http://127.0.0.1:9",
            "storage.region": "eu-west-1",
            "storage.access_key_id": "AKIAEXAMPLEKEY",
            "storage.secret_access_key": "very-secret-value",
        },
    )
    options = config.storage.s3_options()
    assert options == {
        "endpoint_url": "http://127.0.0.1:9",
        "client_kwargs": {"region_name": "eu-west-1"},
        "key": "AKIAEXAMPLEKEY",
        "secret": "very-secret-value",
    }
    written = config_to_yaml(config) + repr(config) + str(public_dump(config))
    assert "very-secret-value" not in written and "AKIAEXAMPLEKEY" not in written
    assert "eu-west-1" in config_to_yaml(config)


def test_an_output_that_cannot_be_written_is_named_without_writing(tmp_path):
    storage = Storage()
    (tmp_path / "a-file").write_text("not a folder")
    assert storage.writability_problem(str(tmp_path / "a-file" / "out" / "deeper")) == f"{tmp_path / 'a-file'} is a file, not a folder"
    assert storage.writability_problem(str(tmp_path / "new" / "out")) is None and not (tmp_path / "new").exists()
    assert storage.writability_problem("s3://bucket/out") is None  # only a write can tell
