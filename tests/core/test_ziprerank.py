"""ZipRerank as a family: its prompt, letters, windows and scores exact to its reference, on the tiny checkpoint.

The reference (dukesun99/ZipRerank: `utils/data_utils.py`,
`scripts/evaluate.py`) cannot be imported (a training repository, not a
package): what it computes is re-implemented here, and said so at each
place: `reference_text` (`create_ranking_prompt_for_training`),
`reference_ids` (`prepare_ranking_inputs`: the chat template over the text
then the images, the generation prompt, then the id of `[`; image pads
expanded as its processor does), `reference_order` (the logits mode of
`rerank_window_with_images`) and `reference_sliding` (its
`sliding_window_rerank_with_images`).
"""

from __future__ import annotations

import pytest

from mmr5_batch.config import ConfigError, RerankerConfig, config_from_keywords
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.families import ZIPRERANK_FAMILY, detect_family
from mmr5_batch.core.windows import SlidingWindowRanking, sliding_windows
from mmr5_batch.core.ziprerank_prompt import page_letters, ziprerank_messages, ziprerank_text


def reference_text(query: str, num_passages: int) -> str:
    """`create_ranking_prompt_for_training(query, n, use_query_adapter=False)`, re-implemented line for line."""
    parts = ["You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query.", ""]
    parts.append(f"I will provide you with {num_passages} passages as images.")
    parts.append("Rank the passages based on their relevance to the search query.")
    parts.append("")
    image_order = ", ".join([f"Picture {i + 1} is passage [{chr(ord('A') + i)}]" for i in range(num_passages)])
    parts.append(f"The images are provided in order: {image_order}.")
    parts.append("")
    parts.append(f"Search Query: {query}")
    parts.append("")
    parts.append("Rank the passages above based on their relevance to the search query.")
    parts.append("The passages should be listed in descending order using identifiers.")
    parts.append("The most relevant passages should be listed first.")
    parts.append("The output format should be [A] > [B], etc.")
    parts.append("Only output the ranking results, do not say anything else.")
    return "\n".join(parts)


