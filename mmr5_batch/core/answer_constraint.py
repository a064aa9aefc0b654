"""The answer constraint: a forced answer may only be a permutation of the window's ids.

When the thinking budget cuts the reasoning, the model continues after
`</think><answer>[`. With the constraint on, that continuation must be a list
of the ids 1..n, each exactly once, separated by commas (one space allowed
after each: a model could otherwise write spaces forever) and closed by
`]</answer>`. Backends enforce it their own way:

- hf: `answer_prefix_ok` decides, token by token, which continuations stay
  valid (a logits processor masks the rest), so the answer is always a full
  permutation;
- vLLM: structured outputs with `answer_regex(n)`, which spells out every
  permutation up to `EXACT_REGEX_MAX_IDS` ids and above that only keeps ids in
  range (a regex cannot say "unused" compactly; the parser drops repeats).

Pure functions over strings; no tokenizer here.
"""

from __future__ import annotations

import re

from mmr5_batch.core.vocabulary import ANSWER_LIST_CLOSE, ANSWER_LIST_OPEN

# Permutations spelled out as a trie: 1,957 alternatives for 6 ids, 13,700 for 7.
EXACT_REGEX_MAX_IDS = 6
# Characters a constrained continuation can contain.
ANSWER_CHARACTERS = frozenset("0123456789, " + ANSWER_LIST_CLOSE)


def answer_prefix_ok(text: str, count: int) -> bool:
    """Whether `text` (what follows `<answer>[`) can still grow into a full answer over the ids 1..count."""
    used: set[int] = set()
    number = ""
    position = 0
    while position < len(text):
        char = text[position]
        if char.isdigit():
            number += char
            if number.startswith("0") or not _can_still_be_an_unused_id(number, count, used):
                return False
        elif char == ",":
            if not _completes_an_unused_id(number, count, used):
                return False
            used.add(int(number))
            number = ""
            if len(used) == count:  # nothing left to list
                return False
        elif char == " ":
            if number or not used or text[position - 1] != ",":  # one space, only right after a comma
                return False
        elif char == "]":
            if not _completes_an_unused_id(number, count, used) or len(used) + 1 != count:
                return False
            return ANSWER_LIST_CLOSE.startswith(text[position:])
        else:
            return False
        position += 1
    return True


def answer_complete(text: str, count: int) -> bool:
    """Whether `text` is a whole constrained answer (ending with `]</answer>`)."""
    return text.endswith(ANSWER_LIST_CLOSE) and answer_prefix_ok(text, count)


def answer_text_in_prefix(prefix: str) -> str:
    """What an assistant prefix already holds of the answer list: the text after its last `<answer>[`."""
    start = prefix.rfind(ANSWER_LIST_OPEN)
    return prefix[start + len(ANSWER_LIST_OPEN) :] if start >= 0 else ""


def _can_still_be_an_unused_id(digits: str, count: int, used: set[int]) -> bool:
    return any(str(candidate).startswith(digits) for candidate in range(1, count + 1) if candidate not in used)


def _completes_an_unused_id(digits: str, count: int, used: set[int]) -> bool:
    return bool(digits) and 1 <= int(digits) <= count and int(digits) not in used


def answer_regex(count: int) -> str:
    """A regex for the continuation after `<answer>[`: exact permutations up to EXACT_REGEX_MAX_IDS ids, ids in range above."""
    if count < 1:
        raise ValueError("an answer lists at least one id")
    close = re.escape(ANSWER_LIST_CLOSE)
    if count <= EXACT_REGEX_MAX_IDS:
        return _permutations(tuple(range(1, count + 1))) + close
    one_id = "(?:" + "|".join(str(candidate) for candidate in range(count, 0, -1)) + ")"
    return f"{one_id}(?:, ?{one_id}){{{count - 1}}}{close}"


def _permutations(remaining: tuple[int, ...]) -> str:
    """Every order of `remaining` as a trie-shaped regex: each id, then the orders of the rest."""
    if len(remaining) == 1:
        return str(remaining[0])
    branches = [f"{first}, ?{_permutations(tuple(other for other in remaining if other != first))}" for first in remaining]
    return "(?:" + "|".join(branches) + ")"
