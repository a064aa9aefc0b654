"""The evaluation report people look at: PNG figures and a Markdown page beside `evaluation.json`.

Written to `RUN/evaluation/` by `evaluate` (CLI and jobs/evaluate.py):

- `curves.png`: recall@k and nDCG@k over k, reranked against the first stage (micro);
- `by_group.png`: recall@k per group (the `--group-by` column or MMDocIR's domains), both orders;
- `by_status.png`: recall@k per row status, with the number of queries: what fallbacks cost;
- `cost.png`: image, prompt and generated tokens per query, and forced answers per query;
- `report.md`: the tables and the figures on one page.

Every plotted value is taken from the report dict (the same numbers as
`evaluation.json`); `write_report` returns them per figure, which the tests
compare with the JSON.
"""

from __future__ import annotations

import io
from typing import Any

from mmr5_batch.evaluation.evaluate import format_report
from mmr5_batch.storage.filesystems import Storage, join

ORDERS = {"first_stage": "first stage", "reranked": "reranked"}
COLOURS = {"first_stage": "#9aa5b1", "reranked": "#1f6feb"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, storage: Storage, uri: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    storage.write_bytes(uri, buffer.getvalue())
    _pyplot().close(figure)


def _curves(report: dict[str, Any]) -> dict[str, Any]:
    ks = report["k"]
    return {metric: {order: [report["micro"][order].get(f"{metric}@{k}", 0.0) for k in ks] for order in ORDERS} for metric in ("recall", "ndcg")} | {"k": ks}


def _bars(groups: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    names = list(groups)
    return {"names": names, "queries": [groups[name]["queries"] for name in names]} | {
        order: [groups[name][order].get(metric, 0.0) for name in names] for order in ORDERS
    }


def _plot_curves(data: dict[str, Any]) -> Any:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, metric in zip(axes, ("recall", "ndcg")):
        for order, label in ORDERS.items():
            axis.plot(data["k"], data[metric][order], marker="o", color=COLOURS[order], label=label)
        axis.set(title=f"{metric}@k (micro)", xlabel="k", ylim=(0, 1.02), xticks=data["k"])
        axis.grid(alpha=0.3)
    axes[0].legend()
    return figure


def _plot_bars(data: dict[str, Any], title: str) -> Any:
    plt = _pyplot()
    count = len(data["names"])
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * count + 2), 3.4))
    width = 0.38
    for offset, (order, label) in zip((-width / 2, width / 2), ORDERS.items()):
        axis.bar([index + offset for index in range(count)], data[order], width, color=COLOURS[order], label=label)
    axis.set_xticks(range(count), [f"{name}\n({queries})" for name, queries in zip(data["names"], data["queries"])], fontsize=8)
    axis.set(title=title, ylim=(0, 1.2))
    axis.legend(loc="upper right", ncol=2)
    axis.grid(axis="y", alpha=0.3)
    return figure


def _plot_cost(cost: dict[str, float]) -> Any:
    plt = _pyplot()
    figure, (tokens, forced) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    names = ["image_tokens", "prompt_tokens", "generated_tokens"]
    tokens.bar(names, [cost.get(name, 0.0) for name in names], color=["#8250df", "#1f6feb", "#bf8700"])
    tokens.set(title="tokens per query (mean)")
    forced.bar(["forced answers", "windows"], [cost.get("forced_answers", 0.0), cost.get("windows", 0.0)], color=["#cf222e", "#9aa5b1"])
    forced.set(title="per query (mean)")
    return figure


def _markdown(report: dict[str, Any], figures: list[str]) -> str:
    lines = [f"# Evaluation of {report['run']}", "", f"Qrels: `{report['qrels']}`. {report.get('protocol_definition', '')}", ""]
    lines += [f"![{name}]({name})" for name in figures]
    lines += ["", format_report(report), ""]
    cost = report.get("cost_per_query", {})
    if cost:
        lines += ["| cost per query (mean) | value |", "|---|---:|", *[f"| {name} | {value:.1f} |" for name, value in sorted(cost.items())], ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], folder: str, storage: Storage | None = None) -> dict[str, Any]:
    """Write the figures and report.md under `folder`; returns what each figure plots (name -> data)."""
    storage = storage or Storage()
    metric = f"recall@{report['k'][-1]}"
    plotted: dict[str, Any] = {"curves.png": _curves(report)}
    _save(_plot_curves(plotted["curves.png"]), storage, join(folder, "curves.png"))
    if report.get("by_group"):
        plotted["by_group.png"] = _bars(report["by_group"], metric) | {"metric": metric}
        _save(_plot_bars(plotted["by_group.png"], f"{metric} by {report['group_by']}"), storage, join(folder, "by_group.png"))
    plotted["by_status.png"] = _bars(report["by_status"], metric) | {"metric": metric}
    _save(_plot_bars(plotted["by_status.png"], f"{metric} by row status (queries)"), storage, join(folder, "by_status.png"))
    plotted["cost.png"] = dict(report.get("cost_per_query", {}))
    _save(_plot_cost(plotted["cost.png"]), storage, join(folder, "cost.png"))
    storage.write_text(join(folder, "report.md"), _markdown(report, list(plotted)))
    return plotted
