"""The answer constraint's grammar: prefixes, whole answers, and the regex vLLM gets."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmr5_batch.core.answer_constraint import EXACT_REGEX_MAX_IDS, answer_complete, answer_prefix_ok, answer_regex


def spellings(order, separator=", "):
    return separator.join(str(i) for i in order) + "]</answer>"


def test_every_prefix_of_a_permutation_is_ok_and_only_the_whole_is_complete():
    for order in itertools.permutations(range(1, 5)):
        for separator in (",", ", "):
            text = spellings(order, separator)
            assert all(answer_prefix_ok(text[:cut], 4) for cut in range(len(text) + 1))
            assert answer_complete(text, 4) and not any(answer_complete(text[:cut], 4) for cut in range(len(text)))


@pytest.mark.parametrize(
    "text",
    [
        "0",  # ids start at 1
        "5",  # out of range for 4
        "1, 1",  # repeated
        "1, 2, 3]",  # closed before every id is listed
        "1, 2, 3, 4,",  # nothing left to list
        " 1",  # space before the first id
        "1 ,",  # space before a comma
        "1,  2",  # more than one space
        "1, 2, 3, 4]</answer>x",  # anything after the answer
        "1, 2, 3, 4]</ans x",
        "1; 2",
        "12",
    ],
)
def test_invalid_continuations_are_refused(text):
    assert not answer_prefix_ok(text, 4)


def test_two_digit_ids():
    assert answer_prefix_ok("1", 12) and answer_prefix_ok("1", 1)
    assert answer_prefix_ok("1, 1", 12)  # may still become 10, 11 or 12
    assert not answer_prefix_ok("1, 10, 1", 10)  # 1 and 10 both used
    assert answer_complete(spellings([10, *range(1, 10), 11, 12]), 12)
    assert not answer_prefix_ok("13", 12)


@pytest.mark.parametrize("count", range(1, EXACT_REGEX_MAX_IDS + 1))
def test_the_regex_is_exactly_the_permutations_up_to_the_limit(count):
    pattern = re.compile(answer_regex(count))
    for order in itertools.permutations(range(1, count + 1)):
        assert pattern.fullmatch(spellings(order)) and pattern.fullmatch(spellings(order, ","))
    if count > 1:
        assert not pattern.fullmatch(spellings([1] * count))
        assert not pattern.fullmatch(spellings(range(1, count)))
    assert not pattern.fullmatch(spellings(range(1, count + 2)))


def test_above_the_limit_the_regex_keeps_ids_in_range_and_the_count():
    pattern = re.compile(answer_regex(10))
    assert pattern.fullmatch(spellings([10, 9, 8, 7, 6, 5, 4, 3, 2, 1]))
    assert pattern.fullmatch(spellings([1] * 10))  # repeats pass the regex; the parser drops them
    assert not pattern.fullmatch(spellings([11, *range(1, 10)]))
    assert not pattern.fullmatch(spellings(range(1, 10)))


@given(st.permutations(list(range(1, 8))), st.text(alphabet="0123456789, ]</answer>", max_size=30))
def test_the_prefix_check_agrees_with_the_regex(order, noise):
    """For 7 ids, whatever the text: a whole answer the prefix check accepts is one the range regex accepts."""
    for text in (spellings(order), noise):
        if answer_complete(text, 7):
            assert re.fullmatch(answer_regex(7), text)
            assert sorted(int(token) for token in re.findall(r"\d+", text)) == list(range(1, 8))
