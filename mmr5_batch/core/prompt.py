"""The MM-R5 prompt: the exact messages the model was trained on.

MM-R5 was fine-tuned on one fixed instruction, so the job sends it byte for
byte (docs/fidelity.md says what it holds and why). Messages are plain dicts in the chat
format that Hugging Face processors and vLLM both accept; image parts carry
no pixels here, the images travel beside the messages in the same order.
"""

from __future__ import annotations

from typing import Any

SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>"
)

# No space between "analysis process." and "For example:" is deliberate: it is
# what the model was trained on.
QUESTION_TEMPLATE = (
    "Please rank the following images according to their relevance to the question. "
    "Provide your response in the format: <think>your reasoning process here</think>"
    "<answer>[image_id_1, image_id_2, ...]</answer> "
    "where the numbers in the list represent the ranking order of images'id from most to least relevant. "
    "Before outputting the answer, you need to analyze each image and provide your analysis process."
    "For example: <think>Image 1 shows the most relevant content because...</think>"
    "<answer>[id_most_relevant, id_second_relevant, ...]</answer>"
    "\nThe question is: {question}"
    "\n\nThere are {image_num} images, id from 1 to {image_num_end}, Image ID to image mapping:\n"
)

Message = dict[str, Any]


def image_label(position: int) -> str:
    """The text part that precedes candidate `position` (1-based)."""
    return f"\nImage {position}: "


def build_messages(question: str, num_images: int) -> list[Message]:
    """System and user messages for ranking `num_images` candidates.

    The user content is the instruction followed, per candidate, by its label
    and an image placeholder; the caller passes the images in the same order.
    """
    if num_images < 1:
        raise ValueError("a prompt needs at least one candidate image")
    content: list[dict[str, str]] = [
        {
            "type": "text",
            "text": QUESTION_TEMPLATE.format(question=question, image_num=num_images, image_num_end=num_images),
        }
    ]
    for position in range(1, num_images + 1):
        content.append({"type": "text", "text": image_label(position)})
        content.append({"type": "image"})
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": content},
    ]


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text through the model's own chat template, ready for generation."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
