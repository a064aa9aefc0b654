"""The progress line: what it says at the start, midway and at the end, and the tally behind it (no Ray)."""

from __future__ import annotations

from mmr5_batch.job.progress import ProgressLines, RunProgress, duration
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
