"""Window plans for lists longer than the model's window.

MM-R5 was trained on 5 candidates per prompt, so longer lists are reranked
with a sliding window that moves bottom-up, as RankGPT and RankLLM do it: the
last `window` items first, then `stride` positions higher each round, so the
best items bubble up to the top. Each round depends on the previous one of
the same query, but rounds of different queries are independent, which is
what lets the actor send one round of a whole batch to the engine at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def sliding_windows(length: int, window: int, stride: int, full_last: bool = True) -> list[tuple[int, int]]:
    """Bottom-up `[start, end)` windows covering positions 0..length-1.

    The last window always starts at 0 and, with `full_last` (MM-R5's rule
    here), is full size, so the top of the list is compared as fully as any
    other window; without it (RankGPT's loop as ZipRerank's reference runs it)
    the last window is what is left above the previous one's reach, `[0, end)`,
    shorter when the stride does not divide the list evenly.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if not 1 <= stride <= window - 1:
        raise ValueError(f"stride must be between 1 and window-1 ({window - 1}), got {stride}")
    if length <= 0:
        return []
    if length <= window:
        return [(0, length)]
    plan = []
    end = length
    while end - window > 0:
        plan.append((end - window, end))
        end -= stride
    plan.append((0, window if full_last else end))
    return plan


def first_stage_order(scores: Sequence[float | None]) -> list[int]:
    """Candidate indices by first-stage score, highest first; input order when any score is missing.

    The sort is stable, so ties keep their input order.
    """
    if any(score is None for score in scores):
        return list(range(len(scores)))
    return sorted(range(len(scores)), key=lambda index: -float(scores[index] or 0.0))


@dataclass
class SlidingWindowRanking:
    """The reranking state of one query: its current order and the windows still to run.

    `order` holds candidate indices; only its first `rerank_depth` positions
    are reranked (`--top-k`), the rest keep their first-stage order.
    """

    order: list[int]
    window: int
    stride: int
    rerank_depth: int | None = None
    full_last: bool = True  # see sliding_windows
    windows: list[tuple[int, int]] = field(init=False)
    rounds_done: int = field(init=False, default=0)

    @classmethod
    def settled(cls, order: list[int]) -> SlidingWindowRanking:
        """A ranking decided elsewhere (a pointwise scorer's order): no windows to run."""
        return cls(order, window=2, stride=1, rerank_depth=0)

    def __post_init__(self) -> None:
        depth = len(self.order) if self.rerank_depth is None else min(self.rerank_depth, len(self.order))
        # A single candidate needs no model call: there is nothing to compare.
        self.windows = sliding_windows(depth, self.window, self.stride, self.full_last) if depth >= 2 else []

    @property
    def done(self) -> bool:
        return self.rounds_done >= len(self.windows)

    def current_window(self) -> list[int]:
        """Candidate indices of the next window, in their current order."""
        start, end = self.windows[self.rounds_done]
        return self.order[start:end]

    def set_aside(self, indices: Sequence[int]) -> None:
        """Take candidates out of the ranking (flagged by the caller); the windows still to run are laid out again over the
        rest, keeping how many have run."""
        removed = set(indices)
        self.order = [index for index in self.order if index not in removed]
        if self.rerank_depth is not None:
            self.rerank_depth = max(0, self.rerank_depth - len(removed))
        self.__post_init__()
        self.rounds_done = min(self.rounds_done, len(self.windows))

    def apply(self, window_order: Sequence[int]) -> None:
        """Reorder the current window by `window_order`, a permutation of its positions."""
        start, end = self.windows[self.rounds_done]
        current = self.order[start:end]
        if sorted(window_order) != list(range(len(current))):
            raise ValueError(f"window order {list(window_order)} is not a permutation of {len(current)} positions")
        self.order[start:end] = [current[position] for position in window_order]
        self.rounds_done += 1
