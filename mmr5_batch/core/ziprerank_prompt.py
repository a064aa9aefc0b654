"""ZipRerank's prompt: a RankGPT-style text naming each page by a letter, then all the pages' images, in one user turn.

Its reference builds the text (`create_ranking_prompt_for_training`), puts it
first in the user message with the n images after it, applies the
checkpoint's own chat template with the generation prompt, and appends the
token of `[` to the ids: the model's next token is the letter of the page it
ranks first. In its logits mode (the one-forward-pass mode its README
presents for fast ranking) the pages are ordered by the next-token logits of
their letters' first tokens (`A`..`T`), highest first, ties in window order.
The job renders the same: these messages through the chat template, then
`[` as the text the assistant's turn begins with, and asks the engine for the
letters' next-token scores (engines/: one forward pass, or one generated
token with their log-probabilities; the order is the logits' order).
"""

from __future__ import annotations

from typing import Any

SYSTEM_LINE = "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."
# What the assistant's turn starts with: the model then writes the first page's letter.
ANSWER_OPEN_BRACKET = "["
# Its reference names at most 20 pages per prompt ([A]..[T]).
MAX_WINDOW = 20


def page_letters(count: int) -> tuple[str, ...]:
    """The letters naming `count` pages of one prompt, from A."""
    if not 1 <= count <= MAX_WINDOW:
        raise ValueError(f"a ZipRerank prompt names 1 to {MAX_WINDOW} pages, got {count}")
    return tuple(chr(ord("A") + index) for index in range(count))


def ziprerank_text(query: str, count: int) -> str:
    """The prompt's text, exactly as its reference writes it for `count` pages."""
    order = ", ".join(f"Picture {index + 1} is passage [{letter}]" for index, letter in enumerate(page_letters(count)))
    return "\n".join(
        [
            SYSTEM_LINE,
            "",
            f"I will provide you with {count} passages as images.",
            "Rank the passages based on their relevance to the search query.",
            "",
            f"The images are provided in order: {order}.",
            "",
            f"Search Query: {query}",
            "",
            "Rank the passages above based on their relevance to the search query.",
            "The passages should be listed in descending order using identifiers.",
            "The most relevant passages should be listed first.",
            "The output format should be [A] > [B], etc.",
            "Only output the ranking results, do not say anything else.",
        ]
    )


def ziprerank_messages(query: str, count: int) -> list[dict[str, Any]]:
    """One user turn: the text first, then the `count` images (placeholders; the caller passes the images in order)."""
    return [{"role": "user", "content": [{"type": "text", "text": ziprerank_text(query, count)}] + [{"type": "image"}] * count}]
