"""What an output prefix already holds: resume state, the shard ledger, and the exactly-once check.

The outputs are the checkpoint. Result files are partitioned by source shard
(`ranked/<shard key>/`, `dead_letter/<shard key>/`) and each file appears
whole or not at all, so the query_ids written for a shard are exactly the
queries of that shard that are done, whatever killed the previous run. A run
reads them and processes only the rest. One recursive listing per result
folder finds every shard's files at once.

The ledger (ledger_index.py: a few index files per run) records which
content (fingerprint: size plus ETag or mtime) a run began to process, and
which shards have every query written: a later run over the same prefix
skips those without reading them, and reprocesses a shard whose fingerprint
changed after deleting its old rows. `_ledger/job.json` holds the settings
that shape results; a run with other settings into the same prefix is
refused, since its rows would mix with these.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmr5_batch.evaluation.relabel import PAIRS_FOLDER
from mmr5_batch.job import ledger_index
from mmr5_batch.job.ledger_index import DONE, FORGOTTEN, LEDGER, STARTED, LedgerIndex
from mmr5_batch.storage.filesystems import Storage, join

RESULT_FOLDERS = ("ranked", "dead_letter")
SUPERSEDED = "superseded.json"


def shard_key(root: str, shard: str) -> str:
    """A stable folder name for a shard: its path under the input root, made safe, plus a short hash."""
    relative = shard[len(root) :].strip("/") if shard.startswith(root.rstrip("/")) and shard != root else shard.rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", relative.removesuffix(".parquet").replace("/", "__")).lstrip("._") or "shard"
    return f"{stem[:80]}-{zlib.crc32(shard.encode()):08x}"


def job_fingerprint(public_config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what a result row says; runs into one prefix must agree on them.

    A setting added later enters only when it is away from what the job did before it existed, so that
    outputs written by earlier versions keep their fingerprint (and resume)."""
    model, cascade = public_config["model"], dict(public_config["cascade"])
    pointwise_model = model.get("protocol") == "pointwise"
    two_models = cascade.get("first_pass", "same-model") == "pointwise"
    if not two_models:
        cascade.pop("first_pass", None)
    scorer = public_config.get("scorer") or {}
    shaping = {
        "input": public_config["input"],
        "model": {key: public_config["model"][key] for key in ("name", "max_new_tokens", "think_tokens", "temperature", "top_p", "seed")}
        # Only when on, so that outputs written before the setting existed keep their fingerprint.
        | ({"constrain_answer": True} if public_config["model"].get("constrain_answer") else {})
        # hf and vLLM run the same model; the scripted test engine is no model, its rows never mix with a model's.
        | ({"backend": "scripted-test"} if public_config["model"].get("backend") == "scripted-test" else {})
        | ({"protocol": "pointwise", "instruction": model.get("instruction")} if pointwise_model else {}),
        "ranking": public_config["ranking"],
        "cascade": cascade
        | (
            {"scorer": {"name": scorer.get("name"), "instruction": scorer.get("instruction"), "scripted": scorer.get("backend") == "scripted-test"}}
            if two_models
            else {}
        ),
        "images": {key: public_config["images"].get(key) for key in ("image_tokens", "prompt_image_tokens", "policy", "jpeg_quality")},
    }
    digest = hashlib.sha256(repr(sorted(_flatten(shaping).items())).encode()).hexdigest()[:16]
    return {"digest": digest, "settings": shaping}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    before, after = _flatten(old.get("settings", {})), _flatten(new["settings"])
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    return ", ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed[:4]) or "unknown settings"


