"""The prepare stage: image_uri fetching within the allowed prefixes, passthrough columns, pairs grouping, its contract."""

from __future__ import annotations

import pyarrow as pa

from mmr5_batch.core.preparation import PrepareSettings
from mmr5_batch.stages.prepare_stage import FetchSettings, group_pairs_batch, prepare_batch


def settings(**overrides):
    return PrepareSettings(**({"image_tokens": 64} | overrides))


def candidate(doc_id, image=None, score=None, image_uri=None):
    return {"doc_id": doc_id, "image": image, "image_uri": image_uri, "text": None, "score": score}


def test_bad_candidates_are_flagged_not_fatal(make_grey_jpeg):
    row = {
        "query_id": "q1",
        "query": "q",
        "candidates": [
            candidate("good", make_grey_jpeg(50)),
            candidate("no-image"),
            candidate("corrupt", b"\x00\x01garbage"),
            candidate("refused", image_uri="file:///etc/passwd"),
        ],
    }
    [prepared] = prepare_batch(pa.Table.from_pylist([row]), settings()).to_pylist()
    assert prepared["error"] is None
    reasons = {c["doc_id"]: c["error"] for c in prepared["candidates"]}
    assert reasons["good"] is None
    assert "neither image bytes nor image_uri" in reasons["no-image"]
    assert "undecodable image" in reasons["corrupt"]
    assert "outside the allowed prefixes" in reasons["refused"]


def test_allowed_image_uri_is_read(tmp_path, make_grey_jpeg):
    picture = tmp_path / "page.jpg"
    picture.write_bytes(make_grey_jpeg(80))
    row = {"query_id": "q1", "query": "q", "candidates": [candidate("a", image_uri=str(picture)), candidate("b", image_uri=str(tmp_path / "gone.jpg"))]}
    [prepared] = prepare_batch(pa.Table.from_pylist([row]), settings(), FetchSettings(allowed_uri_prefixes=(str(tmp_path),))).to_pylist()
    assert prepared["candidates"][0]["error"] is None
    assert prepared["candidates"][1]["error"].startswith(f"cannot read image_uri {tmp_path / 'gone.jpg'}: FileNotFoundError")


def test_prepare_batch_passes_extra_columns_through(make_grey_jpeg):
    batch = pa.Table.from_pylist([{"query_id": "q1", "query": "q", "path": "p", "candidates": [candidate("a", make_grey_jpeg(1), 0.1)], "domain": "finance"}])
    out = prepare_batch(batch, settings())
    assert out.column("domain").to_pylist() == ["finance"]
    assert out.column("source_path").to_pylist() == ["p"]


def test_group_pairs_orders_by_score_and_flags_conflicting_queries():
    rows = [
        {"query_id": "q", "query": "t", "doc_id": "low", "image": b"1", "image_uri": None, "text": None, "score": 0.1, "path": "p", "lang": "en"},
        {"query_id": "q", "query": "t", "doc_id": "high", "image": b"2", "image_uri": None, "text": None, "score": 0.9, "path": "p", "lang": "en"},
    ]
    [grouped] = group_pairs_batch(pa.Table.from_pylist(rows)).to_pylist()
    assert [c["doc_id"] for c in grouped["candidates"]] == ["high", "low"]
    assert grouped["query"] == "t" and grouped["lang"] == "en"
    rows[1]["query"] = "other"
    [conflict] = group_pairs_batch(pa.Table.from_pylist(rows)).to_pylist()
    assert conflict["query"] is None
