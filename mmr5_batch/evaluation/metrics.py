"""Ranking metrics over one query, and their micro and macro means (MMDocIR's definitions).

- recall@k = |top-k ∩ relevant| / |relevant| (fractional with several gold pages)
- hit@k = 1 when any relevant document is in the top k
- nDCG@k with graded gains (the qrels' relevance) and a log2 discount
- MRR = 1 / rank of the first relevant document (0 when none is ranked);
  MRR@k the same within the top k (0 beyond), as MMDocIR's evaluation cuts it

Micro is the mean over queries; macro the unweighted mean over groups (e.g.
domains) of each group's mean.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    relevant = {doc for doc, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def hit_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    return 1.0 if any(relevance.get(doc, 0) > 0 for doc in ranked[:k]) else 0.0


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    gains = sorted((grade for grade in relevance.values() if grade > 0), reverse=True)
    ideal = sum(grade / math.log2(position + 2) for position, grade in enumerate(gains[:k]))
    if ideal == 0:
        return 0.0
    seen: set[str] = set()
    actual = 0.0
    for position, doc in enumerate(ranked[:k]):
        if doc in seen:  # a repeated id earns nothing twice
            continue
        seen.add(doc)
        actual += relevance.get(doc, 0) / math.log2(position + 2)
    return actual / ideal


def reciprocal_rank(ranked: Sequence[str], relevance: Mapping[str, float]) -> float:
    for position, doc in enumerate(ranked):
        if relevance.get(doc, 0) > 0:
            return 1.0 / (position + 1)
    return 0.0


def query_metrics(ranked: Sequence[str], relevance: Mapping[str, float], ks: Sequence[int]) -> dict[str, float]:
    """All metrics of one ranked list against its qrels."""
    values = {"mrr": reciprocal_rank(ranked, relevance)}
    for k in ks:
        values[f"mrr@{k}"] = reciprocal_rank(ranked[:k], relevance)
        values[f"recall@{k}"] = recall_at_k(ranked, relevance, k)
        values[f"ndcg@{k}"] = ndcg_at_k(ranked, relevance, k)
        values[f"hit@{k}"] = hit_at_k(ranked, relevance, k)
    return values


def micro(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over queries."""
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for row in rows:
        count += 1
        for name, value in row.items():
            sums[name] += value
    return {name: total / count for name, total in sums.items()} if count else {}


def macro(rows: Iterable[tuple[str, Mapping[str, float]]], fixed_groups: Sequence[str] | None = None) -> dict[str, float]:
    """Unweighted mean over groups of each group's micro mean; rows are (group, metrics).

    With `fixed_groups` (MMDocIR's protocol: its ten domains) the mean is over
    exactly those groups, and a group without any row counts 0 for every metric.
    """
    groups: dict[str, list[Mapping[str, float]]] = defaultdict(list)
    for group, row in rows:
        groups[group].append(row)
    if fixed_groups is None:
        return micro(micro(members) for members in groups.values())
    names = {name for members in groups.values() for row in members for name in row}
    return micro(micro(groups[group]) if groups.get(group) else dict.fromkeys(names, 0.0) for group in fixed_groups)
