"""The output prefix as one object: what it holds, what counts now, and every write a run makes to it, in order.

The outputs are the checkpoint. Result files are partitioned by source shard
(`ranked/<shard key>/`, `dead_letter/<shard key>/`; layout.py names every
path) and each file appears whole or not at all, so the query_ids written
for a shard are exactly its queries that are done, whatever killed the
previous run. A run reads them and processes only the rest.

What counts now: every result file but the ones an `--overwrite` in
progress has superseded (`_ledger/superseded.json`); resume and the readback
ask `live_files`. What readers read: the manifest (`manifest.json`), the
live files as of the last commit, replaced whole at every commit; `evaluate`
and readers outside the project (pyarrow, DuckDB, Spark: docs/output-and-
exactly-once.md) read it, so no reader counts a query twice while old and
new results lie side by side during an `--overwrite`.

A run's writes, in the order that keeps every crash safe (the runner calls
them in this order; each step is one method here):

1. `open`: take the lease (one job per prefix), then remove the temporaries
   a killed writer left (only the holder may).
2. `begin`: an `--overwrite` first supersedes every result file there (one
   write: from then on they do not count, yet stay until replaced); shards
   whose content changed are recorded as forgotten, then their results are
   deleted (a crash in between leaves the record, so the next run deletes
   them too); pairs files without their ranked file (a crashed task) go;
   the shards about to run are recorded as started with their content
   fingerprint; then the job's settings digest, the input layout, the
   passthrough types and the config.
3. The pipeline writes result files (the sink), each whole or not at all.
4. `commit_wave`, after each wave is read back: the superseded files of its
   complete shards are deleted (their new rows are all there), then those
   shards are recorded as done (one ledger file), then the manifest.
5. `finish`: when every shard is accounted for, an `--overwrite` ends (what
   is still superseded is deleted, the ledger events older than it dropped,
   then its record removed); the ledger is compacted; the summary and the
   manifest are written.

The ledger (ledger_index.py: a few index files per run) records which
content (fingerprint: size plus ETag or mtime) a run began to process, and
which shards have every query written: a later run skips those without
reading them, and reprocesses a shard whose fingerprint changed.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmr5_batch.output import ledger_index
from mmr5_batch.output.layout import (
    ALL_FOLDERS,
    DEAD_LETTER,
    INPUT_LAYOUT_FILE,
    JOB_FILE,
    PAIRS,
    PASSTHROUGH_FILE,
    RANKED,
    RESULT_FOLDERS,
    RUNS,
    SUPERSEDED_FILE,
    OutputLayout,
)
from mmr5_batch.output.lease import OutputLease
from mmr5_batch.output.ledger_index import DONE, FORGOTTEN, STARTED, LedgerIndex
from mmr5_batch.storage.filesystems import Storage

MANIFEST_VERSION = 1


@dataclass
class OutputStore:
    """One output prefix seen through its ledger and result folders, and the writes a run makes to it."""

    storage: Storage
    output: str
    # An --overwrite in progress (`_ledger/superseded.json`): its id, settings and the result files it replaces.
    _overwrite: dict[str, Any] | None = field(default=None, repr=False)
    _overwrite_read: bool = field(default=False, repr=False)
    _ledger: LedgerIndex | None = field(default=None, repr=False)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output)

    # -- what the prefix holds -------------------------------------------------------------------------------

    def overwrite(self) -> dict[str, Any] | None:
        """The --overwrite in progress, if any: while it is, the ledger's older entries and the superseded files do not count."""
        if not self._overwrite_read:
            uri = self.layout.ledger(SUPERSEDED_FILE)
            self._overwrite = self.storage.read_json(uri) if self.output and self.storage.exists(uri) else None
            self._overwrite_read = True
        return self._overwrite

    def superseded(self) -> frozenset[str]:
        overwrite = self.overwrite()
        return frozenset(overwrite["files"]) if overwrite else frozenset()

    def result_files(self, name: str, key: str) -> list[str]:
        """A shard's live files in one result folder, superseded ones left out."""
        superseded = self.superseded()
        return [uri for uri in self.storage.list_files(self.folder(name, key), ".parquet") if uri not in superseded]

    def files_by_shard(self, name: str) -> dict[str, list[str]]:
        """Every shard's live files in one result folder (one recursive listing), superseded ones left out."""
        superseded = self.superseded()
        found: dict[str, list[str]] = {}
        if not self.output:
            return found
        folder = self.layout.folder(name)
        # The listing spells files as the filesystem does (a relative output comes back absolute).
        prefix = self.storage.listed_prefix(folder)
        for uri in self.storage.list_files(folder, ".parquet"):
            if uri not in superseded:
                found.setdefault(uri[len(prefix) + 1 :].split("/", 1)[0], []).append(uri)
        return found

    def written_files(self) -> dict[str, list[str]]:
        """Every shard's live result files (ranked and dead letters): what resume and the readback read."""
        found: dict[str, list[str]] = {}
        for name in RESULT_FOLDERS:
            for key, files in self.files_by_shard(name).items():
                found.setdefault(key, []).extend(files)
        return found

    def live_files(self, folders: Iterable[str] = RESULT_FOLDERS) -> list[str]:
        """The live files of the given folders, sorted: what a reader of the results reads (each query once)."""
        return sorted(uri for name in folders for files in self.files_by_shard(name).values() for uri in files)

    def committed_files(self, folders: Iterable[str] = RESULT_FOLDERS) -> list[str]:
        """The result files as of the last commit (the manifest), each query once: what `evaluate` and readers outside
        read. An output written before manifests existed: its live files."""
        manifest = self.manifest()
        if manifest is None:
            return self.live_files(folders)
        prefix = self.storage.listed_prefix(self.output)
        return sorted(f"{prefix}/{path}" for name in folders for path in manifest.get(name, []))

    def folder(self, name: str, key: str) -> str:
        return self.layout.shard_folder(name, key)

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

    def started_fingerprint(self, key: str) -> str | None:
        """The fingerprint an earlier, unfinished run processed this shard with (None: no such run)."""
        event = self.latest_event(key)
        return event.get("fingerprint") if event and event["event"] == STARTED else None

    def forgotten(self, key: str) -> bool:
        """Whether the shard's results were found stale and may not all be deleted yet."""
        event = self.latest_event(key)
        return bool(event and event["event"] == FORGOTTEN)

    def finished_runs(self) -> list[str]:
        """The run summaries under `_ledger/runs/`: a new one means a job finished into this prefix."""
        return self.storage.list_files(self.layout.ledger(RUNS), ".json") if self.output else []

    def passthrough_types(self) -> pa.Schema | None:
        """The passthrough columns' types established by earlier runs into this prefix (Arrow IPC, base64)."""
        entry = self._current(self._read_ledger_file(PASSTHROUGH_FILE))
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(entry["arrow_ipc"]))) if entry else None

    def input_layout(self) -> str | None:
        """The input layout (grouped or pairs) the job's first run decided, so later runs judge shards by the same rule."""
        entry = self._current(self._read_ledger_file(INPUT_LAYOUT_FILE))
        return entry["layout"] if entry else None

    def job(self) -> dict[str, Any] | None:
        """The settings of the results here: an --overwrite in progress's, else the last job's."""
        overwrite = self.overwrite()
        if overwrite is not None:
            return overwrite["fingerprint"]
        return self._read_ledger_file(JOB_FILE)

    def manifest(self) -> dict[str, Any] | None:
        uri = self.layout.manifest
        return self.storage.read_json(uri) if self.output and self.storage.exists(uri) else None

    # -- a run's writes, in order (see the module docstring) -------------------------------------------------

    def open(self, attempt: str, run_id: str, lease_seconds: float) -> OutputLease:
        """1. Take the output's lease (raises JobError naming the holder), then clear what a killed writer left."""
        lease = OutputLease(self.storage, self.output, attempt, run_id, lease_seconds)
        lease.acquire()
        self.remove_temporaries()
        return lease

    def begin(
        self,
        attempt: str,
        *,
        fingerprint: dict[str, Any],
        overwrite: bool,
        changed: list[str],
        to_run: dict[str, str],
        input_layout: str,
        passthrough: pa.Schema,
        config_yaml: str,
    ) -> None:
        """2. Before any result is written: supersede (--overwrite), forget changed shards, drop orphan pairs, record
        the shards started (key -> content fingerprint), the settings, input layout, passthrough types and config."""
        if overwrite:
            self._supersede_results(fingerprint)
        self._forget_shards(attempt, changed)
        self._remove_orphan_pairs(list(to_run))
        self._append(STARTED, attempt, {key: {"fingerprint": value} for key, value in to_run.items()})
        self.storage.write_json(self.layout.ledger(JOB_FILE), fingerprint)
        self.storage.write_json(self.layout.ledger(INPUT_LAYOUT_FILE), self._tagged({"layout": input_layout}))
        encoded = base64.b64encode(passthrough.serialize().to_pybytes()).decode()
        self.storage.write_json(self.layout.ledger(PASSTHROUGH_FILE), self._tagged({"columns": [str(column) for column in passthrough], "arrow_ipc": encoded}))
        self.storage.write_text(self.layout.config, config_yaml)

    def commit_wave(self, attempt: str, complete: dict[str, dict[str, Any]]) -> None:
        """4. A wave read back: its complete shards' superseded files go, the shards are recorded done, the manifest follows."""
        self._delete_superseded(complete)
        self._append(DONE, attempt, complete)
        self.publish_manifest(attempt)

    def finish(self, attempt: str, every_shard_complete: bool, summary: dict[str, Any]) -> None:
        """5. The run's end: an --overwrite ends once every shard is accounted for; compaction; summary; manifest."""
        if every_shard_complete:
            self._finish_overwrite(attempt)  # shards gone from the input or unreadable now: their old results go too
        ledger_index.compact(self.storage, self.output, self.ledger(), attempt)
        self.storage.write_json(self.layout.summary, summary)
        self.storage.write_json(self.layout.run_summary(attempt), summary)
        self.publish_manifest(attempt)

    def publish_manifest(self, attempt: str) -> None:
        """The live result files, relative to the output prefix, replaced whole: what readers outside the project read."""
        prefix = self.storage.listed_prefix(self.output)
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "attempt": attempt,
            "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        for name in (RANKED, DEAD_LETTER, PAIRS):
            manifest[name] = [uri[len(prefix) + 1 :] for uri in self.live_files([name])]
        self.storage.write_json(self.layout.manifest, manifest)

    def remove_temporaries(self) -> int:
        """Delete the hidden temporaries under the prefix (a writer killed mid-file left them); how many."""
        found = self.storage.temporaries(self.output)
        for uri in found:
            self.storage.remove(uri)
        return len(found)

    def write_planner_dead_letters(self, key: str, file_name: str, table: pa.Table) -> str:
        """Dead letters the planner writes for a shard (rows no task can address); the file's URI."""
        uri = self.layout.result_file(DEAD_LETTER, key, file_name)
        self.storage.write_parquet(table, uri)
        return uri

    # -- the parts ---------------------------------------------------------------------------------------------

    def _read_ledger_file(self, name: str) -> Any:
        uri = self.layout.ledger(name)
        return self.storage.read_json(uri) if self.output and self.storage.exists(uri) else None

    def _current(self, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        """`entry` unless an --overwrite is in progress that it predates."""
        overwrite = self.overwrite()
        if entry is None or overwrite is None or entry.get("overwrite_id") == overwrite["overwrite_id"]:
            return entry
        return None

    def _tagged(self, entry: dict[str, Any]) -> dict[str, Any]:
        overwrite = self.overwrite()
        return entry | {"overwrite_id": overwrite["overwrite_id"]} if overwrite else entry

    def _append(self, kind: str, attempt: str, entries: dict[str, dict[str, Any]]) -> None:
        events = [self._tagged(entry | {"key": key}) for key, entry in sorted(entries.items())]
        ledger_index.append_events(self.storage, self.output, self.ledger(), kind, attempt, events)

    def _record_overwrite(self, overwrite: dict[str, Any] | None) -> None:
        """Start, update or (None) end an --overwrite; one write, so it takes effect all at once."""
        uri = self.layout.ledger(SUPERSEDED_FILE)
        if overwrite is None:
            self.storage.remove(uri)
        else:
            self.storage.write_json(uri, overwrite)
        self._overwrite, self._overwrite_read = overwrite, True

    def _supersede_results(self, fingerprint: dict[str, Any]) -> int:
        """Start an overwrite: every result file now in the output is superseded (one write); how many files."""
        files = set(self.superseded())  # an unfinished overwrite's too
        for name in ALL_FOLDERS:
            files.update(self.storage.list_files(self.layout.folder(name), ".parquet"))
        self._record_overwrite({"overwrite_id": uuid.uuid4().hex[:12], "fingerprint": fingerprint, "files": sorted(files)})
        return len(files)

    def _delete_superseded(self, keys: Iterable[str]) -> int:
        """Delete the superseded files of the given shards (their new rows are complete); how many."""
        overwrite = self.overwrite()
        if overwrite is None:
            return 0
        wanted = set(keys)
        prefix = self.storage.listed_prefix(self.output)
        # `<prefix>/<folder>/<key>/<file>`
        doomed = {uri for uri in overwrite["files"] if uri[len(prefix) + 1 :].split("/")[1] in wanted}
        for uri in sorted(doomed):
            self.storage.remove(uri)
        self._record_overwrite(overwrite | {"files": [uri for uri in overwrite["files"] if uri not in doomed]})
        return len(doomed)

    def _finish_overwrite(self, attempt: str) -> None:
        """Delete what is still superseded and the ledger events older than the overwrite, then end it."""
        overwrite = self.overwrite()
        if overwrite is None:
            return
        for uri in overwrite["files"]:
            self.storage.remove(uri)
        keep: Callable[[dict[str, Any]], bool] = lambda event: event.get("overwrite_id") == overwrite["overwrite_id"]  # noqa: E731
        ledger_index.compact(self.storage, self.output, self.ledger(), attempt, keep)
        self._record_overwrite(None)

    def _forget_shards(self, attempt: str, keys: list[str]) -> None:
        """Record that the shards' results are stale, then delete them: a crash in between leaves the record, so the
        next run deletes them too (it never keeps rows of changed content)."""
        self._append(FORGOTTEN, attempt, {key: {} for key in keys})
        for key in keys:
            for name in ALL_FOLDERS:
                self.storage.remove(self.folder(name, key))

    def _remove_orphan_pairs(self, keys: list[str]) -> int:
        """Delete pairs files of the given shards whose ranked file was never written (a crashed task); how many.
        The sink writes a task's pairs file before its ranked file of the same name: the ranked file commits it."""
        pairs = self.files_by_shard(PAIRS)
        if not pairs:
            return 0
        ranked = self.files_by_shard(RANKED)
        removed = 0
        for key in set(keys) & set(pairs):
            committed = {uri.rsplit("/", 1)[-1] for uri in ranked.get(key, [])}
            for uri in pairs[key]:
                if uri.rsplit("/", 1)[-1] not in committed:
                    self.storage.remove(uri)
                    removed += 1
        return removed
