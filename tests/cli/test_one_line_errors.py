"""Errors raised inside Ray tasks reach the console as one line: our own errors, and a full disk under a write task."""

from __future__ import annotations

import errno

import pytest

from mmr5_batch.cli.commands import one_line_cause
from mmr5_batch.errors import JobError


class RayTaskFailed(Exception):
    """Stands in for Ray's wrapper of an exception raised in a task: the original is its `cause`."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"ray::Write() (pid=1)\nTraceback ...\n{type(cause).__name__}: {cause}")
        self.cause = cause


def test_a_full_disk_under_a_write_task_is_one_line():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert one_line_cause(RayTaskFailed(full)).startswith("cannot write the results: the disk is full (No space left on device)")
    # Also when only the text of the remote error survives.
    assert "disk is full" in one_line_cause(RuntimeError("ray::Write()\nOSError: [Errno 28] No space left on device: '/out/ranked/x'"))


def test_our_own_errors_come_through_and_others_do_not():
    assert one_line_cause(RayTaskFailed(JobError("no GPU available: ..."))) == "no GPU available: ..."
    assert one_line_cause(RayTaskFailed(ValueError("a bug"))) is None


def test_an_unwritable_output_stops_the_job_before_planning_starts_ray(tmp_path, monkeypatch):
    from mmr5_batch.job import runner

    def no_planning(*args, **kwargs):
        raise AssertionError("planning (and Ray) must not start for an output that cannot be written")

    monkeypatch.setattr(runner, "plan_input", no_planning)
    (tmp_path / "in").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(JobError, match="cannot write to output .*a-file/out: .*a-file is a file, not a folder"):
        runner.run_job(input=str(tmp_path / "in"), output=str(tmp_path / "a-file" / "out"), backend="scripted-test")


def test_an_engine_this_python_cannot_import_stops_a_local_job_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    """Where the actors will run in the driver's Python (a Ray of the job's own), a missing backend is found there,
    before Ray starts: one line, exit 2, instead of an actor's traceback after the model's start-up."""
    from importlib.util import find_spec

    from mmr5_batch.cli.main import main
    from mmr5_batch.job import runner

    if find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")

    def no_planning(*args, **kwargs):
        raise AssertionError("planning (and Ray) must not start for an engine that cannot be imported")

    monkeypatch.setattr(runner, "plan_input", no_planning)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "in").mkdir()
    code = main(["rerank", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--backend", "vllm", "--device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("mmr5-batch: error: the vllm backend needs vllm, which this Python cannot import; install with")
    assert not (tmp_path / "out").exists()
