"""The reference pages made from the code: every config field (from the pydantic tree) and the CLI synopsis (from argparse).

    python -m mmr5_batch.cli.reference_docs docs/reference     # make docs

A test regenerates both pages and fails when the committed ones differ, so
the reference cannot drift from what `config/` and `cli/arguments.py` define.
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mmr5_batch.cli.arguments import build_parser, flag_of
from mmr5_batch.config import JobConfig, RerankerConfig

HELP_WIDTH = 100


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("typing.", "").replace("NoneType", "None").replace("pydantic.types.", "")


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return f"`{json.dumps(info.default_factory())}`"
    if info.default is PydanticUndefined:
        return "required"
    value = info.default.get_secret_value() if hasattr(info.default, "get_secret_value") else info.default
    return f"`{json.dumps(value)}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        flag = flag_of(dotted)
        description = (info.description or "").replace("|", "\\|")
        type_name = _type_name(annotation).replace("|", "\\|")
        rows.append(f"| `{dotted}` | `{type_name}` | {_default(info)} | {f'`{flag}`' if flag else ''} | {description} |")
    return rows


def configuration_page() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `mmr5_batch/config/` by `make docs`; do not edit by hand (a test compares it with the code).",
        "",
        "A job config is YAML (or a dict, or keywords in Python): the top-level fields, then one mapping per section.",
        "`RerankerConfig` (the Python API and the Ray Dataset step) has the sections without `input`, `output`,",
        f"`run_id`, `overwrite` and `relabel`: {', '.join(f'`{name}`' for name in RerankerConfig.model_fields)}.",
        "A flag given on the command line overrides the YAML.",
        "",
        "| field | type | default | flag | description |",
        "|---|---|---|---|---|",
        *_rows(JobConfig, ""),
    ]
    for name, info in JobConfig.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += ["", f"## `{name}`: {info.description}", "", "| field | type | default | flag | description |", "|---|---|---|---|---|"]
            lines += _rows(annotation, f"{name}.")
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    parser = build_parser(width=HELP_WIDTH)
    lines = [
        "# Command-line reference",
        "",
        "Generated from `mmr5_batch/cli/arguments.py` by `make docs`; do not edit by hand (a test compares it with the code).",
        "Exit codes: 0 done; 2 the job could not start or failed as a whole, with one line saying why; 3 the job ran and",
        "wrote its outputs but too many queries or shards failed (`--max-error-rate`) or a shard is not fully accounted for.",
        "",
        "```",
        parser.format_help().rstrip(),
        "```",
    ]
    subcommands = next(action for action in parser._actions if action.dest == "command")
    for name, sub in subcommands.choices.items():  # type: ignore[union-attr]  # the subparsers action maps names to parsers
        lines += ["", f"## `mmr5-batch {name}`", "", "```", sub.format_help().rstrip(), "```"]
        nested = [action for action in sub._actions if action.dest == "dataset"]
        for action in nested:
            for dataset, dataset_parser in action.choices.items():
                lines += ["", f"### `mmr5-batch {name} {dataset}`", "", "```", dataset_parser.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


PAGES = {"configuration.md": configuration_page, "cli.md": cli_page}


def write_reference(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in PAGES.items():
        (folder / name).write_text(make())
        written.append(folder / name)
    return written


if __name__ == "__main__":
    for path in write_reference(sys.argv[1] if len(sys.argv) > 1 else "docs/reference"):
        print(path)
