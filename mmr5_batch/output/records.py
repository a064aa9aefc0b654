"""The typed records an output prefix holds, each reading and writing the JSON format earlier versions wrote.

Every record keeps the fields it does not know (`extra`), so a prefix
written by an earlier or later version round-trips unchanged and its
settings digest stays what it was. A file that is not the JSON it should be
is `OutputDamaged`: one line naming the file and the way out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from mmr5_batch.errors import JobError

Record = TypeVar("Record", bound="JsonRecord")


class OutputDamaged(JobError):
    """A file of the output prefix that cannot be parsed; the message names it and what to do."""


def parse_json(uri: str, data: bytes, remedy: str) -> Any:
    """`data` as JSON, or OutputDamaged naming `uri` and `remedy`."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise OutputDamaged(f"{uri} cannot be parsed ({type(error).__name__}: {error}); {remedy}") from None


@dataclass(frozen=True)
class JsonRecord:
    """A dataclass read from and written to one JSON object; unknown keys are kept in `extra`."""

    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True)
    # Fields written only when set (None), so the JSON stays what earlier versions wrote.
    optional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls: type[Record], data: Mapping[str, Any]) -> Record:
        known = {item.name for item in fields(cls) if item.name != "extra"}
        return cls(**{name: value for name, value in data.items() if name in known}, extra={name: value for name, value in data.items() if name not in known})

    def to_json(self) -> dict[str, Any]:
        data = dict(self.extra)
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "extra" and not (item.name in self.optional and value is None):
                data[item.name] = value
        return data


@dataclass(frozen=True)
class ShardStats(JsonRecord):
    """One shard as read back after its wave: whether every query is there exactly once, and its counters."""

    shard: str
    fingerprint: str
    expected_queries: int
    written_queries: int
    repeated_queries: int
    complete: bool
    counters: Mapping[str, int]
    run_id: str | None = None
    finished_at: str | None = None
    optional: ClassVar[tuple[str, ...]] = ("run_id", "finished_at")


@dataclass(frozen=True)
class LedgerEvent(JsonRecord):
    """One line of the ledger index: a shard's `started`, `done` (with its stats) or (earlier versions) `forgotten`."""

    key: str
    event: str
    fingerprint: str | None = None
    overwrite_id: str | None = None  # the --overwrite it belongs to, if one was in progress
    optional: ClassVar[tuple[str, ...]] = ("fingerprint", "overwrite_id")

    def stats(self) -> ShardStats:
        """A `done` event's readback stats (the fields it carries beside key and event)."""
        return ShardStats.from_json({name: value for name, value in self.to_json().items() if name not in ("key", "event", "overwrite_id")})


@dataclass(frozen=True)
class Superseded(JsonRecord):
    """`_ledger/superseded.json`: result files that no longer count yet stay, and stay named, until their shard's
    replacement is committed. An `--overwrite` in progress (`overwrite_id`, its settings `fingerprint`) supersedes
    every file there was; a shard whose content changed supersedes its own (no `overwrite_id`)."""

    files: tuple[str, ...]
    overwrite_id: str | None = None
    fingerprint: Mapping[str, Any] | None = None
    optional: ClassVar[tuple[str, ...]] = ("overwrite_id", "fingerprint")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Superseded:
        record = super().from_json(data)
        return Superseded(tuple(record.files), record.overwrite_id, record.fingerprint, extra=record.extra)

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"files": sorted(self.files)}

    @property
    def overwriting(self) -> bool:
        return self.overwrite_id is not None


@dataclass(frozen=True)
class RunSummary(JsonRecord):
    """`summary.json` and `_ledger/runs/<attempt>.json`: what one run did (the job's accounting fills it in)."""

    run_id: str | None
    attempt: str
    model: str
    backend: str
    input: str
    output: str
    finished_at: str
    shards: Mapping[str, int]  # total, processed, skipped_done_earlier, reprocessed_changed, bad
    bad_shards: Mapping[str, str]  # shard URI -> why it was skipped
    ignored_files: Mapping[str, Any]  # files under the input that are not data: count, first
    wall_seconds: float
    timings: Mapping[str, float]  # planning, the pipeline, the readback, waves
    queries_per_second: float
    totals: Mapping[str, int]  # counters over the rows this run wrote
    planner_dead_letters: int
    per_shard: Mapping[str, Mapping[str, int]]
    processed_shards_now_hold: Mapping[str, int]
    incomplete_shards: list[str]
    error_rate: float
    max_error_rate: float
    failed: str | None  # why the run counts as failed, or None
    files: list[str]


@dataclass(frozen=True)
class Manifest(JsonRecord):
    """`manifest.json`: the result files a reader reads, relative to the prefix, each query once; and whether the
    run it describes is complete (earlier versions wrote no `complete`: None)."""

    version: int
    attempt: str
    written_at: str
    ranked: tuple[str, ...] = ()
    dead_letter: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    complete: bool | None = None
    unfinished: str | None = None  # what is not finished, in words, when `complete` is False

    def files(self, folder: str) -> list[str]:
        return list(getattr(self, folder, ()) or ())

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"ranked": list(self.ranked), "dead_letter": list(self.dead_letter), "pairs": list(self.pairs)}


def flatten_settings(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings tree as dotted names -> values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class ResultSettings(JsonRecord):
    """`_ledger/job.json`: the settings that shape result rows and their digest; runs into one prefix must agree."""

    digest: str
    settings: Mapping[str, Any]

    def difference(self, other: ResultSettings) -> str:
        """What `other` changes, in words (the first four settings)."""
        before, after = flatten_settings(self.settings), flatten_settings(other.settings)
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        return ", ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed[:4]) or "unknown settings"
