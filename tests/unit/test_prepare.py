"""Row validation and image preparation in the CPU stage: bad rows become reasons, never exceptions."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mmr5_batch.prepare import PrepareSettings, group_pairs, prepare_batch, prepare_row
from mmr5_batch.schema import GROUPED, PAIRS, InputSchemaError, detect_layout


def settings(**overrides):
    values = dict(image_tokens=64, jpeg_quality=90, allowed_uri_prefixes=(), duplicate_query_ids={})
    values.update(overrides)
    return PrepareSettings(**values)


def candidate(doc_id, image=None, score=None, image_uri=None):
    return {"doc_id": doc_id, "image": image, "image_uri": image_uri, "text": None, "score": score}


def test_good_row_is_prepared(make_grey_jpeg):
    row = {"query_id": "q1", "query": "what?", "path": "s.parquet", "candidates": [candidate("a", make_grey_jpeg(10), 0.5)]}
    prepared = prepare_row(row, settings())
    assert prepared["error"] is None and prepared["source_path"] == "s.parquet"
    [c] = prepared["candidates"]
    assert c["error"] is None and 0 < c["image_tokens"] <= 64 and c["image"][:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"query_id": None, "query": "q", "candidates": [candidate("a", b"x")]}, "missing query_id"),
        ({"query_id": "q1", "query": "  ", "candidates": [candidate("a", b"x")]}, "empty query"),
        ({"query_id": "q1", "query": "q", "candidates": []}, "no candidates"),
        ({"query_id": "q1", "query": "q", "candidates": [candidate("a", b"x"), candidate("a", b"y")]}, "duplicate doc_id"),
        ({"query_id": "q1", "query": "q", "candidates": [candidate(None, b"x")]}, "have no doc_id"),
        ({"query_id": "dup", "query": "q", "candidates": [candidate("a", b"x")]}, "appears 2 times"),
        ({"query_id": "q1", "query": "q", "candidates": [candidate("a", b"junk"), candidate("b")]}, "no usable candidate"),
    ],
)
def test_bad_rows_get_a_query_level_reason(row, reason):
    prepared = prepare_row(row, settings(duplicate_query_ids={"dup": "query_id appears 2 times in the input"}))
    assert reason in prepared["error"]
    assert all(c["image"] is None for c in prepared["candidates"])


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
    [prepared] = prepare_batch(pa.Table.from_pylist([row]), settings(allowed_uri_prefixes=(str(tmp_path),))).to_pylist()
    assert prepared["candidates"][0]["error"] is None
    assert prepared["candidates"][1]["error"].startswith(f"cannot read image_uri {tmp_path / 'gone.jpg'}: FileNotFoundError")


def test_prepare_batch_passes_extra_columns_through(make_grey_jpeg):
    batch = pa.Table.from_pylist(
        [{"query_id": "q1", "query": "q", "path": "p", "candidates": [candidate("a", make_grey_jpeg(1), 0.1)], "domain": "finance"}]
    )
    out = prepare_batch(batch, settings())
    assert out.column("domain").to_pylist() == ["finance"]
    assert out.column("source_path").to_pylist() == ["p"]


def test_group_pairs_orders_by_score_and_flags_conflicting_queries():
    rows = [
        {"query_id": "q", "query": "t", "doc_id": "low", "image": b"1", "image_uri": None, "text": None, "score": 0.1, "path": "p", "lang": "en"},
        {"query_id": "q", "query": "t", "doc_id": "high", "image": b"2", "image_uri": None, "text": None, "score": 0.9, "path": "p", "lang": "en"},
    ]
    [grouped] = group_pairs(pa.Table.from_pylist(rows)).to_pylist()
    assert [c["doc_id"] for c in grouped["candidates"]] == ["high", "low"]
    assert grouped["query"] == "t" and grouped["lang"] == "en"
    rows[1]["query"] = "other"
    [conflict] = group_pairs(pa.Table.from_pylist(rows)).to_pylist()
    assert conflict["query"] is None


def test_detect_layout():
    grouped = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("candidates", pa.list_(pa.struct([("doc_id", pa.string()), ("image", pa.binary())]))), ("domain", pa.string())])
    assert detect_layout(grouped, "s") .layout == GROUPED
    assert detect_layout(grouped, "s").passthrough == ("domain",)
    pairs = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()), ("image_uri", pa.string())])
    assert detect_layout(pairs, "s").layout == PAIRS
    with pytest.raises(InputSchemaError, match="shard-7: missing column"):
        detect_layout(pa.schema([("query", pa.string())]), "shard-7")
    with pytest.raises(InputSchemaError, match="clash"):
        detect_layout(grouped.append(pa.field("status", pa.string())), "s")
