"""The one typed job config: YAML file plus command-line overrides, every field described.

A bad value stops the job before any work with one readable line
(`ConfigError`). The resolved config is written beside the outputs so a run
can be repeated exactly.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A job config that cannot run; the message is one line meant for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("i2vec/MM-R5", description="Hugging Face model id or local checkpoint directory.")
    backend: Literal["hf", "vllm", "scripted-test"] = Field(
        "hf",
        description=(
            "Inference backend: 'vllm' (GPU serving), 'hf' (transformers, CPU or GPU), or 'scripted-test' "
            "(no model: deterministic scripted answers, only for testing the pipeline's plumbing)."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the hf backend runs; auto picks CUDA when present.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto means bfloat16 on GPU and float32 on CPU."
    )
    max_new_tokens: int = Field(2048, ge=1, description="Most tokens generated per prompt (MM-R5's script allows 8192).")
    min_new_tokens: int = Field(0, ge=0, description="Fewest tokens generated per prompt (tests force a few with random weights).")
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy decoding; MM-R5's script samples at 0.3.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when temperature > 0.")
    seed: int = Field(0, description="Sampling seed, for repeatable runs.")
    max_batch_size: int = Field(8, ge=1, description="Prompts per generate call in the hf backend.")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per vLLM engine (tensor parallelism); each actor then asks Ray for that many GPUs."
    )
    vllm_engine: Literal["async", "offline"] = Field(
        "async",
        description=(
            "vLLM engine: 'async' sends each query's next window as soon as its previous answer is back and keeps "
            "several batches in flight per actor; 'offline' sends one round of windows per call and waits for the longest."
        ),
    )
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="Share of GPU memory vLLM may take.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra engine arguments passed through to the backend as they are."
    )


class RankingConfig(_Section):
    window: int = Field(5, ge=2, description="Candidates per prompt; MM-R5 was trained on 5.")
    stride: int = Field(3, ge=1, description="Positions the sliding window moves up per round (must be < window).")
    top_k: int | None = Field(
        None, ge=1, description="Rerank only the first K candidates by first-stage score; the rest follow in first-stage order."
    )
    keep_reasoning: bool = Field(False, description="Keep the model's full output per window in the 'reasoning' column.")

    @model_validator(mode="after")
    def _stride_below_window(self) -> "RankingConfig":
        if self.stride >= self.window:
            raise ValueError(f"stride ({self.stride}) must be smaller than window ({self.window}) so windows overlap")
        return self


class ImageConfig(_Section):
    image_tokens: int = Field(
        1024, ge=4, description="Most image tokens per candidate (28x28 px each); MM-R5's script sends pages near native size."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the shrunk images sent to the model.")
    allowed_uri_prefixes: list[str] = Field(
        default_factory=list,
        description="URI prefixes candidates' image_uri may point into (e.g. 's3://bucket/pages/'); none are allowed by default.",
    )


class ExecutionConfig(_Section):
    address: str | None = Field(None, description="Ray address; unset means RAY_ADDRESS or a new local Ray.")
    actors: int = Field(1, ge=1, description="Rerank actors, each owning one engine (one GPU each on GPU clusters).")
    batch_size: int = Field(16, ge=1, description="Queries per actor call (one Ray Data batch).")
    concurrent_batches: int = Field(
        4,
        ge=1,
        description=(
            "Batches one actor works on at once: the next batch's windows reach the engine while the previous "
            "batch's last answers are still decoding."
        ),
    )
    prepare_batch_size: int = Field(16, ge=1, description="Queries per CPU preparation task.")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per actor; auto is 1 with GPUs, 0.5 without.")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs per actor; auto is 1 when the cluster has GPUs, else 0.")


class JobConfig(_Section):
    input: str = Field(description="Input Parquet: a file, a directory or prefix of shards, any fsspec URI.")
    output: str = Field(description="Output prefix for ranked rows, dead letters, stats, config and summary.")
    run_id: str | None = Field(None, description="Run identifier recorded on every row; generated when unset.")
    overwrite: bool = Field(False, description="Replace the results of an earlier run in the output prefix.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model and decoding.")
    ranking: RankingConfig = Field(default_factory=RankingConfig, description="Windows and depth of reranking.")
    images: ImageConfig = Field(default_factory=ImageConfig, description="Image budgets and sources.")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="Ray resources and batching.")

    def with_run_id(self) -> "JobConfig":
        if self.run_id:
            return self
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:6]}"})


def _one_line(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "invalid job config: " + "; ".join(problems)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """The job config from an optional YAML file, with dotted-key overrides (unset values ignored)."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        tree = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, dotted, value)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None


def config_to_yaml(config: JobConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
