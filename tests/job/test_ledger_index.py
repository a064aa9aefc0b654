"""The ledger index: a few files per run, the latest event per shard wins, compaction, legacy per-shard files, --overwrite tags."""

from __future__ import annotations

import json

from mmr5_batch.job.ledger import OutputState
from mmr5_batch.job.ledger_index import COMPACT_AFTER, read_index
from mmr5_batch.storage.filesystems import Storage


def state_of(tmp_path) -> OutputState:
    return OutputState(Storage(), str(tmp_path / "out"))


def index_files(tmp_path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "out" / "_ledger" / "index").glob("*.jsonl"))


def test_a_run_writes_one_file_per_event_kind_whatever_its_shards(tmp_path):
    state = state_of(tmp_path)
    keys = [f"s{i:04d}" for i in range(500)]
    state.forget_shards("run1-a", keys[:3])
    state.mark_started("run1-a", dict.fromkeys(keys, "10:1"))
    state.record_shards("run1-a", {key: {"fingerprint": "10:1", "complete": True} for key in keys})
    assert index_files(tmp_path) == ["00000001-forgotten-run1-a.jsonl", "00000002-started-run1-a.jsonl", "00000003-done-run1-a.jsonl"]
    fresh = state_of(tmp_path)  # a later run reads it back
    assert fresh.ledger_entry("s0001") == {"key": "s0001", "event": "done", "fingerprint": "10:1", "complete": True}
    assert fresh.ledger().next_seq == 4


def test_the_latest_event_of_a_shard_wins(tmp_path):
    state = state_of(tmp_path)
    state.record_shards("r1", {"a": {"fingerprint": "1"}, "b": {"fingerprint": "1"}})
    state.forget_shards("r2", ["a"])
    state.mark_started("r2", {"a": "2", "c": "5"})
    fresh = state_of(tmp_path)
    assert fresh.ledger_entry("a") is None and fresh.started_fingerprint("a") == "2" and not fresh.forgotten("a")
    assert fresh.ledger_entry("b") == {"key": "b", "event": "done", "fingerprint": "1"}
    assert fresh.started_fingerprint("c") == "5" and fresh.latest_event("missing") is None
    state.forget_shards("r3", ["b"])
    assert state_of(tmp_path).forgotten("b")


def test_forgetting_records_before_it_deletes_the_rows(tmp_path):
    state = state_of(tmp_path)
    rows = tmp_path / "out" / "ranked" / "a" / "part-x.parquet"
    rows.parent.mkdir(parents=True)
    rows.write_bytes(b"old")
    state.forget_shards("r1", ["a"])
    assert not rows.parent.exists() and state_of(tmp_path).forgotten("a")


def test_compaction_keeps_the_latest_events_in_one_file(tmp_path):
    state = state_of(tmp_path)
    for run in range(COMPACT_AFTER + 1):
        state.mark_started(f"r{run}", {"a": str(run), f"only{run}": "x"})
    assert state.compact_ledger("rz")
    assert index_files(tmp_path) == [f"{COMPACT_AFTER + 2:08d}-compacted-rz.jsonl"]
    fresh = state_of(tmp_path)
    assert fresh.started_fingerprint("a") == str(COMPACT_AFTER) and fresh.started_fingerprint("only0") == "x"
    assert not fresh.compact_ledger("rz2")  # one file: nothing to do


def test_a_crash_inside_compaction_reads_the_same(tmp_path):
    state = state_of(tmp_path)
    state.record_shards("r1", {"a": {"fingerprint": "1"}})
    state.mark_started("r2", {"a": "2"})
    before = dict(read_index(Storage(), str(tmp_path / "out")).latest)
    compacted = tmp_path / "out" / "_ledger" / "index" / "00000003-compacted-r3.jsonl"
    compacted.write_text("".join(json.dumps(event) + "\n" for event in before.values()))  # written, old files not yet deleted
    assert read_index(Storage(), str(tmp_path / "out")).latest == before


def test_legacy_per_shard_files_read_as_the_oldest_events_and_compaction_folds_them_in(tmp_path):
    ledger = tmp_path / "out" / "_ledger"
    (ledger / "shards").mkdir(parents=True)
    (ledger / "started").mkdir()
    (ledger / "shards" / "a.json").write_text(json.dumps({"fingerprint": "1", "complete": True}))
    (ledger / "started" / "a.json").write_text(json.dumps({"fingerprint": "0"}))
    (ledger / "started" / "b.json").write_text(json.dumps({"fingerprint": "7"}))
    state = state_of(tmp_path)
    assert state.ledger_entry("a")["fingerprint"] == "1" and state.started_fingerprint("b") == "7"
    state.mark_started("r1", {"c": "3"})
    assert state.compact_ledger("r1")
    assert not list((ledger / "shards").glob("*.json")) and not list((ledger / "started").glob("*.json"))
    fresh = state_of(tmp_path)
    assert fresh.ledger_entry("a")["fingerprint"] == "1" and fresh.started_fingerprint("b") == "7" and fresh.started_fingerprint("c") == "3"


def test_during_an_overwrite_only_its_own_events_count(tmp_path):
    state = state_of(tmp_path)
    state.record_shards("r1", {"a": {"fingerprint": "1"}, "b": {"fingerprint": "1"}})
    state.record_overwrite({"overwrite_id": "ow1", "fingerprint": {}, "files": []})
    state.record_shards("r2", {"b": {"fingerprint": "1"}})
    fresh = state_of(tmp_path)
    assert fresh.ledger_entry("a") is None and fresh.ledger_entry("b")["overwrite_id"] == "ow1"
    fresh.compact_ledger("r3", keep=lambda event: event.get("overwrite_id") == "ow1")
    fresh.record_overwrite(None)
    after = state_of(tmp_path)
    assert after.ledger_entry("a") is None and after.ledger_entry("b") is not None
