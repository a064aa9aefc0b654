"""CPU preparation throughput: images per second on one core, the naive way vs ours.

- reference: what MM-R5's utilities do (qwen_vl_utils): full decode, convert
  to RGB, resize to the native-size budget (16384 tokens), hand the picture on.
- naive: full decode, then one resize to our budget, then encode (the
  obvious way to ship a smaller picture).
- ours: `prepare_image`: libjpeg-turbo's scaled decoding (simplejpeg) at
  the smallest M/8 scale that covers the target, one resize to the 28-px
  grid (OpenCV's SIMD bilinear when the decode is at most 4/3 the target,
  else Pillow's area averaging), JPEG re-encode.

A last row per page prepares a whole query at the default budgets (the
`rank` policy over 5 candidates).

Pages are drawn text pages saved as JPEG at the given size. One process,
one thread (`OMP_NUM_THREADS` has no say in Pillow's decoder).

    python bench/prepare_speed.py [--budgets 1024,640,256]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from mmr5_batch.core.budgets import candidate_budgets
from mmr5_batch.core.images import GRID, fit_to_token_budget, prepare_image
from mmr5_batch.devtools.demo_data import draw_page
from mmr5_batch.job.cost_estimate import REFERENCE_IMAGE_TOKENS

PAGES = {"A4 150 dpi": (1240, 1754), "A4 200 dpi": (1654, 2339), "A4 300 dpi": (2480, 3508)}


def page_jpeg(size: tuple[int, int]) -> bytes:
    picture = Image.open(io.BytesIO(draw_page("Annual report", [f"Line {i}: revenue {i * 17} units" for i in range(30)]))).convert("RGB")
    buffer = io.BytesIO()
    picture.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def reference(data: bytes) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    picture = Image.open(io.BytesIO(data)).convert("RGB")
    height, width = smart_resize(picture.height, picture.width, factor=GRID, min_pixels=4 * GRID * GRID, max_pixels=REFERENCE_IMAGE_TOKENS * GRID * GRID)
    picture.resize((width, height), Image.Resampling.BICUBIC)


def naive(data: bytes, budget: int) -> None:
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    target = fit_to_token_budget(picture.width, picture.height, budget)
    small = picture.resize((target.width, target.height), Image.Resampling.BICUBIC)
    small.save(io.BytesIO(), format="JPEG", quality=90)


def rate(work, seconds: float = 2.0) -> float:
    work()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        work()
        done += 1
    return done / (time.perf_counter() - started)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="1024,640,256", help="per-candidate image-token budgets to measure")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print("# CPU preparation, images/s on one core")
    print("| page | budget | reference (native) | naive (full decode + resize + encode) | ours | ours vs naive |")
    print("|---|---:|---:|---:|---:|---:|")
    for page, size in PAGES.items():
        data = page_jpeg(size)
        reference_rate = rate(lambda: reference(data), args.seconds)
        for budget in (int(value) for value in args.budgets.split(",")):
            naive_rate = rate(lambda: naive(data, budget), args.seconds)
            ours_rate = rate(lambda: prepare_image(data, budget), args.seconds)
            print(f"| {page} | {budget} | {reference_rate:.1f} | {naive_rate:.1f} | {ours_rate:.1f} | {ours_rate / naive_rate:.1f}x |")
        # A whole query at the default budgets (rank policy over 5 candidates), in images/s.
        budgets = candidate_budgets(5, cap=1024, window=5, policy="rank")
        naive_rate = 5 * rate(lambda: [naive(data, budget) for budget in budgets], args.seconds)
        ours_rate = 5 * rate(lambda: [prepare_image(data, budget) for budget in budgets], args.seconds)
        label = "/".join(str(budget) for budget in budgets)
        print(f"| {page} | query: {label} | {reference_rate:.1f} | {naive_rate:.1f} | {ours_rate:.1f} | {ours_rate / naive_rate:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
