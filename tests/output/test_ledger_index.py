"""The ledger index: a few files per run, the latest event per shard wins, compaction, crash inside compaction."""

from __future__ import annotations

import json

from mmr5_batch.output.ledger_index import COMPACT_AFTER, DONE, FORGOTTEN, STARTED, LedgerIndex, append, compact, read_index
from mmr5_batch.output.records import LedgerEvent
from mmr5_batch.output.writes import apply
from mmr5_batch.storage.filesystems import Storage


def index_files(tmp_path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "out" / "_ledger" / "index").glob("*.jsonl"))


class Ledger:
    """The index functions over one output, as a run uses them."""

    def __init__(self, tmp_path) -> None:
        self.output = str(tmp_path / "out")
        self.index = read_index(Storage(), self.output)

    def append(self, kind: str, attempt: str, entries: dict[str, dict]) -> None:
        events = [LedgerEvent.from_json(entry | {"key": key, "event": kind}) for key, entry in sorted(entries.items())]
        apply(Storage(), append(self.output, self.index, kind, attempt, events))

    def compact(self, attempt: str, keep=None) -> bool:
        writes = compact(self.output, self.index, attempt, keep)
        apply(Storage(), writes)
        return bool(writes)


def test_a_run_writes_one_file_per_event_kind_whatever_its_shards(tmp_path):
    ledger = Ledger(tmp_path)
    keys = [f"s{i:04d}" for i in range(500)]
    ledger.append(FORGOTTEN, "run1-a", {key: {} for key in keys[:3]})
    ledger.append(STARTED, "run1-a", {key: {"fingerprint": "10:1"} for key in keys})
    ledger.append(DONE, "run1-a", {key: {"fingerprint": "10:1", "complete": True} for key in keys})
    assert index_files(tmp_path) == ["00000001-forgotten-run1-a.jsonl", "00000002-started-run1-a.jsonl", "00000003-done-run1-a.jsonl"]
    fresh = Ledger(tmp_path)  # a later run reads it back
    assert fresh.index.latest["s0001"].to_json() == {"key": "s0001", "event": "done", "fingerprint": "10:1", "complete": True}
    assert fresh.index.next_seq == 4


def test_the_latest_event_of_a_shard_wins(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(DONE, "r1", {"a": {"fingerprint": "1"}, "b": {"fingerprint": "1"}})
    ledger.append(FORGOTTEN, "r2", {"a": {}})
    ledger.append(STARTED, "r2", {"a": {"fingerprint": "2"}, "c": {"fingerprint": "5"}})
    latest = Ledger(tmp_path).index.latest
    assert latest["a"].to_json() == {"key": "a", "event": "started", "fingerprint": "2"}
    assert latest["b"].to_json() == {"key": "b", "event": "done", "fingerprint": "1"} and "missing" not in latest


def test_compaction_keeps_the_latest_events_in_one_file(tmp_path):
    ledger = Ledger(tmp_path)
    for run in range(COMPACT_AFTER + 1):
        ledger.append(STARTED, f"r{run}", {"a": {"fingerprint": str(run)}, f"only{run}": {"fingerprint": "x"}})
    assert ledger.compact("rz")
    assert index_files(tmp_path) == [f"{COMPACT_AFTER + 2:08d}-compacted-rz.jsonl"]
    fresh = Ledger(tmp_path)
    assert fresh.index.latest["a"].fingerprint == str(COMPACT_AFTER) and fresh.index.latest["only0"].fingerprint == "x"
    assert not fresh.compact("rz2")  # one file: nothing to do


def test_a_crash_inside_compaction_reads_the_same(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(DONE, "r1", {"a": {"fingerprint": "1"}})
    ledger.append(STARTED, "r2", {"a": {"fingerprint": "2"}})
    before = dict(read_index(Storage(), str(tmp_path / "out")).latest)
    compacted = tmp_path / "out" / "_ledger" / "index" / "00000003-compacted-r3.jsonl"
    compacted.write_text("".join(json.dumps(event.to_json()) + "\n" for event in before.values()))  # written, old files not yet deleted
    assert read_index(Storage(), str(tmp_path / "out")).latest == before


def test_a_keep_filter_drops_the_events_it_refuses(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(DONE, "r1", {"a": {"fingerprint": "1"}})
    ledger.append(DONE, "r2", {"b": {"fingerprint": "1", "overwrite_id": "ow1"}})
    assert ledger.compact("r3", keep=lambda event: event.overwrite_id == "ow1")
    assert set(Ledger(tmp_path).index.latest) == {"b"} and LedgerIndex().next_seq == 1
