"""What every engine does the same way: a refused request, splitting a refused batch, the answer ids' tokens.

A backend that refuses a batch because of one request in it (a prompt longer
than the context, a picture the processor will not take) must not take the
batch's other queries down with it: `split_on_rejection` runs the batch, and
on a refusal runs each request alone; the one refused alone comes back as
`rejected(...)`, an error completion that becomes that query's dead letter
with the engine's reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from mmr5_batch.config.backends import BUILT_IN
from mmr5_batch.core.engine_protocol import Completion, EngineRequest
from mmr5_batch.core.vocabulary import FAST_MAX_WINDOW

log = logging.getLogger(__name__)

REJECTED = "engine rejected the request"
INSTALL_VLLM = "install with: " + BUILT_IN["vllm"].install


def rejected(error: BaseException) -> Completion:
    """The completion of a request the engine refused: its query's dead letter, with the engine's reason."""
    return Completion("", "error", error=f"{REJECTED}: {error}")


def split_on_rejection(
    requests: Sequence[EngineRequest],
    run: Callable[[list[EngineRequest]], list[Completion]],
    refusals: tuple[type[BaseException], ...],
    engine: str,
) -> list[Completion]:
    """`run(requests)`; when the engine refuses the batch (one of `refusals`), each request alone, so only the one it
    refuses alone fails. Any other exception is the engine breaking: it goes up and fails the batch."""
    try:
        return run(list(requests))
    except refusals as error:
        if len(requests) == 1:
            log.warning("%s rejected a request: %s", engine, error)
            return [rejected(error)]
        log.warning("%s rejected a batch of %d (%s); retrying its requests one by one", engine, len(requests), error)
        return [completion for request in requests for completion in split_on_rejection([request], run, refusals, engine)]


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[int]:
    """The token scored for each label: the first token of its encoding (ZipRerank's reference reads its letters so;
    fast mode's ids 1..9 are one token each in Qwen's tokenizer, which splits numbers into digits). Labels whose
    tokens coincide cannot be told apart: refused."""
    ids = [tokenizer.encode(label, add_special_tokens=False)[0] for label in labels]
    if len(set(ids)) < len(ids):
        raise ValueError(f"the labels {list(labels)} do not start with distinct tokens of this tokenizer (fast mode: ids 1..{FAST_MAX_WINDOW})")
    return ids
