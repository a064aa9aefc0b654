"""Can the CPU side feed a GPU? The whole Ray job with the scripted test engine, on this machine's cores, plus what
the scripted engine does not do: the engine actor's own CPU and the cutting of pictures into patches.

Writes queries with page-size JPEGs inline (A4 at 150 dpi by default, 5
candidates each), runs the real job (read, plan, prepare, rerank actor,
write, accounting) on a local Ray with the scripted test engine in place of
the model, and compares the query rate with what one H200 would consume at
the same settings per the cost model (mmr5_batch/core/cost_model.py, 400
generated tokens per window). The scripted engine reads no pixels, so the
model's input work is added from the cost model's measured figures
(bench/engine_inputs.py, with vLLM's CPU build in the loop): per
images.processing path, the CPU stage's patch cutting and the engine actor's
own CPU, which is one process and so needs to stay well under one core per
GPU.

    python bench/pipeline_overhead.py [--queries 200] [--cpus 2]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--page", default="1240x1754", help="page size in px")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
    parser.add_argument("--image-tokens", type=int, default=1024)
    parser.add_argument("--policy", default="rank")
    parser.add_argument("--prepare-cpus", type=float, default=1.0, help="CPUs per preparation task")
    return parser.parse_args(argv)


def write_input(folder: Path, queries: int, candidates: int, size: tuple[int, int], shards: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA
    from mmr5_batch.devtools.demo_data import draw_page

    pages = []
    for number in range(8):
        picture = Image.open(io.BytesIO(draw_page(f"Page {number}", [f"Line {i}: value {i * number}" for i in range(30)]))).convert("RGB")
        buffer = io.BytesIO()
        picture.resize(size).save(buffer, format="JPEG", quality=90)
        pages.append(buffer.getvalue())
    folder.mkdir(parents=True)
    rows = [
        {
            "query_id": f"q{number:06d}",
            "query": f"Which page shows value {number}?",
            "candidates": [
                {"doc_id": f"d{c}", "image": pages[(number + c) % len(pages)], "image_uri": None, "text": None, "score": 1 - c / 10} for c in range(candidates)
            ],
        }
        for number in range(queries)
    ]
    per_shard = -(-queries // shards)
    for index in range(shards):
        chunk = rows[index * per_shard : (index + 1) * per_shard]
        pq.write_table(pa.Table.from_pylist(chunk, schema=GROUPED_INPUT_SCHEMA), folder / f"part-{index:04d}.parquet")


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from mmr5_batch.config import load_config
    from mmr5_batch.core.budgets import candidate_budgets
    from mmr5_batch.core.cost_model import CPU_STAGE_PATCH_SECONDS_PER_IMAGE_TOKEN, H200, WindowCost, actor_cpu_seconds, gpu_seconds, prompt_tokens
    from mmr5_batch.core.images import fit_to_token_budget
    from mmr5_batch.core.windows import sliding_windows
    from mmr5_batch.job.runner import run_job

    width, height = (int(v) for v in args.page.split("x"))
    with tempfile.TemporaryDirectory() as workdir:
        write_input(Path(workdir) / "in", args.queries, args.candidates, (width, height), args.shards)
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
        config = load_config(
            None,
            {
                "input": str(Path(workdir) / "in"),
                "output": str(Path(workdir) / "out"),
                "model.backend": "scripted-test",
                "images.image_tokens": args.image_tokens,
                "images.policy": args.policy,
                "execution.cpus_per_prepare_task": args.prepare_cpus,
            },
        )
        started = time.perf_counter()
        summary = run_job(config)
        wall = time.perf_counter() - started
        ray.shutdown()

    budgets = candidate_budgets(args.candidates, cap=args.image_tokens, window=5, policy=args.policy)
    tokens = [fit_to_token_budget(width, height, budget).tokens for budget in budgets]
    windows = sliding_windows(args.candidates, 5, 3)
    gpu_per_query = sum(gpu_seconds(WindowCost(prompt_tokens(tokens[a:b]), sum(tokens[a:b]), 400), H200) for a, b in windows)
    gpu_rate = 1 / gpu_per_query
    cpu_rate = args.queries / wall
    print(
        f"# CPU side vs one H200, {args.queries} queries x {args.candidates} pages {width}x{height}, {args.cpus} CPUs, {args.prepare_cpus} CPU per prepare task"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| job wall time, whole run (s) | {wall:.1f} |")
    print(f"| queries/s, CPU side (scripted engine) | {cpu_rate:.2f} |")
    print(f"| images/s, CPU side | {cpu_rate * args.candidates:.1f} |")
    print(f"| queries/s one H200 consumes (cost model) | {gpu_rate:.2f} |")
    print(f"| CPU side / GPU consumption | {cpu_rate / gpu_rate:.2f}x |")
    print(f"| cores per H200 for 5x headroom, CPU stage without patches (images.processing: engine) | {5 * gpu_rate / cpu_rate * args.cpus:.1f} |")
    # What the scripted engine skips, per query, from the cost model's measured figures.
    image_tokens = sum(sum(tokens[a:b]) for a, b in windows)
    patching = sum(tokens) * CPU_STAGE_PATCH_SECONDS_PER_IMAGE_TOKEN
    stage_core_seconds = args.cpus / cpu_rate  # core-seconds per query the measured CPU side took
    print(f"| CPU stage's patch cutting per query, cost model (s) | {patching:.3f} |")
    for path, actor in (("engine", actor_cpu_seconds(len(windows), image_tokens)), ("cpu-stage", actor_cpu_seconds(len(windows), 0))):
        stage = stage_core_seconds + (patching if path == "cpu-stage" else 0.0)
        print(f"| {path}: engine actor CPU per query, cost model (s) | {actor:.3f} |")
        print(f"| {path}: engine actor cores per H200 (one process: must stay well under 1) | {actor * gpu_rate:.2f} |")
        print(f"| {path}: cores per H200 for 5x headroom, CPU stage and actor | {5 * gpu_rate * (stage + actor):.1f} |")
    assert summary["totals"]["queries"] == args.queries
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
