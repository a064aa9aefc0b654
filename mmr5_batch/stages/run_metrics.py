"""The job's own metrics, through Ray's metrics API: on every node's Prometheus endpoint and the Ray dashboard's
Grafana, with no service of our own.

The actors count what their batches did (queries by status, dead letters by
reason class, windows, scored pairs, tokens, forced answers), time every
engine request and every query, and keep a gauge of the requests they have
in flight; the driver keeps the shards done and pending. Every metric
carries the run id, the model, its protocol and the pass (`rerank`, or
`score` for the two-model cascade's scorer; `job` on the driver). Ray
exports a metric `mmr5_x` as `ray_mmr5_x`; a counter also gets `_total`.
docs/metrics.md says what each one means and how to reach it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TAGS = ("run_id", "model", "protocol", "pass")
# Seconds: an engine request (one window or pair) and a query (all its windows), from a fraction of a second on
# a GPU to minutes for a long list on CPU.
REQUEST_SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300]
QUERY_SECONDS = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800]
# What a result row's own counters add to, per metric.
ROW_COUNTERS = {
    "windows": ("mmr5_windows", "Model prompts of MM-R5 windows answered."),
    "scored": ("mmr5_scored_pairs", "Query-document pairs a pointwise model judged."),
    "image_tokens": ("mmr5_image_tokens", "Image tokens sent to the engine."),
    "prompt_tokens": ("mmr5_prompt_tokens", "Prompt tokens the engine read (images included)."),
    "generated_tokens": ("mmr5_generated_tokens", "Tokens the engine generated."),
    "forced_answers": ("mmr5_forced_answers", "Windows whose reasoning hit the thinking budget and were made to answer."),
}


def reason_class(reason: str | None) -> str:
    """A dead letter's reason as a small set of classes (labels must not be free text): its first words."""
    if not reason:
        return "unknown"
    head = reason.split(":", 1)[0].strip().lower()
    for prefix, label in (
        ("engine rejected", "engine_rejected"),
        ("pointwise scoring", "engine_rejected"),
        ("window", "engine_rejected"),
        ("scorer", "scorer"),
        ("no usable candidate", "no_usable_candidate"),
        ("the rerank actor died", "actor_died"),
        ("the score actor died", "actor_died"),
        ("query_id appears", "repeated_query_id"),
        ("missing query_id", "missing_query_id"),
    ):
        if head.startswith(prefix):
            return label
    return "bad_row"


@dataclass
class StageMetrics:
    """One actor's metrics (its stage's tags set once)."""

    tags: dict[str, str]
    _metrics: dict[str, Any] = field(default_factory=dict, repr=False)
    in_flight: int = 0
    actor: str = "-"

    @classmethod
    def start(cls, run_id: str, model: str, protocol: str, stage: str) -> StageMetrics:
        from ray.util.metrics import Counter, Gauge, Histogram

        metrics = cls({"run_id": run_id or "-", "model": model, "protocol": protocol, "pass": stage})
        metrics._metrics = {
            "queries": Counter("mmr5_queries", "Queries finished, by status (error: a dead letter).", (*TAGS, "status")),
            "dead_letters": Counter("mmr5_dead_letters", "Dead letters, by the class of their reason.", (*TAGS, "reason")),
            "requests": Gauge("mmr5_requests_in_flight", "Engine requests an actor has in flight.", (*TAGS, "actor")),
            "request_seconds": Histogram("mmr5_request_seconds", "Seconds per engine request (a window or a pair).", REQUEST_SECONDS, TAGS),
            "query_seconds": Histogram("mmr5_query_seconds", "Seconds from a query's first request to its result.", QUERY_SECONDS, TAGS),
            **{name: Counter(metric, description, TAGS) for name, (metric, description) in ROW_COUNTERS.items()},
        }
        metrics.actor = _actor_id()
        return metrics

    def request_started(self) -> float:
        self.in_flight += 1
        self._metrics["requests"].set(self.in_flight, tags=self.tags | {"actor": self.actor})
        return time.monotonic()

    def request_done(self, started: float) -> None:
        self.in_flight -= 1
        self._metrics["requests"].set(self.in_flight, tags=self.tags | {"actor": self.actor})
        self._metrics["request_seconds"].observe(time.monotonic() - started, tags=self.tags)

    def query_done(self, seconds: float) -> None:
        self._metrics["query_seconds"].observe(seconds, tags=self.tags)

    def add(self, statuses: Mapping[str, int], dead_letter_reasons: Mapping[str, int], counters: Mapping[str, int]) -> None:
        """A batch's counts (stage_observer.BatchCounts): queries by status, dead letters by reason class, the rows'
        own counters."""
        for status, count in statuses.items():
            self._metrics["queries"].inc(count, tags=self.tags | {"status": status})
        for reason, count in dead_letter_reasons.items():
            self._metrics["dead_letters"].inc(count, tags=self.tags | {"reason": reason})
        for name, value in counters.items():
            if value:
                self._metrics[name].inc(value, tags=self.tags)


def _actor_id() -> str:
    import ray

    return ray.get_runtime_context().get_actor_id() or "-"


@dataclass
class JobMetrics:
    """The driver's: the job's shards by state, as each wave is committed."""

    tags: dict[str, str]
    _shards: Any = field(default=None, repr=False)

    @classmethod
    def start(cls, run_id: str, model: str, protocol: str) -> JobMetrics:
        from ray.util.metrics import Gauge

        metrics = cls({"run_id": run_id or "-", "model": model, "protocol": protocol, "pass": "job"})
        metrics._shards = Gauge("mmr5_shards", "The job's shards: done (this run and earlier), pending, bad.", (*TAGS, "state"))
        return metrics

    def shards(self, done: int, pending: int, bad: int) -> None:
        for state, count in (("done", done), ("pending", pending), ("bad", bad)):
            self._shards.set(count, tags=self.tags | {"state": state})
