"""Turning a model answer into a ranking, whatever the model wrote; nothing here raises on any text.

`parse_ranking(text, n)` always returns a permutation of range(n) and a
status: `ok` when the answer was a well-formed permutation, `repaired` when a
ranking was found but needed fixing, `fallback` when no ranking was found
(the input order is kept). Ids in the answer are 1-based, as in the prompt.

Which answer counts. MM-R5's script takes the first `<answer>...</answer>`
anywhere in the output (a regex search), and its RL reward required the
reasoning first (`<think>...</think>` then `<answer>[ids]</answer>`). We
read the answer the reward trained for, and skip by design what the script
would also take, a block inside or before the reasoning (an example the
model echoes, a draft it revises: docs/fidelity.md lists this difference):

1. the FIRST complete answer outside the reasoning: an `<answer>` block after
   `</think>` (or anywhere when there is no `<think>`; a `<think>` never
   closed ends at the first `<answer>`) whose content is a ranking list
   closed by `]` naming at least one id in range;
2. else the first such block whose list was cut off (no `]`: the output hit
   its token limit), used as far as it goes (`repaired`);
3. else `fallback`.

A ranking list is `[3, 1, 2]`: items separated by commas, each an id as
Python's `int()` reads it (the script's own conversion: `+2`, `1_0` and
other digits included), or `Image 3` / `id 3` / `image id 3`; whitespace and
newlines anywhere; empty items (`[2,,1]`) are skipped, as the script does.
A list with any other item (`[id_most_relevant, ...]`, words) is not a
ranking, and neither is prose ("of the 3 images, 2 is best"): prose is a
fallback. An id of more than six digits is out of range for any window and
is never converted. Duplicates keep their first occurrence, out-of-range ids
(0, 9, -1, a run of a thousand digits) are dropped, missing ids are appended
in input order (MM-R5's own script keeps duplicates, so `[1,1,2]` of 3 gives
4 entries; here it is a permutation, status `repaired`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from mmr5_batch.core.vocabulary import ANSWER_CLOSE, ANSWER_OPEN, FALLBACK, OK, REPAIRED, THINK_CLOSE, THINK_OPEN

_ANSWER_OPEN = re.compile(re.escape(ANSWER_OPEN), re.IGNORECASE)
_ANSWER_CLOSE = re.compile(re.escape(ANSWER_CLOSE), re.IGNORECASE)
_THINK_OPEN = re.compile(re.escape(THINK_OPEN), re.IGNORECASE)
_THINK_CLOSE = re.compile(re.escape(THINK_CLOSE), re.IGNORECASE)
# One list item: an id, optionally written "Image 3", "id 3", "image id 3", "#3"; the id itself is what int() takes.
_ITEM = re.compile(r"\s*(?:image\s*id|image|id)?\s*#?\s*([+-]?\w+)\s*", re.IGNORECASE)
# Python's integer literal as int() reads it: a sign, digits (any script's), single underscores between them.
_INTEGER = re.compile(r"[+-]?\d(?:_?\d)*")
# Ids longer than this are out of range for any window (and never reach int()).
_MAX_ID_DIGITS = 6


class ParsedRanking(NamedTuple):
    """A 0-based order over the n candidates (always a permutation) and how it was obtained."""

    order: list[int]
    status: str


def _outside_reasoning(text: str) -> int:
    """Where the reasoning ends: after the first `</think>`; at the first `<answer>` when `<think>` is never closed; 0 without `<think>`."""
    opened = _THINK_OPEN.search(text)
    if opened is None:
        return 0
    closed = _THINK_CLOSE.search(text, opened.end())
    if closed is not None:
        return closed.end()
    answer = _ANSWER_OPEN.search(text, opened.end())
    return answer.start() if answer is not None else len(text)


def answer_blocks(text: str) -> list[str]:
    """The contents of every `<answer>` block after the reasoning, in order; an unclosed block runs to the next one or the end."""
    text = text[_outside_reasoning(text) :]
    starts = [match.end() for match in _ANSWER_OPEN.finditer(text)]
    blocks = []
    for index, start in enumerate(starts):
        limit = starts[index + 1] if index + 1 < len(starts) else len(text)
        close = _ANSWER_CLOSE.search(text, start, limit)
        blocks.append(text[start : close.start() if close else limit])
    return blocks


def ranking_list(block: str) -> tuple[list[int], bool] | None:
    """The 1-based ids of a block's ranking list and whether the list was closed; None when the block holds no ranking list.

    An id too long to be in range becomes 0 (dropped by the repair), so no text reaches int() with thousands of digits.
    """
    stripped = block.strip()
    if not stripped.startswith("["):
        return None
    close = stripped.find("]")
    inner = stripped[1:close] if close >= 0 else stripped[1:]
    if close >= 0 and stripped[close + 1 :].strip():
        return None  # words after the list: prose that happens to start with a bracket
    ids = []
    for item in inner.split(","):
        if not item.strip():
            continue  # an empty item (`[2,,1]`, a trailing comma, a list cut off right after one)
        match = _ITEM.fullmatch(item)
        if match is None or not _INTEGER.fullmatch(match.group(1)):
            return None
        token = match.group(1)
        too_long = sum(character.isdigit() for character in token) > _MAX_ID_DIGITS
        value = 0 if too_long else int(token)
        ids.append(max(value, 0))  # negative ids are out of range like 0
    return ids, close >= 0


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
    truncated = None
    for block in answer_blocks(text or ""):
        found = ranking_list(block)
        if found is None or not any(1 <= candidate_id <= n for candidate_id in found[0]):
            continue
        ids, closed = found
        if closed:
            return repair_order(ids, n)
        if truncated is None:
            truncated = ids
    if truncated is not None:
        return ParsedRanking(repair_order(truncated, n).order, REPAIRED)
    return ParsedRanking(list(range(n)), FALLBACK)
