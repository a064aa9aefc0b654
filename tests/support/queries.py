"""Grouped-layout queries whose candidates are grey pages of given shades (the scripted engine ranks darker first)."""

from __future__ import annotations

from collections.abc import Sequence

from tests.conftest import grey_jpeg


def grey_queries(levels: Sequence[Sequence[int]]) -> list[dict]:
    """Query `q<n>` per entry of `levels`, candidate `d<i>` a grey page of shade levels[n][i], first-stage scores falling by 0.1."""
    return [
        {
            "query_id": f"q{number}",
            "query": f"question {number}",
            "candidates": [
                {"doc_id": f"d{index}", "image": grey_jpeg(level), "image_uri": None, "text": None, "score": 1.0 - index / 10}
                for index, level in enumerate(shades)
            ],
        }
        for number, shades in enumerate(levels)
    ]
