"""Long lists many ways: MM-R5 sliding windows, the same-model cascade, the two-model cascade (a scorer first), ZipRerank.

Two tables. First, the cost model (mmr5_batch/core/cost_model.py; an H200,
A4 pages at 150 dpi, 400 generated tokens per MM-R5 window, the job's
default budgets) priced by the same code as `mmr5-batch plan`: model calls
per query (MM-R5 windows + pointwise prompts) and GPU-seconds per query for
20, 50 and 100 candidates. Second, measured on this machine's CPU with the
tiny offline checkpoints and the hf engine, in process through the Python
API (the job's code path): seconds per query and model calls, every MM-R5
window generating the same number of tokens (random weights never stop on
their own), so what differs is only how many prompts each way sends and how
big they are. Tiny models make the CPU figures a statement about calls and
prompt sizes, not about the 7B's speed.

    python bench/cascade_cost.py [--candidates 20,50,100] [--cpu-candidates 20] [--queries 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmr5_batch.config import RerankerConfig, config_from_keywords
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.cost_model import QWEN3_VL_RERANKER_8B, TEXT_PAGE_TOKENS
from mmr5_batch.job.cost_estimate import SettingCost, price_setting

PAGE = (1240, 1754)  # A4 at 150 dpi
WAYS = {
    "MM-R5 sliding windows": {},
    "same-model cascade": {"cascade": True},
    "two-model cascade (2B scorer)": {"cascade": True, "cascade.first_pass": "pointwise"},
    "two-model cascade (8B scorer)": {"cascade": True, "cascade.first_pass": "pointwise", "scorer.name": "Qwen/Qwen3-VL-Reranker-8B"},
    # The text Qwen3-Reranker first: no image tokens, each page's text (assumed 500 tokens) instead.
    "two-model cascade (text 0.6B scorer)": {"cascade": True, "cascade.first_pass": "pointwise", "scorer.name": "Qwen/Qwen3-Reranker-0.6B"},
    "two-model cascade (text 4B scorer)": {"cascade": True, "cascade.first_pass": "pointwise", "scorer.name": "Qwen/Qwen3-Reranker-4B"},
    # jina-reranker-m0 (Qwen2-VL-2B and its score head) alone, at its reference's 768-token pages, and first.
    "jina-reranker-m0 alone": {"model.name": "jinaai/jina-reranker-m0"},
    "two-model cascade (jina-m0 first)": {"cascade": True, "cascade.first_pass": "pointwise", "scorer.name": "jinaai/jina-reranker-m0"},
    # ZipRerank alone (its windows of 20 at stride 10, one prefill each) and as the first pass before MM-R5.
    "ZipRerank alone": {"model.name": "mtri-admin/ZipRerank"},
    "two-model cascade (ZipRerank first)": {
        "cascade": True,
        "cascade.first_pass": "pointwise",
        "scorer.name": "mtri-admin/ZipRerank",
        "scorer.protocol": "ziprerank",
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="20,50,100", help="list lengths for the cost-model table")
    parser.add_argument("--cpu-candidates", default="20", help="list lengths for the CPU-measured table ('' for none)")
    parser.add_argument("--queries", type=int, default=3, help="queries per measured case")
    parser.add_argument("--gen-tokens", type=int, default=400, help="generated tokens per MM-R5 window in the cost model")
    parser.add_argument("--cpu-gen-tokens", type=int, default=16, help="tokens every MM-R5 window generates in the CPU run")
    return parser.parse_args(argv)


def cost_table(lengths: list[int], generated: int) -> None:
    print(f"cost model: H200, A4 pages at 150 dpi, {generated} generated tokens per MM-R5 window, default budgets (1024-token cap, rank policy)")
    print(f"{'candidates':>10}  {'way':<38}{'windows':>8}{'scored':>8}{'calls':>7}{'GPU-s/query':>13}{'vs windows':>12}")
    for length in lengths:
        baseline = None
        for way, settings in WAYS.items():
            cost = SettingCost(way)
            price_setting(cost, resolve_run(config_from_keywords(RerankerConfig, **settings)), [PAGE] * length, generated)
            row = cost.row(1)
            seconds = row["gpu_seconds_per_query"]
            baseline = baseline or seconds
            calls = row["windows_per_query"] + row["scored_per_query"]
            print(f"{length:>10}  {way:<38}{row['windows_per_query']:>8g}{row['scored_per_query']:>8g}{calls:>7g}{seconds:>13.3f}{seconds / baseline:>11.2f}x")
    print(f"(the 8B scorer priced with {QWEN3_VL_RERANKER_8B.lm_params / 1e9:.1f} B + {QWEN3_VL_RERANKER_8B.vision_params / 1e9:.2f} B parameters;")
    print(f" the text scorers with no vision encoder and {TEXT_PAGE_TOKENS} tokens of text per page, which the cost model assumes)")


def page(level: int) -> bytes:
    from PIL import Image, ImageDraw

    picture = Image.new("L", (620, 877), 255)
    draw = ImageDraw.Draw(picture)
    for line in range(40):
        draw.rectangle((40, 40 + line * 20, 580 - (line * 7) % 200, 50 + line * 20), fill=level)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def cpu_table(lengths: list[int], queries: int, generated: int) -> None:
    from mmr5_batch import Reranker
    from mmr5_batch.devtools.tiny_model import build_tiny_model, build_tiny_pointwise_model

    folder = Path(tempfile.mkdtemp(prefix="cascade-bench-"))
    mm_r5, scorer = str(build_tiny_model(folder / "mm-r5")), str(build_tiny_pointwise_model(folder / "scorer"))
    base = {"backend": "hf", "device": "cpu", "max_new_tokens": generated, "min_new_tokens": generated, "image_tokens": 256}
    ways = {
        "MM-R5 sliding windows": {},
        "same-model cascade": {"cascade": True, "cascade.first_image_tokens": 64},
        "two-model cascade": {"cascade": True, "cascade.first_pass": "pointwise", "cascade.first_image_tokens": 64},
    }
    scorer_settings = {"scorer.name": scorer, "scorer.backend": "hf", "scorer.device": "cpu"}
    print()
    print(f"measured: this machine's CPU, tiny checkpoints, hf engine, {queries} queries per case, {generated} tokens per MM-R5 window")
    print(f"{'candidates':>10}  {'way':<24}{'windows':>8}{'scored':>8}{'s/query':>9}{'vs windows':>12}")
    for length in lengths:
        batch = [(f"question {number}: which page shows the total?", [page(20 + (index * 37) % 200) for index in range(length)]) for number in range(queries)]
        baseline = None
        for way, settings in ways.items():
            extra = scorer_settings if settings.get("cascade.first_pass") == "pointwise" else {}
            with Reranker(mm_r5, **base, **settings, **extra) as reranker:
                reranker.rank_many(batch[:1])  # warm up: first-call costs out of the figure
                started = time.perf_counter()
                results = reranker.rank_many(batch)
                seconds = (time.perf_counter() - started) / queries
            windows = sum(result.windows for result in results) / queries
            scored = sum(result.scored for result in results) / queries
            baseline = baseline or seconds
            print(f"{length:>10}  {way:<24}{windows:>8g}{scored:>8g}{seconds:>9.2f}{seconds / baseline:>11.2f}x")


def main(argv=None) -> None:
    args = parse_args(argv)
    cost_table([int(value) for value in args.candidates.split(",") if value], args.gen_tokens)
    if args.cpu_candidates:
        cpu_table([int(value) for value in args.cpu_candidates.split(",") if value], args.queries, args.cpu_gen_tokens)


if __name__ == "__main__":
    main()
