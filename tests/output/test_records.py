"""The output's typed records read and write the JSON earlier versions wrote, unknown fields kept."""

from __future__ import annotations

import json

import pytest

from mmr5_batch.errors import JobError
from mmr5_batch.output.records import LedgerEvent, Manifest, OutputDamaged, ResultSettings, ShardStats, Superseded, parse_json

# As the previous version wrote them (one line of a `done` index file, superseded.json, manifest.json, job.json).
DONE_LINE = {
    "complete": True,
    "counters": {"queries": 2, "ok": 2, "error": 0},
    "event": "done",
    "expected_queries": 2,
    "finished_at": "2026-12-04T02:41:29+00:00",
    "fingerprint": "1234:1764816000.0",
    "key": "a-1a2b3c4d",
    "overwrite_id": "0f1e2d3c4b5a",
    "repeated_queries": 0,
    "run_id": "20261204T024059Z-dbecd5",
    "shard": "/data/in/a.parquet",
    "written_queries": 2,
}
SUPERSEDED = {
    "overwrite_id": "0f1e2d3c4b5a",
    "fingerprint": {"digest": "a70f759ce268ce37", "settings": {"ranking": {"window": 3}}},
    "files": ["/o/ranked/k/b.parquet", "/o/ranked/k/a.parquet"],
}
MANIFEST = {"version": 1, "attempt": "r-1", "written_at": "2026-12-04T02:41:29+00:00", "ranked": ["ranked/k/a.parquet"], "dead_letter": [], "pairs": []}


def test_records_round_trip_the_previous_versions_json():
    event = LedgerEvent.from_json(DONE_LINE)
    assert (event.key, event.event, event.fingerprint, event.overwrite_id) == ("a-1a2b3c4d", "done", "1234:1764816000.0", "0f1e2d3c4b5a")
    assert event.to_json() == DONE_LINE
    stats = event.stats()
    assert isinstance(stats, ShardStats) and stats.complete and stats.counters["queries"] == 2 and stats.run_id == "20261204T024059Z-dbecd5"
    started = {"event": "started", "fingerprint": "1:2", "key": "k"}  # no overwrite_id: none is written back
    assert LedgerEvent.from_json(started).to_json() == started
    record = Superseded.from_json(SUPERSEDED)
    assert record.overwriting and record.to_json() == SUPERSEDED | {"files": sorted(SUPERSEDED["files"])}
    changed_only = Superseded(("/o/ranked/k/a.parquet",))
    assert not changed_only.overwriting and changed_only.to_json() == {"files": ["/o/ranked/k/a.parquet"]}
    manifest = Manifest.from_json(MANIFEST)
    assert manifest.complete is None and manifest.files("ranked") == ["ranked/k/a.parquet"]  # said nothing of completeness
    assert Manifest.from_json(MANIFEST | {"later_field": 1}).to_json()["later_field"] == 1


def test_the_settings_difference_names_what_changed():
    old = ResultSettings.from_json({"digest": "x", "settings": {"ranking": {"window": 20}, "images": {"image_tokens": 1024}}})
    new = ResultSettings("y", {"ranking": {"window": 3}, "images": {"image_tokens": 1024}})
    assert old.difference(new) == "ranking.window: 20 -> 3" and new.to_json() == {
        "digest": "y",
        "settings": {"ranking": {"window": 3}, "images": {"image_tokens": 1024}},
    }


def test_a_file_that_is_not_json_is_one_line_naming_it():
    with pytest.raises(OutputDamaged) as raised:
        parse_json("s3://b/out/manifest.json", json.dumps(MANIFEST).encode()[:20], "rerun the job")
    assert isinstance(raised.value, JobError)
    assert str(raised.value).startswith("s3://b/out/manifest.json cannot be parsed (JSONDecodeError: ") and str(raised.value).endswith("; rerun the job")
    assert "\n" not in str(raised.value)
