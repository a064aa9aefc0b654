"""The settings that shape result rows, as a digest: runs into one output prefix must agree on them.

`_ledger/job.json` holds the digest and the settings of the results there;
a run with other settings into the same prefix is refused (its rows would
mix with these) unless it overwrites them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from mmr5_batch.config import JobConfig, ModelConfig, public_dump
from mmr5_batch.config.backends import BUILT_IN
from mmr5_batch.config.run import ResolvedRun
from mmr5_batch.output.records import ResultSettings, flatten_settings

DEFAULT_DOCUMENT_TOKENS = ModelConfig.model_fields["document_tokens"].default


def job_fingerprint(public_config: dict[str, Any]) -> ResultSettings:
    """The settings that decide what a result row says, from a resolved config's public dump.

    A setting added later enters only when it is away from what the job did before it existed, so that
    outputs written by earlier versions keep their fingerprint (and resume)."""
    model, cascade = public_config["model"], dict(public_config["cascade"])
    pointwise_model = model.get("protocol") == "pointwise"
    two_models = cascade.get("first_pass", "same-model") == "pointwise"
    if not two_models:
        cascade.pop("first_pass", None)
    scorer = public_config.get("scorer") or {}
    shaping = {
        "input": public_config["input"],
        "model": {key: public_config["model"][key] for key in ("name", "max_new_tokens", "think_tokens", "temperature", "top_p", "seed")}
        # Only when on, so that outputs written before the setting existed keep their fingerprint.
        | ({"constrain_answer": True} if public_config["model"].get("constrain_answer") else {})
        # hf and vLLM run the same model; any other backend (the scripted test engine) is not that model: its rows
        # never mix with a model's.
        | ({"backend": model.get("backend")} if model.get("backend") not in BUILT_IN else {})
        | ({"protocol": "pointwise", "instruction": model.get("instruction")} | _document_tokens(model) if pointwise_model else {})
        # Families added later enter only for their own runs.
        | ({"protocol": model["protocol"]} if model.get("protocol") not in (None, "auto", "mm-r5", "pointwise") else {}),
        "ranking": public_config["ranking"],
        "cascade": cascade
        | (
            {
                "scorer": {"name": scorer.get("name"), "instruction": scorer.get("instruction"), "scripted": scorer.get("backend") not in BUILT_IN}
                | _document_tokens(scorer)
            }
            if two_models
            else {}
        ),
        "images": {key: public_config["images"].get(key) for key in ("image_tokens", "prompt_image_tokens", "policy", "jpeg_quality")},
    }
    digest = hashlib.sha256(repr(sorted(flatten_settings(shaping).items())).encode()).hexdigest()[:16]
    return ResultSettings(digest, shaping)


def _document_tokens(model: dict[str, Any]) -> dict[str, Any]:
    """A pointwise model's text cut, when away from the default it had when it was added."""
    tokens = model.get("document_tokens", DEFAULT_DOCUMENT_TOKENS)
    return {"document_tokens": tokens} if tokens != DEFAULT_DOCUMENT_TOKENS else {}


def run_fingerprint(run: ResolvedRun[JobConfig]) -> ResultSettings:
    """The results fingerprint of a resolved run: its protocols as resolved, so `auto` and the value it resolves to
    agree, and a pointwise run's instruction counts however its protocol was spelled."""
    return job_fingerprint(public_dump(run.config))
