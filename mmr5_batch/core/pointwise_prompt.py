"""The pointwise protocol's prompts, one query-document pair per prompt: Qwen3-VL-Reranker's and the text Qwen3-Reranker's.

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

The text Qwen3-Reranker's differs (its model card's code and vLLM's template
for it agree): the same system turn, then `<Instruct>: {instruction}\n<Query>:
{query}\n<Document>: {document}` (a newline and a space after each label),
then the assistant header followed by an empty think block
(`<think>\n\n</think>\n\n`), and its own default instruction.
"""

from __future__ import annotations

from mmr5_batch.core.vocabulary import RELEVANCE_NO, RELEVANCE_YES

POINTWISE_SYSTEM_PROMPT = f'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "{RELEVANCE_YES}" or "{RELEVANCE_NO}".'
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
VISION_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
TEXT_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# The text reranker's prompt around its pair: the reference tokenises these two apart from the pair.
TEXT_PROMPT_PREFIX = f"<|im_start|>system\n{POINTWISE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
TEXT_PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


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


def text_pair(query: str, text: str, instruction: str = TEXT_DEFAULT_INSTRUCTION) -> str:
    """The text reranker's pair: what its reference tokenises (and truncates at its end) between prefix and suffix."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {text}"


def render_text_pointwise_prompt(query: str, *, text: str | None, instruction: str = TEXT_DEFAULT_INSTRUCTION) -> str:
    """The whole prompt of the text Qwen3-Reranker for one pair (text documents only)."""
    if not text:
        raise ValueError("the text reranker's prompt needs the document's text")
    return TEXT_PROMPT_PREFIX + text_pair(query, text, instruction) + TEXT_PROMPT_SUFFIX
