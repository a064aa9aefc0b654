"""`evaluate` end to end on a real run: the scripted test engine reranks the demo data, Ray Data scores it."""

from __future__ import annotations

import json

import pytest

from mmr5_batch.cli.main import main
from mmr5_batch.devtools.demo_data import demo_qrels_text, write_demo_dataset


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_demo_dataset(root / "in", queries=12, candidates=6, shards=2)
    (root / "qrels.trec").write_text(demo_qrels_text(queries=12, candidates=6) + "q9999 0 page-0001 1\n")
    args = ["rerank", "--input", str(root / "in"), "--output", str(root / "out"), "--backend", "scripted-test", "--max-error-rate", "1"]
    assert main(args) == 0
    return root


def test_evaluate_compares_reranked_and_first_stage_orders(run, capsys):
    capsys.readouterr()
    code = main(["evaluate", "--run", str(run / "out"), "--qrels", str(run / "qrels.trec"), "--k", "1,3", "--group-by", "domain"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| recall@1 |" in printed and "| macro over domain | first stage | reranked | change |" in printed
    report = json.loads((run / "out" / "evaluation.json").read_text())
    assert report["queries"] == 12 and report["missing_from_run"] == 1
    assert report["groups"] == ["finance", "operations", "science"]
    first, reranked = report["micro"]["first_stage"], report["micro"]["reranked"]
    # Recall@3 is a share of 13 questions (one missing from the run scores 0); every demo gold page is in its top 3.
    assert first["recall@3"] == pytest.approx(12 / 13)
    assert 0 <= reranked["recall@1"] <= 12 / 13 and set(report["by_status"]) == {"ok"}
    assert report["by_status"]["ok"]["queries"] == 12
    # The report people look at, beside the JSON: figures and a page, plotting the JSON's numbers.
    folder = run / "out" / "evaluation"
    assert f"report: {folder / 'report.md'}" in printed
    for name in ("curves.png", "by_group.png", "by_status.png", "cost.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in (folder / "report.md").read_text()
    assert report["cost_per_query"]["image_tokens"] > 0 and report["by_group"]["finance"]["queries"] > 0


def test_evaluate_bad_inputs_are_one_line(run, capsys):
    assert main(["evaluate", "--run", str(run / "out"), "--qrels", str(run / "missing.trec")]) == 2
    assert "qrels not found" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run / "nothing"), "--qrels", str(run / "qrels.trec")]) == 2
    assert "no results under" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run / "out"), "--qrels", str(run / "qrels.trec"), "--k", "0"]) == 2


def test_jobs_entry_points_for_ray_job_submit(run):
    """`jobs/evaluate.py` and `jobs/relabel.py` as `ray job submit` runs them: plain scripts, their own Ray."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "RAY_ADDRESS": ""}
    evaluated = subprocess.run(
        [
            sys.executable,
            str(root / "jobs" / "evaluate.py"),
            "--run",
            str(run / "out"),
            "--qrels",
            str(run / "qrels.trec"),
            "--json",
            str(run / "job-eval.json"),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((run / "job-eval.json").read_text())["queries"] == 12
    relabeled = subprocess.run(
        [
            sys.executable,
            str(root / "jobs" / "relabel.py"),
            "--input",
            str(run / "in"),
            "--output",
            str(run / "relabel"),
            "--backend",
            "scripted-test",
            "--label-column",
            "gold_doc_ids",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert relabeled.returncode == 0, relabeled.stderr[-2000:]
    assert len(list((run / "relabel" / "pairs").rglob("*.parquet"))) >= 1
