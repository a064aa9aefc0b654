"""The exceptions that stop work with one readable line, and the one helper that formats any error as a line.

`ConfigError`: a config that cannot run (before any work). `JobError`: a
job-level failure (no input, an output prefix holding other results, no GPU).
`ContractError`: a Ray stage got a batch without a column it reads, or with
the wrong type. `EngineUnavailable`: the chosen backend cannot start here.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot run; the message is one line meant for the user."""


class JobError(RuntimeError):
    """A job-level failure, reported as one line and a non-zero exit."""


class ContractError(ValueError):
    """A stage's input or output breaks its declared columns; the message names the stage and the column."""


class EngineUnavailable(RuntimeError):
    """The chosen backend cannot start here (missing package, bad model); the message says what to do."""


def error_line(error: BaseException) -> str:
    """`Type: first line of the message` (just the type for an empty message); never raises."""
    try:
        text = str(error).strip()
    except Exception:  # a broken __str__ must not hide the error itself
        text = ""
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class QueryFailed(RuntimeError):
    """A query the Python API could not rerank at all; the message is its dead-letter reason."""


class PageUnreadable(QueryFailed):
    """`Reranker.rerank` was given a page it cannot show the model (unreadable, undecodable, refused): the message
    names the page (its position and what was given) and why."""
