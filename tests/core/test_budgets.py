"""Budget policies: uniform and rank-weighted shares, the per-prompt total, the minimum."""

from __future__ import annotations

import pytest

from mmr5_batch.config import ConfigError, load_config
from mmr5_batch.core.budgets import candidate_budgets
from mmr5_batch.core.preparation import PrepareSettings, prepare_row


def test_uniform_gives_every_candidate_the_cap():
    assert candidate_budgets(7, cap=1024, window=5) == [1024] * 7


def test_rank_falls_from_the_cap_to_a_quarter():
    budgets = candidate_budgets(5, cap=1000, window=5, policy="rank")
    assert budgets == [1000, 812, 625, 437, 250]
    assert candidate_budgets(1, cap=1000, window=5, policy="rank") == [1000]


@pytest.mark.parametrize("policy", ["uniform", "rank"])
def test_no_window_exceeds_the_prompt_total(policy):
    budgets = candidate_budgets(20, cap=1024, window=5, prompt_total=2000, policy=policy)
    assert sum(sorted(budgets, reverse=True)[:5]) <= 2000
    assert budgets == sorted(budgets, reverse=True)
    assert candidate_budgets(3, cap=1024, window=5, prompt_total=1_000_000, policy=policy) == candidate_budgets(3, cap=1024, window=5, policy=policy)


def test_never_below_the_models_minimum():
    assert min(candidate_budgets(50, cap=64, window=5, prompt_total=20, policy="rank")) == 4
    with pytest.raises(ConfigError, match="prompt_image_tokens \\(12\\) must allow the minimum"):
        load_config(None, {"input": "i", "output": "o", "images.prompt_image_tokens": 12})


def test_prepare_gives_the_top_of_the_first_stage_the_bigger_budget(make_grey_jpeg):
    settings = PrepareSettings(image_tokens=256, jpeg_quality=90, duplicate_query_ids={}, policy="rank")
    page = make_grey_jpeg(100, (1240, 1754))
    row = {
        "query_id": "q",
        "query": "which?",
        "candidates": [{"doc_id": d, "image": page, "image_uri": None, "text": None, "score": s} for d, s in (("low", 0.1), ("top", 0.9))],
    }
    prepared = {c.doc_id: c.picture_tokens() for c in prepare_row(row, settings).candidates}
    assert 200 < prepared["top"] <= 256 and prepared["low"] <= 64
