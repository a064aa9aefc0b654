"""The evaluation report's figures plot exactly the numbers of the report (evaluation.json)."""

from __future__ import annotations

from PIL import Image

from mmr5_batch.evaluation.report import write_report


def sample_report():
    micro = {
        "first_stage": {"recall@1": 0.4, "recall@3": 0.8, "recall@5": 0.9, "ndcg@1": 0.4, "ndcg@3": 0.62, "ndcg@5": 0.66},
        "reranked": {"recall@1": 0.6, "recall@3": 0.9, "recall@5": 0.95, "ndcg@1": 0.6, "ndcg@3": 0.77, "ndcg@5": 0.8},
    }
    return {
        "run": "out",
        "qrels": "qrels.trec",
        "protocol": "standard",
        "protocol_definition": "ours",
        "k": [1, 3, 5],
        "group_by": "domain",
        "queries": 30,
        "missing_from_run": 0,
        "micro": micro,
        "macro": micro,
        "groups": ["finance", "science"],
        "by_group": {
            "finance": {"queries": 20, "first_stage": {"recall@5": 0.85}, "reranked": {"recall@5": 0.95}},
            "science": {"queries": 10, "first_stage": {"recall@5": 1.0}, "reranked": {"recall@5": 0.9}},
        },
        "by_status": {
            "ok": {"queries": 25, "first_stage": {"recall@5": 0.92}, "reranked": {"recall@5": 0.97}},
            "fallback": {"queries": 5, "first_stage": {"recall@5": 0.8}, "reranked": {"recall@5": 0.8}},
        },
        "cost_per_query": {"image_tokens": 9000.0, "prompt_tokens": 9800.0, "generated_tokens": 820.0, "forced_answers": 0.4, "windows": 4.0},
    }


def test_every_figure_plots_the_reports_numbers(tmp_path):
    report = sample_report()
    plotted = write_report(report, str(tmp_path / "evaluation"))
    assert set(plotted) == {"curves.png", "by_group.png", "by_status.png", "cost.png"}
    curves = plotted["curves.png"]
    for order in ("first_stage", "reranked"):
        assert curves["recall"][order] == [report["micro"][order][f"recall@{k}"] for k in (1, 3, 5)]
        assert curves["ndcg"][order] == [report["micro"][order][f"ndcg@{k}"] for k in (1, 3, 5)]
    assert plotted["by_group.png"]["names"] == ["finance", "science"] and plotted["by_group.png"]["reranked"] == [0.95, 0.9]
    assert plotted["by_status.png"]["queries"] == [25, 5] and plotted["by_status.png"]["first_stage"] == [0.92, 0.8]
    assert plotted["cost.png"] == report["cost_per_query"]
    for name in plotted:
        with Image.open(tmp_path / "evaluation" / name) as picture:
            assert picture.format == "PNG" and picture.width > 300
    page = (tmp_path / "evaluation" / "report.md").read_text()
    assert "![curves.png](curves.png)" in page and "| recall@5 | 0.9000 | 0.9500 | +0.0500 |" in page
