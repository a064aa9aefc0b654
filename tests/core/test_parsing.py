from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmr5_batch.core.parsing import parse_ranking
from mmr5_batch.core.vocabulary import FALLBACK, OK, REPAIRED


@pytest.mark.parametrize(
    "text, n, order, status",
    [
        ("<think>x</think><answer>[3, 1, 2]</answer>", 3, [2, 0, 1], OK),
        ("<think>x</think><answer>[ 2,\n 1 ,\n3 ]</answer>", 3, [1, 0, 2], OK),
        ("<think>x</think><answer>[Image 3, Image 1, Image 2]</answer>", 3, [2, 0, 1], OK),
        ("<think>never closed <answer>[2, 3, 1]</answer>", 3, [1, 2, 0], OK),
        ("<think>x</think><answer>[2, 1, 3]</answer> and then some chatter [1]", 3, [1, 0, 2], OK),
        # duplicates keep their first occurrence, the missing id is appended
        ("<answer>[1, 1, 2]</answer>", 3, [0, 1, 2], REPAIRED),
        ("<answer>[3, 3, 1]</answer>", 3, [2, 0, 1], REPAIRED),
        # out of range (0 and 9) dropped, missing appended in input order
        ("<answer>[0, 9, 2]</answer>", 3, [1, 0, 2], REPAIRED),
        ("<answer>[3]</answer>", 4, [2, 0, 1, 3], REPAIRED),
        # truncated answer used as far as it goes
        ("<think>x</think><answer>[4, 2", 4, [3, 1, 0, 2], REPAIRED),
        ("<think>only reasoning, no answer</think>", 3, [0, 1, 2], FALLBACK),
        ("<answer>[id_most_relevant, id_second_relevant, ...]</answer>", 3, [0, 1, 2], FALLBACK),
        ("<answer>[7, 8]</answer>", 3, [0, 1, 2], FALLBACK),
        ("", 2, [0, 1], FALLBACK),
        ("[2, 1]", 2, [0, 1], FALLBACK),
    ],
)
def test_parse_cases(text, n, order, status):
    assert parse_ranking(text, n) == (order, status)


def test_the_first_complete_answer_after_the_reasoning_wins():
    # an example echoed in the reasoning never counts; the answer after it does
    text = "<think>e.g. <answer>[1, 2, 3]</answer> but no</think><answer>[3, 2, 1]</answer>"
    assert parse_ranking(text, 3) == ([2, 1, 0], OK)
    # MM-R5's script and reward take the first answer: a later restatement does not override it
    assert parse_ranking("</think><answer>[2, 1, 3]</answer> wait: <answer>[3, 1, 2]</answer>", 3) == ([1, 0, 2], OK)
    # a complete answer beats an earlier or later incomplete fragment
    assert parse_ranking("<answer>[3, 1</answer><answer>[2, 3, 1]</answer>", 3) == ([1, 2, 0], OK)
    assert parse_ranking("<answer>[2, 3, 1]</answer><answer>[3", 3) == ([1, 2, 0], OK)
    # a block without a ranking list does not stop the search
    assert parse_ranking("<answer>[]</answer><answer>[2, 1]</answer>", 2) == ([1, 0], OK)


