"""Every write a run makes to its output prefix, as one transaction whose type allows only the crash-safe order.

    plan -> open -> begin -> (commit a wave)* -> finish, then close

A wrong order is a bug and raises `TransactionOrderError`. Each step is a
handful of writes, ordered so that three invariants hold after a crash at
any write (docs/output-and-exactly-once.md; tests/output/test_crash_points.py
crashes at each one):

(a) every file the manifest names exists: a file is named only after it is
    written, and stops being named before it is deleted;
(b) through the manifest each query with a result is read exactly once: a
    shard being replaced (an `--overwrite`, changed content) shows its old
    files until its new ones are committed, then only the new ones;
(c) the ledger, the manifest and the files agree after any crash plus one
    rerun: whatever a crash leaves superseded, unnamed or half-recorded, the
    next holder of the lease finishes or redoes.

The steps:

- `plan`: read what the prefix holds, plan the run on it, refuse other
  settings (no write).
- `open`: take the lease (one job per prefix), remove temporaries a killed
  writer left (never named), plan again if another job finished meanwhile.
- `begin`: supersede the files of an `--overwrite` or of changed shards (one
  write; nothing is deleted), publish the manifest (marked unfinished),
  remove orphan pairs files (never named), record the shards started and the
  job's settings, input layout, passthrough types and config.
- `write_dead_letters`: the planner's dead letters, a result file like the
  pipeline's (whole or not at all; named at the next commit).
- `commit_wave`: record the wave's complete shards done, publish the
  manifest naming their new files, then delete their superseded files.
- `finish`: publish the final manifest (complete, or saying what is not),
  end an `--overwrite` whose every shard is accounted for (delete what is
  still superseded, drop older ledger events), compact the ledger, write
  the summary.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

import pyarrow as pa

from mmr5_batch.errors import JobError, error_line
from mmr5_batch.output import ledger_index
from mmr5_batch.output.layout import ALL_FOLDERS, DEAD_LETTER, INPUT_LAYOUT_FILE, JOB_FILE, PAIRS, PASSTHROUGH_FILE, RANKED, SUPERSEDED_FILE
from mmr5_batch.output.lease import OutputLease
from mmr5_batch.output.ledger_index import DONE, STARTED
from mmr5_batch.output.records import LedgerEvent, Manifest, OutputDamaged, ResultSettings, RunSummary, ShardStats, Superseded
from mmr5_batch.output.store import OutputStore
from mmr5_batch.output.writes import Delete, Put, Write, apply, put_json, put_parquet
from mmr5_batch.storage.filesystems import Storage

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
Plan = TypeVar("Plan")


class TransactionOrderError(RuntimeError):
    """A step of the output transaction called out of order: a bug in the caller, never the data."""


class Phase(enum.Enum):
    NEW = "new"
    PLANNED = "planned"
    OPEN = "open"
    BEGUN = "begun"
    FINISHED = "finished"
    CLOSED = "closed"


class OutputTransaction(Generic[Plan]):
    """One run attempt's writes to one output prefix; see the module docstring for the order and the invariants.

    `planner` plans the run on what the prefix holds (called by `plan`, and
    again by `open` when another job finished into the prefix meanwhile);
    `settings` are the results' settings, which the prefix's must match
    unless `overwrite`."""

    def __init__(
        self,
        storage: Storage,
        output: str,
        attempt: str,
        settings: ResultSettings,
        *,
        overwrite: bool,
        planner: Callable[[OutputStore], Plan],
    ) -> None:
        self.storage, self.output, self.attempt = storage, output, attempt
        self.settings, self.overwrite = settings, overwrite
        self.planner = planner
        self.store = OutputStore(storage, output)
        self.phase = Phase.NEW
        self._lease: OutputLease | None = None
        self._runs_before: list[str] | None = None

    # -- the steps -------------------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """Plan the run on what the prefix holds; refuse a prefix holding results of other settings (no write)."""
        self._step(Phase.NEW, Phase.PLANNED)
        self._runs_before = self._finished_runs_or_none()
        plan = self.planner(self.store)
        self._check_settings()
        return plan

    def open(self, run_id: str, lease_seconds: float) -> Plan | None:
        """Take the lease, clear what a killed writer left; the run's plan made again when another job finished into
        the prefix since `plan` (else None: the plan stands)."""
        self._step(Phase.PLANNED, Phase.OPEN)
        try:  # the first write: the prefix exists from here on
            self._lease = OutputLease(self.storage, self.output, self.attempt, run_id, lease_seconds)
            self._lease.acquire()
            apply(self.storage, [Delete(uri) for uri in self.storage.temporaries(self.output)])
        except JobError:
            raise
        except Exception as error:  # a file where a folder should be, read-only, full, no permission
            raise JobError(f"cannot write to output {self.output}: {error_line(error)}") from None
        try:
            self.store.manifest()
        except OutputDamaged as damaged:
            log.warning("%s; this run rewrites it", damaged)
        if self._runs_before is not None and self.store.finished_runs() == self._runs_before:
            return None
        self.store = OutputStore(self.storage, self.output)
        plan = self.planner(self.store)
        self._check_settings()
        return plan

    def begin(self, *, to_run: Mapping[str, str], changed: Iterable[str], input_layout: str, passthrough: pa.Schema, config_yaml: str) -> None:
        """Before any result is written: supersede, publish, clear orphans, record the shards started (key -> content
        fingerprint) and the job."""
        self._step(Phase.OPEN, Phase.BEGUN)
        layout = self.store.layout
        encoded = base64.b64encode(passthrough.serialize().to_pybytes()).decode()
        columns = {"columns": [str(column) for column in passthrough], "arrow_ipc": encoded}
        writes = [
            *self._supersede(set(changed)),
            self._manifest(unfinished=f"run {self.attempt} has begun and not finished"),
            *self._orphan_pairs(list(to_run)),
            *self._append(STARTED, [LedgerEvent(key, STARTED, fingerprint) for key, fingerprint in sorted(to_run.items())]),
            put_json(layout.ledger(JOB_FILE), self.settings.to_json()),
            put_json(layout.ledger(INPUT_LAYOUT_FILE), self.store.tagged({"layout": input_layout})),
            put_json(layout.ledger(PASSTHROUGH_FILE), self.store.tagged(columns)),
            Put(layout.config, config_yaml.encode()),
        ]
        apply(self.storage, writes)

    def write_dead_letters(self, key: str, file_name: str, table: pa.Table) -> str:
        """The planner's dead letters for a shard: a result file like the pipeline's, named at the next commit."""
        self._require(Phase.BEGUN)
        write = put_parquet(self.store.layout.result_file(DEAD_LETTER, key, file_name), table)
        apply(self.storage, [write])
        return write.uri

    def commit_wave(self, complete: Mapping[str, ShardStats], *, wave: int, waves: int) -> None:
        """Wave `wave` of `waves` read back: its complete shards recorded done, the manifest naming their new files,
        then their superseded files deleted."""
        self._require(Phase.BEGUN)
        writes = [
            *self._append(DONE, [self._done(key, stats) for key, stats in sorted(complete.items())]),
            self._manifest(committed=complete, unfinished=f"run {self.attempt} has committed {wave} of its {waves} wave(s) and not finished"),
            *self._delete_superseded(set(complete)),
        ]
        apply(self.storage, writes)

    def finish(self, summary: RunSummary) -> None:
        """The run's end: the final manifest (unfinished while a shard is not fully accounted for); an --overwrite
        ends once every shard is (shards gone from the input or unreadable now lose their old results too);
        compaction; the summary."""
        self._step(Phase.BEGUN, Phase.FINISHED)
        incomplete = summary.incomplete_shards
        every_shard_complete = not incomplete
        unfinished = None
        if incomplete:
            unfinished = f"run {self.attempt} left {len(incomplete)} shard(s) not fully accounted for ({', '.join(incomplete[:3])})"
            if self.store.overwrite() is not None:
                unfinished += "; its --overwrite goes on: their old results stand until a rerun replaces them"
        writes = [
            self._manifest(every_shard=every_shard_complete, unfinished=unfinished),
            *(self._end_supersession() if every_shard_complete else []),
            *ledger_index.compact(self.output, self.store.ledger(), self.attempt),
            put_json(self.store.layout.summary, summary.to_json()),
            put_json(self.store.layout.run_summary(self.attempt), summary.to_json()),
        ]
        apply(self.storage, writes)

    def close(self) -> None:
        """Release the lease (whatever step the run reached)."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self.phase = Phase.CLOSED

    def __enter__(self) -> OutputTransaction[Plan]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the parts -------------------------------------------------------------------------------------------------

    def _step(self, expected: Phase, then: Phase) -> None:
        self._require(expected)
        self.phase = then

    def _require(self, expected: Phase) -> None:
        if self.phase is not expected:
            raise TransactionOrderError(f"output transaction: this step needs the {expected.value} phase, it is {self.phase.value}")

    def _finished_runs_or_none(self) -> list[str] | None:
        """The finished runs in the output before planning; None where it cannot be read (planning then says why)."""
        try:
            return self.store.finished_runs()
        except Exception:
            return None

    def _check_settings(self) -> None:
        """Refuse to add rows to a prefix that holds results made with other settings (they would mix)."""
        try:
            earlier = self.store.job()
        except OutputDamaged:
            raise
        except Exception as error:  # missing bucket, rejected credentials, unreachable endpoint
            raise JobError(f"cannot read output {self.output}: {error_line(error)}") from None
        if earlier is None or self.overwrite or earlier.get("digest") == self.settings.digest:
            return
        difference = ResultSettings.from_json({"settings": {}} | dict(earlier)).difference(self.settings)
        raise JobError(f"{self.output} holds results of a run with other settings ({difference}); choose another output or pass --overwrite")

    def _append(self, kind: str, events: list[LedgerEvent]) -> list[Write]:
        tagged = [LedgerEvent.from_json(self.store.tagged(event.to_json())) for event in events]
        return ledger_index.append(self.output, self.store.ledger(), kind, self.attempt, tagged)

    def _done(self, key: str, stats: ShardStats) -> LedgerEvent:
        return LedgerEvent.from_json(stats.to_json() | {"key": key, "event": DONE})

    def _record(self, record: Superseded | None) -> Write:
        """The superseded record written (or, None, removed): one write, so it takes effect all at once."""
        uri = self.store.layout.ledger(SUPERSEDED_FILE)
        self.store.remember_superseded(record)
        return Delete(uri) if record is None else put_json(uri, record.to_json())

    def _supersede(self, changed: set[str]) -> list[Write]:
        """An --overwrite supersedes every result file there is; a changed shard its own. One write, no delete."""
        current = self.store.superseded_record()
        files = set(current.files) if current else set()
        if self.overwrite:
            for name in ALL_FOLDERS:
                files.update(self.storage.list_files(self.store.layout.folder(name), ".parquet"))
            return [self._record(Superseded(tuple(files), uuid.uuid4().hex[:12], self.settings.to_json()))]
        if not changed:
            return []
        for name in ALL_FOLDERS:
            files.update(uri for key, found in self.store.files_by_shard(name).items() if key in changed for uri in found)
        overwrite_id, settings = (current.overwrite_id, current.fingerprint) if current else (None, None)
        return [self._record(Superseded(tuple(files), overwrite_id, settings))]

    def _delete_superseded(self, keys: set[str]) -> list[Write]:
        """Delete the superseded files of `keys` (named no more: their replacement is committed), then record that."""
        record = self.store.superseded_record()
        doomed = {uri for uri in record.files if self.store.relative(uri).split("/")[1] in keys} if record else set()
        if record is None or not doomed:
            return []
        left = tuple(uri for uri in record.files if uri not in doomed)
        return [
            *(Delete(uri) for uri in sorted(doomed)),
            self._record(Superseded(left, record.overwrite_id, record.fingerprint) if left or record.overwriting else None),
        ]

    def _end_supersession(self) -> list[Write]:
        """Every shard is accounted for: what is still superseded goes, an --overwrite's older ledger events with it."""
        record = self.store.superseded_record()
        if record is None:
            return []
        compacted = []
        if record.overwriting:
            compacted = ledger_index.compact(self.output, self.store.ledger(), self.attempt, lambda event: event.overwrite_id == record.overwrite_id)
        return [*(Delete(uri) for uri in record.files), *compacted, self._record(None)]

    def _orphan_pairs(self, keys: list[str]) -> list[Write]:
        """Delete pairs files of the given shards whose ranked file was never written (a crashed task; never named).
        The sink writes a task's pairs file before its ranked file of the same name: the ranked file commits it."""
        pairs = self.store.files_by_shard(PAIRS)
        ranked = self.store.files_by_shard(RANKED) if pairs else {}
        writes: list[Write] = []
        for key in sorted(set(keys) & set(pairs)):
            committed = {uri.rsplit("/", 1)[-1] for uri in ranked.get(key, [])}
            writes += [Delete(uri) for uri in pairs[key] if uri.rsplit("/", 1)[-1] not in committed]
        return writes

    def _manifest(self, *, committed: Iterable[str] = (), every_shard: bool = False, unfinished: str | None) -> Put:
        """The manifest, replaced whole, naming what is named now (OutputStore.manifest_names)."""
        names = self.store.manifest_names(committed, every_shard=every_shard)
        manifest = Manifest(
            version=MANIFEST_VERSION,
            attempt=self.attempt,
            written_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            ranked=tuple(names[RANKED]),
            dead_letter=tuple(names[DEAD_LETTER]),
            pairs=tuple(names[PAIRS]),
            complete=unfinished is None,
            unfinished=unfinished,
        )
        return put_json(self.store.layout.manifest, manifest.to_json())
