"""Crash consistency of the output prefix: every scenario crashed after each of its driver-side writes, in turn.

In the spirit of the file-system crash testers (ALICE, CrashMonkey): the
output transaction's writes on the driver (every `Storage.write_bytes` and
`Storage.remove` into the prefix but the lease's) are numbered; for each
scenario the job is run once per k, crashing instead of its write k
(k = 0, 1, ... until a run gets through), and after the crash from then on
no write of that process lands, as after a kill. On what is left, read
through the manifest with pyarrow as docs/output-and-exactly-once.md shows:

(a) every file the manifest names exists;
(b) no query is read twice, and a shard that had results before the run
    shows either all of its old files or none of them, and when none, its
    new results whole (never both, never neither);

then the lease is let go (as if it expired), one plain rerun finishes, and
(c) the manifest says the run is complete, reads every input query exactly
once, names exactly the result files there are, and nothing is superseded.
`evaluate` runs on every eighth crash point: refused in one line while the
manifest says unfinished, and right after the rerun.

Six situations in three scenarios (SCENARIOS) x crash points (the writes
each run makes: 11 + 14 + 25 = 50 crash points on this version; the test
prints each count). Result files
written by Ray workers are covered by their whole-file atomicity and the
sink's tests. One shared local Ray, two to four tiny shards per scenario.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmr5_batch import run_job
from mmr5_batch.cli.main import main
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.errors import JobError
from mmr5_batch.storage.filesystems import Storage
from tests.conftest import grey_jpeg

BASE = {
    "model.backend": "scripted-test",
    "execution.actors": 1,
    "execution.batch_size": 4,
    "images.image_tokens": 16,
    "execution.max_error_rate": 0.9,
}
NEW_SETTINGS = {"ranking.window": 3, "ranking.stride": 2}


def rows(prefix: str, count: int, query: str = "which page?") -> list[dict]:
    return [
        {
            "query_id": f"{prefix}{index}",
            "query": query,
            "candidates": [
                {"doc_id": f"d{doc}", "image": grey_jpeg(40 * doc + 20, (32, 32)), "image_uri": None, "text": None, "score": 1.0 - doc / 10} for doc in range(3)
            ],
        }
        for index in range(count)
    ]


def write_shard(path: Path, table_rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table_rows, schema=GROUPED_INPUT_SCHEMA), path)


@dataclass
class Scenario:
    """An input, an output as it stands before the run under test (made by earlier runs), and that run's settings."""

    name: str
    shards: dict[str, list[dict]]
    run: dict = field(default_factory=dict)
    before: dict | None = None  # settings of an earlier complete run into the output, or None (a fresh output)
    rewrite: dict[str, list[dict]] = field(default_factory=dict)  # shards whose content changes after that run

    def expected(self) -> Counter:
        current = self.shards | self.rewrite
        return Counter((name, row["query_id"]) for name, table in current.items() for row in table)


# Six situations in three scenarios (each crash point reruns the job twice, so they share runs): a plain run that
# also writes the pairs output and a pipeline dead letter; a run where one shard's content changed; an --overwrite in
# waves over results that include the planner's dead letters (x0 is in two shards) and a pipeline one.
SCENARIOS = [
    Scenario("plain-pairs-dead-letter", {"a": rows("a", 2), "b": rows("b", 1) + rows("r", 1, "which page? #reject")}, run={"relabel.emit": "pairs"}),
    Scenario("changed-shard", {"a": rows("a", 2), "b": rows("b", 2)}, before={}, rewrite={"a": rows("n", 3)}),
    Scenario(
        "overwrite-in-waves",
        {"a": rows("a", 1) + rows("x", 1), "b": rows("x", 1) + rows("r", 1, "which page? #reject")},
        run={"overwrite": True, "execution.queries_per_wave": 2, **NEW_SETTINGS},  # two waves: {a}, {b}
        before={},
    ),
]


class Crashed(KeyboardInterrupt):
    """What the harness raises instead of write k (a KeyboardInterrupt: the job's code must not swallow it)."""


