"""The terminal a command was started from, and the log file beside it.

On the console: our own lines (what runs, its progress, the summary) and an
error as one line that names the log file. In the log file (by default
`$TMPDIR/mmr5-batch-UID/COMMAND-TIME-PID.log`, or `--log-file`): all of that
and everything else, including what Ray, Ray Data, vLLM and the actors print
and every traceback. `--verbose` keeps Ray's and the engines' output on the
console as well.

The default folder is the user's own: made owner-only, and refused when it
is not a folder the user owns (a link, another user's); the default file is
created new (never an existing file, never through a planted link). An
explicit `--log-file` is the user's choice and is opened as given. A log
that cannot be written as the command runs (a full disk, /dev/full) costs
only the log: the console says once that it is incomplete, and the exit
code and the summary are what they would have been.

How: the command's own output goes to a copy of the terminal's descriptors
taken at the start; the process's descriptors 1 and 2 then point at the log
file, so whatever writes to them (Ray's loggers, its C++ core, the actors'
output Ray forwards to the driver, Python warnings) lands there and nothing
is lost. A stream that is not the process's own descriptor (a test runner's
or a notebook's) is the console as it is.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mmr5_batch.job.progress import ProgressLines, ProgressReporter, RunProgress

PACKAGE = "mmr5_batch"
CONSOLE_FORMAT = logging.Formatter("%(asctime)s mmr5-batch: %(message)s", "%H:%M:%S")
FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class LogFileError(OSError):
    """The default log folder cannot be trusted (a link, another user's)."""


def user_log_folder() -> Path:
    """`$TMPDIR/mmr5-batch-UID`, made owner-only; refused when it is not a folder this user owns (checked without
    following a link), and made owner-only again when it is more open than that."""
    folder = Path(tempfile.gettempdir()) / f"mmr5-batch-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode):
        raise LogFileError(errno.EEXIST, "not a folder (a link or a file is in its place)", str(folder))
    if found.st_uid != os.getuid():
        raise LogFileError(errno.EPERM, f"the folder belongs to user {found.st_uid}, not to this one", str(folder))
    if stat.S_IMODE(found.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def open_default_log(command: str) -> tuple[Path, int]:
    """A new log file in the user's folder, named COMMAND-TIME-PID.log (with a number after it if that name is
    taken): created, never reused, never reached through a link."""
    folder = user_log_folder()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC
    for attempt in range(100):
        path = folder / f"{command}-{stamp}-{os.getpid()}{f'-{attempt}' if attempt else ''}.log"
        try:
            return path, os.open(path, flags, 0o600)
        except FileExistsError:
            continue
    raise LogFileError(errno.EEXIST, "every log name for this command and second is taken", str(folder))


def open_given_log(path: Path) -> int:
    """The user's `--log-file`, opened as given (appended to)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)


class Console:
    """A command's console and log file, from `with Console(...)` to its end (see the module docstring)."""

    def __init__(self, command: str, verbose: bool = False, log_file: str | None = None) -> None:
        self.command = command
        self.verbose = verbose
        self.given_log = Path(log_file) if log_file else None
        self.log_path: Path | str = self.given_log or f"$TMPDIR/mmr5-batch-{os.getuid()}/"
        self.log_incomplete = False
        self._log_fd: int | None = None
        self._streams: list[tuple[str, TextIO]] = []
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self._copies: list[TextIO] = []
        self._saved_fds: list[tuple[int, int]] = []
        self._file: logging.Handler | None = None
        self._restore_logging: list[tuple[logging.Logger, int, logging.Handler]] = []

    def __enter__(self) -> Console:
        try:
            if self.given_log is not None:
                self._log_fd = open_given_log(self.given_log)
            else:
                self.log_path, self._log_fd = open_default_log(self.command)
            self._file = _LogFileHandler(self, self._log_fd)
        except OSError as error:
            # No log file, no place for the rest: everything stays on the console, as with --verbose.
            where = self.given_log if self.given_log is not None else (error.filename or self.log_path)
            print(f"mmr5-batch: cannot write the log file {where} ({error.strerror or error}); all output stays here", file=sys.stderr)
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            self.verbose = True
        self.out, self.err = self._own_copy(sys.stdout, 1), self._own_copy(sys.stderr, 2)
        console = _ConsoleHandler(self)
        console.setFormatter(CONSOLE_FORMAT)
        # Ours on the console and (through the root logger) in the file; every other library's INFO in the file only.
        self._attach(logging.getLogger(PACKAGE), console, logging.INFO)
        if self._file is not None:
            self._file.setFormatter(FILE_FORMAT)
            self._attach(logging.getLogger(), self._file, logging.INFO)
        if not self.verbose:
            self._point_descriptors_at_the_log()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for name, stream in reversed(self._streams):
            stream.flush()
            setattr(sys, name, stream)
        self._streams.clear()
        for fd, saved in reversed(self._saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved_fds.clear()
        for logger, level, handler in reversed(self._restore_logging):
            logger.removeHandler(handler)
            logger.setLevel(level)
            handler.close()
        self._restore_logging.clear()
        for copy in self._copies:
            copy.close()
        self._copies.clear()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        self.out, self.err = sys.stdout, sys.stderr

    def write_log(self, fd: int, data: bytes) -> None:
        """Bytes straight to a descriptor of the log file; a failed write costs only the log."""
        try:
            _write_all(fd, data)
        except OSError as error:
            self.log_failed(error)

    def log_failed(self, error: BaseException | None) -> None:
        """A write to the log file failed: said once on the console; the command goes on."""
        if self.log_incomplete:
            return
        self.log_incomplete = True
        reason = getattr(error, "strerror", None) or error or "a write failed"
        print(f"mmr5-batch: the log file {self.log_path} is incomplete: cannot write it ({reason}); the command goes on", file=self.err, flush=True)

    # --- what commands print

    def print(self, text: str) -> None:
        """A command's result (the summary, a report) on the console's standard output."""
        print(text, file=self.out, flush=True)

    def announce_log(self) -> None:
        """Say where the log is, for the commands that start Ray (its output goes there unless --verbose)."""
        if self._file is None:
            return
        where = "Ray's, the engines' and the actors' output; --verbose shows it here" if not self.verbose else "this console's lines and the tracebacks"
        logging.getLogger(PACKAGE).info("log: %s (%s)", self.log_path, where)

    def error(self, line: str, error: BaseException | None = None, code: int = 2) -> int:
        """An error as one line on the console (naming the log file, where the traceback is) and the exit code."""
        if error is not None:
            self.log_traceback(line, error)
            if self.verbose and code == 1:
                traceback.print_exception(error, file=self.err)
        where = f" (log: {self.log_path})" if error is not None and self._file is not None else ""
        print(f"mmr5-batch: error: {line}{where}", file=self.err, flush=True)
        return code

    def log_traceback(self, line: str, error: BaseException) -> None:
        """The full traceback, in the log file only."""
        if self._file is not None:
            record = logging.LogRecord("mmr5_batch.cli", logging.ERROR, __file__, 0, line, None, (type(error), error, error.__traceback__))
            self._file.handle(record)

    def progress(self, interval: float) -> ProgressReporter:
        """A live bar on an interactive terminal (unless --verbose, where Ray's output shares it); else a line per interval."""
        if not self.verbose and _is_terminal(self.err):
            return ProgressBar(self.err)
        return ProgressLines(interval)

    # --- how

    def _own_copy(self, stream: TextIO, fd: int) -> TextIO:
        """The console stream for `stream`: a copy of descriptor `fd` when `stream` writes there (it is about to be
        pointed at the log), else `stream` itself."""
        try:
            writes_to_fd = stream.fileno() == fd
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            writes_to_fd = False
        if not writes_to_fd or self.verbose:
            return stream
        copy = open(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8", errors="backslashreplace")  # noqa: SIM115
        self._copies.append(copy)
        return copy

    def _attach(self, logger: logging.Logger, handler: logging.Handler, level: int) -> None:
        self._restore_logging.append((logger, logger.level, handler))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)

    def _point_descriptors_at_the_log(self) -> None:
        assert self._log_fd is not None
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name)
            stream.flush()
            self._saved_fds.append((fd, os.dup(fd)))
            os.dup2(self._log_fd, fd)
            if stream is not self.out and stream is not self.err:
                # Python-level writes to the process's own descriptor: to the log, a failed write costing only the log.
                self._streams.append((name, stream))
                setattr(sys, name, _LogStream(self, fd, stream))


class _LogFileHandler(logging.Handler):
    """Every log record into the log file's descriptor; a write that fails costs the record, never the command."""

    def __init__(self, console: Console, fd: int) -> None:
        super().__init__(logging.INFO)
        self.console = console
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.console.write_log(self.fd, line.encode("utf-8", errors="backslashreplace"))


class _LogStream(io.TextIOBase):
    """`sys.stdout` or `sys.stderr` while their descriptor is the log: text written straight to it, a failed write
    costing only the log."""

    def __init__(self, console: Console, fd: int, like: TextIO) -> None:
        self.console = console
        self.fd = fd
        self._encoding = getattr(like, "encoding", None) or "utf-8"
        self.buffer = _LogBytes(self)  # where a caller writes bytes, as to a real stream's

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only here, as on a real stream
        return self._encoding

    def fileno(self) -> int:
        return self.fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self.console.write_log(self.fd, text.encode(self._encoding, errors="backslashreplace"))
        return len(text)


class _LogBytes:
    """`_LogStream.buffer`: bytes written to the log as they are."""

    def __init__(self, stream: _LogStream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.console.write_log(self.stream.fd, bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _ConsoleHandler(logging.Handler):
    """Our log lines on the console; above a live bar, when one is drawn."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.console.err)
            self.console.err.flush()
        except Exception:
            self.handleError(record)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


class ProgressBar:
    """The run's progress as tqdm's live bar on an interactive terminal, redrawn every second."""

    interval = 1.0

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: Any = None

    def update(self, progress: RunProgress) -> None:
        if self.bar is None:
            # A terminal that reports no width (a pseudo-terminal nobody sized) would get a bar of none.
            sized = _columns(self.stream) > 0
            self.bar = tqdm(total=progress.queries_total, unit="query", desc="reranking", file=self.stream, dynamic_ncols=sized, ncols=None if sized else 100)
        self.bar.update(progress.queries_done - self.bar.n)
        dead = f", {progress.dead_letters} dead letters" if progress.dead_letters else ""
        self.bar.set_postfix_str(f"{progress.shards_done}/{progress.shards_total} shards{dead}")

    def close(self, progress: RunProgress) -> None:
        self.update(progress)
        self.bar.close()
