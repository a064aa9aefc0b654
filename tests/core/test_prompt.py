"""The prompt must be MM-R5's training text byte for byte (docs/fidelity.md)."""

from __future__ import annotations

from mmr5_batch.cli.main import main
from mmr5_batch.core.prompt import build_messages, render_prompt

# Written out independently of mmr5_batch.core.prompt, from the reference text.
REFERENCE_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>"
)
REFERENCE_USER = (
    "Please rank the following images according to their relevance to the question. Provide your response in "
    "the format: <think>your reasoning process here</think><answer>[image_id_1, image_id_2, ...]</answer> where "
    "the numbers in the list represent the ranking order of images'id from most to least relevant. Before "
    "outputting the answer, you need to analyze each image and provide your analysis process.For example: "
    "<think>Image 1 shows the most relevant content because...</think><answer>[id_most_relevant, "
    "id_second_relevant, ...]</answer>\nThe question is: {q}\n\nThere are {n} images, id from 1 to {n}, "
    "Image ID to image mapping:\n"
)
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def reference_prompt(question: str, n: int) -> str:
    user = REFERENCE_USER.format(q=question, n=n) + "".join(f"\nImage {i}: {PLACEHOLDER}" for i in range(1, n + 1))
    return f"<|im_start|>system\n{REFERENCE_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def test_messages_follow_the_reference_structure():
    messages = build_messages("Which page shows revenue?", 3)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == [{"type": "text", "text": REFERENCE_SYSTEM}]
    user = messages[1]["content"]
    assert user[0]["text"] == REFERENCE_USER.format(q="Which page shows revenue?", n=3)
    assert user[1:] == [
        {"type": "text", "text": "\nImage 1: "},
        {"type": "image"},
        {"type": "text", "text": "\nImage 2: "},
        {"type": "image"},
        {"type": "text", "text": "\nImage 3: "},
        {"type": "image"},
    ]


def test_no_space_before_for_example():
    text = build_messages("q", 5)[1]["content"][0]["text"]
    assert "analysis process.For example:" in text


def test_rendered_prompt_equals_reference(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert render_prompt(tokenizer, build_messages("What was Q3 revenue?", 5)) == reference_prompt("What was Q3 revenue?", 5)


def test_show_prompt_prints_the_exact_prompt(tiny_model_dir, capsys):
    assert main(["show-prompt", "--query", "Who signed the lease?", "--num-candidates", "4", "--model", tiny_model_dir]) == 0
    assert capsys.readouterr().out == reference_prompt("Who signed the lease?", 4)


def test_show_prompt_reports_a_missing_model_in_one_line(tmp_path, capsys):
    assert main(["show-prompt", "--query", "q", "--num-candidates", "2", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmr5-batch: error:") and err.count("\n") == 1
