"""A score head read from a checkpoint's own weights: jina-reranker-m0's MLP, without its remote code.

The checkpoint is saved as a Qwen2-VL model plus `score.0` (hidden ->
hidden) and `score.2` (hidden -> 1), the two linear layers of its head with
a ReLU between them (vLLM's names for them, `score.dense` and
`score.out_proj`, are read too). transformers loads the base model and
leaves these out; this module reads just those tensors from the safetensors
files (a sharded checkpoint through its index), local or in the hub cache,
and applies them as the reference does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mmr5_batch.errors import EngineUnavailable

# The head's layers as the reference saves them, and as vLLM renames them.
LAYER_NAMES = (("score.0", "score.2"), ("score.dense", "score.out_proj"))


def _checkpoint_file(name: str, filename: str) -> str | None:
    from transformers.utils import cached_file

    return cached_file(name, filename, _raise_exceptions_for_missing_entries=False)


def _tensors(name: str, keys: list[str]) -> dict[str, Any]:
    """The tensors `keys` of checkpoint `name` that it has (from its one file, or the shards its index names)."""
    from safetensors import safe_open

    index = _checkpoint_file(name, "model.safetensors.index.json")
    if index is not None:
        with open(index) as handle:
            weight_map = json.load(handle).get("weight_map", {})
        files = {weight_map[key] for key in keys if key in weight_map}
    else:
        files = {"model.safetensors"}
    found: dict[str, Any] = {}
    for filename in sorted(files):
        path = _checkpoint_file(name, filename)
        if path is None:
            continue
        with safe_open(path, "pt") as handle:
            names = set(handle.keys())  # a safetensors handle has no `in`
            found.update((key, handle.get_tensor(key)) for key in keys if key in names)
    return found


@dataclass(frozen=True)
class ScoreHead:
    """Linear(hidden, hidden) -> ReLU -> Linear(hidden, 1), then sigmoid(value - shift), all in fp32."""

    dense_weight: Any
    dense_bias: Any
    out_weight: Any
    out_bias: Any
    shift: float

    @classmethod
    def load(cls, name: str, shift: float) -> ScoreHead:
        for dense, out in LAYER_NAMES:
            keys = [f"{dense}.weight", f"{dense}.bias", f"{out}.weight", f"{out}.bias"]
            found = _tensors(name, keys)
            if len(found) == len(keys):
                dense_weight, dense_bias, out_weight, out_bias = (found[key].float() for key in keys)
                return cls(dense_weight, dense_bias, out_weight, out_bias, shift)
        raise EngineUnavailable(f"{name!r} has no score head ({LAYER_NAMES[0][0]} and {LAYER_NAMES[0][1]} weights): not a jina-reranker-m0 checkpoint")

    def relevance(self, hidden: Any) -> Any:
        """Each row's relevance from its last position's final hidden state (rows x hidden)."""
        import torch

        hidden = hidden.float()
        dense = torch.relu(hidden @ self.dense_weight.to(hidden.device).T + self.dense_bias.to(hidden.device))
        logit = dense @ self.out_weight.to(hidden.device).T + self.out_bias.to(hidden.device)
        return torch.sigmoid(logit[:, 0] - self.shift)
