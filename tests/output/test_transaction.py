"""The output transaction on a local prefix, without Ray: the order its type allows, and what the manifest names
while a shard is replaced (result files written by hand where the pipeline would write them)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from mmr5_batch.output.records import ResultSettings, RunSummary, ShardStats
from mmr5_batch.output.transaction import OutputTransaction, TransactionOrderError
from mmr5_batch.storage.filesystems import Storage

SETTINGS = ResultSettings("d1", {"ranking": {"window": 20}})


def transaction(out: Path, attempt: str, overwrite: bool = False, settings: ResultSettings = SETTINGS) -> OutputTransaction[str]:
    return OutputTransaction(Storage(), str(out), attempt, settings, overwrite=overwrite, planner=lambda store: "the plan")


def begin(tx: OutputTransaction[str], to_run: dict[str, str], changed: tuple[str, ...] = ()) -> None:
    tx.begin(to_run=to_run, changed=changed, input_layout="grouped", passthrough=pa.schema([]), config_yaml="x: 1\n")


def result(out: Path, key: str, attempt: str) -> str:
    path = out / "ranked" / key / f"part-{attempt}-00000.parquet"
    Storage().write_parquet(pa.table({"query_id": [f"{key}-q"]}), str(path))
    return f"ranked/{key}/{path.name}"


def stats(key: str, fingerprint: str) -> ShardStats:
    return ShardStats(key, fingerprint, 1, 1, 0, True, {"queries": 1})


def summary(attempt: str, incomplete: list[str] | None = None) -> RunSummary:
    empty: dict = {}
    return RunSummary(
        "r", attempt, "m", "hf", "in", "out", "t", empty, empty, empty, 0.0, empty, 0.0, empty, 0, empty, empty, incomplete or [], 0.0, 0.0, None, []
    )


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_steps_out_of_order_are_a_bug_that_raises(tmp_path):
    tx = transaction(tmp_path / "out", "a1")
    with pytest.raises(TransactionOrderError, match="needs the open phase, it is new"):
        begin(tx, {})
    with pytest.raises(TransactionOrderError):
        tx.commit_wave({}, wave=1, waves=1)
    assert tx.plan() == "the plan"
    with pytest.raises(TransactionOrderError):
        tx.plan()  # planned once
    assert tx.open("r", 60) is None  # no job finished meanwhile: the plan stands
    begin(tx, {"k": "f1"})
    tx.commit_wave({}, wave=1, waves=1)
    tx.finish(summary("a1"))
    with pytest.raises(TransactionOrderError):
        tx.commit_wave({}, wave=2, waves=2)
    tx.close()
    assert not (tmp_path / "out" / "_ledger" / "lease.json").exists()


def test_a_changed_shard_shows_its_old_files_until_its_new_ones_are_committed(tmp_path):
    out = tmp_path / "out"
    first = transaction(out, "a1")
    first.plan(), first.open("r", 60)
    begin(first, {"k": "f1", "j": "f1"})
    old_k, old_j = result(out, "k", "a1"), result(out, "j", "a1")
    first.commit_wave({"k": stats("k", "f1"), "j": stats("j", "f1")}, wave=1, waves=1)
    first.finish(summary("a1"))
    first.close()
    assert manifest(out)["ranked"] == sorted([old_j, old_k]) and manifest(out)["complete"] is True

    second = transaction(out, "a2")
    second.plan(), second.open("r", 60)
    assert second.store.is_changed("k", "f2") is True and second.store.is_changed("j", "f1") is False
    begin(second, {"k": "f2"}, changed=("k",))
    assert manifest(out)["ranked"] == sorted([old_j, old_k]) and manifest(out)["complete"] is False  # old, named, unfinished
    new_k = result(out, "k", "a2")
    assert second.store.written_files() == {"j": [str(out / old_j)], "k": [str(out / new_k)]}  # the old rows do not count
    assert second.store.manifest_names()["ranked"] == sorted([old_j, old_k])  # the new file is not named before its commit
    second.commit_wave({"k": stats("k", "f2")}, wave=1, waves=1)
    assert manifest(out)["ranked"] == sorted([old_j, new_k]) and not (out / old_k).exists()
    assert not (out / "_ledger" / "superseded.json").exists()  # the replacement done, the record goes
    second.finish(summary("a2"))
    assert manifest(out)["complete"] is True and manifest(out)["unfinished"] is None


def test_a_replacement_left_uncommitted_is_redone_and_an_overwrite_names_old_or_new_per_shard(tmp_path):
    out = tmp_path / "out"
    first = transaction(out, "a1")
    first.plan(), first.open("r", 60)
    begin(first, {"k": "f1", "j": "f1"})
    old = {key: result(out, key, "a1") for key in "kj"}
    first.commit_wave({key: stats(key, "f1") for key in "kj"}, wave=1, waves=1)
    first.finish(summary("a1"))
    first.close()

    # An --overwrite in two waves, killed after its first: k is redone, j not yet.
    other = ResultSettings("d2", {"ranking": {"window": 3}})
    over = transaction(out, "a2", overwrite=True, settings=other)
    over.plan(), over.open("r", 60)
    begin(over, {"k": "f1", "j": "f1"})
    new_k = result(out, "k", "a2")
    over.commit_wave({"k": stats("k", "f1")}, wave=1, waves=2)
    named = manifest(out)
    assert named["ranked"] == sorted([old["j"], new_k]) and "committed 1 of its 2 wave(s)" in named["unfinished"]
    new_j = result(out, "j", "a2")  # written, then killed before the commit
    assert manifest(out)["ranked"] == sorted([old["j"], new_k])
    over.close()  # its lease let go, as when it expires

    # The next run (the overwrite's settings stand now) finds k done, j still to replace; it redoes j.
    rerun = transaction(out, "a3", settings=other)
    rerun.plan(), rerun.open("r", 60)
    assert rerun.store.is_changed("k", "f1") is False and rerun.store.is_changed("j", "f1") is None  # j: resumed
    assert rerun.store.written_files()["j"] == [str(out / new_j)]  # the run's own new rows count, the old do not
    begin(rerun, {"j": "f1"})
    rerun.commit_wave({"j": stats("j", "f1")}, wave=1, waves=1)
    rerun.finish(summary("a3"))
    assert manifest(out)["ranked"] == sorted([new_j, new_k]) and manifest(out)["complete"] is True
    assert not (out / old["j"]).exists() and not (out / "_ledger" / "superseded.json").exists()
