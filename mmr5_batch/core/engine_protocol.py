"""The engine interfaces the backends implement.

A request carries the chat messages (text parts and image placeholders), or
a prompt already rendered (the pointwise protocol's, with one `<|image_pad|>`
per image), the images as bytes already fitted to their token budget, in
placeholder order (and, when the CPU stage built them, as the model's patches),
and the sampling settings. A completion carries the text, why generation
stopped, token counts, and an error when the engine refused the request (that
query then becomes an error record; the rest of the batch goes on).

Two shapes: `Engine` takes a list and returns when all are done (hf, the
offline vLLM engine, the scripted test engine); `AsyncEngine` takes one
request and returns when that one is done, while the engine keeps decoding
the others (vLLM's async engine). The reranker drives `AsyncEngine`s only;
`core.batching.BatchingEngine` turns an `Engine` into one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmr5_batch.core.model_inputs import ImagePatches
from mmr5_batch.core.vocabulary import ANSWER_STOP


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 2048
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = (ANSWER_STOP,)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class EngineRequest:
    messages: list[dict[str, Any]]
    images: tuple[bytes, ...]
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    # Text placed after the chat template's assistant header, which the
    # model then continues (a forced answer: its reasoning so far, then
    # "</think><answer>["). Empty for an ordinary request.
    assistant_prefix: str = ""
    # Instead of generating, score each label's first token as the next token (one forward pass): fast mode's ids
    # "1".."n", ZipRerank's letters "A".."T"; the completion carries the scores, in label order. Empty: generate.
    score_labels: tuple[str, ...] = ()
    # A forced answer under the answer constraint: the continuation of the
    # answer list begun in `assistant_prefix` may only be a permutation of
    # the ids 1..constrain_answer (see answer_constraint.py). 0: free.
    constrain_answer: int = 0
    # The prompt text as rendered (the pointwise protocol's); when set, `messages` are not used.
    prompt: str = ""
    # Token ids appended after the rendered prompt's own tokens (jina-reranker-m0's score token, which its
    # reference appends to the ids, never to the text, so that no merge with the text before it can change it).
    prompt_suffix_ids: tuple[int, ...] = ()
    # Pointwise: no generation; the completion carries the pair's relevance as the engine's family reads it
    # (P("yes") against "no" at the next token, or a score head's normalised value).
    relevance: bool = False
    # The images as the model's input already (core/model_inputs.py), aligned with `images`: an engine that
    # takes them submits them as they are instead of decoding and processing `images`. Empty: not built.
    image_inputs: tuple[ImagePatches, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of answer or end of turn), "length" or "error"
    prompt_tokens: int = 0
    image_tokens: int = 0
    generated_tokens: int = 0
    error: str | None = None
    # `score_labels`: each label's next-token score, in order (a log-probability; -inf when unavailable).
    id_scores: tuple[float, ...] | None = None
    # Pointwise: the pair's relevance in [0, 1] (P("yes") against "no", or sigmoid of a score head's output).
    relevance: float | None = None


class RequestObserver(Protocol):
    """Who watches the engine's work (the actors' metrics): every request's start and end, every query's duration."""

    def request_started(self) -> float:
        """A request goes to the engine; returns what `request_done` gets back (a start time)."""
        ...

    def request_done(self, started: float) -> None: ...

    def query_done(self, seconds: float) -> None: ...


class Engine(Protocol):
    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        """One completion per request, in order."""
        ...


class AsyncEngine(Protocol):
    async def generate_async(self, request: EngineRequest) -> Completion:
        """The completion of one request; many may be in flight at once."""
        ...
