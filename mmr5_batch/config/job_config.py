"""The two config trees: `RerankerConfig` (what reranking needs: model, ranking, images, cascade, execution,
storage) and `JobConfig` (a reranker config plus the job's input, output, run id, overwrite and relabel).

The Python API and the Ray Dataset step take a `RerankerConfig`; the
exactly-once job takes a `JobConfig`, which is one too.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import uuid

from pydantic import Field, field_validator, model_validator

from mmr5_batch.config.protocol import model_protocol, spelled_protocol
from mmr5_batch.config.sections import (
    CascadeConfig,
    ExecutionConfig,
    ImageConfig,
    ModelConfig,
    RankingConfig,
    RelabelConfig,
    ScorerConfig,
    Section,
    StorageConfig,
)
from mmr5_batch.core.families import ZIPRERANK_FAMILY
from mmr5_batch.core.images import MIN_IMAGE_TOKENS
from mmr5_batch.core.vocabulary import FAST, FAST_MAX_WINDOW, POINTWISE, ZIPRERANK

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _segments(uri: str) -> tuple[str, ...]:
    """A path or URI as comparable segments: local paths made absolute and normalised, URIs split after the scheme."""
    if "://" in uri and not uri.startswith("file://"):
        scheme, rest = uri.split("://", 1)
        return (scheme.lower() + "://", *[part for part in rest.split("/") if part])
    path = os.path.normpath(os.path.abspath(uri.removeprefix("file://")))
    return tuple(part for part in path.split("/") if part)


def _within(inner: str, outer: str) -> bool:
    inner_parts, outer_parts = _segments(inner), _segments(outer)
    return inner_parts[: len(outer_parts)] == outer_parts


class RerankerConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model and decoding.")
    ranking: RankingConfig = Field(default_factory=RankingConfig, description="Windows and depth of reranking.")
    images: ImageConfig = Field(default_factory=ImageConfig, description="Image budgets and sources.")
    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="The details-inspection cascade (off by default).")
    scorer: ScorerConfig = Field(
        default_factory=ScorerConfig, description="The pointwise scorer of the two-model cascade (cascade.first_pass: pointwise) and its actors."
    )
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="Ray resources and batching.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object storage (S3) endpoint and credentials.")

    @model_validator(mode="after")
    def _prompt_total_fits_a_window(self) -> RerankerConfig:
        total, window = self.images.prompt_image_tokens, self.ranking.window
        if total is not None and total < MIN_IMAGE_TOKENS * window:
            raise ValueError(
                f"images.prompt_image_tokens ({total}) must allow the minimum of {MIN_IMAGE_TOKENS} tokens for each of the {window} candidates of a window"
            )
        # Checked on the resolved protocols, so 'auto' is refused exactly where the value it resolves to is.
        protocol = model_protocol(self.model)
        if protocol == ZIPRERANK:
            self._check_ziprerank()
        if protocol == POINTWISE and self.cascade.enabled:
            raise ValueError(
                f"{spelled_protocol(self.model, 'model')}: the two-model cascade puts MM-R5 after the pointwise scorer, so model must be "
                "MM-R5 (protocol 'mm-r5'), the scorer goes in `scorer`"
                if self.cascade.first_pass == POINTWISE
                else f"{spelled_protocol(self.model, 'model')}: the same-model cascade is MM-R5's (windows over small images); "
                "use cascade.first_pass 'pointwise' with an MM-R5 model, or no cascade"
            )
        if protocol == POINTWISE and self.ranking.mode == FAST:
            raise ValueError(
                f"{spelled_protocol(self.model, 'model')}: ranking.mode 'fast' scores MM-R5's answer ids; the pointwise protocol scores every pair in one forward pass already"
            )
        if model_protocol(self.scorer) not in (POINTWISE, ZIPRERANK):
            raise ValueError(
                f"{spelled_protocol(self.scorer, 'scorer')}: the scorer ranks every candidate before MM-R5, it must be a pointwise model or ZipRerank"
            )
        if self.cascade.enabled and self.ranking.mode == FAST and self.cascade.first_window > FAST_MAX_WINDOW:
            raise ValueError(f"fast mode scores single-digit ids: cascade.first_window must be at most {FAST_MAX_WINDOW}, got {self.cascade.first_window}")
        return self

    def _check_ziprerank(self) -> None:
        """ZipRerank ranks each window by its letters' scores in one forward pass: no fast mode, no cascade of its own
        yet, at most its reference's 20 pages per prompt."""
        named = spelled_protocol(self.model, "model")
        if self.ranking.mode == FAST:
            raise ValueError(f"{named}: ranking.mode 'fast' scores MM-R5's answer ids; ZipRerank ranks every window in one forward pass already")
        if self.cascade.enabled:
            raise ValueError(f"{named}: the cascades put MM-R5 last; use ZipRerank alone, or MM-R5 with a cascade")
        ranking = self.ranking
        window = ranking.window if "window" in ranking.model_fields_set else ZIPRERANK_FAMILY.window
        if window > ZIPRERANK_FAMILY.max_window:
            raise ValueError(f"{named}: ranking.window must be at most {ZIPRERANK_FAMILY.max_window} (pages [A]..[T]), got {window}")

    def reranker_only(self) -> RerankerConfig:
        """Just the reranker part (a `JobConfig`'s job fields left out); what was left unset stays unset (a family's
        default window applies only where the config gives none)."""
        return RerankerConfig.model_validate(self.model_dump(include=set(RerankerConfig.model_fields), exclude_unset=True))


class JobConfig(RerankerConfig):
    input: str = Field(description="Input Parquet: a file, a directory or prefix of shards, any fsspec URI.")
    output: str = Field(description="Output prefix for ranked rows, dead letters, stats, config and summary.")
    run_id: str | None = Field(None, description="Run identifier recorded on every row; generated when unset.")
    overwrite: bool = Field(
        False,
        description=(
            "Reprocess everything: the earlier results in the output prefix stop counting at once and each shard's are "
            "deleted once its replacement is complete. Without it a run resumes: only shards and queries not already "
            "written are processed."
        ),
    )
    relabel: RelabelConfig = Field(default_factory=RelabelConfig, description="Per-candidate rows for relabeling (off by default).")

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_name(cls, run_id: str | None) -> str | None:
        # It names files and folders under the output prefix: no separators, no dot segments, no newlines.
        if run_id is not None and not RUN_ID.fullmatch(run_id):
            raise ValueError(f"{run_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return run_id

    @model_validator(mode="after")
    def _output_outside_input(self) -> JobConfig:
        if self.input and self.output and _within(self.output, self.input):
            raise ValueError(f"output {self.output!r} is the input or inside it: the next run would read its own results as input")
        return self

    def with_local_output_absolute(self) -> JobConfig:
        """A local output path made absolute: Ray's workers write it, and their working directory is not the driver's."""
        if "://" in self.output or os.path.isabs(self.output):
            return self
        return self.model_copy(update={"output": os.path.abspath(self.output)})

    def with_run_id(self) -> JobConfig:
        if self.run_id:
            return self
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:6]}"})
