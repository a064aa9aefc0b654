"""One function per subcommand: each calls the library, prints through the console, and turns its errors into one
line and an exit code.

Exit codes: 0 done; 2 the job could not start or failed as a whole (bad
config, missing input, no engine, a stage contract broken), with one line on
the console saying why; 3 the job ran and wrote its outputs but too many queries
or shards failed (`--max-error-rate`), or a shard is not fully accounted
for; 1 an unexpected error (a bug: one line on the console, the traceback in
the log file it names).
"""

from __future__ import annotations

import argparse
import errno
import json

from mmr5_batch.cli.arguments import config_from_args
from mmr5_batch.cli.console import Console
from mmr5_batch.cli.report import format_summary, prompt_suffix_note, show_prompt
from mmr5_batch.errors import ConfigError, ContractError, EngineUnavailable, JobError, error_line

# Errors whose message is the whole story: one line, exit 2.
ONE_LINE_ERRORS = (ConfigError, JobError, EngineUnavailable, ContractError)


def fail(console: Console, problem: str | BaseException, code: int = 2, cause: BaseException | None = None) -> int:
    """Print the one error line and return the exit code. Our own errors say it all in their message; any
    other error is named by its type and the first line of its message (`errors.error_line`). The traceback of
    `cause` (or of `problem`, an exception) goes to the log file, except a config error's: it has none worth reading."""
    if isinstance(problem, BaseException):
        if cause is None and not isinstance(problem, ConfigError):
            cause = problem
        text = str(problem).strip()
        problem = text.splitlines()[0] if isinstance(problem, ONE_LINE_ERRORS) and text else error_line(problem)
    return console.error(problem, cause, code)


def rerank(args: argparse.Namespace, console: Console) -> int:
    from mmr5_batch.job.runner import run_job

    try:
        config = config_from_args(args)
        if not config.input or not config.output:
            raise ConfigError("--input and --output are required (or input/output in the config file)")
        console.announce_log()
        summary = run_job(config, progress=console.progress(config.execution.progress_seconds))
    except ONE_LINE_ERRORS as error:
        return fail(console, error)
    except Exception as error:  # an engine failing at start, a broken contract: raised inside Ray, wrapped by it
        line = one_line_cause(error)
        if line is None:
            raise
        return fail(console, line, cause=error)
    console.print(format_summary(summary))
    if summary["failed"]:
        return fail(console, summary["failed"], 3)
    return 0


def plan(args: argparse.Namespace, console: Console) -> int:
    from mmr5_batch.job.cost_estimate import estimate, format_estimate

    try:
        if not args.output:
            args.output = ""
        config = config_from_args(args)
        if not config.input:
            raise ConfigError("--input is required (or input in the config file)")
        console.announce_log()
        report = estimate(config, sample=args.sample, generated_tokens=args.gen_tokens)
    except (ConfigError, JobError) as error:
        return fail(console, error)
    console.print(json.dumps(report, indent=2) if args.json else format_estimate(report))
    return 0


def show_prompt_command(args: argparse.Namespace, console: Console) -> int:
    try:
        console.out.write(show_prompt(args.query, args.num_candidates, args.model, args.protocol, args.document))
        console.out.flush()
        note = prompt_suffix_note(args.model, args.protocol)
        if note is not None:  # not text: said beside the prompt, so stdout stays the exact text
            print(note, file=console.err, flush=True)
    except (OSError, ValueError) as error:
        return fail(console, error)
    return 0


def tiny_model(args: argparse.Namespace, console: Console) -> int:
    from mmr5_batch.devtools.tiny_model import TINY_MODEL_KINDS

    console.print(str(TINY_MODEL_KINDS[args.kind](args.directory, seed=args.seed)))
    return 0


def demo_data(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from mmr5_batch.devtools.demo_data import demo_qrels_text, write_demo_dataset

    paths = write_demo_dataset(args.directory, queries=args.queries, candidates=args.candidates, shards=args.shards, page_text=args.page_text)
    if args.qrels:
        Path(args.qrels).parent.mkdir(parents=True, exist_ok=True)
        Path(args.qrels).write_text(demo_qrels_text(queries=args.queries, candidates=args.candidates))
    console.print(json.dumps([str(path) for path in paths]))
    return 0


def convert(args: argparse.Namespace, console: Console) -> int:
    from mmr5_batch.evaluation.mmdocir import ConvertError, convert_mmdocir

    try:
        counts = convert_mmdocir(args.pages, args.annotations, args.run, args.output, top_k=args.top_k, shard_size=args.shard_size)
    except (ConvertError, FileNotFoundError) as error:
        return fail(console, error)
    console.print(json.dumps(counts, indent=2))
    return 0


def evaluate(args: argparse.Namespace, console: Console) -> int:
    from mmr5_batch.evaluation.evaluate import evaluate_run, format_report
    from mmr5_batch.evaluation.qrels import QrelsError
    from mmr5_batch.evaluation.report import write_report
    from mmr5_batch.storage.filesystems import Storage, join

    try:
        ks = [int(value) for value in args.k.split(",") if value.strip()]
        if not ks or min(ks) < 1:
            raise ValueError
    except ValueError:
        return fail(console, f"--k must be positive integers separated by commas, got {args.k!r}")
    storage = Storage()
    try:
        domains = [name.strip() for name in args.domains.split(",") if name.strip()] if args.domains else None
        console.announce_log()
        report = evaluate_run(
            args.run, args.qrels, ks, args.group_by, storage, protocol=args.protocol, domains=domains, address=args.address, partial=args.partial
        )
    except (QrelsError, FileNotFoundError, JobError) as error:
        return fail(console, error)
    target = args.json or join(args.run, "evaluation.json")
    storage.write_json(target, report)
    folder = join(target.rsplit("/", 1)[0] if "/" in target else ".", "evaluation")
    write_report(report, folder, storage)
    console.print(format_report(report))
    console.print(f"\nreport: {join(folder, 'report.md')} (figures beside it); numbers: {target}")
    return 0


DISK_FULL = "No space left on device"


def one_line_cause(error: BaseException) -> str | None:
    """The message of one of our one-line errors raised inside a Ray task or actor, if that is what failed; a full
    disk under a write task is one line too."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ONE_LINE_ERRORS):
            return str(current)
        text = str(current)
        if (isinstance(current, OSError) and current.errno == errno.ENOSPC) or DISK_FULL in text:
            return f"cannot write the results: the disk is full ({DISK_FULL}); free space and run again: what is written is kept"
        for kind in ONE_LINE_ERRORS:
            marker = f"{kind.__name__}: "
            if marker in text:
                return text.split(marker, 1)[-1].strip().splitlines()[0]
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])
    return None


COMMANDS = {
    "rerank": rerank,
    "plan": plan,
    "show-prompt": show_prompt_command,
    "tiny-model": tiny_model,
    "demo-data": demo_data,
    "convert": convert,
    "evaluate": evaluate,
}
