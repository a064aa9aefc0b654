"""GPU memory sizing for MM-R5 on vLLM: context length and concurrent sequences per GPU.

A cost model, not a measurement: bf16 weights of Qwen2.5-VL-7B (8.3 B
parameters), a KV cache of 28 layers x 2 x 4 KV heads x 128 dims x 2 bytes =
56 KiB per token, and `max_model_len` as the job derives it
(window x (image tokens + 2) + 512 prompt text + max new tokens).

    python bench/sizing.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmr5_batch.engines.vllm import max_model_len_for

WEIGHTS_GIB = 8.29e9 * 2 / 2**30
KV_BYTES_PER_TOKEN = 28 * 2 * 4 * 128 * 2
ACTIVATIONS_GIB = 6.0  # vision encoder and sampler peaks, CUDA graphs (vLLM's profiling run finds the real figure)
GPUS = {"H200 141 GB": 141.0, "H100 80 GB": 80.0, "A100 40 GB": 40.0}
SETTINGS = [(5, 256, 1024), (5, 1024, 2048), (5, 2772, 2048), (5, 2772, 8192), (10, 512, 2048), (20, 256, 2048)]


def kv_gib(gpu_gib: float, utilization: float = 0.9) -> float:
    return max(0.0, gpu_gib * 0.931 * utilization - WEIGHTS_GIB - ACTIVATIONS_GIB)  # GB -> GiB


def main() -> int:
    print(f"weights {WEIGHTS_GIB:.1f} GiB bf16; KV cache {KV_BYTES_PER_TOKEN / 1024:.0f} KiB/token; gpu_memory_utilization 0.9\n")
    header = "| window | image tokens/page | max new tokens | max_model_len | " + " | ".join(f"full-length seqs, {name}" for name in GPUS) + " |"
    print(header)
    print("|" + "---:|" * (4 + len(GPUS)))
    for window, image_tokens, new_tokens in SETTINGS:
        length = max_model_len_for(window, image_tokens, new_tokens)
        fits = [int(kv_gib(size) * 2**30 // (length * KV_BYTES_PER_TOKEN)) for size in GPUS.values()]
        print(f"| {window} | {image_tokens} | {new_tokens} | {length} | " + " | ".join(str(n) for n in fits) + " |")
    print("\n2772 tokens/page is an A4 page at 150 dpi near native size, as MM-R5's script sends it.")
    print("Sequences rarely reach max_model_len (answers end early), so vLLM runs more at once than the table's floor.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