@pytest.mark.parametrize(
    "answer, n, order, status",
    [
        # What MM-R5's script accepts, since it converts each item with int() and skips empty items.
        ("[+2, +1, +3]", 3, [1, 0, 2], OK),
        ("[1_0, 2, 1, 3]", 3, [1, 0, 2], REPAIRED),  # 10 is out of range for 3
        ("[1_0, 2, 1, 3]", 10, [9, 1, 0, 2, 3, 4, 5, 6, 7, 8], REPAIRED),
        ("[2_1, 3]", 3, [2, 0, 1], REPAIRED),
        ("[2,,1,,3]", 3, [1, 0, 2], OK),
        ("[ 3 , , 1 , 2 , ]", 3, [2, 0, 1], OK),
        ("[\u0662, \u0661]", 2, [1, 0], OK),  # Arabic-Indic digits: int() reads them
        ("[-1, 2]", 2, [1, 0], REPAIRED),
        # What int() refuses is no id: the list is not a ranking.
        ("[1__0, 2]", 3, [0, 1, 2], FALLBACK),
        ("[_1, 2]", 3, [0, 1, 2], FALLBACK),
        ("[- 2, 1]", 3, [0, 1, 2], FALLBACK),
        ("[2.0, 1]", 3, [0, 1, 2], FALLBACK),
        ("[,]", 2, [0, 1], FALLBACK),
    ],
)
def test_ids_are_read_as_pythons_int_reads_them(answer, n, order, status):
    assert parse_ranking(f"<think>x</think><answer>{answer}</answer>", n) == (order, status)


def test_the_digit_guard_holds_for_every_spelling_int_accepts():
    huge = "1_" * 3000 + "1"
    assert parse_ranking(f"<answer>[+{huge}, 2, 1]</answer>", 2) == ([1, 0], REPAIRED)
    arabic_ones = "\u0661" * 5000
    assert parse_ranking(f"<answer>[{arabic_ones}, 1]</answer>", 2) == ([0, 1], REPAIRED)


def test_prose_is_not_a_ranking():
    for text in (
        "<think>x</think><answer>Of the 3 images, 2 is the most relevant.</answer>",
        "<answer>Image 2 is best, then 1</answer>",
        "<answer>[2, 1] because image 2 has the table</answer>",
        "<answer>[the second, the first]</answer>",
    ):
        assert parse_ranking(text, 3) == ([0, 1, 2], FALLBACK), text


def test_huge_numbers_never_raise():
    huge = "9" * 5000
    assert parse_ranking(f"<answer>[{huge}, 2, 1]</answer>", 2) == ([1, 0], REPAIRED)
    assert parse_ranking(f"<answer>[-{huge}]</answer>", 2) == ([0, 1], FALLBACK)
    assert parse_ranking(f"<answer>{huge}</answer>", 2) == ([0, 1], FALLBACK)
    assert parse_ranking(f"<answer>[{huge}", 2) == ([0, 1], FALLBACK)


def test_attribute_access():
    parsed = parse_ranking("<answer>[2, 1]</answer>", 2)
    assert parsed.order == [1, 0] and parsed.status == OK


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/[]answerthink, 0123456789Image\n")), max_size=80), st.integers(0, 12))
def test_any_text_gives_a_permutation(text, n):
    order, status = parse_ranking(text, n)
    assert sorted(order) == list(range(n))
    assert status in (OK, REPAIRED, FALLBACK)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 15), max_size=15), st.integers(1, 12), st.text(max_size=20))
def test_any_answer_list_gives_a_permutation(ids, n, noise):
    text = f"<think>{noise}</think><answer>[{', '.join(map(str, ids))}]</answer>{noise}"
    order, status = parse_ranking(text, n)
    assert sorted(order) == list(range(n))
    valid_first = list(dict.fromkeys(i - 1 for i in ids if 1 <= i <= n))
    assert order[: len(valid_first)] == valid_first
    if sorted(ids) == list(range(1, n + 1)):
        assert status == OK


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.from_regex(r"-?[0-9]{1,6000}", fullmatch=True) | st.integers(-3, 12).map(str), max_size=8),
    st.integers(0, 9),
    st.text(max_size=30),
)
def test_any_numbers_however_large_give_a_permutation(ids, n, noise):
    # Written as digit strings: Python itself refuses to convert ints of over 4,300 digits.
    text = f"{noise}<answer>[{', '.join(ids)}]</answer>{noise}<answer>{' '.join(ids)}"
    order, status = parse_ranking(text, n)
    assert sorted(order) == list(range(n)) and status in (OK, REPAIRED, FALLBACK)
