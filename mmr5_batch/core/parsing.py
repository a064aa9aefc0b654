"""Turning a model answer into a ranking, whatever the model wrote.

`parse_ranking(text, n)` always returns a permutation of range(n) and a
status: `ok` when the answer was a well-formed permutation, `repaired` when an
answer was found but needed fixing, `fallback` when no usable answer was found
(the input order is kept). Ids in the answer are 1-based, as in the prompt.

Which answer wins when there are several `<answer>` blocks: the LAST block
that names at least one id in range. Models that restate or correct
themselves end with their final word, and an example answer echoed inside the
reasoning (`[id_most_relevant, ...]`) names no ids, so it never wins.

Tolerated: whitespace and newlines inside the list, ids written `Image 3` or
`id 3`, a missing `</think>`, a missing `</answer>` or `]` (a truncated
answer is used as far as it goes), text after the answer. MM-R5's own
script keeps duplicate ids (so `[1,1,2]` of 3 gives 4 entries); here only the
first occurrence of an id counts.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from mmr5_batch.core.vocabulary import ANSWER_CLOSE, ANSWER_OPEN, FALLBACK, OK, REPAIRED

_ANSWER_OPEN = re.compile(re.escape(ANSWER_OPEN), re.IGNORECASE)
_ANSWER_CLOSE = re.compile(re.escape(ANSWER_CLOSE), re.IGNORECASE)
_INTEGER = re.compile(r"-?\d+")


class ParsedRanking(NamedTuple):
    """A 0-based order over the n candidates (always a permutation) and how it was obtained."""

    order: list[int]
    status: str


def answer_blocks(text: str) -> list[str]:
    """The contents of every `<answer>` block, in order; an unclosed block runs to the next one or the end."""
    starts = [m.end() for m in _ANSWER_OPEN.finditer(text)]
    blocks = []
    for i, start in enumerate(starts):
        limit = starts[i + 1] if i + 1 < len(starts) else len(text)
        close = _ANSWER_CLOSE.search(text, start, limit)
        blocks.append(text[start : close.start() if close else limit])
    return blocks


def answer_ids(block: str) -> list[int]:
    """The integers of an answer block's list, in written order (1-based as written)."""
    open_bracket = block.find("[")
    if open_bracket >= 0:
        close_bracket = block.find("]", open_bracket)
        block = block[open_bracket + 1 : close_bracket if close_bracket >= 0 else len(block)]
    return [int(token) for token in _INTEGER.findall(block)]


def repair_order(ids: list[int], n: int) -> ParsedRanking:
    """Make a permutation out of 1-based `ids`: keep first occurrences, drop out-of-range, append the missing."""
    seen: set[int] = set()
    order: list[int] = []
    for candidate_id in ids:
        index = candidate_id - 1
        if 0 <= index < n and index not in seen:
            seen.add(index)
            order.append(index)
    well_formed = len(ids) == n and len(order) == n
    order.extend(index for index in range(n) if index not in seen)
    return ParsedRanking(order, OK if well_formed else REPAIRED)


def parse_ranking(text: str, n: int) -> ParsedRanking:
    """The ranking a model answer gives over `n` candidates (see the module docstring for the rules)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for block in reversed(answer_blocks(text or "")):
        ids = answer_ids(block)
        if any(1 <= candidate_id <= n for candidate_id in ids):
            return repair_order(ids, n)
    return ParsedRanking(list(range(n)), FALLBACK)
