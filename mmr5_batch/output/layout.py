"""Every path and file name under an output prefix, in one place.

```
OUTPUT/
  ranked/<shard key>/part-<attempt>-<task>.parquet     ranked rows (status ok, repaired, fallback, fast, pointwise)
  dead_letter/<shard key>/part-<attempt>-<task>.parquet    error rows, with the reason
  pairs/<shard key>/part-<attempt>-<task>.parquet      relabel pairs (--emit pairs), committed by the ranked file of the same name
  manifest.json      the live result files, relative to OUTPUT (replaced whole at every commit): what readers outside read
  summary.json       the last run's summary           config.yaml   the last run's config (no credentials)
  _ledger/
    lease.json                 one job per prefix (lease.py)
    index/<seq>-<event>-<attempt>.jsonl    the shard ledger (ledger_index.py)
    job.json                   the settings the results were made with (their digest)
    input_layout.json          the input layout (grouped or pairs), decided by the first run
    passthrough_schema.json    the passthrough columns' Arrow types
    superseded.json            an --overwrite in progress and the files it replaces
    runs/<attempt>.json        every finished run's summary
```

A shard key names a source shard's folders: its path under the input root,
made safe, plus a short hash of the full path.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from mmr5_batch.storage.filesystems import join

RANKED = "ranked"
DEAD_LETTER = "dead_letter"
PAIRS = "pairs"
# The folders whose rows account for queries (resume, readback, evaluation), and every folder of result files.
RESULT_FOLDERS = (RANKED, DEAD_LETTER)
ALL_FOLDERS = (*RESULT_FOLDERS, PAIRS)

LEDGER = "_ledger"
INDEX = "index"
RUNS = "runs"
LEASE_FILE = "lease.json"
JOB_FILE = "job.json"
INPUT_LAYOUT_FILE = "input_layout.json"
PASSTHROUGH_FILE = "passthrough_schema.json"
SUPERSEDED_FILE = "superseded.json"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


def shard_key(root: str, shard: str) -> str:
    """A stable folder name for a shard: its path under the input root, made safe, plus a short hash."""
    relative = shard[len(root) :].strip("/") if shard.startswith(root.rstrip("/")) and shard != root else shard.rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", relative.removesuffix(".parquet").replace("/", "__")).lstrip("._") or "shard"
    return f"{stem[:80]}-{zlib.crc32(shard.encode()):08x}"


@dataclass(frozen=True)
class OutputLayout:
    """The paths of one output prefix."""

    output: str

    def folder(self, name: str) -> str:
        return join(self.output, name)

    def shard_folder(self, name: str, key: str) -> str:
        return join(self.output, name, key)

    def result_file(self, name: str, key: str, file_name: str) -> str:
        return join(self.output, name, key, file_name)

    def ledger(self, *parts: str) -> str:
        return join(self.output, LEDGER, *parts)

    def run_summary(self, attempt: str) -> str:
        return self.ledger(RUNS, f"{attempt}.json")

    @property
    def manifest(self) -> str:
        return join(self.output, MANIFEST_FILE)

    @property
    def summary(self) -> str:
        return join(self.output, SUMMARY_FILE)

    @property
    def config(self) -> str:
        return join(self.output, CONFIG_FILE)


def write_file_name(attempt: str, task: int) -> str:
    """A write task's file name: a retried task replaces its own file instead of adding one."""
    return f"part-{attempt}-{task:05d}.parquet"
