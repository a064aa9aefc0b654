from __future__ import annotations

import pytest

from mmr5_batch.core.windows import SlidingWindowRanking, first_stage_order, sliding_windows


@pytest.mark.parametrize(
    "length, window, stride, expected",
    [
        (3, 5, 3, [(0, 3)]),
        (5, 5, 3, [(0, 5)]),
        (8, 5, 3, [(3, 8), (0, 5)]),
        (8, 5, 2, [(3, 8), (1, 6), (0, 5)]),
        (20, 5, 3, [(15, 20), (12, 17), (9, 14), (6, 11), (3, 8), (0, 5)]),
        (0, 5, 3, []),
    ],
)
def test_sliding_windows_run_bottom_up_and_end_at_the_top(length, window, stride, expected):
    assert sliding_windows(length, window, stride) == expected


@pytest.mark.parametrize("window, stride", [(1, 1), (5, 5), (5, 0)])
def test_bad_window_settings_are_refused(window, stride):
    with pytest.raises(ValueError):
        sliding_windows(10, window, stride)


def test_first_stage_order_sorts_by_score_stably():
    assert first_stage_order([0.2, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]
    assert first_stage_order([0.2, None, 0.5]) == [0, 1, 2]


def test_best_item_bubbles_to_the_top_through_all_windows():
    # the "model" always puts the lowest candidate index first
    ranking = SlidingWindowRanking(order=[7, 6, 5, 4, 3, 2, 1, 0], window=5, stride=3)
    while not ranking.done:
        window = ranking.current_window()
        ranking.apply(sorted(range(len(window)), key=lambda position: window[position]))
    assert ranking.order[0] == 0
    assert sorted(ranking.order) == list(range(8))
    assert ranking.rounds_done == 2


def test_rerank_depth_leaves_the_tail_alone():
    ranking = SlidingWindowRanking(order=list(range(10)), window=3, stride=2, rerank_depth=4)
    assert ranking.windows == [(1, 4), (0, 3)]
    while not ranking.done:
        ranking.apply(list(reversed(range(len(ranking.current_window())))))
    assert ranking.order[4:] == [4, 5, 6, 7, 8, 9]
    assert sorted(ranking.order[:4]) == [0, 1, 2, 3]


def test_single_candidate_needs_no_window():
    assert SlidingWindowRanking(order=[0], window=5, stride=3).done


def test_apply_refuses_a_non_permutation():
    ranking = SlidingWindowRanking(order=[0, 1, 2], window=5, stride=3)
    with pytest.raises(ValueError):
        ranking.apply([0, 0, 1])
