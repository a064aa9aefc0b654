"""A small synthetic dataset for the demo and the tests: document pages with readable text, and queries.

Each page is a picture of a short report page (a title and a few lines of
facts) drawn with Pillow. Each query asks about one fact; its candidate list
holds the page with that fact and distractor pages, with first-stage scores
that put the right page near, but not always at, the top. The gold page id is
kept in a passthrough column (`gold_doc_ids`) so outputs can be checked.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA

_COMPANIES = ("Norwind", "Castella", "Brightloop", "Quarry Bay", "Helio Labs", "Marrow & Finch", "Ostrava Rail", "Tidewater")
_METRICS = (
    ("revenue", "Revenue", "${:.1f}M"),
    ("headcount", "Headcount", "{:.0f} employees"),
    ("energy use", "Energy use", "{:.0f} MWh"),
    ("customer count", "Customers", "{:.0f} accounts"),
)
PAGE_SIZE = (496, 702)  # A4 proportions at 60 dpi


def _page_facts(rng: random.Random, page: int) -> tuple[str, list[tuple[str, str, str]]]:
    company = _COMPANIES[page % len(_COMPANIES)]
    year = 2015 + page % 9
    facts = []
    for key, label, fmt in rng.sample(_METRICS, 3):
        value = fmt.format(rng.uniform(5, 900))
        facts.append((key, label, value))
    return f"{company} annual report {year}", facts


def draw_page(title: str, lines: list[str]) -> bytes:
    """A page image with the title and lines written on it, JPEG-encoded."""
    picture = Image.new("RGB", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(picture)
    draw.text((32, 32), title, fill="black", font=ImageFont.load_default(size=24))
    body = ImageFont.load_default(size=16)
    for number, line in enumerate(lines):
        draw.text((32, 100 + 34 * number), line, fill=(30, 30, 30), font=body)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


DOMAINS = ("finance", "science", "operations")


def build_demo_tables(queries: int = 50, candidates: int = 8, shards: int = 4, seed: int = 0, page_text: bool = False) -> list[pa.Table]:
    """The demo dataset as `shards` grouped tables (plus a gold_doc_ids passthrough column); `page_text`: each
    candidate's `text` is what is written on its page (as an OCR'd dataset has it), for the text rerankers."""
    rng = random.Random(seed)
    pages = max(queries, candidates * 2)
    page_facts = [_page_facts(rng, page) for page in range(pages)]
    page_lines = [[title] + [f"{label}: {value}" for _, label, value in facts] for title, facts in page_facts]
    page_images = [draw_page(lines[0], lines[1:]) for lines in page_lines]
    rows = []
    for number in range(queries):
        gold = number % pages
        title, facts = page_facts[gold]
        key = rng.choice(facts)[0]
        others = rng.sample([page for page in range(pages) if page != gold], candidates - 1)
        listed = others[:]
        listed.insert(rng.randrange(min(3, candidates)), gold)
        scores = sorted((rng.uniform(0.3, 0.9) for _ in listed), reverse=True)
        rows.append(
            {
                "query_id": f"q{number:04d}",
                "query": f"What was the {key} reported in the {title}?",
                "candidates": [
                    {
                        "doc_id": f"page-{page:04d}",
                        "image": page_images[page],
                        "image_uri": None,
                        "text": "\n".join(page_lines[page]) if page_text else None,
                        "score": score,
                    }
                    for page, score in zip(listed, scores)
                ],
                "gold_doc_ids": [f"page-{gold:04d}"],
                "domain": DOMAINS[number % len(DOMAINS)],
            }
        )
    schema = GROUPED_INPUT_SCHEMA.append(pa.field("gold_doc_ids", pa.list_(pa.string()))).append(pa.field("domain", pa.string()))
    per_shard = -(-len(rows) // shards)
    return [pa.Table.from_pylist(rows[start : start + per_shard], schema=schema) for start in range(0, len(rows), per_shard)]


def demo_qrels_text(queries: int = 50, candidates: int = 8, seed: int = 0) -> str:
    """TREC qrels of the demo dataset: each query's gold page, relevance 1."""
    lines = []
    for table in build_demo_tables(queries=queries, candidates=candidates, shards=1, seed=seed):
        for row in table.select(["query_id", "gold_doc_ids"]).to_pylist():
            lines += [f"{row['query_id']} 0 {doc_id} 1" for doc_id in row["gold_doc_ids"]]
    return "\n".join(lines) + "\n"


def write_demo_dataset(directory: str | Path, **options: Any) -> list[Path]:
    """Write the demo shards as Parquet files under `directory`; returns their paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, table in enumerate(build_demo_tables(**options)):
        path = folder / f"shard-{index:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths
