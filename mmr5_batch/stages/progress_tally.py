"""Queries finished so far, told by the model stage as each batch ends, for the driver's progress line.

One small actor per run (no CPU of its own). The run's last model stage
(the rerank pool) tells it, after every batch, how many queries each source
shard finished and how many of them were dead letters; the driver asks it for
the totals at its own pace. Telling is fire-and-forget: a batch never waits
on it. A batch that finished, was told, and is retried because its actor
died before handing it back is counted twice: the progress line is a view
(shown at most at its total); the run summary counts what was written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any


class ProgressTally:
    """The actor's state: queries finished per shard and dead letters, against each shard's queries to run."""

    def __init__(self, pending: dict[str, int]) -> None:
        self.pending = dict(pending)
        self.finished: Counter[str | None] = Counter()  # None: rows without a shard (a dataset not read by the job)
        self.dead_letters = 0
        self.shards_done = 0

    def add(self, by_shard: dict[str | None, int], dead_letters: int) -> None:
        for shard, count in by_shard.items():
            before = self.finished[shard]
            self.finished[shard] = before + count
            wanted = self.pending.get(shard) if shard is not None else None
            if wanted is not None and before < wanted <= before + count:
                self.shards_done += 1
        self.dead_letters += dead_letters

    def totals(self) -> dict[str, int]:
        return {"queries": sum(self.finished.values()), "dead_letters": self.dead_letters, "shards": self.shards_done}


def start_tally(pending: dict[str, int]) -> Any:
    """A tally actor for one run (Ray must be up): `pending` is each shard's path -> its queries to run."""
    import ray

    return ray.remote(num_cpus=0)(ProgressTally).remote(pending)


@dataclass(frozen=True)
class ProgressFeed:
    """What a model actor tells the tally after a batch: its rows' shards (the read stage's path column) and dead letters."""

    tally: Any  # the ProgressTally actor's handle

    def tell(self, by_shard: dict[str | None, int], dead_letters: int) -> None:
        """A batch's finished queries per source shard and its dead letters (stage_observer.BatchCounts)."""
        self.tally.add.remote(by_shard, dead_letters)
