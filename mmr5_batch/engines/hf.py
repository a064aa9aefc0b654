"""The transformers backend: MM-R5, ZipRerank, Qwen3-VL-Reranker, the text Qwen3-Reranker and jina-reranker-m0 on CPU or CUDA, batched with left padding.

Each is loaded with its family's auto class (`Family.hf_auto_class`: the
image-text-to-text model, or a causal LM for the text reranker, which has no
image processor).

Inputs are built the way Qwen's processor builds them: the chat template
renders one `<|image_pad|>` per image, the image processor gives each image's
patch grid (`image_grid_thw`), and each pad is expanded to grid/merge^2
tokens. We call the tokenizer and image processor directly because the
combined processor class insists on a video processor that needs torchvision,
which the CPU machines cannot import.

A pointwise request (`relevance`) is one forward pass: the pair's relevance
is the two-way softmax of the "no" and "yes" logits at the next position,
P(yes), what the reranker's own code and vLLM's pooling runner compute; for
jina-reranker-m0 (a score-head family) it is the checkpoint's score MLP over
the last position's final hidden state, after the score token its request
appends (`prompt_suffix_ids`), sigmoid(value - 2.65), as its reference
computes it, the head read from the checkpoint's weights
(engines/score_head.py) rather than its remote code. A request with
`score_labels` (ZipRerank's letters, fast mode's ids) is one forward pass
too: each label's next-token log-probability.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmr5_batch.core.answer_constraint import ANSWER_CHARACTERS, answer_complete, answer_prefix_ok, answer_text_in_prefix
from mmr5_batch.core.engine_protocol import Completion, EngineRequest, SamplingSettings
from mmr5_batch.core.families import MM_R5_FAMILY, SCORE_HEAD, Family
from mmr5_batch.core.model_inputs import IMAGE_PAD, ImagePatches, patch_rows
from mmr5_batch.core.prompt import render_prompt
from mmr5_batch.core.vocabulary import RELEVANCE_NO, RELEVANCE_YES
from mmr5_batch.engines.score_head import ScoreHead
from mmr5_batch.engines.shared import label_token_ids, split_on_rejection
from mmr5_batch.errors import EngineUnavailable


def relevance_from_hidden(hidden: Any, head_weight: Any, no: int, yes: int) -> Any:
    """P(yes) of each row of `hidden` (the last position's hidden states): sigmoid(h . (w_yes - w_no)) with the
    product and the difference in fp32, as Qwen3-VL-Reranker's reference and vLLM's classifier compute it. A softmax
    over a bf16 model's own no/yes logits would round scores together (logits near 20 keep steps of 1/8), so lists
    would get ties that are only rounding."""
    import torch

    difference = head_weight[yes].float() - head_weight[no].float()
    return torch.sigmoid(hidden.float() @ difference)


def expand_image_pads(prompt: str, tokens_per_image: Sequence[int]) -> str:
    """Replace the i-th `<|image_pad|>` by tokens_per_image[i] pads, as the Qwen processor does."""
    pieces = prompt.split(IMAGE_PAD)
    if len(pieces) - 1 != len(tokens_per_image):
        raise ValueError(f"prompt has {len(pieces) - 1} image placeholders but {len(tokens_per_image)} images were given")
    expanded = [pieces[0]]
    for count, piece in zip(tokens_per_image, pieces[1:]):
        expanded.append(IMAGE_PAD * count)
        expanded.append(piece)
    return "".join(expanded)


class AnswerConstraintProcessor:
    """A transformers logits processor: rows with a constrained answer may only continue it validly.

    Each step, a constrained row's text so far (what follows `<answer>[` in
    its prefix, plus what it generated) is extended by each token that could
    appear in an answer; tokens that would leave `answer_prefix_ok` are masked
    out, and once the answer is whole only the end of the turn is left.
    """

    def __init__(self, tokenizer: Any, answer_tokens: dict[int, str], rows: list[tuple[str, int] | None], prompt_length: int, end_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.answer_tokens = answer_tokens
        self.rows = rows  # per row: (answer text already in the prompt, ids in the window), or None
        self.prompt_length = prompt_length
        self.end_ids = end_ids

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for row, spec in enumerate(self.rows):
            if spec is None:
                continue
            written, count = spec
            text = written + self.tokenizer.decode(input_ids[row, self.prompt_length :].tolist(), skip_special_tokens=True)
            if answer_complete(text, count):
                allowed = self.end_ids
            else:
                allowed = [token for token, piece in self.answer_tokens.items() if answer_prefix_ok(text + piece, count)]
            if allowed:  # never mask a whole row (no valid token: leave it to the parser)
                mask = torch.full_like(scores[row], float("-inf"))
                mask[allowed] = 0.0
                scores[row] = scores[row] + mask
        return scores


def _cut_after_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
    return (text[: min(ends)], True) if ends else (text, False)


class HFEngine:
    """Qwen2.5-VL through transformers' generate; one instance per actor."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, *, max_batch_size: int = 8, score_head: ScoreHead | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor  # None for a text model
        self.max_batch_size = max_batch_size
        # A score-head family's head (jina-reranker-m0): relevance from it instead of the "yes" and "no" rows.
        self.score_head = score_head
        self.merge_area = image_processor.merge_size**2 if image_processor is not None else 1
        self.tokenizer.padding_side = "left"
        self._answer_tokens: dict[int, str] | None = None

    def answer_tokens(self) -> dict[int, str]:
        """Tokens whose text could appear in a constrained answer (digits, separators, `]</answer>` pieces); found once."""
        if self._answer_tokens is None:
            self._answer_tokens = {}
            for token in range(len(self.tokenizer)):
                piece = self.tokenizer.decode([token])
                if piece and set(piece) <= ANSWER_CHARACTERS:
                    self._answer_tokens[token] = piece
        return self._answer_tokens

    @classmethod
    def from_config(cls, config: Any, family: Family = MM_R5_FAMILY) -> HFEngine:
        """The engine for a model section, loaded as its family says (`Family.hf_auto_class`; a text family has no
        image processor)."""
        try:
            import torch
            import transformers
            from transformers import AutoTokenizer
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        except ImportError as error:
            raise EngineUnavailable(f"the hf backend needs torch and transformers ({error}); install with: pip install -e .") from error

        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("model.device is 'cuda' but no CUDA device is visible to this actor")
        dtype_name = config.dtype if config.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.name)
            # Qwen2.5-VL's and Qwen3-VL's image processors are this one class with other patch sizes.
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(config.name) if family.reads_pictures else None
            # The checkpoint's own class: Qwen2.5-VL (MM-R5), Qwen3-VL (Qwen3-VL-Reranker), Qwen3 (the text reranker).
            auto_class = getattr(transformers, family.hf_auto_class)
            model = auto_class.from_pretrained(config.name, dtype=getattr(torch, dtype_name), **config.engine_kwargs)
            # The base model leaves a score head out (its weights are reported as unexpected): read from the weights.
            score_head = ScoreHead.load(config.name, family.logit_shift) if family.relevance_head == SCORE_HEAD else None
        except (OSError, ValueError) as error:
            raise EngineUnavailable(f"cannot load model {config.name!r} with transformers: {str(error).splitlines()[0]}") from error
        model.to(device).eval()
        return cls(model, tokenizer, image_processor, max_batch_size=config.max_batch_size, score_head=score_head)

    def close(self) -> None:
        """Drop the model so its memory can be freed (GPU memory at once)."""
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def render(self, request: EngineRequest) -> str:
        if request.prompt:
            return request.prompt + request.assistant_prefix
        return render_prompt(self.tokenizer, request.messages) + request.assistant_prefix

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        # One generate call takes one sampling setting: group the requests
        # (forced answers have their own) and put the completions back in order.
        groups: dict[tuple[SamplingSettings, bool, bool, tuple[int, ...]], list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault((request.sampling, bool(request.score_labels), request.relevance, request.prompt_suffix_ids), []).append(position)
        completions: list[Completion | None] = [None] * len(requests)
        for positions in groups.values():
            for position, completion in zip(positions, self._generate_group([requests[position] for position in positions])):
                completions[position] = completion
        return completions  # type: ignore[return-value]  # each position is filled by its group above

    def _generate_group(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        completions: list[Completion] = []
        for start in range(0, len(requests), self.max_batch_size):
            # transformers and torch say "this input" with many exception types (a size the processor refuses, out of
            # memory on a long prompt): any of them isolates the request that broke the chunk.
            completions.extend(split_on_rejection(requests[start : start + self.max_batch_size], self._generate_batch, (Exception,), "the hf engine"))
        return completions

    def _encode(self, requests: Sequence[EngineRequest]) -> tuple[dict[str, Any], list[int]]:
        import torch
        from PIL import Image

        prompts, pixel_values, grids, image_tokens = [], [], [], []
        for request in requests:
            counts: list[int] = []
            if request.image_inputs:  # the CPU stage's patches: normalised here, as vLLM does on its device
                pixel_values.append(torch.cat([self.pixel_values(patches) for patches in request.image_inputs]))
                grids.append(torch.tensor([patches.grid for patches in request.image_inputs]))
                counts = [patches.tokens(self.image_processor.merge_size) for patches in request.image_inputs]
                prompts.append(expand_image_pads(self.render(request), counts))
                image_tokens.append(sum(counts))
                continue
            pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in request.images]
            if pictures:
                vision = self.image_processor(images=pictures, return_tensors="pt")
                pixel_values.append(vision["pixel_values"])
                grids.append(vision["image_grid_thw"])
                counts = [int(grid.prod()) // self.merge_area for grid in vision["image_grid_thw"]]
            prompts.append(expand_image_pads(self.render(request), counts))
            image_tokens.append(sum(counts))
        inputs = dict(self.tokenizer(prompts, padding=True, return_tensors="pt"))
        suffix = requests[0].prompt_suffix_ids
        if suffix:
            # After the padding, as the reference appends its score token: every row ends with it (left padding).
            if any(request.prompt_suffix_ids != suffix for request in requests):
                raise ValueError("one batch needs one prompt suffix")
            tail = torch.tensor([suffix] * len(requests), dtype=inputs["input_ids"].dtype)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], tail], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(tail, dtype=inputs["attention_mask"].dtype)], dim=1)
        if pixel_values:
            # Which positions hold image tokens (1; text 0): what Qwen's processor returns beside input_ids and
            # what the model needs to lay out its M-RoPE positions over the images (without it, transformers
            # 5.x gives image tokens plain 1-D positions, or refuses, for Qwen3-VL).
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.model.config.image_token_id).int()
            # Patches of all images, in prompt order: what one processor call over them all returns.
            inputs["pixel_values"] = torch.cat(pixel_values)
            inputs["image_grid_thw"] = torch.cat(grids)
        return inputs, image_tokens

    def pixel_values(self, patches: ImagePatches) -> Any:
        """A picture's raw uint8 patches rescaled and normalised by the image processor's own functions: the float
        patches its full call gives (the same elementwise steps, over the patches' channel-first layout)."""
        import torch

        rows = patch_rows(patches.patches, patches.grid)
        channel_first = rows.reshape(rows.shape[0], 3, -1).transpose(1, 0, 2)  # (channels, patches, values)
        processor = self.image_processor
        values = processor.normalize(processor.rescale(channel_first, processor.rescale_factor), processor.image_mean, processor.image_std)
        return torch.from_numpy(np.ascontiguousarray(values.transpose(1, 0, 2), dtype=np.float32).reshape(rows.shape))

    def _score_batch(self, requests: list[EngineRequest]) -> list[Completion]:
        """Label scores (fast mode's ids, ZipRerank's letters): one forward pass; each label's log-probability as the
        next token (over the whole vocabulary: the order of the logits)."""
        import torch

        inputs, image_tokens = self._encode(requests)
        inputs = {name: value.to(self.model.device) for name, value in inputs.items()}
        with torch.inference_mode():
            # Left padding: the last position is every row's next-token position.
            logits = self.model(**inputs).logits[:, -1, :].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        completions = []
        for row, request in enumerate(requests):
            ids = label_token_ids(self.tokenizer, request.score_labels)
            scores = tuple(float(logprobs[row, token]) for token in ids)
            completions.append(Completion("", "stop", prompt_tokens=int(prompt_tokens[row]), image_tokens=image_tokens[row], id_scores=scores))
        return completions

    def relevance_token_ids(self) -> tuple[int, int]:
        """Token ids of "no" and "yes", the pointwise answer words (single tokens in Qwen's vocabulary)."""
        ids = tuple(self.tokenizer.convert_tokens_to_ids(word) for word in (RELEVANCE_NO, RELEVANCE_YES))
        if any(token is None or token == self.tokenizer.unk_token_id for token in ids):
            raise ValueError(f"the tokenizer has no single tokens for {RELEVANCE_NO!r} and {RELEVANCE_YES!r}: not a pointwise reranker")
        return ids

    def _relevance_batch(self, requests: list[EngineRequest]) -> list[Completion]:
        """Pointwise: one forward pass; P(yes) against "no" at the next position, or the score head's value."""
        import torch

        no, yes = self.relevance_token_ids() if self.score_head is None else (0, 0)
        inputs, image_tokens = self._encode(requests)
        inputs = {name: value.to(self.model.device) for name, value in inputs.items()}
        with torch.inference_mode():
            # Left padding: the last position is every row's next-token position. The base model's last hidden
            # state (after its final norm) is what the output head reads (only its yes and no rows are needed),
            # and what a score head reads.
            hidden = self.model.model(**inputs).last_hidden_state[:, -1, :]
            if self.score_head is not None:
                relevance = self.score_head.relevance(hidden).tolist()
            else:
                relevance = relevance_from_hidden(hidden, self.model.get_output_embeddings().weight, no, yes).tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        return [
            Completion("", "stop", prompt_tokens=int(prompt_tokens[row]), image_tokens=image_tokens[row], relevance=float(relevance[row]))
            for row in range(len(requests))
        ]

    def _generate_batch(self, requests: list[EngineRequest]) -> list[Completion]:
        import torch

        if all(request.relevance for request in requests):
            return self._relevance_batch(requests)
        if all(request.score_labels for request in requests):
            return self._score_batch(requests)
        sampling: SamplingSettings = requests[0].sampling
        if any(request.sampling != sampling for request in requests):
            raise ValueError("one generate call needs one sampling setting")
        inputs, image_tokens = self._encode(requests)
        inputs = {name: value.to(self.model.device) for name, value in inputs.items()}
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "min_new_tokens": sampling.min_new_tokens,
            "do_sample": not sampling.greedy,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if not sampling.greedy:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
            torch.manual_seed(sampling.seed)
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        prompt_length = inputs["input_ids"].shape[1]
        eos = self.model.generation_config.eos_token_id
        end_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        if any(request.constrain_answer for request in requests):
            from transformers import LogitsProcessorList

            rows = [(answer_text_in_prefix(request.assistant_prefix), request.constrain_answer) if request.constrain_answer else None for request in requests]
            constraint = AnswerConstraintProcessor(self.tokenizer, self.answer_tokens(), rows, prompt_length, sorted(end_ids - {None}))
            options["logits_processor"] = LogitsProcessorList([constraint])
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        completions = []
        for row, generated in enumerate(output[:, prompt_length:].tolist()):
            # Finished rows are padded to the batch's length: count up to the first end token.
            length = next((position for position, token in enumerate(generated) if token in end_ids), len(generated))
            text, stopped = _cut_after_stop(self.tokenizer.decode(generated[:length], skip_special_tokens=True), sampling.stop)
            completions.append(
                Completion(
                    text=text,
                    finish_reason="stop" if stopped or length < len(generated) else "length",
                    prompt_tokens=int(prompt_tokens[row]),
                    image_tokens=image_tokens[row],
                    generated_tokens=length,
                )
            )
        return completions
