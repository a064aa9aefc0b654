"""Keeping the GPU busy: lock-step rounds vs continuous submission, measured on a simulated decoder.

The question (issue 3, part 3): a reasoning reranker's answers vary a lot in
length, so a round of windows sent together lasts as long as its longest
answer while the GPU's other slots idle. Two cures: rounds over batches big
enough that the tail is amortised (vLLM's offline `LLM.generate`), or each
query's next window sent as soon as its previous answer is back, with several
batches in flight per actor (vLLM's async engine; our default). This runs our
real reranker (`rerank_queries_async`, `BatchingEngine`, window planning,
parsing) against a simulated GPU, so the scheduling is measured without one:

- `SimulatedDecoder` decodes in steps like vLLM's scheduler: each step takes
  `--step-ms` and advances every running sequence by one token; at most
  `--max-seqs` run at once and waiting ones join as slots free (continuous
  batching inside the engine). Prefill is not modelled.
- Answer lengths are drawn per window from a log-normal (median
  `--median-tokens`, clipped at `--max-tokens`), keyed by the window's
  content so every setting sees the same lengths. Answers come from the
  scripted test engine, so rankings and window counts are real.
- Between batches Ray Data hands results back and fetches the next batch;
  `--handoff-ms` models that gap (the engine idles through it unless another
  batch is in flight).

    python bench/scheduling.py

Prints a table: engine steps (the GPU time a real engine would spend, at
~20-30 ms per step for a 7B model), mean running sequences per step
(occupancy), and the wall time of the simulation (steps plus Python and
hand-offs, so only roughly proportional).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmr5_batch.core.batching import BatchingEngine
from mmr5_batch.core.scheduler import rerank_queries_async
from mmr5_batch.devtools.scripted_engine import ScriptedTestEngine
from mmr5_batch.engines import Completion, EngineRequest, SamplingSettings


class SimulatedDecoder:
    """A GPU decoding in steps with continuous batching; counts steps and occupied slots."""

    def __init__(self, step_s: float, max_seqs: int, median_tokens: int, max_tokens: int) -> None:
        self.step_s, self.max_seqs = step_s, max_seqs
        self.median_tokens, self.max_tokens = median_tokens, max_tokens
        self.scripted = ScriptedTestEngine()
        self.steps = 0
        self.slot_steps = 0

    def length(self, request: EngineRequest) -> int:
        question = "".join(part.get("text", "") for message in request.messages for part in message["content"])
        draw = random.Random(zlib.crc32(question.encode() + b"".join(request.images)))
        return max(8, min(self.max_tokens, round(self.median_tokens * math.exp(0.7 * draw.gauss(0, 1)))))

    def answer(self, request: EngineRequest, tokens: int) -> Completion:
        [completion] = self.scripted.generate([request])
        return Completion(completion.text, "stop", prompt_tokens=completion.prompt_tokens, generated_tokens=tokens)

    def count_step(self, running: int) -> None:
        self.steps += 1
        self.slot_steps += running


class SimulatedOfflineEngine:
    """Offline-style: a list of requests in, back when the longest is done (vLLM's LLM.generate)."""

    def __init__(self, decoder: SimulatedDecoder) -> None:
        self.decoder = decoder

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        remaining = {index: self.decoder.length(request) for index, request in enumerate(requests)}
        lengths = dict(remaining)
        waiting = list(remaining)
        running: list[int] = []
        while running or waiting:
            while waiting and len(running) < self.decoder.max_seqs:
                running.append(waiting.pop(0))
            time.sleep(self.decoder.step_s)
            self.decoder.count_step(len(running))
            for index in list(running):
                remaining[index] -= 1
                if remaining[index] == 0:
                    running.remove(index)
        return [self.decoder.answer(request, lengths[index]) for index, request in enumerate(requests)]


class SimulatedAsyncEngine:
    """Async-style: one request in, its answer out, decoding steps shared by everything in flight (vLLM's AsyncLLM)."""

    def __init__(self, decoder: SimulatedDecoder) -> None:
        self.decoder = decoder
        self.waiting: list[list] = []
        self.running: list[list] = []
        self.stepper: asyncio.Task | None = None

    async def generate_async(self, request: EngineRequest) -> Completion:
        tokens = self.decoder.length(request)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append([tokens, future])
        if self.stepper is None or self.stepper.done():
            self.stepper = asyncio.create_task(self._steps())
        await future
        return self.decoder.answer(request, tokens)

    async def _steps(self) -> None:
        await asyncio.sleep(0)
        while self.running or self.waiting:
            while self.waiting and len(self.running) < self.decoder.max_seqs:
                self.running.append(self.waiting.pop(0))
            await asyncio.sleep(self.decoder.step_s)
            self.decoder.count_step(len(self.running))
            for sequence in list(self.running):
                sequence[0] -= 1
                if sequence[0] == 0:
                    self.running.remove(sequence)
                    sequence[1].set_result(None)


def grey_page(level: int) -> bytes:
    """A small page of one grey level: the scripted engine ranks by darkness, and decoding it is cheap."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), (level, level, level)).save(buffer, format="JPEG")
    return buffer.getvalue()


def queries(count: int, candidates: int, pages: list[bytes]) -> list[dict]:
    rows = []
    for number in range(count):
        picks = [pages[(number * 7 + offset * 3) % len(pages)] for offset in range(candidates)]
        rows.append(
            {
                "query_id": f"q{number}",
                "query": f"Which page reports revenue {number}?",
                "source_path": "bench",
                "error": None,
                "candidates": [
                    {"doc_id": f"d{i}", "image": image, "image_tokens": 1024, "score": 1.0 - i / 100, "error": None} for i, image in enumerate(picks)
                ],
            }
        )
    return rows


async def run_batches(rows: list[dict], engine, batch_size: int, in_flight: int, handoff_s: float, window: int, stride: int) -> None:
    """Batches as Ray Data feeds one actor: at most `in_flight` at once, each followed by its hand-off."""
    slots = asyncio.Semaphore(in_flight)
    settings = dict(window=window, stride=stride, top_k=None, sampling=SamplingSettings(), model_id="sim", run_id="sim")

    async def one(batch: list[dict]) -> None:
        async with slots:
            await rerank_queries_async(batch, engine, **settings)
            await asyncio.sleep(handoff_s)

    await asyncio.gather(*(one(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--candidates", type=int, default=20, help="candidates per query (20: 6 windows of 5, stride 3)")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--median-tokens", type=int, default=30, help="median answer length in decode steps")
    parser.add_argument("--max-tokens", type=int, default=205, help="answer length cap (max_new_tokens)")
    parser.add_argument("--step-ms", type=float, default=1.0, help="one decode step of the simulated GPU")
    parser.add_argument("--max-seqs", type=int, default=256, help="sequences the simulated GPU decodes at once")
    parser.add_argument("--handoff-ms", type=float, default=20.0, help="gap between batches (Ray Data hand-off)")
    parser.add_argument(
        "--settings",
        default="rounds:16:1,rounds:64:1,rounds:256:1,continuous:16:1,continuous:16:4,continuous:64:4",
        help="comma-separated mode:batch_size:batches_in_flight",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    pages = [grey_page(level) for level in range(10, 250, 8)]
    rows = queries(args.queries, args.candidates, pages)
    results = []
    for setting in args.settings.split(","):
        mode, batch_size, in_flight = setting.split(":")
        decoder = SimulatedDecoder(args.step_ms / 1000, args.max_seqs, args.median_tokens, args.max_tokens)
        engine = SimulatedAsyncEngine(decoder) if mode == "continuous" else BatchingEngine(SimulatedOfflineEngine(decoder))
        started = time.perf_counter()
        asyncio.run(run_batches(rows, engine, int(batch_size), int(in_flight), args.handoff_ms / 1000, args.window, args.stride))
        wall = time.perf_counter() - started
        results.append((mode, int(batch_size), int(in_flight), decoder.steps, decoder.slot_steps / decoder.steps, wall))

    print("# Scheduling on a simulated decoder (our reranker, simulated GPU)")
    print(
        f"{args.queries} queries x {args.candidates} candidates, window {args.window} stride {args.stride}; "
        f"answers log-normal median {args.median_tokens} steps, cap {args.max_tokens}; "
        f"step {args.step_ms} ms, {args.max_seqs} slots, hand-off {args.handoff_ms} ms\n"
    )
    base_steps = results[0][3]
    print("| mode | batch | batches in flight | queries in flight | engine steps | fewer steps than first row | mean running seqs | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, batch_size, in_flight, steps, occupancy, wall in results:
        print(f"| {mode} | {batch_size} | {in_flight} | {batch_size * in_flight} | {steps} | {base_steps / steps:.1f}x | {occupancy:.1f} | {wall:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
