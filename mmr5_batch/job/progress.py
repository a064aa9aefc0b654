"""The run's progress as a person watches it: queries and shards done of this run's total, queries per second, the
time left, dead letters so far.

While the pipeline runs, a thread of the driver (`ProgressWatch`) asks the
run's tally (stages/progress_tally.py) for its totals every
`reporter.interval` seconds and hands a `RunProgress` to the reporter; once
more when the run ends, from what the run wrote when it has that (the tally
is a live view, which a stopped or dead tally leaves behind). A look waits at
most `LOOK_SECONDS` for the tally's answer and never asks again while one is
awaited, so a tally that does not answer (stopped, dead, its node gone)
holds up the end of a run by at most that. The default reporter logs one line per interval
(`execution.progress_seconds`), which is what a cron job, `ray job submit` or
CI shows; the command line draws a live bar instead when its terminal is
interactive (cli/console.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from mmr5_batch.stages.progress_tally import ProgressFeed, start_tally

log = logging.getLogger(__name__)

# The longest a look at the tally waits: what the progress line may add to the end of a run.
LOOK_SECONDS = 2.0


@dataclass(frozen=True)
class RunProgress:
    """One look at the run: this run's queries and shards (earlier runs' are not in the totals)."""

    queries_total: int
    queries_done: int
    shards_total: int
    shards_done: int
    dead_letters: int  # so far: the planner's (repeated or missing ids) and the model stage's
    seconds: float  # since the pipeline started

    @property
    def rate(self) -> float:
        """Queries per second since the pipeline started (the engines' start-up included)."""
        return self.queries_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """At the rate so far; None until a query is done."""
        if self.queries_done <= 0 or self.rate <= 0:
            return None
        return max(self.queries_total - self.queries_done, 0) / self.rate

    def line(self) -> str:
        share = f" ({100 * self.queries_done / self.queries_total:.0f}%)" if self.queries_total else ""
        left = self.seconds_left
        eta = "ETA -" if left is None else f"ETA {duration(left)}"
        return (
            f"progress: {self.queries_done:,} of {self.queries_total:,} queries{share}, {self.shards_done:,} of {self.shards_total:,} shards, "
            f"{self.rate:.2f} queries/s, {eta}, {self.dead_letters:,} dead letter{'s' if self.dead_letters != 1 else ''}"
        )


def duration(seconds: float) -> str:
    """3h 05m, 12m 30s, 45s."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class ProgressReporter(Protocol):
    """Shows the run's progress: `update` every `interval` seconds while it runs, `close` once with the last look."""

    interval: float

    def update(self, progress: RunProgress) -> None: ...

    def close(self, progress: RunProgress) -> None: ...


class ProgressLines:
    """One log line per interval, and one at the end (unless the last one already says it): a console that is not a
    terminal, or a job's log."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._shown: tuple[int, int, int] | None = None

    def update(self, progress: RunProgress) -> None:
        self._shown = (progress.queries_done, progress.shards_done, progress.dead_letters)
        log.info(progress.line())

    def close(self, progress: RunProgress) -> None:
        if (progress.queries_done, progress.shards_done, progress.dead_letters) != self._shown:
            self.update(progress)


class ProgressWatch:
    """The run's tally and the driver's thread that turns its totals into `RunProgress` for the reporter, from
    `start` to `stop`."""

    def __init__(self, reporter: ProgressReporter, pending: dict[str, int], dead_letters: int = 0) -> None:
        self.reporter = reporter
        self.pending = pending  # each shard's path -> its queries to run
        self.queries = sum(pending.values())
        self.planner_dead_letters = dead_letters
        self.tally: Any = None
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmr5-progress", daemon=True)
        self._last = RunProgress(self.queries, 0, len(pending), 0, dead_letters, 0.0)
        self._asked: Any = None  # the tally's answer still awaited (one question at a time)
        self._looking = threading.Lock()  # the thread's looks and a caller's share `_asked`

    def start(self) -> ProgressWatch:
        self.tally = start_tally(self.pending)
        self.started = time.monotonic()
        self._thread.start()
        return self

    @property
    def feed(self) -> ProgressFeed:
        """What the rerank pool's actors tell the tally through."""
        return ProgressFeed(self.tally)

    def stop(self, written: tuple[int, int, int] | None = None) -> RunProgress:
        """Stop the thread and show the last look: `written` (this run's queries written, shards complete and the
        model stage's dead letters, from what the run wrote) where the run has it, else the tally's totals; then let
        the tally go."""
        import ray

        self._stop.set()
        self._thread.join()
        if written is None:
            progress = self.look()
        else:
            queries, shards, dead_letters = written
            progress = self._progress(queries, shards, dead_letters)
        self.reporter.close(progress)
        try:
            ray.kill(self.tally)
        except Exception as error:  # gone already: nothing to let go
            log.debug("the progress tally could not be stopped: %s", error)
        return progress

    def look(self) -> RunProgress:
        """The tally's totals now, waiting at most LOOK_SECONDS (the last look when the tally does not answer: the
        progress line never fails nor holds up a run)."""
        with self._looking:
            return self._look()

    def _look(self) -> RunProgress:
        import ray

        try:
            if self._asked is None:
                self._asked = self.tally.totals.remote()
            ready, _ = ray.wait([self._asked], timeout=LOOK_SECONDS)
            if not ready:
                return self._last
            asked, self._asked = self._asked, None
            totals = ray.get(asked)
        except Exception as error:
            self._asked = None
            log.debug("no progress from the tally: %s", error)
            return self._last
        self._last = self._progress(totals["queries"], totals["shards"], totals["dead_letters"])
        return self._last

    def _progress(self, queries: int, shards: int, dead_letters: int) -> RunProgress:
        return RunProgress(
            queries_total=self.queries,
            queries_done=min(queries, self.queries),
            shards_total=len(self.pending),
            shards_done=min(shards, len(self.pending)),
            dead_letters=self.planner_dead_letters + dead_letters,
            seconds=time.monotonic() - self.started,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.reporter.interval):
            self.reporter.update(self.look())
