"""Grouping shards into Ray tasks: many small shards per task, a big one alone, never fewer tasks than the cluster can run.

A task per shard costs Ray Data a task launch and a block per shard, which at
thousands of small shards is most of the run; one task for everything uses
one core. Shards are taken in order, so a group's shards are neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

Item = TypeVar("Item")


def group_shards(items: Sequence[Item], sizes: Sequence[int], max_bytes: int, max_shards: int, min_groups: int) -> list[list[Item]]:
    """Consecutive groups of `items` (with `sizes` in bytes) of at most `max_shards` items and, where it can be
    kept (a bigger item goes alone), `max_bytes`; smaller groups when that is needed for `min_groups` groups."""
    if not items:
        return []
    per_group = max(1, min(max_shards, math.ceil(len(items) / max(1, min_groups))))
    groups: list[list[Item]] = []
    current: list[Item] = []
    current_bytes = 0
    for item, size in zip(items, sizes, strict=True):
        if current and (len(current) >= per_group or current_bytes + size > max_bytes):
            groups.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    groups.append(current)
    return groups
