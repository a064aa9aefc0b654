"""The `mmr5-batch` command line: a thin caller of the library (see commands.py for the exit codes)."""

from __future__ import annotations

from collections.abc import Sequence

from mmr5_batch.cli.arguments import parse_args
from mmr5_batch.cli.commands import COMMANDS
from mmr5_batch.cli.report import log_to_stderr


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_to_stderr()
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
