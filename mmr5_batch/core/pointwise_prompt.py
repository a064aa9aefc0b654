"""The pointwise protocol's prompt: Qwen3-VL-Reranker's published format, one query-document pair per prompt.

The model was trained to judge one pair and answer "yes" or "no"; its
relevance score is P(yes) at the first answer position: the sigmoid of the
"yes" logit minus the "no" logit, computed in fp32 from the last hidden state
and those two rows of the output head (the reference script, vLLM's pooling
runner and our hf engine alike; a two-way softmax in exact arithmetic). The prompt is rendered here,
byte for byte, rather than by the checkpoint's chat template, because the
reranker checkpoints ship a generic Qwen3-VL template: system turn, then
`<Instruct>: {instruction}<Query>:{query}` (no separator between the two),
`\n<Document>:` and the document (its image, then its text), then the
assistant header. An image part is Qwen-VL's vision markers around one
`<|image_pad|>`, which the engine expands to the image's token count.
"""

from __future__ import annotations

from mmr5_batch.core.vocabulary import RELEVANCE_NO, RELEVANCE_YES

POINTWISE_SYSTEM_PROMPT = f'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "{RELEVANCE_YES}" or "{RELEVANCE_NO}".'
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
VISION_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def render_pointwise_prompt(query: str, *, image: bool, text: str | None, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The whole prompt for one pair; `image` says whether the document's image follows (one placeholder)."""
    document = (VISION_PLACEHOLDER if image else "") + (text or "")
    if not document:
        raise ValueError("a pointwise prompt needs the document's image or text")
    return (
        f"<|im_start|>system\n{POINTWISE_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n<Instruct>: {instruction}<Query>:{query}\n<Document>:{document}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
