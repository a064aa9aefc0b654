"""The transformers backend: Qwen2.5-VL on CPU or CUDA, batched with left padding.

Inputs are built the way Qwen's processor builds them: the chat template
renders one `<|image_pad|>` per image, the image processor gives each image's
patch grid (`image_grid_thw`), and each pad is expanded to grid/merge^2
tokens. We call the tokenizer and image processor directly because the
combined processor class insists on a video processor that needs torchvision,
which the CPU machines cannot import.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Sequence

from .base import Completion, EngineRequest, SamplingSettings

log = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"


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


def _cut_after_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
    return (text[: min(ends)], True) if ends else (text, False)


class HFEngine:
    """Qwen2.5-VL through transformers' generate; one instance per actor."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, *, max_batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_batch_size = max_batch_size
        self.merge_area = image_processor.merge_size**2
        self.tokenizer.padding_side = "left"

    @classmethod
    def from_config(cls, config: Any) -> "HFEngine":
        from . import EngineUnavailable

        try:
            import torch
            from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
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
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(config.name)
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                config.name, dtype=getattr(torch, dtype_name), **config.engine_kwargs
            )
        except (OSError, ValueError) as error:
            raise EngineUnavailable(f"cannot load model {config.name!r} with transformers: {str(error).splitlines()[0]}") from error
        model.to(device).eval()
        return cls(model, tokenizer, image_processor, max_batch_size=config.max_batch_size)

    def render(self, request: EngineRequest) -> str:
        from ..prompt import render_prompt

        return render_prompt(self.tokenizer, request.messages) + request.assistant_prefix

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        completions: list[Completion] = []
        for start in range(0, len(requests), self.max_batch_size):
            chunk = list(requests[start : start + self.max_batch_size])
            try:
                completions.extend(self._generate_batch(chunk))
            except Exception as error:  # isolate the request that broke the batch
                if len(chunk) == 1:
                    log.warning("request failed in the hf engine: %s", error)
                    completions.append(Completion("", "error", error=f"engine rejected the request: {error}"))
                else:
                    for request in chunk:
                        completions.extend(self.generate([request]))
        return completions

    def _encode(self, requests: Sequence[EngineRequest]) -> tuple[dict[str, Any], list[int]]:
        import torch
        from PIL import Image

        prompts, pixel_values, grids, image_tokens = [], [], [], []
        for request in requests:
            pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in request.images]
            counts: list[int] = []
            if pictures:
                vision = self.image_processor(images=pictures, return_tensors="pt")
                pixel_values.append(vision["pixel_values"])
                grids.append(vision["image_grid_thw"])
                counts = [int(grid.prod()) // self.merge_area for grid in vision["image_grid_thw"]]
            prompts.append(expand_image_pads(self.render(request), counts))
            image_tokens.append(sum(counts))
        inputs = dict(self.tokenizer(prompts, padding=True, return_tensors="pt"))
        if pixel_values:
            # Patches of all images, in prompt order: what one processor call over them all returns.
            inputs["pixel_values"] = torch.cat(pixel_values)
            inputs["image_grid_thw"] = torch.cat(grids)
        return inputs, image_tokens

    def id_token_ids(self, count: int) -> list[int]:
        """Token ids of "1".."count" (single digits: Qwen's tokenizer splits numbers into digits)."""
        ids = [self.tokenizer.convert_tokens_to_ids(str(number)) for number in range(1, count + 1)]
        if count > 9 or any(token is None or token == self.tokenizer.unk_token_id for token in ids):
            raise ValueError(f"fast mode scores single-token ids 1..9; a window of {count} does not fit")
        return ids

    def _score_batch(self, requests: list[EngineRequest]) -> list[Completion]:
        """Fast mode: one forward pass; the log-probabilities of ids 1..n as the next token."""
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
            ids = self.id_token_ids(request.score_ids)
            scores = tuple(float(logprobs[row, token]) for token in ids)
            completions.append(Completion("", "stop", prompt_tokens=int(prompt_tokens[row]), image_tokens=image_tokens[row], id_scores=scores))
        return completions

    def _generate_batch(self, requests: list[EngineRequest]) -> list[Completion]:
        import torch

        if all(request.score_ids for request in requests):
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
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        prompt_length = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        eos = self.model.generation_config.eos_token_id
        end_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
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
