"""`mmr5-batch convert mmdocir`: MMDocIR's published files plus a first-stage run -> our input shards and qrels.

MMDocIR (arXiv 2501.08828) ships `MMDocIR_pages.parquet` (doc_name, domain,
passage_id, image_binary, ...: one row per page, a document's pages in a
row range) and `MMDocIR_annotations.jsonl` (one line per document: doc_name,
domain, `page_indices` = [first row, last row] of its pages in the pages
file, and `questions`, each with `Q`, `A`, `type` and `page_id`, the gold
pages, 0-based within the document). Retrieval is within one document.

Ids: a question is `<doc_name>/q<i>` (its position in the document's
`questions`), a page `<doc_name>/p<n>` (0-based within the document). The
first-stage run is a TREC run file (`query_id Q0 doc_id rank score tag`) or
Parquet (`query_id`, `doc_id`, `score`); a doc_id that is a bare number is
read as a page number within the question's document. The top `--top-k`
pages per question by score become its candidates, images read from the
pages file in one streaming pass that keeps only the pages some question
needs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA

CONVERTED_SCHEMA = (
    GROUPED_INPUT_SCHEMA.append(pa.field("domain", pa.string()))
    .append(pa.field("doc_name", pa.string()))
    .append(pa.field("question_type", pa.string()))
    .append(pa.field("gold_doc_ids", pa.list_(pa.string())))
)


DOMAINS_FILE = "domains.txt"


class ConvertError(ValueError):
    """Input files that do not look like MMDocIR's; the message names the file and what is wrong."""


def question_id(doc_name: str, index: int) -> str:
    return f"{doc_name}/q{index}"


def page_id(doc_name: str, page: int) -> str:
    return f"{doc_name}/p{page}"


def read_run(path: str) -> dict[str, list[tuple[str, float]]]:
    """query_id -> [(doc_id, score)] from a TREC run file or a Parquet of scores."""
    scores: dict[str, list[tuple[str, float]]] = defaultdict(list)
    if path.endswith(".parquet"):
        table = pq.read_table(path)
        if not {"query_id", "doc_id", "score"} <= set(table.column_names):
            raise ConvertError(f"{path}: a run in Parquet needs query_id, doc_id and score, got {table.column_names}")
        for row in table.select(["query_id", "doc_id", "score"]).to_pylist():
            scores[str(row["query_id"])].append((str(row["doc_id"]), float(row["score"])))
        return dict(scores)
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 5:
            raise ConvertError(f"{path}:{number}: expected 'query_id Q0 doc_id rank score [tag]', got {line.strip()!r}")
        scores[fields[0]].append((fields[2], float(fields[4])))
    return dict(scores)


def read_annotations(annotations: str) -> list[tuple[Any, ...]]:
    """(doc_name, domain, (first_row, last_row), questions) per MMDocIR annotation line."""
    documents = []
    for number, line in enumerate(Path(annotations).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            documents.append((record["doc_name"], record.get("domain"), tuple(record["page_indices"]), record["questions"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConvertError(f"{annotations}:{number}: not an MMDocIR annotation line ({type(error).__name__}: {error})") from None
    return documents


def convert_mmdocir(pages: str, annotations: str, run: str, output: str, top_k: int = 20, shard_size: int = 500) -> dict[str, Any]:
    """Write input shards and `qrels.trec` under `output`; returns counts."""
    documents = read_annotations(annotations)
    scores = read_run(run)

    questions: list[tuple[Any, ...]] = []
    needed: set[int] = set()
    for doc_name, domain, (first_row, last_row), items in documents:
        count = last_row - first_row + 1
        for index, item in enumerate(items):
            query_id = question_id(doc_name, index)
            # Ties go to the lower page index, as MMDocIR's own search breaks them.
            ranked = sorted(scores.get(query_id, []), key=lambda pair: (-pair[1], _page_order(pair[0], doc_name)))
            candidates: list[tuple[int, float]] = []
            for doc_id, score in ranked:
                page = int(doc_id) if doc_id.isdigit() else _page_of(doc_id, doc_name)
                if page is not None and 0 <= page < count and all(c[0] != page for c in candidates):
                    candidates.append((page, score))
                if len(candidates) == top_k:
                    break
            needed.update(first_row + page for page, _ in candidates)
            gold = [page_id(doc_name, int(page)) for page in item.get("page_id", [])]
            questions.append((query_id, item["Q"], doc_name, domain, item.get("type"), first_row, candidates, gold))

    images = _read_needed_pages(pages, needed)
    rows, qrels_lines = [], []
    for query_id, query, doc_name, domain, kind, first_row, chosen, gold in questions:
        rows.append(
            {
                "query_id": query_id,
                "query": query,
                "candidates": [
                    {"doc_id": page_id(doc_name, page), "image": images.get(first_row + page), "image_uri": None, "text": None, "score": score}
                    for page, score in chosen
                ],
                "domain": domain,
                "doc_name": doc_name,
                "question_type": kind,
                "gold_doc_ids": gold,
            }
        )
        qrels_lines += [f"{query_id} 0 {doc_id} 1" for doc_id in gold]
    folder = Path(output)
    (folder / "input").mkdir(parents=True, exist_ok=True)
    for start in range(0, len(rows), shard_size):
        chunk = rows[start : start + shard_size]
        pq.write_table(pa.Table.from_pylist(chunk, schema=CONVERTED_SCHEMA), folder / "input" / f"part-{start // shard_size:05d}.parquet")
    (folder / "qrels.trec").write_text("\n".join(qrels_lines) + "\n")
    # The benchmark's fixed domains, for `evaluate --protocol mmdocir` (a domain the run lacks counts 0).
    (folder / DOMAINS_FILE).write_text("\n".join(sorted({str(domain) for _, domain, _, _ in documents if domain})) + "\n")
    return {
        "documents": len(documents),
        "questions": len(rows),
        "questions_without_run": sum(1 for row in rows if not row["candidates"]),
        "pages_read": len(images),
        "shards": -(-len(rows) // shard_size),
        "input": str(folder / "input"),
        "qrels": str(folder / "qrels.trec"),
    }


def _page_order(doc_id: str, doc_name: str) -> int:
    page = int(doc_id) if doc_id.isdigit() else _page_of(doc_id, doc_name)
    return page if page is not None else 1 << 30


def _page_of(doc_id: str, doc_name: str) -> int | None:
    prefix = f"{doc_name}/p"
    return int(doc_id[len(prefix) :]) if doc_id.startswith(prefix) and doc_id[len(prefix) :].isdigit() else None


def _read_needed_pages(pages: str, rows: set[int]) -> dict[int, bytes]:
    """Image bytes of the needed rows of the pages file, read in batches (memory bounded by what is kept)."""
    parquet = pq.ParquetFile(pages)
    if "image_binary" not in parquet.schema_arrow.names:
        raise ConvertError(f"{pages}: an MMDocIR pages file needs an image_binary column, got {parquet.schema_arrow.names}")
    kept: dict[int, bytes] = {}
    offset = 0
    for batch in parquet.iter_batches(batch_size=256, columns=["image_binary"]):
        column = batch.column(0)
        for position in range(batch.num_rows):
            if offset + position in rows:
                kept[offset + position] = column[position].as_py()
        offset += batch.num_rows
    return kept
