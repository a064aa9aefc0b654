"""The `mmr5-batch` command line: a thin caller of the library (see commands.py for the exit codes, console.py for
what goes on the console and what into the log file)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mmr5_batch.cli.arguments import parse_args
from mmr5_batch.cli.commands import COMMANDS
from mmr5_batch.cli.console import Console
from mmr5_batch.errors import error_line


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with Console(args.command, verbose=args.verbose, log_file=args.log_file) as console, _stopping_the_ray_it_starts():
        try:
            return COMMANDS[args.command](args, console)
        except Exception as error:  # a bug: one line, the traceback in the log file
            return console.error(f"unexpected {error_line(error)}", error, code=1)


@contextmanager
def _stopping_the_ray_it_starts() -> Iterator[None]:
    """A Ray the command started is stopped while the console still sends Ray's last words to the log; one that was
    running before (a notebook's, a test module's) is left as it was."""
    ray = sys.modules.get("ray")
    running_before = ray is not None and ray.is_initialized()
    try:
        yield
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and not running_before and ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
