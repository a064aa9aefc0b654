"""One observer per model stage: what an actor's batches did, counted once, for Ray's metrics and the progress tally.

The scheduler tells it of every engine request and query (it is the
`RequestObserver` the actor hands the scheduler); the actor tells it of each
finished batch, whose rows are counted once (`BatchCounts`) and the counts go
to both listeners: the stage's metrics (run_metrics.py) and, in the job's
rerank stage, the progress tally (progress_tally.py). The run summary does
not come from here: it counts what was written (job/accounting.py), which is
what exactly-once accounting needs, while these are live views that a retried
batch may count twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from mmr5_batch.core.rows import PreparedRow, ResultRow
from mmr5_batch.core.vocabulary import ERROR
from mmr5_batch.stages.progress_tally import ProgressFeed
from mmr5_batch.stages.run_metrics import ROW_COUNTERS, StageMetrics, reason_class


@dataclass(frozen=True)
class BatchCounts:
    """What one batch's result rows add up to: queries by status, dead letters by reason class, the rows' own
    counters (ROW_COUNTERS), and queries per source shard. Prepared rows (the two-model cascade's scorer) count
    nothing: their counts ride on them into the rerank stage, whose result rows add them up once."""

    statuses: Counter[str] = field(default_factory=Counter)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    shards: Counter[str | None] = field(default_factory=Counter)

    @classmethod
    def of(cls, rows: Iterable[ResultRow | PreparedRow]) -> BatchCounts:
        counts = cls()
        for row in rows:
            if isinstance(row, PreparedRow):
                continue
            status = row.status or ERROR
            counts.statuses[status] += 1
            counts.shards[row.source_path] += 1
            if status == ERROR:
                counts.dead_letter_reasons[reason_class(row.reason)] += 1
            for name in ROW_COUNTERS:
                counts.counters[name] += getattr(row, name) or 0
        return counts

    @property
    def dead_letters(self) -> int:
        return self.statuses[ERROR]


@dataclass
class StageObserver:
    """The actor's one observer: its metrics, and the progress tally where the job gave one."""

    metrics: StageMetrics
    progress: ProgressFeed | None = None

    def request_started(self) -> float:
        return self.metrics.request_started()

    def request_done(self, started: float) -> None:
        self.metrics.request_done(started)

    def query_done(self, seconds: float) -> None:
        self.metrics.query_done(seconds)

    def batch_done(self, rows: Iterable[ResultRow | PreparedRow]) -> BatchCounts:
        counts = BatchCounts.of(rows)
        self.metrics.add(counts.statuses, counts.dead_letter_reasons, counts.counters)
        if self.progress is not None and counts.shards:
            self.progress.tell(dict(counts.shards), counts.dead_letters)
        return counts
