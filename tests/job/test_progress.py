"""The progress line: what it says at the start, midway and at the end, the tally behind it, and a tally that
stops answering (the one test with a Ray)."""

from __future__ import annotations

import os
import signal
import threading
import time

from mmr5_batch.job.progress import LOOK_SECONDS, ProgressLines, ProgressWatch, RunProgress, duration
from mmr5_batch.stages.progress_tally import ProgressTally


def test_the_line_says_how_far_how_fast_how_long_and_how_many_dead_letters():
    midway = RunProgress(queries_total=50_000, queries_done=1_200, shards_total=120, shards_done=3, dead_letters=2, seconds=300.0)
    assert midway.rate == 4.0
    assert midway.line() == "progress: 1,200 of 50,000 queries (2%), 3 of 120 shards, 4.00 queries/s, ETA 3h 23m, 2 dead letters"
    start = RunProgress(50, 0, 4, 0, 0, 10.0)
    assert start.seconds_left is None and start.line() == "progress: 0 of 50 queries (0%), 0 of 4 shards, 0.00 queries/s, ETA -, 0 dead letters"
    end = RunProgress(50, 50, 4, 4, 1, 25.0)
    assert end.line() == "progress: 50 of 50 queries (100%), 4 of 4 shards, 2.00 queries/s, ETA 0s, 1 dead letter"


def test_durations_read_as_a_person_says_them():
    assert [duration(value) for value in (45, 750, 11_100, 59.6)] == ["45s", "12m 30s", "3h 05m", "1m 00s"]


def test_the_tally_counts_a_shard_done_once_its_queries_are():
    tally = ProgressTally({"a.parquet": 3, "b.parquet": 2})
    tally.add({"a.parquet": 2, "b.parquet": 2}, dead_letters=1)
    assert tally.totals() == {"queries": 4, "dead_letters": 1, "shards": 1}
    tally.add({"a.parquet": 1}, dead_letters=0)
    # A batch told twice (retried after its actor died) counts again, but a shard is done once.
    tally.add({"a.parquet": 1, None: 2}, dead_letters=0)
    assert tally.totals() == {"queries": 8, "dead_letters": 1, "shards": 2}


def test_the_last_line_is_not_repeated_when_the_last_interval_already_said_it(caplog):
    lines = ProgressLines(interval=30)
    with caplog.at_level("INFO", logger="mmr5_batch.job.progress"):
        lines.update(RunProgress(50, 20, 4, 1, 0, 10.0))
        lines.update(RunProgress(50, 50, 4, 4, 0, 20.0))
        lines.close(RunProgress(50, 50, 4, 4, 0, 20.5))
        lines.close(RunProgress(50, 50, 4, 4, 1, 21.0))  # a dead letter since: said
    assert [record.getMessage()[:30] for record in caplog.records] == ["progress: 20 of 50 queries (40"] + ["progress: 50 of 50 queries (10"] * 2
    assert caplog.records[-1].getMessage().endswith("1 dead letter")


class Shown:
    interval = 0.1

    def __init__(self, wanted: int) -> None:
        self.updates: list[RunProgress] = []
        self.closed: list[RunProgress] = []
        self.wanted = wanted
        self.seen = threading.Event()  # an update has shown `wanted` queries

    def update(self, progress: RunProgress) -> None:
        self.updates.append(progress)
        if progress.queries_done >= self.wanted:
            self.seen.set()

    def close(self, progress: RunProgress) -> None:
        self.closed.append(progress)


def test_a_stopped_tally_holds_up_the_end_by_a_few_seconds_and_the_last_line_is_what_was_written(ray_session):
    """SIGSTOP on the tally (a frozen node): each look waits at most LOOK_SECONDS, the end does not wait on it, and
    the last line says what the run wrote (before: a 60 s wait per look, twice, and "0 of N" at the end)."""
    shown = Shown(wanted=3)
    watch = ProgressWatch(shown, {"a.parquet": 3, "b.parquet": 2}, dead_letters=1).start()
    watch.feed.tell({"a.parquet": 3}, 0)
    pid = ray_session.get(watch.tally.__ray_call__.remote(lambda tally: os.getpid()))
    assert shown.seen.wait(timeout=300)  # the watch's thread has had the tally's answer
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = watch.look()
        assert frozen.queries_done == 3  # the last answer, not a wait
        started = time.monotonic()
        last = watch.stop(written=(5, 2, 1))
        assert time.monotonic() - started < 10 * LOOK_SECONDS
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (last.queries_done, last.shards_done, last.dead_letters) == (5, 2, 2)
    assert shown.closed == [last]
