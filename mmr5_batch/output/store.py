"""The output prefix as it stands: what it holds, what counts now, and what a reader is shown.

The outputs are the checkpoint. Result files are partitioned by source shard
(`ranked/<shard key>/`, `dead_letter/<shard key>/`; layout.py names every
path) and each file appears whole or not at all, so the query_ids written
for a shard are exactly its queries that are done, whatever killed the
previous run. A run reads them and processes only the rest.

What counts now (resume, readback): every result file but the superseded
ones (`_ledger/superseded.json`: an `--overwrite` in progress, or a shard
whose content changed). What a reader is shown (the manifest,
`manifest_names`): per shard, either its old results or its new ones, never
both and never neither: a shard's superseded files stay named until its
replacement is committed, its new files are named from then on. Every write
to the prefix is the transaction's (transaction.py); this object only reads.

The ledger (ledger_index.py: a few index files per run) records which
content (fingerprint: size plus ETag or mtime) a run began to process, and
which shards have every query written: a later run skips those without
reading them, and reprocesses a shard whose fingerprint changed.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmr5_batch.output import ledger_index
from mmr5_batch.output.layout import (
    ALL_FOLDERS,
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
from mmr5_batch.output.ledger_index import DONE, FORGOTTEN, LedgerIndex
from mmr5_batch.output.records import LedgerEvent, Manifest, OutputDamaged, Superseded, parse_json
from mmr5_batch.storage.filesystems import Storage

# What a message about a damaged ledger file tells the user to do.
LEDGER_REMEDY = "it is the job's own record: restore it, or write the results to a new output"
MANIFEST_REMEDY = "rerun the job (mmr5-batch rerank with the same settings) to rewrite it"


@dataclass
class OutputStore:
    """One output prefix seen through its ledger and result folders; read once, kept current by the transaction."""

    storage: Storage
    output: str
    _superseded: Superseded | None = field(default=None, repr=False)
    _superseded_read: bool = field(default=False, repr=False)
    _ledger: LedgerIndex | None = field(default=None, repr=False)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output)

    # -- the ledger's records ----------------------------------------------------------------------------------

    def superseded_record(self) -> Superseded | None:
        """The files that no longer count yet stay named until replaced (an --overwrite's, changed shards')."""
        if not self._superseded_read:
            data = self._read_ledger_file(SUPERSEDED_FILE)
            self._superseded = Superseded.from_json(data) if data is not None else None
            self._superseded_read = True
        return self._superseded

    def overwrite(self) -> Superseded | None:
        """The --overwrite in progress, if any: while it is, the ledger's older entries do not count."""
        record = self.superseded_record()
        return record if record is not None and record.overwriting else None

    def superseded(self) -> frozenset[str]:
        record = self.superseded_record()
        return frozenset(record.files) if record else frozenset()

    def remember_superseded(self, record: Superseded | None) -> None:
        """What the transaction just wrote (it holds the lease: nobody else changes the record)."""
        self._superseded, self._superseded_read = record, True

    def ledger(self) -> LedgerIndex:
        """The ledger index, read once (a few requests) and kept up to date by the transaction's writes."""
        if self._ledger is None:
            self._ledger = ledger_index.read_index(self.storage, self.output) if self.output else LedgerIndex()
        return self._ledger

    def latest_event(self, key: str) -> LedgerEvent | None:
        """A shard's latest ledger event that counts (see ledger_index.py), or None."""
        event = self.ledger().latest.get(key)
        overwrite = self.overwrite()
        if event is None or overwrite is None or event.overwrite_id == overwrite.overwrite_id:
            return event
        return None

    def replacing(self) -> frozenset[str]:
        """The shards whose old files are superseded and whose replacement is not committed yet."""
        return frozenset(self._key_of(uri) for uri in self.superseded()) - self.replaced()

    def replaced(self) -> frozenset[str]:
        """Shards with superseded files whose replacement is committed (done within the --overwrite in progress):
        their old files are named no more and may be deleted. A changed shard's replacement is committed and its old
        files deleted in one commit; one that a crash split is processed again (the planner sees it replacing)."""
        if self.overwrite() is None:
            return frozenset()
        keys = {self._key_of(uri) for uri in self.superseded()}
        return frozenset(key for key in keys if (event := self.latest_event(key)) is not None and event.event == DONE)

    def is_changed(self, key: str, fingerprint: str) -> bool | None:
        """Whether the shard must be processed from scratch (its results are of other content, or their replacement
        is pending), False where it is done with this content, None where it is new or resumes."""
        event = self.latest_event(key)
        if self.overwrite() is None and key in self.replacing():
            return True
        if event is None:
            return None
        if event.event == FORGOTTEN or event.fingerprint != fingerprint:
            return True
        return False if event.event == DONE else None

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

    def job(self) -> Mapping[str, Any] | None:
        """The settings of the results here: an --overwrite in progress's, else the last job's."""
        overwrite = self.overwrite()
        if overwrite is not None:
            return overwrite.fingerprint
        return self._read_ledger_file(JOB_FILE)

    def tagged(self, entry: dict[str, Any]) -> dict[str, Any]:
        """`entry` marked as belonging to the --overwrite in progress, if any."""
        overwrite = self.overwrite()
        return entry | {"overwrite_id": overwrite.overwrite_id} if overwrite else entry

    # -- the result files ----------------------------------------------------------------------------------------

    def result_files(self, name: str, key: str) -> list[str]:
        """A shard's live files in one result folder, superseded ones left out."""
        superseded = self.superseded()
        return [uri for uri in self.storage.list_files(self.layout.shard_folder(name, key), ".parquet") if uri not in superseded]

    def files_by_shard(self, name: str, *, superseded_too: bool = False) -> dict[str, list[str]]:
        """Every shard's files in one result folder (one recursive listing), superseded ones left out unless asked."""
        leave_out = frozenset() if superseded_too else self.superseded()
        found: dict[str, list[str]] = {}
        if not self.output:
            return found
        for uri in self.storage.list_files(self.layout.folder(name), ".parquet"):
            if uri not in leave_out:
                found.setdefault(self._key_of(uri), []).append(uri)
        return found

    def written_files(self) -> dict[str, list[str]]:
        """Every shard's live result files (ranked and dead letters): what resume and the readback read."""
        found: dict[str, list[str]] = {}
        for name in RESULT_FOLDERS:
            for key, files in self.files_by_shard(name).items():
                found.setdefault(key, []).extend(files)
        return found

    @functools.cached_property
    def _listed_prefix(self) -> str:
        # Resolved once: `relative` runs for every file of every listing.
        return self.storage.listed_prefix(self.output)

    def relative(self, uri: str) -> str:
        """A file's path below the prefix, as the manifest names it."""
        return uri[len(self._listed_prefix) + 1 :]

    def _key_of(self, uri: str) -> str:
        # `<prefix>/<folder>/<key>/<file>`
        return self.relative(uri).split("/")[1]

    def manifest_names(self, committed: Iterable[str] = (), *, every_shard: bool = False) -> dict[str, list[str]]:
        """What the manifest names now, per folder (paths relative to the prefix): for each shard either its old,
        superseded files (its replacement not committed) or its live ones, never both; a pairs file only beside its
        ranked file (which commits it). `committed`: shards whose replacement the caller has just recorded done;
        `every_shard`: every replacement is committed (the run's end)."""
        superseded = self.superseded()
        pending = frozenset() if every_shard else self.replacing() - set(committed)
        names: dict[str, list[str]] = {}
        for name in ALL_FOLDERS:
            names[name] = sorted(
                self.relative(uri)
                for key, files in self.files_by_shard(name, superseded_too=True).items()
                for uri in files
                if (uri in superseded) == (key in pending)
            )
        ranked = {path.split("/", 1)[1] for path in names[RANKED]}
        names[PAIRS] = [path for path in names[PAIRS] if path.split("/", 1)[1] in ranked]
        return names

    # -- what readers read -------------------------------------------------------------------------------------

    def manifest(self) -> Manifest | None:
        """The manifest as last published (None: none yet, or an output written before manifests existed)."""
        uri = self.layout.manifest
        if not (self.output and self.storage.exists(uri)):
            return None
        data = parse_json(uri, self.storage.read_bytes(uri), MANIFEST_REMEDY)
        if not isinstance(data, dict):
            raise OutputDamaged(f"{uri} is not a JSON object; {MANIFEST_REMEDY}")
        return Manifest.from_json(data)

    def unfinished(self, manifest: Manifest | None) -> str | None:
        """Why the results the manifest names are not those of a finished run, in words; None when they are."""
        if manifest is not None and manifest.complete is not None:
            return None if manifest.complete else manifest.unfinished or "the run that wrote it did not finish"
        # Written before manifests said so: the ledger tells of an --overwrite in progress.
        return "an --overwrite is in progress" if self.overwrite() is not None else None

    def committed_files(self, folders: Iterable[str] = RESULT_FOLDERS) -> list[str]:
        """The result files the manifest names, each query once: what `evaluate` and readers outside read. An output
        written before manifests existed: its live files."""
        manifest = self.manifest()
        prefix = self._listed_prefix
        if manifest is None:
            return sorted(uri for name in folders for files in self.files_by_shard(name).values() for uri in files)
        return sorted(f"{prefix}/{path}" for name in folders for path in manifest.files(name))

    # -- the parts ---------------------------------------------------------------------------------------------

    def _read_ledger_file(self, name: str) -> Any:
        uri = self.layout.ledger(name)
        if not (self.output and self.storage.exists(uri)):
            return None
        return parse_json(uri, self.storage.read_bytes(uri), LEDGER_REMEDY)

    def _current(self, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        """`entry` unless an --overwrite is in progress that it predates."""
        overwrite = self.overwrite()
        if entry is None or overwrite is None or entry.get("overwrite_id") == overwrite.overwrite_id:
            return entry
        return None
