"""`mmr5-batch evaluate`: did reranking help? Metrics of the reranked and the first-stage order, side by side.

Ray Data reads the run's ranked rows and dead letters as of its last commit
(the output's manifest, so an unfinished `--overwrite` is read once) and
scores every query
against the qrels in parallel (`score_batch`); the driver folds the
per-query metrics into micro means, macro means over `--group-by` groups
and a breakdown by row status. A dead letter is scored with its first-stage
order for both columns (what a user falls back to), under status `error`.
Queries in the qrels but not in the run score 0 in the micro means (the
protocol scores every question) and are counted; they join no group.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from mmr5_batch.core.vocabulary import ERROR
from mmr5_batch.errors import JobError
from mmr5_batch.evaluation.metrics import macro, micro, query_metrics
from mmr5_batch.evaluation.qrels import Qrels, QrelsError, load_qrels
from mmr5_batch.output.store import OutputStore
from mmr5_batch.stages.cluster import ensure_ray
from mmr5_batch.storage.filesystems import Storage

ORDERS = ("first_stage", "reranked")
NO_GROUP = "<none>"
# What a query cost, read from its result row (the report's cost side).
COST_COLUMNS = ("image_tokens", "prompt_tokens", "generated_tokens", "forced_answers", "windows")


def score_batch(batch: pa.Table, qrels: Qrels, ks: Sequence[int], group_by: str | None) -> pa.Table:
    """Ray Data UDF: one row of metrics per result row that has qrels."""
    names = set(batch.column_names)
    out: dict[str, list] = defaultdict(list)
    for row in batch.to_pylist():
        relevance = qrels.get(row["query_id"])
        if relevance is None:
            continue
        first = row.get("first_stage_doc_ids") or []
        reranked = row.get("doc_ids") if "doc_ids" in names and row.get("doc_ids") is not None else first
        out["query_id"].append(row["query_id"])
        out["status"].append(row.get("status") or ERROR)
        out["group"].append(str(row.get(group_by)) if group_by and row.get(group_by) is not None else NO_GROUP)
        for order, ranked in (("first_stage", first), ("reranked", reranked)):
            for name, value in query_metrics(ranked, relevance, ks).items():
                out[f"{order}:{name}"].append(value)
        for name in COST_COLUMNS:  # dead letters lack some: 0
            out[f"cost:{name}"].append(float(row.get(name) or 0))
    return pa.table(dict(out)) if out else pa.table({"query_id": pa.array([], pa.string())})


def _split(row: dict[str, Any], order: str) -> dict[str, float]:
    prefix = f"{order}:"
    return {name[len(prefix) :]: value for name, value in row.items() if name.startswith(prefix)}


PROTOCOLS = {
    "standard": "micro over queries (in qrels but not in the run: 0); macro over the --group-by groups present; MRR uncut",
    "mmdocir": "MMDocIR's: macro over its fixed domains (a domain without queries counts 0); MRR@k cut at k",
}


def mmdocir_domains(qrels_uri: str, storage: Storage) -> list[str]:
    """The fixed domains `convert mmdocir` wrote beside its qrels (domains.txt)."""
    uri = qrels_uri.rsplit("/", 1)[0] + "/domains.txt" if "/" in qrels_uri else "domains.txt"
    try:
        text = storage.read_bytes(uri).decode()
    except FileNotFoundError:
        raise QrelsError(f"--protocol mmdocir needs the benchmark's domains: {uri} (written by `convert mmdocir`) or --domains") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def evaluate_run(
    run: str,
    qrels_uri: str,
    ks: Sequence[int] = (1, 3, 5, 10),
    group_by: str | None = None,
    storage: Storage | None = None,
    protocol: str = "standard",
    domains: Sequence[str] | None = None,
    address: str | None = None,
    partial: bool = False,
) -> dict[str, Any]:
    """Metrics of the run's reranked and first-stage orders against the qrels, by `protocol` (see PROTOCOLS).

    A run that has not finished (its manifest says so) is refused with JobError unless `partial`, in which case
    the report says what is unfinished."""
    if protocol not in PROTOCOLS:
        raise QrelsError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    storage = storage or Storage()
    qrels = load_qrels(qrels_uri, storage)
    if protocol == "mmdocir":
        group_by = group_by or "domain"
        domains = list(domains) if domains else mmdocir_domains(qrels_uri, storage)
    # The results as of the last commit (the manifest): each query once, even while an --overwrite's old and new
    # results lie side by side (output/store.py).
    output = OutputStore(storage, run)
    unfinished = output.unfinished(output.manifest())
    if unfinished and not partial:
        raise JobError(f"{run} holds the results of an unfinished run ({unfinished}): let the run finish (rerun it), or pass --partial")
    files = output.committed_files()
    if not files:
        raise FileNotFoundError(f"no results under {run} (ranked/ or dead_letter/)")
    ensure_ray(address)  # only now: a bad qrels file or an empty run is reported without starting Ray
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(uri)[1] for uri in files]
    dataset = ray.data.read_parquet(paths, filesystem=PyFileSystem(FSSpecHandler(fs)))
    scored = dataset.map_batches(functools.partial(score_batch, qrels=qrels, ks=tuple(ks), group_by=group_by), batch_format="pyarrow")
    rows = [row for batch in scored.iter_batches(batch_format="pyarrow") for row in pa.table(batch).to_pylist() if len(row) > 1]

    seen = {row["query_id"] for row in rows}
    missing = sorted(set(qrels) - seen)
    zeros = {name: 0.0 for name in query_metrics([], {"x": 1}, ks)}
    report: dict[str, Any] = {
        "run": run,
        "qrels": qrels_uri,
        "protocol": protocol,
        "protocol_definition": PROTOCOLS[protocol],
        "k": list(ks),
        "group_by": group_by,
        "queries": len(rows),
        "missing_from_run": len(missing),
        "unfinished": unfinished,  # None, or what was not finished when a partial evaluation was asked for
    }
    report["micro"] = {order: micro([_split(row, order) for row in rows] + [zeros] * len(missing)) for order in ORDERS}
    report["cost_per_query"] = micro([_split(row, "cost") for row in rows])
    if group_by:
        groups: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            groups[row["group"]].append(row)
        report["by_group"] = {
            group: {"queries": len(groups.get(group, [])), **{order: micro([_split(row, order) for row in groups.get(group, [])]) for order in ORDERS}}
            for group in (list(domains) if domains else sorted(groups))
        }
        report["macro"] = {order: macro(((row["group"], _split(row, order)) for row in rows), domains) for order in ORDERS}
        report["groups"] = list(domains) if domains else sorted({row["group"] for row in rows})
    by_status: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_status[row["status"]].append(row)
    report["by_status"] = {
        status: {"queries": len(members), **{order: micro([_split(row, order) for row in members]) for order in ORDERS}}
        for status, members in sorted(by_status.items())
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    ks = report["k"]
    metrics = ("recall", "mrr") if report.get("protocol") == "mmdocir" else ("recall", "ndcg", "hit")
    names = (["mrr"] if report.get("protocol") != "mmdocir" else []) + [f"{metric}@{k}" for metric in metrics for k in ks]
    lines = [
        f"run {report['run']}  qrels {report['qrels']}",
        f"protocol {report.get('protocol', 'standard')}: {report.get('protocol_definition', PROTOCOLS['standard'])}",
        f"queries {report['queries']}, in qrels but not in the run {report['missing_from_run']}",
        *([f"PARTIAL: the run has not finished ({report['unfinished']})"] if report.get("unfinished") else []),
        "",
    ]
    scopes = [("micro", report["micro"])] + ([(f"macro over {report['group_by']}", report["macro"])] if "macro" in report else [])
    for title, values in scopes:
        lines += [f"| {title} | first stage | reranked | change |", "|---|---:|---:|---:|"]
        for name in names:
            before, after = values["first_stage"].get(name, 0.0), values["reranked"].get(name, 0.0)
            lines.append(f"| {name} | {before:.4f} | {after:.4f} | {after - before:+.4f} |")
        lines.append("")
    recall = [f"recall@{k}" for k in ks]
    lines += ["| status | queries | " + " | ".join(f"{name} first / reranked" for name in recall) + " |", "|---|---:|" + "---:|" * len(recall)]
    for status, values in report["by_status"].items():
        cells = [f"{values['first_stage'].get(name, 0):.3f} / {values['reranked'].get(name, 0):.3f}" for name in recall]
        lines.append(f"| {status} | {values['queries']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