@dataclass
class OutputState:
    """The output prefix seen through the ledger and the result folders."""

    storage: Storage
    output: str
    # An --overwrite in progress (`_ledger/superseded.json`): its id, settings and the result files it replaces.
    _overwrite: dict[str, Any] | None = field(default=None, repr=False)
    _overwrite_read: bool = field(default=False, repr=False)
    _ledger: LedgerIndex | None = field(default=None, repr=False)

    def overwrite(self) -> dict[str, Any] | None:
        """The --overwrite in progress, if any: while it is, the ledger's older entries and the superseded files do not count."""
        if not self._overwrite_read:
            uri = join(self.output, LEDGER, SUPERSEDED)
            self._overwrite = self.storage.read_json(uri) if self.output and self.storage.exists(uri) else None
            self._overwrite_read = True
        return self._overwrite

    def superseded(self) -> frozenset[str]:
        overwrite = self.overwrite()
        return frozenset(overwrite["files"]) if overwrite else frozenset()

    def record_overwrite(self, overwrite: dict[str, Any] | None) -> None:
        """Start, update or (None) end an --overwrite; one write, so it takes effect all at once."""
        uri = join(self.output, LEDGER, SUPERSEDED)
        if overwrite is None:
            self.storage.remove(uri)
        else:
            self.storage.write_json(uri, overwrite)
        self._overwrite, self._overwrite_read = overwrite, True

    def _current(self, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        """`entry` unless an --overwrite is in progress that it predates."""
        overwrite = self.overwrite()
        if entry is None or overwrite is None or entry.get("overwrite_id") == overwrite["overwrite_id"]:
            return entry
        return None

    def _tagged(self, entry: dict[str, Any]) -> dict[str, Any]:
        overwrite = self.overwrite()
        return entry | {"overwrite_id": overwrite["overwrite_id"]} if overwrite else entry

    def result_files(self, name: str, key: str) -> list[str]:
        """A shard's files in one result folder, superseded ones left out."""
        superseded = self.superseded()
        return [uri for uri in self.storage.list_files(self.folder(name, key), ".parquet") if uri not in superseded]

    def files_by_shard(self, name: str) -> dict[str, list[str]]:
        """Every shard's files in one result folder (one recursive listing), superseded ones left out."""
        superseded = self.superseded()
        found: dict[str, list[str]] = {}
        if not self.output:
            return found
        folder = join(self.output, name)
        # The listing spells files as the filesystem does (a relative output comes back absolute).
        prefix = self.storage.listed_prefix(folder)
        for uri in self.storage.list_files(folder, ".parquet"):
            if uri not in superseded:
                found.setdefault(uri[len(prefix) + 1 :].split("/", 1)[0], []).append(uri)
        return found

    def written_files(self) -> dict[str, list[str]]:
        """Every shard's result files (ranked and dead letters): what resume and the readback read."""
        found: dict[str, list[str]] = {}
        for name in RESULT_FOLDERS:
            for key, files in self.files_by_shard(name).items():
                found.setdefault(key, []).extend(files)
        return found

    def folder(self, name: str, key: str) -> str:
        return join(self.output, name, key)

    def ledger(self) -> LedgerIndex:
        """The ledger index, read once (a few requests) and kept up to date by this object's writes."""
        if self._ledger is None:
            self._ledger = ledger_index.read_index(self.storage, self.output) if self.output else LedgerIndex()
        return self._ledger

    def latest_event(self, key: str) -> dict[str, Any] | None:
        """A shard's latest ledger event that counts (see ledger_index.py), or None."""
        return self._current(self.ledger().latest.get(key))

    def ledger_entry(self, key: str) -> dict[str, Any] | None:
        """The shard's `done` entry (every query written, with its fingerprint and counters), if that is its latest event."""
        event = self.latest_event(key)
        return event if event and event["event"] == DONE else None

    def record_shards(self, attempt: str, entries: dict[str, dict[str, Any]]) -> None:
        """Shards whose every query is written: one index file."""
        self._append(DONE, attempt, entries)

    def mark_started(self, attempt: str, fingerprints: dict[str, str]) -> None:
        """Record which content of each shard this run processes, before any of their rows are written: one index file."""
        self._append(STARTED, attempt, {key: {"fingerprint": value} for key, value in fingerprints.items()})

    def forget_shards(self, attempt: str, keys: list[str]) -> None:
        """Record that the shards' results are stale, then delete them: a crash in between leaves the record, so the
        next run deletes them too (it never keeps rows of changed content)."""
        self._append(FORGOTTEN, attempt, {key: {} for key in keys})
        for key in keys:
            for name in (*RESULT_FOLDERS, PAIRS_FOLDER):
                self.storage.remove(self.folder(name, key))

    def compact_ledger(self, attempt: str, keep: Any = None) -> bool:
        return ledger_index.compact(self.storage, self.output, self.ledger(), attempt, keep)

    def _append(self, kind: str, attempt: str, entries: dict[str, dict[str, Any]]) -> None:
        events = [self._tagged(entry | {"key": key}) for key, entry in sorted(entries.items())]
        ledger_index.append_events(self.storage, self.output, self.ledger(), kind, attempt, events)

    def remove_orphan_pairs(self, keys: list[str]) -> int:
        """Delete pairs files of the given shards whose ranked file was never written (a crashed task); how many."""
        from mmr5_batch.evaluation.relabel import orphan_pairs

        pairs = self.files_by_shard(PAIRS_FOLDER)
        if not pairs:
            return 0
        ranked = self.files_by_shard("ranked")
        removed = 0
        for key in set(keys) & set(pairs):
            committed = {uri.rsplit("/", 1)[-1] for uri in ranked.get(key, [])}
            for uri in orphan_pairs(pairs[key], committed):
                self.storage.remove(uri)
                removed += 1
        return removed

    def finished_runs(self) -> list[str]:
        """The run summaries under `_ledger/runs/`: a new one means a job finished into this prefix."""
        return self.storage.list_files(join(self.output, LEDGER, "runs"), ".json") if self.output else []

    def started_fingerprint(self, key: str) -> str | None:
        """The fingerprint an earlier, unfinished run processed this shard with (None: no such run)."""
        event = self.latest_event(key)
        return event.get("fingerprint") if event and event["event"] == STARTED else None

    def forgotten(self, key: str) -> bool:
        """Whether the shard's results were found stale and may not all be deleted yet."""
        event = self.latest_event(key)
        return bool(event and event["event"] == FORGOTTEN)

    def passthrough_types(self) -> pa.Schema | None:
        """The passthrough columns' types established by earlier runs into this prefix (Arrow IPC, base64)."""
        uri = join(self.output, LEDGER, "passthrough_schema.json")
        entry = self._current(self.storage.read_json(uri) if self.output and self.storage.exists(uri) else None)
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(entry["arrow_ipc"]))) if entry else None

    def record_passthrough_types(self, schema: pa.Schema) -> None:
        encoded = base64.b64encode(schema.serialize().to_pybytes()).decode()
        entry = {"columns": [str(column) for column in schema], "arrow_ipc": encoded}
        self.storage.write_json(join(self.output, LEDGER, "passthrough_schema.json"), self._tagged(entry))

    def job(self) -> dict[str, Any] | None:
        """The settings of the results here: an --overwrite in progress's, else the last job's."""
        overwrite = self.overwrite()
        if overwrite is not None:
            return overwrite["fingerprint"]
        uri = join(self.output, LEDGER, "job.json")
        return self.storage.read_json(uri) if self.storage.exists(uri) else None

    def record_job(self, fingerprint: dict[str, Any]) -> None:
        self.storage.write_json(join(self.output, LEDGER, "job.json"), fingerprint)
