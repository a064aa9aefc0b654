"""Relevance judgements (qrels) in the common forms: TREC text, Parquet or JSONL with query_id, doc_id, relevance.

TREC qrels: one `query_id iteration doc_id relevance` per line (whitespace
separated; the iteration column is ignored). Parquet and JSONL: columns
`query_id`, `doc_id` and `relevance` (or `rel` / `score`); a missing
relevance column means every listed pair is relevant (1). The form is told
by the file name (`.parquet`, `.jsonl`/`.json`, anything else is TREC).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from typing import Any

from mmr5_batch.storage.filesystems import Storage

Qrels = dict[str, dict[str, float]]
RELEVANCE_COLUMNS = ("relevance", "rel", "score")


class QrelsError(ValueError):
    """Qrels that cannot be read; the message names the file and the line or column."""


def parse_trec(text: str, source: str = "qrels") -> Qrels:
    qrels: Qrels = defaultdict(dict)
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or line.lstrip().startswith("#"):
            continue
        if len(fields) != 4:
            raise QrelsError(f"{source}:{number}: expected 'query_id iteration doc_id relevance', got {line.strip()!r}")
        query_id, _, doc_id, grade = fields
        try:
            qrels[query_id][doc_id] = float(grade)
        except ValueError:
            raise QrelsError(f"{source}:{number}: relevance {grade!r} is not a number") from None
    return dict(qrels)


def from_records(records: list[dict[str, Any]], source: str) -> Qrels:
    if records and not {"query_id", "doc_id"} <= set(records[0]):
        raise QrelsError(f"{source}: needs columns query_id and doc_id (and relevance), got {sorted(records[0])}")
    column = next((name for name in RELEVANCE_COLUMNS if records and name in records[0]), None)
    qrels: Qrels = defaultdict(dict)
    for record in records:
        qrels[str(record["query_id"])][str(record["doc_id"])] = float(record[column]) if column else 1.0
    return dict(qrels)


def load_qrels(uri: str, storage: Storage | None = None) -> Qrels:
    """Qrels from a TREC, Parquet or JSONL file (any fsspec URI)."""
    storage = storage or Storage()
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise QrelsError(f"qrels not found: {uri}") from None
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        return from_records(pq.read_table(io.BytesIO(data)).to_pylist(), uri)
    if uri.endswith((".jsonl", ".json")):
        try:
            records = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise QrelsError(f"{uri}: not JSON lines: {error}") from None
        return from_records(records, uri)
    return parse_trec(data.decode(), uri)
