"""An actor's one observer: each batch's rows counted once, the same counts to the metrics and to the tally."""

from __future__ import annotations

from mmr5_batch.core.rows import PreparedRow, ResultRow
from mmr5_batch.stages.stage_observer import BatchCounts, StageObserver


class Recorded:
    """Stands in for Ray's metrics and the tally actor's handle (the boundary): what each was told."""

    def __init__(self) -> None:
        self.added: list[tuple] = []
        self.told: list[tuple] = []
        self.requests = 0

    def add(self, statuses, reasons, counters) -> None:
        self.added.append((dict(statuses), dict(reasons), dict(counters)))

    def tell(self, by_shard, dead_letters) -> None:
        self.told.append((dict(by_shard), dead_letters))

    def request_started(self) -> float:
        self.requests += 1
        return 0.0

    def request_done(self, started: float) -> None:
        self.requests -= 1

    def query_done(self, seconds: float) -> None:
        pass


ROWS = [
    ResultRow(query_id="a", status="ok", windows=2, prompt_tokens=100, generated_tokens=10, source_path="s0"),
    ResultRow(query_id="b", status="repaired", windows=1, prompt_tokens=50, source_path="s0"),
    ResultRow(query_id="c", status="error", reason="no usable candidate: d0: undecodable image", source_path="s1"),
    ResultRow(query_id="d", status=None, reason="window 1: engine rejected the request: too long", source_path=None),
]


def test_a_batch_is_counted_once_for_both_listeners():
    counts = BatchCounts.of(ROWS)
    assert counts.statuses == {"ok": 1, "repaired": 1, "error": 2}
    assert counts.dead_letter_reasons == {"no_usable_candidate": 1, "engine_rejected": 1}
    assert counts.counters["windows"] == 3 and counts.counters["prompt_tokens"] == 150 and counts.counters["generated_tokens"] == 10
    assert counts.shards == {"s0": 2, "s1": 1, None: 1} and counts.dead_letters == 2
    listener = Recorded()
    observer = StageObserver(listener, listener)  # type: ignore[arg-type]
    assert observer.batch_done(ROWS) == counts
    assert listener.added == [(dict(counts.statuses), dict(counts.dead_letter_reasons), dict(counts.counters))]
    assert listener.told == [({"s0": 2, "s1": 1, None: 1}, 2)]
    observer.request_done(observer.request_started())
    assert listener.requests == 0


def test_the_scorers_prepared_rows_count_nothing_and_tell_no_tally():
    listener = Recorded()
    observer = StageObserver(listener, listener)  # type: ignore[arg-type]
    counts = observer.batch_done([PreparedRow(query_id="a", scored=3, scorer_prompt_tokens=40)])
    assert counts == BatchCounts() and listener.told == []
    assert listener.added == [({}, {}, {})]
