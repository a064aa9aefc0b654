"""Image-token budgets per candidate: a per-candidate cap, a per-prompt total, and how to share them.

Policies, over candidates in first-stage order (position 0 is the first
stage's best):

- `uniform`: every candidate gets the cap.
- `rank`: the budget falls linearly from the cap at position 0 to a quarter
  of it at the last position: the pages most likely to matter are seen
  sharpest, the long tail cheaply.

With a per-prompt total, budgets are scaled down (all by one factor) until
the `window` largest of them fit in it, so no prompt of the sliding window,
whichever candidates it holds, exceeds the total. No budget goes below the
model's minimum of 4 tokens.
"""

from __future__ import annotations

from mmr5_batch.core.images import MIN_IMAGE_TOKENS

POLICIES = ("uniform", "rank")
RANK_FLOOR = 0.25


def candidate_budgets(count: int, *, cap: int, window: int, prompt_total: int | None = None, policy: str = "uniform") -> list[int]:
    """Image-token budget of each of `count` candidates, by first-stage position."""
    if policy not in POLICIES:
        raise ValueError(f"unknown budget policy {policy!r}; choose one of {POLICIES}")
    if count <= 0:
        return []
    if policy == "rank" and count > 1:
        raw = [cap * (1 - (1 - RANK_FLOOR) * position / (count - 1)) for position in range(count)]
    else:
        raw = [float(cap)] * count
    if prompt_total is not None:
        heaviest = sum(sorted(raw, reverse=True)[:window])
        if heaviest > prompt_total:
            raw = [budget * prompt_total / heaviest for budget in raw]
    return [max(MIN_IMAGE_TOKENS, int(budget)) for budget in raw]