def reference_ids(tokenizer, query: str, image_tokens: list[int]) -> list[int]:
    """`prepare_ranking_inputs`: one user message, the text then the images, the chat template with the generation
    prompt, tokenised, each image pad expanded to its image's tokens (what its processor does), then `[`'s id."""
    messages = [{"role": "user", "content": [{"type": "text", "text": reference_text(query, len(image_tokens))}] + [{"type": "image"}] * len(image_tokens)}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expanded: list[int] = []
    counts = iter(image_tokens)
    for token in ids:
        expanded += [pad] * next(counts) if token == pad else [token]
    return [*expanded, tokenizer.encode("[", add_special_tokens=False)[0]]


def reference_order(letter_logits: list[float]) -> list[int]:
    """The logits mode: positions sorted by their letter's logit, descending (Python's stable sort)."""
    return sorted(range(len(letter_logits)), key=lambda position: letter_logits[position], reverse=True)


def reference_sliding(n_candidates: int, window_size: int, stride: int, rank_window) -> list[int]:
    """`sliding_window_rerank_with_images`, re-implemented: windows from the end of the list up."""
    indices = list(range(n_candidates))
    end_pos = n_candidates
    start_pos = end_pos - window_size
    while end_pos > 0 and start_pos + stride != 0:
        start_pos = max(start_pos, 0)
        ranked = rank_window(indices[start_pos:end_pos])
        indices[start_pos:end_pos] = [indices[start_pos + position] for position in ranked]
        end_pos -= stride
        start_pos -= stride
    return indices


def test_the_prompt_text_and_letters_are_the_references():
    for count in (1, 5, 20):
        assert ziprerank_text("which page shows the Q3 revenue?", count) == reference_text("which page shows the Q3 revenue?", count)
    assert page_letters(20) == tuple("ABCDEFGHIJKLMNOPQRST")
    with pytest.raises(ValueError, match="1 to 20 pages"):
        page_letters(21)
    [message] = ziprerank_messages("q", 3)
    assert message["role"] == "user" and [part["type"] for part in message["content"]] == ["text", "image", "image", "image"]


def test_prompt_ids_on_the_tiny_checkpoint_are_the_references(tiny_ziprerank_dir):
    """What our hf engine feeds the model for one window (the chat template's text, `[` after the generation prompt,
    image pads expanded) is, id for id, what ZipRerank's `prepare_ranking_inputs` builds."""
    from transformers import AutoTokenizer

    from mmr5_batch.core.engine_protocol import SamplingSettings
    from mmr5_batch.core.ranking import plan_query
    from mmr5_batch.core.rows import PassPicture, PreparedCandidate, PreparedRow
    from mmr5_batch.core.scheduler import _request
    from mmr5_batch.engines.hf import expand_image_pads

    tokenizer = AutoTokenizer.from_pretrained(tiny_ziprerank_dir)
    counts = [12, 20, 6, 9]
    row = PreparedRow(
        query_id="q",
        query="which page shows revenue?",
        candidates=[PreparedCandidate(doc_id=f"d{i}", pictures=[PassPicture(image=b"x", tokens=t)]) for i, t in enumerate(counts)],
    )
    run = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": tiny_ziprerank_dir}))
    assert run.main.family is ZIPRERANK_FAMILY
    request = _request(plan_query(row, run.ranking().plan), [0, 1, 2, 3], SamplingSettings(), run.main.family)
    assert request.assistant_prefix == "[" and request.score_labels == ("A", "B", "C", "D")
    from mmr5_batch.core.prompt import render_prompt

    ours = tokenizer.encode(expand_image_pads(render_prompt(tokenizer, request.messages) + request.assistant_prefix, counts), add_special_tokens=False)
    assert ours == reference_ids(tokenizer, "which page shows revenue?", counts)
    # The letters scored are the reference's: each letter's first token.
    from mmr5_batch.engines.shared import label_token_ids

    assert label_token_ids(tokenizer, request.score_labels) == [tokenizer.encode(letter, add_special_tokens=False)[0] for letter in "ABCD"]


@pytest.mark.parametrize("length", [7, 20, 21, 30, 45, 57])
def test_windows_and_their_merging_are_the_references(length):
    """20 pages a window, stride 10, from the end up: our ranking over any list equals the reference's loop, with the
    same window answers (here: each window ranks its pages by a fixed per-page score, as its letters' logits would)."""
    worth = [((index * 37) % 101) / 7.0 for index in range(length)]

    def rank_window(pages: list[int]) -> list[int]:
        return reference_order([worth[page] for page in pages])

    expected = reference_sliding(length, 20, 10, rank_window) if length > 20 else [list(range(length))[p] for p in rank_window(list(range(length)))]
    ranking = SlidingWindowRanking(list(range(length)), 20, 10, full_last=False)
    while not ranking.done:
        pages = ranking.current_window()
        ranking.apply(reference_order([worth[page] for page in pages]))
    assert ranking.order == expected
    # MM-R5's rule here differs where the stride does not divide the list: its last window is full.
    assert sliding_windows(length, 20, 10)[-1] == (0, min(length, 20))


def test_resolution_detection_and_the_settings_it_refuses(tiny_ziprerank_dir):
    run = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": "mtri-admin/ZipRerank"}))
    assert run.protocol == "ziprerank" and (run.config.ranking.window, run.config.ranking.stride) == (20, 10)
    assert run.ranking().plan.label == "ziprerank" and run.ranking().plan.count_scores and run.main.grid == 32
    # Set by hand, the reference's windows unless set too; a Qwen3-VL checkpoint named as the reranker is
    # Qwen3-VL-Reranker, one named neither way is refused under 'auto' (tests/core/test_families.py).
    set_window = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": "/x/qwen3vl", "protocol": "ziprerank", "window": 8}))
    assert (set_window.config.ranking.window, set_window.config.ranking.stride) == (8, 4)
    assert detect_family(None, "qwen3_vl", "/models/qwen3-vl-reranker-2b").name == "qwen3-vl-reranker"
    for settings, message in [
        ({"window": 21}, "ranking.window must be at most 20"),
        ({"mode": "fast"}, "ZipRerank ranks every window in one forward pass already"),
        ({"cascade": True}, "the cascades put MM-R5 last"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config_from_keywords(RerankerConfig, **{"model.name": "mtri-admin/ZipRerank"}, **settings)


def test_scores_count_down_from_n_and_positions_are_labelled_ziprerank():
    """Through the scheduler with the scripted test engine (its label scores: each page's darkness): the order is the
    reference's sliding windows over those scores, `scores` are n - rank as the reference reports them, `decided_by`
    names the family, and nothing is generated."""
    from mmr5_batch.core.engine_protocol import SamplingSettings
    from mmr5_batch.core.scheduler import RankingSettings, rerank_queries
    from mmr5_batch.devtools.scripted_engine import ScriptedTestEngine
    from tests.conftest import grey_jpeg

    levels = [200, 20, 140, 60, 180, 100, 240, 5, 90, 30, 160, 75]
    candidates = [{"doc_id": f"d{index}", "pictures": [{"image": grey_jpeg(level), "tokens": 4}]} for index, level in enumerate(levels)]
    settings = RankingSettings(window=5, stride=3, sampling=SamplingSettings(), model_id="z", protocol="ziprerank", family="ziprerank")
    [result] = rerank_queries([{"query_id": "q", "query": "which?", "candidates": candidates}], ScriptedTestEngine(), settings)
    darkness = [255 - level for level in levels]  # grey pages: their darkness is exact
    expected = reference_sliding(12, 5, 3, lambda pages: reference_order([darkness[page] for page in pages]))
    assert result.doc_ids == [f"d{index}" for index in expected] and result.doc_ids[0] == "d7"
    assert result.status == "ziprerank" and result.decided_by == ["ziprerank"] * 12 and result.generated_tokens == 0
    assert result.scores == [float(12 - rank) for rank in range(12)]
