"""Image tokens per query on real page sizes: MM-R5's reference way vs our settings.

For each page kind (A4 at 150 and 200 dpi, a 1080p slide, a long receipt)
and each setting, the image tokens one query sends in all its windows, and
the cost model's GPU-seconds per query on an H200 (mmr5_batch/core/cost_model.py,
400 generated tokens per window). Sizes only: budgets and token counts are
the job's own functions (`candidate_budgets`, `fit_to_token_budget`), the
reference's are qwen_vl_utils' defaults through transformers' smart_resize.

    python bench/image_tokens.py [--candidates 5]     # one window
    python bench/image_tokens.py --candidates 20      # a long list: sliding windows, and the cascade
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmr5_batch.core.budgets import candidate_budgets
from mmr5_batch.core.images import fit_to_token_budget
from mmr5_batch.job.cost_estimate import SettingCost, price_query, reference_tokens

PAGES = {
    "A4 150 dpi": (1240, 1754),
    "A4 200 dpi": (1654, 2339),
    "slide 1080p": (1920, 1080),
    "receipt 80 mm": (576, 2400),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=5, help="candidates per query (5: one window)")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--gen-tokens", type=int, default=400)
    return parser.parse_args(argv)


def settings(candidates: int, window: int) -> dict[str, list[int] | None]:
    """Per-candidate budgets of each setting (None: the reference's native size)."""
    return {
        "MM-R5 reference (native)": None,
        "ours default (1024 cap, rank)": candidate_budgets(candidates, cap=1024, window=window, policy="rank"),
        "ours uniform 1024": candidate_budgets(candidates, cap=1024, window=window, policy="uniform"),
        "ours rank 1024, 3000 per prompt": candidate_budgets(candidates, cap=1024, window=window, prompt_total=3000, policy="rank"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"# Image tokens per query, {args.candidates} candidates, window {args.window} stride {args.stride}")
    print("| page | size px | setting | image tokens/query | vs reference | est. GPU-s/query (H200) |")
    print("|---|---|---|---:|---:|---:|")
    for page, (width, height) in PAGES.items():
        reference = None
        for name, budgets in settings(args.candidates, args.window).items():
            if budgets is None:
                tokens = [reference_tokens(width, height)] * args.candidates
            else:
                tokens = [fit_to_token_budget(width, height, budget).tokens for budget in budgets]
            cost = SettingCost(name)
            price_query(cost, tokens, args.window, args.stride, None, args.gen_tokens)
            row = cost.row(1)
            rows = [row]
            if budgets is not None and name.startswith("ours default") and args.candidates > 5:
                # The cascade: all candidates at 256 tokens in windows of 10 (step 6), then the top 5 at the defaults.
                first = SettingCost("cascade first pass")
                price_query(first, [fit_to_token_budget(width, height, 256).tokens] * args.candidates, 10, 6, None, args.gen_tokens)
                detail = SettingCost("cascade detail pass")
                price_query(detail, tokens[:5], args.window, args.stride, None, args.gen_tokens)
                first_row, detail_row = first.row(1), detail.row(1)
                rows.append(
                    {
                        "setting": "ours cascade (256 x window 10, then top 5 at the defaults)",
                        "image_tokens_per_query": first_row["image_tokens_per_query"] + detail_row["image_tokens_per_query"],
                        "gpu_seconds_per_query": first_row["gpu_seconds_per_query"] + detail_row["gpu_seconds_per_query"],
                    }
                )
            for row in rows:
                name = row.get("setting", name)
                reference = reference or row
                ratio = reference["image_tokens_per_query"] / row["image_tokens_per_query"]
                versus = "reference" if row is reference else f"{ratio:.1f}x fewer"
                print(f"| {page} | {width}x{height} | {name} | {row['image_tokens_per_query']} | {versus} | {row['gpu_seconds_per_query']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
