"""The pointwise protocol over one query: one prompt per candidate, ordered by the model's relevance (P(yes), or a score head's).

Plain functions, tested without Ray or a model: the request for one
query-candidate pair, and the order of scored candidates (highest relevance
first, ties in their current order). The scheduler sends a query's pairs
together, so a batch engine scores all candidates of all queries of a batch
in one forward pass per engine batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmr5_batch.core.engine_protocol import EngineRequest, SamplingSettings
from mmr5_batch.core.families import QWEN3_VL_RERANKER, Family
from mmr5_batch.core.model_inputs import candidate_patches
from mmr5_batch.core.rows import PreparedCandidate


def pointwise_request(query: str, candidate: PreparedCandidate, instruction: str, picture: int = 0, *, family: Family = QWEN3_VL_RERANKER) -> EngineRequest:
    """The request judging one candidate in `family`'s prompt: its picture of picture pass `picture` (none for a text
    family) and text, as available."""
    image = candidate.picture(picture) if family.reads_pictures else None
    patches = candidate_patches(candidate, picture) if image is not None else None
    prompt = family.prompt(query, image=image is not None, text=candidate.text, instruction=instruction)
    return EngineRequest(
        messages=[],
        images=(image,) if image is not None else (),
        sampling=SamplingSettings(max_new_tokens=1, stop=()),
        prompt=prompt,
        prompt_suffix_ids=family.prompt_suffix_ids,
        relevance=True,
        image_inputs=(patches,) if patches is not None else (),
    )


def relevance_order(indices: Sequence[int], relevance: Mapping[int, float]) -> list[int]:
    """`indices` by relevance, highest first; a stable sort, so ties keep their current (first-stage) order."""
    return sorted(indices, key=lambda index: -relevance[index])
