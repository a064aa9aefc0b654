"""Making configs: from a YAML file with dotted overrides (the CLI), from a dict, or from flat keywords (the Python API).

A bad value stops before any work with one readable line (`ConfigError`).
The resolved config is written beside the outputs, without credentials, so a
run can be repeated exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mmr5_batch.config.job_config import JobConfig, RerankerConfig
from mmr5_batch.errors import ConfigError

Config = TypeVar("Config", bound=RerankerConfig)


def _one_line(error: ValidationError, what: str) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return f"invalid {what}: " + "; ".join(problems)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def validate_config(tree: Mapping[str, Any], kind: type[Config]) -> Config:
    """`kind` (RerankerConfig or JobConfig) from plain data; ConfigError with one line when it is not valid."""
    try:
        return kind.model_validate(dict(tree))
    except ValidationError as error:
        raise ConfigError(_one_line(error, "job config" if kind is JobConfig else "reranker config")) from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> JobConfig:
    """The job config from an optional YAML file, with dotted-key overrides (unset values ignored)."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        tree = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, dotted, value)
    return validate_config(tree, JobConfig)


# Sections whose fields are only ever named dotted: the scorer repeats the model's
# fields (`scorer.backend`), and a flat `backend` keeps meaning `model.backend`.
DOTTED_ONLY = ("scorer",)


def _section_fields(kind: type[BaseModel]) -> dict[str, list[str]]:
    """Each leaf field name of `kind`'s sections (but the dotted-only ones) -> the dotted paths that have it."""
    paths: dict[str, list[str]] = {}
    for section, info in kind.model_fields.items():
        annotation = info.annotation
        if section in DOTTED_ONLY:
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name in annotation.model_fields:
                paths.setdefault(name, []).append(f"{section}.{name}")
        else:
            paths.setdefault(section, []).append(section)
    return paths


def config_from_keywords(kind: type[Config], base: Config | Mapping[str, Any] | None = None, **settings: Any) -> Config:
    """A config from a base (a config, or a dict) and keywords: flat names (`window=5`), dotted ones, or whole sections.

    A keyword names a field of one section (`think_tokens` is `model.think_tokens`),
    a section (`cascade={"enabled": True}`), or, for the cascade, a switch
    (`cascade=True`). A name found in two sections must be given dotted, and
    the scorer's fields always are (`scorer.name`).
    """
    # What the base left unset stays unset (a family's default window applies only where the config gives none).
    tree: dict[str, Any] = base.model_dump(include=set(kind.model_fields), exclude_unset=True) if isinstance(base, BaseModel) else {}
    # A dict follows the same rules as keywords: sections as dicts (as in the YAML file), dotted or flat names.
    named = {**(base if isinstance(base, Mapping) else {}), **settings}
    fields = _section_fields(kind)
    unknown = []
    for name, value in named.items():
        if name == "cascade" and isinstance(value, bool):
            _set_path(tree, "cascade.enabled", value)
        elif name in kind.model_fields and isinstance(value, Mapping):
            for key, item in value.items():
                _set_path(tree, f"{name}.{key}", item)
        elif "." in name or name in kind.model_fields:
            _set_path(tree, name, value)
        elif len(fields.get(name, [])) == 1:
            _set_path(tree, fields[name][0], value)
        elif name in fields:
            raise ConfigError(f"setting {name!r} is ambiguous: give one of {fields[name]}")
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; settings are the fields of {kind.__name__}'s sections (docs: configuration)")
    return validate_config(tree, kind)


SECRET_FIELDS = ("access_key_id", "secret_access_key", "session_token")
# A job config's own fields come first in what is written out.
_JOB_FIELDS = ("input", "output", "run_id", "overwrite")


def public_dump(config: RerankerConfig) -> dict[str, Any]:
    """The config as plain data without credentials: what may be written, logged or shown."""
    dumped = config.model_dump(mode="json", exclude={"storage": set(SECRET_FIELDS)})
    first = {name: dumped.pop(name) for name in _JOB_FIELDS if name in dumped}
    return first | dumped


def config_to_yaml(config: RerankerConfig) -> str:
    return yaml.safe_dump(public_dump(config), sort_keys=False)
