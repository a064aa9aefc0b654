"""Bad input cannot take the job down: a mix of good and bad shards, rewritten shards, unwritable outputs, null candidates.

Every row of the README's bad-shard table on one multi-shard input: bad
shards recorded with their reason and skipped, good ones written exactly
once (including shards that need a lossless cast), files that are not data
reported as ignored, the error-rate exit code, and a rerun that adds nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.cli.main import main
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA, PAIRS_INPUT_SCHEMA
from tests.conftest import grey_jpeg, read_folder
from tests.support.ledger_support import forget_done

FLAGS = ["--backend", "scripted-test", "--actors", "1", "--batch-size", "4", "--image-tokens", "16"]
SCHEMA = GROUPED_INPUT_SCHEMA.append(pa.field("domain", pa.string()))


def rows(prefix: str, count: int = 2) -> list[dict]:
    return [
        {
            "query_id": f"{prefix}{index}",
            "query": "which page?",
            "candidates": [
                {"doc_id": f"d{doc}", "image": grey_jpeg(40 * doc + 20), "image_uri": None, "text": None, "score": 1.0 - doc / 10} for doc in range(3)
            ],
            "domain": "test",
        }
        for index in range(count)
    ]


def write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def candidates_of(table_rows: list[dict], **overrides) -> list[dict]:
    return [{**row, "candidates": [{**candidate, **overrides} for candidate in row["candidates"]]} for row in table_rows]


def mixed_input(folder: Path) -> dict[str, int]:
    """Good shards (query count by file name) and bad ones (by the words their reason must hold)."""
    write(folder / "good-a.parquet", pa.Table.from_pylist(rows("a"), schema=SCHEMA))
    write(folder / "sub" / "good-b.parquet", pa.Table.from_pylist(rows("b", 3), schema=SCHEMA))
    write(folder / "odd?name.parquet", pa.Table.from_pylist(rows("q"), schema=SCHEMA))  # a glob character in the name
    # Lossless casts: integer ids, an extra candidate field, no image_uri/text fields at all.
    integer_ids = [
        {
            "query_id": 100 + i,
            "query": "which?",
            "candidates": [{"doc_id": doc, "image": grey_jpeg(60 * doc), "score": float(doc), "bbox": [1, 2]} for doc in range(2)],
            "domain": "test",
        }
        for i in range(2)
    ]
    write(folder / "integer-ids.parquet", pa.Table.from_pylist(integer_ids))
    # Bad shards.
    write(folder / "string-score.parquet", pa.Table.from_pylist(candidates_of(rows("s"), score="0.5")))
    write(folder / "domain-int.parquet", pa.Table.from_pylist([{**row, "domain": 7} for row in rows("i")]))
    write(folder / "no-query.parquet", pa.Table.from_pylist(rows("n"), schema=SCHEMA).drop_columns(["query"]))
    pairs = [{"query_id": "p", "query": "q", "doc_id": "d", "image": grey_jpeg(9), "image_uri": None, "text": None, "score": 1.0}]
    write(folder / "pairs.parquet", pa.Table.from_pylist(pairs, schema=PAIRS_INPUT_SCHEMA))
    write(folder / "reserved.parquet", pa.Table.from_pylist([{**row, "status": "x"} for row in rows("r")]))
    (folder / "not-parquet.parquet").write_bytes(b"this is not parquet at all")
    (folder / "empty.parquet").write_bytes(b"")
    # Not data: reported as ignored.
    write(folder / "_SUCCESS.parquet", pa.Table.from_pylist(rows("h"), schema=SCHEMA))
    write(folder / ".hidden.parquet", pa.Table.from_pylist(rows("h"), schema=SCHEMA))
    write(folder / "_tmp" / "inside.parquet", pa.Table.from_pylist(rows("h"), schema=SCHEMA))
    (folder / "notes.txt").write_text("not data")
    return {"good-a": 2, "good-b": 3, "odd?name": 2, "integer-ids": 2}


BAD = {
    "string-score": "column 'candidates[].score' must be double, got string",
    "domain-int": "passthrough column 'domain' is int64 here but string",
    "no-query": "missing column(s) ['query']",
    "pairs": "uses the pairs layout",
    "reserved": "clash with output columns",
    "not-parquet": "cannot read as Parquet",
    "empty": "cannot read as Parquet",
}


def test_a_mix_of_good_and_bad_shards(ray_session, tmp_path, capsys):
    good = mixed_input(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS])
    summary = json.loads((out / "summary.json").read_text())
    # 7 of 11 shards bad is far above --max-error-rate: exit 3, after writing everything.
    assert code == 3 and "shards could not be read" in summary["failed"]
    reasons = {Path(uri).stem: reason for uri, reason in summary["bad_shards"].items()}
    assert set(reasons) == set(BAD)
    for name, words in BAD.items():
        assert words in reasons[name], (name, reasons[name])
    ranked = read_folder(out / "ranked")
    assert Counter(row["query_id"] for row in ranked) == Counter(
        f"{prefix}{i}" for prefix, count in (("a", 2), ("b", 3), ("q", 2)) for i in range(count)
    ) + Counter({"100": 1, "101": 1})
    assert read_folder(out / "dead_letter") == []
    assert all(row["backend"] == "scripted-test" for row in ranked)
    by_id = {row["query_id"]: row for row in ranked}
    assert by_id["100"]["doc_ids"] == ["0", "1"] and by_id["100"]["first_stage_doc_ids"] == ["1", "0"]
    assert summary["shards"] == {"total": 11, "processed": 4, "skipped_done_earlier": 0, "reprocessed_changed": 0, "bad": 7}
    ignored = summary["ignored_files"]
    assert ignored["count"] == 4 and {Path(uri).name for uri in ignored["first"]} == {"_SUCCESS.parquet", ".hidden.parquet", "inside.parquet", "notes.txt"}
    assert "ignored 4 file(s)" in capsys.readouterr().out
    assert sum(good.values()) == len(ranked)

    # A rerun adds nothing: the good shards are in the ledger, the bad ones are still bad.
    files = sorted(path.name for path in out.rglob("*.parquet"))
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 3
    again = json.loads((out / "summary.json").read_text())
    assert again["shards"]["skipped_done_earlier"] == 4 and again["shards"]["processed"] == 0 and again["totals"]["queries"] == 0
    assert sorted(path.name for path in out.rglob("*.parquet")) == files


def test_a_shard_rewritten_after_a_crash_starts_over(ray_session, tmp_path):
    shard = tmp_path / "in" / "s.parquet"
    write(shard, pa.Table.from_pylist(rows("old", 3), schema=SCHEMA))
    out = tmp_path / "out"
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    # As if the run had died before its accounting: rows written, no ledger entry.
    assert forget_done(out) == 1
    write(shard, pa.Table.from_pylist(rows("new", 2), schema=SCHEMA))
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    assert sorted(row["query_id"] for row in read_folder(out / "ranked")) == ["new0", "new1"]


def test_a_null_candidate_is_one_dead_letter(ray_session, tmp_path):
    good = rows("g", 2)
    broken = {**rows("x", 1)[0], "query_id": "nullcand"}
    broken["candidates"] = [*broken["candidates"], None]
    write(tmp_path / "in" / "s.parquet", pa.Table.from_pylist([*good, broken], schema=SCHEMA))
    out = tmp_path / "out"
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS, "--max-error-rate", "0.5"]) == 0
    [letter] = read_folder(out / "dead_letter")
    assert letter["query_id"] == "nullcand" and letter["reason"] == "candidate(s) [4] are null"
    assert sorted(row["query_id"] for row in read_folder(out / "ranked")) == ["g0", "g1"]


def test_an_unwritable_output_is_one_line_and_exit_2(ray_session, tmp_path, capsys):
    write(tmp_path / "in" / "s.parquet", pa.Table.from_pylist(rows("g", 1), schema=SCHEMA))
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "a-file" / "out"), *FLAGS]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith(f"mmr5-batch: error: cannot write to output {tmp_path / 'a-file' / 'out'}: ")
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "out"), *FLAGS]) == 2
    assert "is the input or inside it" in capsys.readouterr().err


def test_a_second_job_into_a_held_prefix_is_refused_and_an_expired_lease_taken_over(ray_session, tmp_path, capsys):
    import datetime as dt

    write(tmp_path / "in" / "s.parquet", pa.Table.from_pylist(rows("g", 2), schema=SCHEMA))
    out = tmp_path / "out"
    lease = out / "_ledger" / "lease.json"
    lease.parent.mkdir(parents=True)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    lease.write_text(json.dumps({"owner": "other", "run_id": "nightly-7", "host": "h", "pid": 1, "heartbeat_at": "t", "expires_at": soon.isoformat()}))
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 2
    assert "is in use by run nightly-7" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(path.name for path in out.rglob("*")) == ["_ledger", "lease.json"]  # nothing else touched
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    lease.write_text(json.dumps({"owner": "other", "run_id": "nightly-7", "expires_at": past.isoformat()}))
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    assert not lease.exists() and sorted(row["query_id"] for row in read_folder(out / "ranked")) == ["g0", "g1"]


def test_a_query_id_repeated_after_a_crash_keeps_its_first_written_copy(ray_session, tmp_path):
    write(tmp_path / "in" / "a.parquet", pa.Table.from_pylist(rows("a", 2), schema=SCHEMA))
    out = tmp_path / "out"
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    assert forget_done(out) == 1  # as if the run died before its accounting
    write(tmp_path / "in" / "b.parquet", pa.Table.from_pylist([*rows("a", 1), *rows("b", 1)], schema=SCHEMA))  # a0 again
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS, "--max-error-rate", "0.5"]) == 0
    ranked, dead = read_folder(out / "ranked"), read_folder(out / "dead_letter")
    assert sorted(row["query_id"] for row in ranked) == ["a0", "a1", "b0"]
    [letter] = dead
    assert letter["query_id"] == "a0" and "already written for" in letter["reason"] and letter["source_path"].endswith("b.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["incomplete_shards"] == [] and summary["failed"] is None


def test_a_shard_refused_for_its_layout_stays_refused_on_every_rerun(ray_session, tmp_path):
    for name in "abc":
        write(tmp_path / "in" / f"{name}.parquet", pa.Table.from_pylist(rows(name, 2), schema=SCHEMA))
    pairs = [{"query_id": "p", "query": "q", "doc_id": "d", "image": grey_jpeg(9), "image_uri": None, "text": None, "score": 1.0}]
    write(tmp_path / "in" / "pairs.parquet", pa.Table.from_pylist(pairs, schema=PAIRS_INPUT_SCHEMA))
    out = tmp_path / "out"
    args = ["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS, "--max-error-rate", "0.5"]
    assert main(args) == 0
    first = json.loads((out / "summary.json").read_text())
    assert [Path(uri).stem for uri in first["bad_shards"]] == ["pairs"] and first["shards"]["processed"] == 3
    # The grouped shards are done now, the pairs shard is the only one pending: the job's layout still decides.
    for _ in range(2):
        assert main(args) == 0
        again = json.loads((out / "summary.json").read_text())
        assert [Path(uri).stem for uri in again["bad_shards"]] == ["pairs"] and again["shards"]["processed"] == 0
        assert "uses the pairs layout while this output's shards use grouped" in next(iter(again["bad_shards"].values()))
    assert sorted(row["query_id"] for row in read_folder(out / "ranked")) == ["a0", "a1", "b0", "b1", "c0", "c1"]


def manifest_rows(out: Path, folder: str = "ranked") -> list[dict]:
    """The rows a reader outside the project reads: the files the manifest names."""
    manifest = json.loads((out / "manifest.json").read_text())
    return [row for path in manifest[folder] for row in pq.read_table(out / path).to_pylist()]


def test_an_interrupted_overwrite_is_refused_by_evaluate_unless_partial_and_read_once_through_the_manifest(ray_session, tmp_path, monkeypatch, capsys):
    from mmr5_batch.output.transaction import OutputTransaction

    write(tmp_path / "in" / "a.parquet", pa.Table.from_pylist(rows("a", 2), schema=SCHEMA))
    write(tmp_path / "in" / "b.parquet", pa.Table.from_pylist(rows("b", 2), schema=SCHEMA))
    (tmp_path / "qrels.trec").write_text("".join(f"{query} 0 d2 1\n" for query in ("a0", "a1", "b0", "b1")))
    out = tmp_path / "out"
    queries = ["a0", "a1", "b0", "b1"]
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    assert sorted(row["query_id"] for row in manifest_rows(out)) == queries

    def evaluate(*extra: str) -> tuple[int, str]:
        code = main(["evaluate", "--run", str(out), "--qrels", str(tmp_path / "qrels.trec"), "--k", "1", "--json", str(tmp_path / "eval.json"), *extra])
        return code, capsys.readouterr().err

    # Killed after the new rows are written, before they are committed: old and new files lie side by side.
    def killed(self, complete, **wave):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(OutputTransaction, "commit_wave", killed)
    with contextlib.suppress(KeyboardInterrupt):
        main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS, "--overwrite", "--window", "3", "--stride", "2"])
    monkeypatch.undo()
    (out / "_ledger" / "lease.json").unlink(missing_ok=True)  # as if the dead run's lease had expired
    assert len(read_folder(out / "ranked")) == 8  # a plain listing reads every query twice
    assert sorted(row["query_id"] for row in manifest_rows(out)) == queries  # the manifest: the old results, once
    code, error = evaluate()
    [line] = [line for line in error.splitlines() if "error:" in line]
    assert code == 2 and "holds the results of an unfinished run (run " in line and "has begun and not finished" in line and "--partial" in line
    code, _ = evaluate("--partial")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert code == 0 and report["queries"] == 4 and "has begun and not finished" in report["unfinished"]

    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS, "--window", "3", "--stride", "2"]) == 0
    assert sorted(row["query_id"] for row in manifest_rows(out)) == queries and evaluate()[0] == 0
    assert json.loads((tmp_path / "eval.json").read_text())["unfinished"] is None
    assert len(read_folder(out / "ranked")) == 4 and manifest_rows(out, "dead_letter") == []


def test_a_truncated_manifest_is_one_line_for_evaluate_and_rewritten_by_rerank(ray_session, tmp_path, capsys):
    write(tmp_path / "in" / "a.parquet", pa.Table.from_pylist(rows("a", 2), schema=SCHEMA))
    (tmp_path / "qrels.trec").write_text("a0 0 d2 1\na1 0 d2 1\n")
    out = tmp_path / "out"
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    whole = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(whole[: len(whole) // 2])
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--qrels", str(tmp_path / "qrels.trec"), "--k", "1", "--json", str(tmp_path / "e.json")]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert f"{out / 'manifest.json'} cannot be parsed" in line and "rerun the job" in line and "unexpected" not in line
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS, "--verbose"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "manifest.json cannot be parsed" in line]
    assert len(warnings) == 1 and "this run rewrites it" in warnings[0]
    assert sorted(row["query_id"] for row in manifest_rows(out)) == ["a0", "a1"]
    # A ledger file the job reads that cannot be parsed: one line naming it, exit 2, nothing written.
    [index] = sorted((out / "_ledger" / "index").glob("*.jsonl"))[-1:]
    index.write_text(index.read_text()[:10])
    before = sorted(path.name for path in out.rglob("*"))
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert f"{index} cannot be parsed" in line and "unexpected" not in line
    assert sorted(path.name for path in out.rglob("*")) == before


def test_a_temporary_left_by_a_killed_writer_is_removed_by_the_next_run(ray_session, tmp_path):
    write(tmp_path / "in" / "a.parquet", pa.Table.from_pylist(rows("a", 2), schema=SCHEMA))
    out = tmp_path / "out"
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    [written] = (out / "ranked").rglob("*.parquet")
    # What a writer killed mid-file (or a full disk before this version) leaves: a hidden temporary beside the file.
    litter = [written.parent / f".{written.name}.1a2b3c4d.tmp", out / "_ledger" / "index" / ".00000009-done-x.jsonl.5e6f7a8b.tmp"]
    for path in litter:
        path.write_bytes(b"half a file")
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS]) == 0
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    assert sorted(row["query_id"] for row in read_folder(out / "ranked")) == ["a0", "a1"]


def test_a_query_that_kills_its_actor_is_found_and_dead_lettered_and_the_shard_goes_on(ray_session, tmp_path):
    """Ray restarts a dead actor and retries its batch for ever: after two deaths the batch runs one query at a time,
    the query the actor dies on alone is dead-lettered with the reason, and the rest of the shard is ranked."""
    table = rows("a", 4)
    table[2]["query"] = "which page? #die"  # the scripted engine's process dies on it, as one killed for memory
    write(tmp_path / "in" / "a.parquet", pa.Table.from_pylist(table, schema=SCHEMA))
    out = tmp_path / "out"
    assert main(["rerank", "--input", str(tmp_path / "in"), "--output", str(out), *FLAGS, "--max-error-rate", "0.5"]) == 0
    assert sorted(row["query_id"] for row in read_folder(out / "ranked")) == ["a0", "a1", "a3"]
    [letter] = read_folder(out / "dead_letter")
    assert letter["query_id"] == "a2" and "actor died on this query's batch 3 times" in letter["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["incomplete_shards"] == [] and summary["totals"]["queries"] == 4
