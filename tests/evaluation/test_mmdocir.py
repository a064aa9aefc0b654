"""MMDocIR end to end on a small synthetic replica of its published files: convert, rerank, evaluate, relabel."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmr5_batch.cli.main import main
from tests.conftest import grey_jpeg

# Two documents; page images are greys (the scripted engine ranks darker first).
DOCS = [
    ("report-a", "Financial report", [200, 40, 180, 90, 160]),  # darkest page: 1
    ("paper-b", "Academic paper", [120, 220, 30, 210]),  # darkest page: 2
]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmdocir")
    rows, annotations, row = [], [], 0
    for doc_name, domain, levels in DOCS:
        for page, level in enumerate(levels):
            rows.append(
                {
                    "doc_name": doc_name,
                    "domain": domain,
                    "passage_id": str(row),
                    "image_path": f"{doc_name}/{page}.jpg",
                    "image_binary": grey_jpeg(level),
                    "ocr_text": "",
                    "vlm_text": "",
                }
            )
            row += 1
        questions = [
            {"Q": f"Where is the key table of {doc_name}?", "A": "x", "type": "Table", "page_id": [levels.index(min(levels))], "layout_mapping": []},
            {"Q": f"Which pages discuss risk in {doc_name}?", "A": "y", "type": "Text", "page_id": [0, len(levels) - 1], "layout_mapping": []},
        ]
        annotations.append(
            {"doc_name": doc_name, "domain": domain, "page_indices": [row - len(levels), row - 1], "layout_indinces": [0, 0], "questions": questions}
        )
    pq.write_table(pa.Table.from_pylist(rows), root / "MMDocIR_pages.parquet")
    (root / "MMDocIR_annotations.jsonl").write_text("\n".join(json.dumps(a) for a in annotations) + "\n")
    # A first-stage run that puts the darkest page second: reranking should lift it.
    run = []
    for doc_name, _, levels in DOCS:
        darkest = levels.index(min(levels))
        order = [page for page in range(len(levels)) if page != darkest]
        order.insert(1, darkest)
        for q in range(2):
            run += [f"{doc_name}/q{q} Q0 {page} {rank + 1} {1.0 - rank / 10:.2f} colqwen" for rank, page in enumerate(order)]
    (root / "run.trec").write_text("\n".join(run) + "\n")
    return root


def test_convert_rerank_evaluate_relabel(ray_session, replica, capsys):
    assert (
        main(
            [
                "convert",
                "mmdocir",
                "--pages",
                str(replica / "MMDocIR_pages.parquet"),
                "--annotations",
                str(replica / "MMDocIR_annotations.jsonl"),
                "--run",
                str(replica / "run.trec"),
                "--output",
                str(replica / "converted"),
                "--top-k",
                "4",
            ]
        )
        == 0
    )
    counts = json.loads(capsys.readouterr().out)
    assert counts["questions"] == 4 and counts["documents"] == 2 and counts["pages_read"] == 8
    [row] = [r for r in pq.read_table(replica / "converted" / "input").to_pylist() if r["query_id"] == "report-a/q0"]
    assert [c["doc_id"] for c in row["candidates"]] == ["report-a/p0", "report-a/p1", "report-a/p2", "report-a/p3"]
    assert row["candidates"][1]["image"] == grey_jpeg(40) and row["gold_doc_ids"] == ["report-a/p1"] and row["domain"] == "Financial report"
    assert "paper-b/q1 0 paper-b/p0 1" in (replica / "converted" / "qrels.trec").read_text()

    rerank = ["rerank", "--input", str(replica / "converted" / "input"), "--output", str(replica / "out"), "--backend", "scripted-test"]
    assert main([*rerank, "--emit", "pairs", "--label-column", "gold_doc_ids"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(replica / "out"), "--qrels", str(replica / "converted" / "qrels.trec"), "--k", "1,3", "--group-by", "domain"]) == 0
    report = json.loads((replica / "out" / "evaluation.json").read_text())
    # q0 of each document: the gold (darkest) page was second in the run and is first after reranking.
    assert report["micro"]["first_stage"]["recall@1"] < report["micro"]["reranked"]["recall@1"]
    assert report["groups"] == ["Academic paper", "Financial report"]
    pairs = [p for path in sorted((replica / "out" / "pairs").rglob("*.parquet")) for p in pq.read_table(path).to_pylist()]
    assert len(pairs) == 4 * 4 and sum(p["label"] for p in pairs) == 4

    # MMDocIR's own protocol: macro over its fixed domains (from domains.txt; a third one absent from the run counts 0).
    assert (replica / "converted" / "domains.txt").read_text().split("\n")[:2] == ["Academic paper", "Financial report"]
    qrels = str(replica / "converted" / "qrels.trec")
    assert main(["evaluate", "--run", str(replica / "out"), "--qrels", qrels, "--k", "1,3", "--protocol", "mmdocir", "--json", str(replica / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "protocol mmdocir: MMDocIR's" in printed and "mrr@1" in printed
    official = json.loads((replica / "m.json").read_text())
    assert official["protocol"] == "mmdocir" and official["groups"] == ["Academic paper", "Financial report"]
    assert official["macro"]["reranked"]["recall@1"] == pytest.approx(report["macro"]["reranked"]["recall@1"])
    domains = "Academic paper,Financial report,News"
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(replica / "out"),
                "--qrels",
                qrels,
                "--k",
                "1,3",
                "--protocol",
                "mmdocir",
                "--domains",
                domains,
                "--json",
                str(replica / "n.json"),
            ]
        )
        == 0
    )
    with_absent = json.loads((replica / "n.json").read_text())
    assert with_absent["macro"]["reranked"]["recall@1"] == pytest.approx(official["macro"]["reranked"]["recall@1"] * 2 / 3)


def test_convert_breaks_score_ties_by_page_index(replica, capsys):
    (replica / "ties.trec").write_text("\n".join(f"report-a/q0 Q0 {page} 1 0.5 tied" for page in (3, 0, 2, 4, 1)) + "\n")
    args = ["convert", "mmdocir", "--pages", str(replica / "MMDocIR_pages.parquet"), "--annotations", str(replica / "MMDocIR_annotations.jsonl")]
    assert main([*args, "--run", str(replica / "ties.trec"), "--output", str(replica / "ties"), "--top-k", "3"]) == 0
    capsys.readouterr()
    [row] = [r for r in pq.read_table(replica / "ties" / "input").to_pylist() if r["query_id"] == "report-a/q0"]
    assert [c["doc_id"] for c in row["candidates"]] == ["report-a/p0", "report-a/p1", "report-a/p2"]


def test_convert_names_the_bad_file(replica, capsys):
    (replica / "bad.jsonl").write_text('{"doc_name": "x"}\n')
    code = main(
        [
            "convert",
            "mmdocir",
            "--pages",
            str(replica / "MMDocIR_pages.parquet"),
            "--annotations",
            str(replica / "bad.jsonl"),
            "--run",
            str(replica / "run.trec"),
            "--output",
            str(replica / "x"),
        ]
    )
    assert code == 2 and "bad.jsonl:1: not an MMDocIR annotation line" in capsys.readouterr().err


def test_the_replica_through_the_two_model_cascade_and_evaluate(ray_session, replica, capsys):
    args = ["convert", "mmdocir", "--pages", str(replica / "MMDocIR_pages.parquet"), "--annotations", str(replica / "MMDocIR_annotations.jsonl")]
    assert main([*args, "--run", str(replica / "run.trec"), "--output", str(replica / "two"), "--top-k", "4"]) == 0
    rerank = ["rerank", "--input", str(replica / "two" / "input"), "--output", str(replica / "two-out"), "--backend", "scripted-test"]
    cascade = ["--cascade", "--first-pass", "pointwise", "--scorer-backend", "scripted-test", "--detail-top", "2", "--window", "2", "--stride", "1"]
    assert main([*rerank, *cascade]) == 0
    capsys.readouterr()
    qrels = str(replica / "two" / "qrels.trec")
    assert main(["evaluate", "--run", str(replica / "two-out"), "--qrels", qrels, "--k", "1,3", "--json", str(replica / "two.json")]) == 0
    report = json.loads((replica / "two.json").read_text())
    # q0 of each document: the scorer puts the gold (darkest) page in the top two, MM-R5's detail pass puts it first.
    assert report["micro"]["first_stage"]["recall@1"] < report["micro"]["reranked"]["recall@1"]
    rows = [row for path in sorted((replica / "two-out" / "ranked").rglob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert len(rows) == 4 and all(row["decided_by"] == ["detail", "detail", "pointwise", "pointwise"] and row["scored"] == 4 for row in rows)
