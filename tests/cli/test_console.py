"""What a person sees on the console of `mmr5-batch rerank`: our own lines within a budget stated here, Ray's and the
engines' output only in the log file the console names.

Each run is the real command in its own process (as cron, CI or a terminal
runs it), starting its own local Ray; the scripted test engine stands in for
the model. The budget of a run that works: the log line, three lines of what
runs (version, input, actors), the progress (a live bar on a terminal; else
at most one line per `--progress-seconds`, and one at the end) and the
summary table; an early failure: the log line and the one error line.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmr5_batch.cli.report import format_summary
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
from mmr5_batch.devtools.demo_data import write_demo_dataset
from tests.conftest import grey_jpeg

WHAT_RUNS = 3  # "mmr5-batch VERSION from PATH", "input ...: N shards ...", "rerank actors: ..."
OUR_LINE = re.compile(r"^\d\d:\d\d:\d\d mmr5-batch: ")
PROGRESS_LINE = re.compile(
    r"^\d\d:\d\d:\d\d mmr5-batch: progress: (?P<done>[\d,]+) of (?P<total>[\d,]+) queries \(\d+%\), (?P<shards>\d+) of (?P<all_shards>\d+) shards, "
    r"[\d.]+ queries/s, ETA [^,]+, (?P<dead>\d+) dead letters?$"
)
# What must never reach the console without --verbose: Ray's and Ray Data's log lines, actors' forwarded output, tracebacks.
CHATTER = ("INFO", "WARNING", "pid=", "Traceback", "(raylet)", "streaming_executor", "core_worker")


@dataclass
class Console:
    code: int
    lines: list[str]  # as the terminal shows them at the end (a redrawn bar: its last state)
    seconds: float


def run_command(args: list[str], terminal: bool = False) -> Console:
    """`python -m mmr5_batch.cli ARGS` in its own process, on a pseudo-terminal or on pipes (cron, CI, ray job submit)."""
    command = [sys.executable, "-m", "mmr5_batch.cli", *args]
    environment = {**os.environ, "RAY_ADDRESS": ""}
    started = time.monotonic()
    if not terminal:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
        return Console(done.returncode, (done.stdout + done.stderr).splitlines(), time.monotonic() - started)
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=child, stderr=child)
    os.close(child)
    received = bytearray()
    while select.select([main], [], [], 900)[0]:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(main)
    code = process.wait(timeout=60)
    text = received.decode(errors="replace").replace("\r\n", "\n")
    # A line redrawn with carriage returns shows its last state.
    # What the terminal shows: colour codes are invisible (colorama resets the colours at exit), a line redrawn with
    # carriage returns shows its last state (so not splitlines(), which splits at them).
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).removesuffix("\n").split("\n")
    return Console(code, [line.rsplit("\r", 1)[-1] for line in lines], time.monotonic() - started)


def assert_quiet(lines: list[str]) -> None:
    noisy = [line for line in lines if any(word in line for word in CHATTER)]
    assert not noisy, noisy


def assert_summary_printed(lines: list[str], output: Path) -> list[str]:
    summary = json.loads((output / "summary.json").read_text())
    table = format_summary(summary).splitlines()
    start = lines.index(table[0])
    assert lines[start : start + len(table)] == table
    return table


def test_a_clean_run_on_a_terminal_shows_our_lines_a_live_bar_and_the_summary(tmp_path):
    write_demo_dataset(tmp_path / "in", queries=12, candidates=5, shards=3)
    log = tmp_path / "rerank.log"
    args = ["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "scripted-test", "--batch-size", "2"]
    console = run_command([*args, "--log-file", str(log)], terminal=True)
    assert console.code == 0, console.lines
    table = assert_summary_printed(console.lines, tmp_path / "out")
    assert_quiet(console.lines)
    ours = [line for line in console.lines if OUR_LINE.match(line)]
    assert ours[0].endswith(f"mmr5-batch: log: {log} (Ray's, the engines' and the actors' output; --verbose shows it here)")
    assert " input " in ours[2] and "3 shards, 3 to run" in ours[2]
    [bar] = [line for line in console.lines if line.startswith("reranking")]
    assert "100%" in bar and "12/12" in bar and "3/3 shards" in bar and "dead letters" not in bar
    budget = 1 + WHAT_RUNS + 1 + len(table)
    assert len(console.lines) <= budget, console.lines
    # The rest is in the log file: Ray Data's own lines, and ours.
    written = log.read_text()
    assert "Execution plan of Dataset" in written and "mmr5_batch.job.runner: input " in written


def write_input_with_rejections(folder: Path) -> None:
    """Eight queries in two shards; the scripted engine refuses two of them (dead letters)."""
    folder.mkdir(parents=True)
    rows = [
        {
            "query_id": f"q{index}",
            "query": "which page?" + (" #reject" if index in (2, 5) else ""),
            "candidates": [
                {"doc_id": f"d{doc}", "image": grey_jpeg(40 * doc + 20), "image_uri": None, "text": None, "score": 1.0 - doc / 10} for doc in range(4)
            ],
        }
        for index in range(8)
    ]
    for shard in range(2):
        pq.write_table(pa.Table.from_pylist(rows[shard::2], schema=GROUPED_INPUT_SCHEMA), folder / f"part-{shard}.parquet")


def test_a_run_with_dead_letters_off_a_terminal_prints_a_progress_line_per_interval(tmp_path):
    write_input_with_rejections(tmp_path / "in")
    interval = 3.0
    args = ["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "scripted-test", "--batch-size", "2"]
    console = run_command([*args, "--max-error-rate", "0.5", "--progress-seconds", str(interval)])
    assert console.code == 0, console.lines
    table = assert_summary_printed(console.lines, tmp_path / "out")
    assert "  error                    2" in table
    assert_quiet(console.lines)
    progress = [PROGRESS_LINE.match(line) for line in console.lines if " progress: " in line]
    assert progress and all(progress), console.lines
    last = progress[-1]
    assert last is not None and (last["done"], last["total"], last["shards"], last["all_shards"], last["dead"]) == ("8", "8", "2", "2", "2")
    assert len(progress) <= console.seconds / interval + 1
    budget = 1 + WHAT_RUNS + len(progress) + len(table)
    assert len(console.lines) <= budget, console.lines


@pytest.fixture
def one_shard(tmp_path):
    write_demo_dataset(tmp_path / "in", queries=2, candidates=3, shards=1)
    return tmp_path


def test_an_output_that_cannot_be_written_is_two_lines_and_the_traceback_is_in_the_log(one_shard):
    (one_shard / "a-file").write_text("not a folder")
    log = one_shard / "rerank.log"
    args = ["rerank", "--input", str(one_shard / "in"), "--output", str(one_shard / "a-file" / "out"), "--backend", "scripted-test"]
    console = run_command([*args, "--log-file", str(log)])
    assert console.code == 2
    assert len(console.lines) == 2, console.lines
    assert console.lines[0].endswith(f"mmr5-batch: log: {log} (Ray's, the engines' and the actors' output; --verbose shows it here)")
    assert console.lines[1].startswith("mmr5-batch: error: cannot write to output ") and console.lines[1].endswith(f"(log: {log})")
    assert "Traceback" in log.read_text() and "JobError" in log.read_text()


def test_an_engine_this_python_lacks_is_two_lines_before_ray_starts(one_shard):
    from importlib.util import find_spec

    if find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")
    log = one_shard / "rerank.log"
    args = ["rerank", "--input", str(one_shard / "in"), "--output", str(one_shard / "out"), "--backend", "vllm", "--device", "cpu"]
    console = run_command([*args, "--log-file", str(log)])
    assert console.code == 2
    assert len(console.lines) == 2 and console.lines[1].startswith("mmr5-batch: error: the vllm backend needs vllm"), console.lines
    assert "Started a local Ray instance" not in log.read_text() and not (one_shard / "out").exists()


def test_a_bad_setting_is_one_line(one_shard):
    console = run_command(["rerank", "--input", str(one_shard / "in"), "--output", str(one_shard / "out"), "--window", "3", "--stride", "3"])
    assert console.code == 2
    # No log to name: nothing ran.
    assert console.lines == ["mmr5-batch: error: invalid job config: ranking: stride (3) must be smaller than window (3) so windows overlap"]


def test_a_bug_is_one_line_and_its_traceback_is_in_the_log(one_shard, monkeypatch, capsys):
    from mmr5_batch.cli.main import main
    from mmr5_batch.job import runner

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(runner, "run_job", broken)
    log = one_shard / "rerank.log"
    code = main(["rerank", "--input", str(one_shard / "in"), "--output", str(one_shard / "out"), "--log-file", str(log)])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert [line for line in err if "error" in line] == [f"mmr5-batch: error: unexpected KeyError: 'a bug' (log: {log})"]
    assert "Traceback" in log.read_text() and "raise KeyError" in log.read_text()


def test_verbose_shows_a_bugs_traceback_on_the_console_as_well(one_shard, monkeypatch, capsys):
    from mmr5_batch.cli.main import main
    from mmr5_batch.job import runner

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(runner, "run_job", broken)
    log = one_shard / "rerank.log"
    code = main(["rerank", "--input", str(one_shard / "in"), "--output", str(one_shard / "out"), "--log-file", str(log), "--verbose"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and err.rstrip().endswith(f"mmr5-batch: error: unexpected KeyError: 'a bug' (log: {log})")


def test_a_log_file_that_cannot_be_written_leaves_everything_on_the_console(one_shard, capsys):
    from mmr5_batch.cli.main import main

    (one_shard / "a-file").write_text("not a folder")
    log = one_shard / "a-file" / "rerank.log"
    code = main(["rerank", "--input", str(one_shard / "in"), "--output", str(one_shard / "out"), "--window", "3", "--stride", "3", "--log-file", str(log)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[0].startswith(f"mmr5-batch: cannot write the log file {log} (") and err[0].endswith("); all output stays here")
    assert err[1:] == ["mmr5-batch: error: invalid job config: ranking: stride (3) must be smaller than window (3) so windows overlap"]


def test_a_log_on_a_full_device_costs_only_the_log(one_shard):
    """`--log-file /dev/full`: every write to the log fails; the run still ends 0 with its summary, and the console
    says once that the log is incomplete."""
    args = ["rerank", "--input", str(one_shard / "in"), "--output", str(one_shard / "out"), "--backend", "scripted-test", "--window", "3", "--stride", "2"]
    console = run_command([*args, "--log-file", "/dev/full"])
    assert console.code == 0, console.lines
    assert_summary_printed(console.lines, one_shard / "out")
    incomplete = [line for line in console.lines if "is incomplete" in line]
    assert incomplete == ["mmr5-batch: the log file /dev/full is incomplete: cannot write it (No space left on device); the command goes on"]
    assert_quiet(console.lines)


@pytest.fixture
def own_temp_dir(tmp_path, monkeypatch):
    """This test's own $TMPDIR, and a fixed time and pid, so the default log's name is known in advance."""
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    monkeypatch.setattr(time, "strftime", lambda pattern, when=None: "20261207T000000Z")
    return temp / f"mmr5-batch-{os.getuid()}"


def tiny_model(capsys, folder: Path) -> tuple[int, list[str]]:
    from mmr5_batch.cli.main import main

    code = main(["tiny-model", str(folder)])
    return code, capsys.readouterr().err.splitlines()


def test_the_default_log_is_new_owner_only_and_never_through_a_planted_link(own_temp_dir, tmp_path, capsys):
    own_temp_dir.mkdir(mode=0o755)  # made open by someone: made owner-only again
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (own_temp_dir / "tiny-model-20261207T000000Z-4242.log").symlink_to(victim)
    code, err = tiny_model(capsys, tmp_path / "model")
    assert code == 0, err
    assert victim.read_text() == "precious\n"
    assert (own_temp_dir / "tiny-model-20261207T000000Z-4242-1.log").is_file()
    assert own_temp_dir.stat().st_mode & 0o777 == 0o700
    assert (own_temp_dir / "tiny-model-20261207T000000Z-4242-1.log").stat().st_mode & 0o777 == 0o600


def test_a_log_folder_that_is_a_link_is_refused_and_everything_stays_on_the_console(own_temp_dir, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    own_temp_dir.symlink_to(elsewhere)
    code, err = tiny_model(capsys, tmp_path / "model")
    assert code == 0
    assert err[0] == f"mmr5-batch: cannot write the log file {own_temp_dir} (not a folder (a link or a file is in its place)); all output stays here"
    assert list(elsewhere.iterdir()) == []


def test_an_explicit_log_file_is_the_users_choice_and_is_followed(tmp_path, capsys):
    from mmr5_batch.cli.main import main

    target = tmp_path / "real.log"
    (tmp_path / "link.log").symlink_to(target)
    assert main(["tiny-model", str(tmp_path / "model"), "--log-file", str(tmp_path / "link.log")]) == 0
    assert target.exists()