class CrashAfter:
    """Counts the driver's writes into the prefix (the lease's aside) and crashes instead of write `limit`; every
    write after the crash is refused too, as in a killed process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, output: Path, limit: int | None) -> None:
        self.output, self.limit, self.count, self.crashed = str(output), limit, 0, False
        for name in ("write_bytes", "remove"):
            monkeypatch.setattr(Storage, name, self._counting(getattr(Storage, name)))

    def _counting(self, original):
        def write(storage, uri, *args):
            if self.output in str(uri) and "lease.json" not in str(uri):
                if self.crashed or self.count == self.limit:
                    self.crashed = True
                    raise Crashed(f"crash injected instead of write {self.count} ({uri})")
                self.count += 1
            return original(storage, uri, *args)

        return write


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def named_rows(out: Path, paths: list[str]) -> list[dict]:
    """The rows a reader outside the project reads: pyarrow over the files the manifest names."""
    return [row for path in paths for row in pq.read_table(out / path, columns=["query_id", "source_path"]).to_pylist()]


def result_files(out: Path) -> set[str]:
    return {
        str(path.relative_to(out))
        for folder in ("ranked", "dead_letter", "pairs")
        for path in (out / folder).rglob("*.parquet")
        if not path.name.startswith(".")
    }


def shard_name(source_path: str) -> str:
    return Path(source_path).stem


def check_after_crash(scenario: Scenario, out: Path, before: dict | None) -> None:
    """Invariants (a) and (b) on what a crash left."""
    if not (out / "manifest.json").exists():
        assert before is None, "a manifest was there before the run: it may be replaced, never removed"
        return
    named = manifest(out)
    paths = [path for folder in ("ranked", "dead_letter", "pairs") for path in named[folder]]
    missing = [path for path in paths if not (out / path).exists()]
    assert not missing, f"(a) the manifest names files that do not exist: {missing}"
    read = Counter((shard_name(row["source_path"]), row["query_id"]) for row in named_rows(out, named["ranked"] + named["dead_letter"]))
    repeated = [query for query, count in read.items() if count > 1]
    assert not repeated, f"(b) read twice through the manifest: {repeated}"
    if before is None:
        return
    old = {path for folder in ("ranked", "dead_letter") for path in before[folder]}
    for key in {path.split("/")[1] for path in old}:
        old_here = {path for path in old if path.split("/")[1] == key}
        named_here = {path for folder in ("ranked", "dead_letter") for path in named[folder] if path.split("/")[1] == key}
        assert named_here, f"(b) shard {key}: neither its old nor its new results are named"
        if named_here & old_here:
            assert named_here == old_here, f"(b) shard {key}: old and new results named together: {sorted(named_here)}"


def check_after_rerun(scenario: Scenario, out: Path) -> None:
    """Invariant (c): one rerun later the ledger, the manifest and the files agree, each query exactly once."""
    named = manifest(out)
    assert named["complete"] is True and named["unfinished"] is None
    read = Counter((shard_name(row["source_path"]), row["query_id"]) for row in named_rows(out, named["ranked"] + named["dead_letter"]))
    assert set(read) == set(scenario.expected()), "(c) not every input query is read through the manifest"
    assert set(read.values()) == {1}, "(c) a query read twice"
    assert result_files(out) == {path for folder in ("ranked", "dead_letter", "pairs") for path in named[folder]}, "(c) files the manifest does not name"
    assert not (out / "_ledger" / "superseded.json").exists()


def prepare(scenario: Scenario, root: Path) -> tuple[Path, Path, dict | None]:
    """The input and the output as they stand before the run under test (kept as a pristine copy)."""
    source, pristine = root / "in", root / "pristine"
    for name, table in scenario.shards.items():
        write_shard(source / f"{name}.parquet", table)
    before = None
    if scenario.before is not None:
        assert run_job(input=str(source), output=str(pristine), **BASE, **scenario.before)["failed"] is None
        before = manifest(pristine)
    for name, table in scenario.rewrite.items():
        write_shard(source / f"{name}.parquet", table)
    return source, pristine, before


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
def test_every_crash_point_keeps_the_invariants_and_one_rerun_finishes(ray_session, tmp_path, monkeypatch, capsys, scenario):
    source, pristine, before = prepare(scenario, tmp_path)
    qrels = tmp_path / "qrels.trec"
    qrels.write_text("".join(f"{query_id} 0 d0 1\n" for _, query_id in scenario.expected()))
    settings = {**BASE, **scenario.run}
    crash_point = 0
    while True:
        out = tmp_path / f"out-{crash_point}"
        if pristine.exists():
            shutil.copytree(pristine, out)
        with monkeypatch.context() as patch:
            crash = CrashAfter(patch, out, crash_point)
            with contextlib.suppress(Crashed):
                run_job(input=str(source), output=str(out), **settings)
        if not crash.crashed:
            break  # the run made fewer writes than crash_point: every point was tried
        check_after_crash(scenario, out, before)
        unfinished = (out / "manifest.json").exists() and not manifest(out)["complete"]
        if crash_point % 8 == 0 and unfinished:
            capsys.readouterr()
            assert main(["evaluate", "--run", str(out), "--qrels", str(qrels), "--k", "1", "--json", str(tmp_path / "eval.json")]) == 2
            [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
            assert "unfinished run" in line and "--partial" in line
        (out / "_ledger" / "lease.json").unlink(missing_ok=True)  # as if the dead run's lease had expired
        try:
            summary = run_job(input=str(source), output=str(out), **{**settings, "overwrite": False})
        except JobError as refused:  # crashed before an --overwrite's first write: it never began, and must again
            assert scenario.run.get("overwrite") and "holds results of a run with other settings" in str(refused)
            summary = run_job(input=str(source), output=str(out), **settings)
        assert summary["failed"] is None and summary["incomplete_shards"] == []
        check_after_rerun(scenario, out)
        if crash_point % 8 == 0:
            assert main(["evaluate", "--run", str(out), "--qrels", str(qrels), "--k", "1", "--json", str(tmp_path / "eval.json")]) == 0
            assert json.loads((tmp_path / "eval.json").read_text())["queries"] == len(scenario.expected())
        crash_point += 1
        shutil.rmtree(out)
    check_after_rerun(scenario, out)
    print(f"{scenario.name}: {crash_point} crash points")
    assert crash_point >= 8  # the transaction's writes: begin's, a commit's, finish's at the least
