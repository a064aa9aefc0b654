"""What an output prefix already holds: resume state, the shard ledger, and the exactly-once check.

The outputs are the checkpoint. Result files are partitioned by source shard
(`ranked/<shard key>/`, `dead_letter/<shard key>/`) and each file appears
whole or not at all, so the query_ids written for a shard are exactly the
queries of that shard that are done, whatever killed the previous run. A run
reads them and processes only the rest.

The ledger (`_ledger/shards/<shard key>.json`) records shards whose every
query is written, with the shard's fingerprint (size plus ETag or mtime): a
later run over the same prefix skips them without reading them, and
reprocesses a shard whose fingerprint changed after deleting its old rows.
`_ledger/job.json` holds the settings that shape results; a run with other
settings into the same prefix is refused, since its rows would mix with these.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from mmr5_batch.evaluation.relabel import PAIRS_FOLDER
from mmr5_batch.storage.filesystems import Storage, join

RESULT_FOLDERS = ("ranked", "dead_letter")
LEDGER = "_ledger"


def shard_key(root: str, shard: str) -> str:
    """A stable folder name for a shard: its path under the input root, made safe, plus a short hash."""
    relative = shard[len(root) :].strip("/") if shard.startswith(root.rstrip("/")) and shard != root else shard.rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", relative.removesuffix(".parquet").replace("/", "__")).lstrip("._") or "shard"
    return f"{stem[:80]}-{zlib.crc32(shard.encode()):08x}"


def job_fingerprint(public_config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what a result row says; runs into one prefix must agree on them."""
    shaping = {
        "input": public_config["input"],
        "model": {key: public_config["model"][key] for key in ("name", "max_new_tokens", "think_tokens", "temperature", "top_p", "seed")}
        # Only when on, so that outputs written before the setting existed keep their fingerprint.
        | ({"constrain_answer": True} if public_config["model"].get("constrain_answer") else {}),
        "ranking": public_config["ranking"],
        "cascade": public_config["cascade"],
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

    def folder(self, name: str, key: str) -> str:
        return join(self.output, name, key)

    def ledger_entry(self, key: str) -> dict[str, Any] | None:
        if not self.output:  # `plan` without an output prefix: nothing done anywhere
            return None
        uri = join(self.output, LEDGER, "shards", f"{key}.json")
        return self.storage.read_json(uri) if self.storage.exists(uri) else None

    def record_shard(self, key: str, entry: dict[str, Any]) -> None:
        self.storage.write_json(join(self.output, LEDGER, "shards", f"{key}.json"), entry)

    def forget_shard(self, key: str) -> None:
        """Delete a shard's ledger entry first, then its rows: a crash in between leaves rows a rerun finds and keeps."""
        self.storage.remove(join(self.output, LEDGER, "shards", f"{key}.json"))
        for name in (*RESULT_FOLDERS, PAIRS_FOLDER):
            self.storage.remove(self.folder(name, key))

    def remove_orphan_pairs(self, key: str) -> int:
        """Delete pairs files of a shard whose ranked file was never written (a crashed task); how many."""
        from mmr5_batch.evaluation.relabel import orphan_pairs

        committed = {uri.rsplit("/", 1)[-1] for uri in self.storage.list_files(self.folder("ranked", key), ".parquet")}
        orphans = orphan_pairs(self.storage.list_files(self.folder(PAIRS_FOLDER, key), ".parquet"), committed)
        for uri in orphans:
            self.storage.remove(uri)
        return len(orphans)

    def written(self, key: str, columns: tuple[str, ...] = ("query_id",)) -> Any:
        """The given columns of every result row written for a shard (ranked and dead letters), or None."""
        if not self.output:
            return None
        files = [uri for name in RESULT_FOLDERS for uri in self.storage.list_files(self.folder(name, key), ".parquet")]
        return self.storage.read_parquet_columns(files, columns)

    def written_ids(self, key: str) -> Counter[str]:
        table = self.written(key)
        return Counter(table["query_id"].to_pylist()) if table is not None else Counter()

    def job(self) -> dict[str, Any] | None:
        uri = join(self.output, LEDGER, "job.json")
        return self.storage.read_json(uri) if self.storage.exists(uri) else None

    def record_job(self, fingerprint: dict[str, Any]) -> None:
        self.storage.write_json(join(self.output, LEDGER, "job.json"), fingerprint)

    def clear(self) -> None:
        for name in (*RESULT_FOLDERS, PAIRS_FOLDER, LEDGER, "stats"):
            self.storage.remove(join(self.output, name))
