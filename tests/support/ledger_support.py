"""Reading and editing an output's ledger in tests: which shards it holds as done, and undoing that (a crash before accounting)."""

from __future__ import annotations

import json
from pathlib import Path

from mmr5_batch.output.layout import INDEX, LEDGER
from mmr5_batch.output.ledger_index import DONE, read_index
from mmr5_batch.storage.filesystems import Storage


def done_keys(output: str | Path, storage: Storage | None = None) -> list[str]:
    """The shard keys whose latest ledger event is `done`, sorted."""
    index = read_index(storage or Storage(), str(output))
    return sorted(key for key, event in index.latest.items() if event.event == DONE)


def forget_done(output: Path) -> int:
    """Remove every `done` event from a local output's index, as if its runs had died before their accounting; how many."""
    removed = 0
    for path in sorted((output / LEDGER / INDEX).glob("*.jsonl")):
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [event for event in events if event["event"] != DONE]
        removed += len(events) - len(kept)
        if kept:
            path.write_text("".join(json.dumps(event) + "\n" for event in kept))
        else:
            path.unlink()
    return removed
