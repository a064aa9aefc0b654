"""jina-reranker-m0's prompt and score, as its reference (the checkpoint's own modeling code) builds them.

jina-reranker-m0 is Qwen2-VL-2B with a score head: a two-layer MLP (hidden
-> hidden, ReLU, hidden -> 1) read at the last position of the final hidden
states. Its prompt uses no chat template: the document first, then the
query, `**Document**:\n{document}\n**Query**:\n{query}`, where an image
document is Qwen-VL's vision markers around one `<|image_pad|>` (the engine
expands it to the image's token count). After the prompt is tokenised, one
more token is appended, id 100, whose position the head reads. The score is
sigmoid(head - 2.65): the reference's normalisation, which vLLM's pooling
runner applies itself for this architecture.

The reference takes one document type per call (text or image): a page with
a picture is judged on its picture alone, a page with only text on its text.
Its text is cut as the reference cuts it: the document alone, its head kept
(`model.document_tokens`, the CPU stage).
"""

from __future__ import annotations

from mmr5_batch.core.pointwise_prompt import VISION_PLACEHOLDER

# The token whose final hidden state the score head reads, appended after the prompt's own tokens.
SCORE_TOKEN_ID = 100
# The reference's normalisation: sigmoid(head output - 2.65).
LOGIT_SHIFT = 2.65


def render_jina_prompt(query: str, *, image: bool, text: str | None) -> str:
    """The prompt of one pair, without the score token (appended to its token ids)."""
    document = VISION_PLACEHOLDER if image else (text or "")
    if not document:
        raise ValueError("jina-reranker-m0's prompt needs the document's image or text")
    return f"**Document**:\n{document}\n**Query**:\n{query}"
