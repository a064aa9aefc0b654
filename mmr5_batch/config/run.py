"""The run resolved once: a reranker config turned into what every later step reads and never decides again.

`resolve_run` is the one place that says which protocol each model speaks
('auto' resolved from the checkpoint), which cascade runs (none, the same
model's, or two models), what each engine sees per pass (pictures per prompt,
image tokens, grid), who builds the pictures' patches, and the settings of
the preparation and of each ranking stage. The preparation, the scheduler,
the engines, the actors' placement, the plan and the results fingerprint all
take its output. Its `config` has the resolved protocols written in, so a
config sent to an actor (or recorded beside the outputs) needs no resolving
there, and two spellings of the same run (`auto` and the value it resolves
to) are the same config.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mmr5_batch.config.backends import backend_record
from mmr5_batch.config.job_config import RerankerConfig
from mmr5_batch.config.protocol import model_family, patches_in_cpu_stage
from mmr5_batch.config.sections import ImageConfig, ModelConfig, RankingConfig
from mmr5_batch.core.engine_protocol import SamplingSettings
from mmr5_batch.core.families import CUT_DOCUMENT_HEAD, Family
from mmr5_batch.core.images import GRID
from mmr5_batch.core.preparation import PicturePass, PrepareSettings
from mmr5_batch.core.ranking import Cascade
from mmr5_batch.core.rows import FIRST_PASS_PICTURES, MAIN_PICTURES
from mmr5_batch.core.scheduler import RankingSettings, rerank_queries_async, score_queries_async
from mmr5_batch.core.vocabulary import POINTWISE

# The model stages a run is made of, in order (each its own actor pool in the Dataset step, its own engine in process).
SCORE_STAGE = "score"  # the two-model cascade's scorer: prepared rows in, the same rows with each page's relevance out
RERANK_STAGE = "rerank"  # the main model: prepared (or scored) rows in, result rows out

# Which cascade runs.
NO_CASCADE = "none"
SAME_MODEL = "same-model"
TWO_MODELS = "two-models"

Config = TypeVar("Config", bound=RerankerConfig)


@dataclass(frozen=True)
class EnginePass:
    """One pass a model makes: pictures per prompt and image tokens per picture."""

    window: int
    image_tokens: int


@dataclass(frozen=True)
class ModelRun:
    """One model of the run as its engine sees it: the section (instruction resolved), its family and every pass it makes."""

    model: ModelConfig
    family: Family
    passes: tuple[EnginePass, ...]
    # The CPU stage builds this model's picture patches (images.processing 'cpu-stage', a backend reading pixels and
    # a family that sees pictures).
    patches_in_cpu_stage: bool

    @property
    def protocol(self) -> str:
        return self.family.protocol

    @property
    def grid(self) -> int:
        """Pixels per side of one image token (a text model's pictures are never made: any grid will do)."""
        return self.family.grid or GRID

    @property
    def window(self) -> int:
        """The most pictures one prompt holds, over the passes."""
        return max(step.window for step in self.passes)

    @property
    def image_tokens(self) -> int:
        """The largest picture, over the passes."""
        return max(step.image_tokens for step in self.passes)


@dataclass(frozen=True)
class ModelStage:
    """One model stage of the run, whole: what it does (`name`), the model and family its engine is built for
    (`spec`, with every picture pass it makes), how it asks and reads (`settings`), its batch size and its work over a
    batch (the scheduler's). The Dataset step gives each actor pool its stage as it is, and the in-process Reranker
    runs the same list; nothing is resolved again downstream."""

    name: str  # SCORE_STAGE or RERANK_STAGE
    spec: ModelRun
    settings: RankingSettings
    batch_size: int

    @property
    def work(self) -> Callable[..., Coroutine[Any, Any, Sequence[Any]]]:
        """The scheduler's work over a batch of prepared rows: score them (the scorer) or rank them."""
        return score_queries_async if self.name == SCORE_STAGE else rerank_queries_async

    @property
    def last(self) -> bool:
        """The stage that makes the result rows."""
        return self.name == RERANK_STAGE


@dataclass(frozen=True)
class ResolvedRun(Generic[Config]):
    """What a config means, decided once (see the module docstring)."""

    config: Config  # the protocols resolved in
    cascade: str  # NO_CASCADE, SAME_MODEL or TWO_MODELS
    main: ModelRun  # the model whose answers make the result (MM-R5, or a pointwise reranker alone)
    scorer: ModelRun | None  # the two-model cascade's first-pass scorer
    prepare: PrepareSettings

    @property
    def two_models(self) -> bool:
        return self.cascade == TWO_MODELS

    @property
    def protocol(self) -> str:
        return self.main.protocol

    def stages(self, run_id: str = "") -> tuple[ModelStage, ...]:
        """The run's model stages in order: the two-model cascade's scorer, then the main model."""
        scoring = self.scoring(run_id)
        first = (ModelStage(SCORE_STAGE, self.scorer, scoring, self.config.scorer.batch_size),) if self.scorer is not None and scoring is not None else ()
        return (*first, ModelStage(RERANK_STAGE, self.main, self.ranking(run_id), self.config.execution.batch_size))

    def ranking(self, run_id: str = "") -> RankingSettings:
        """The rerank stage's settings (the main model)."""
        config, model = self.config, self.config.model
        ranking, cascade = config.ranking, config.cascade
        return RankingSettings(
            engine_reads_pixels=backend_record(model.backend).reads_pixels,
            protocol=self.main.protocol,
            family=self.main.family.name,
            instruction=model.instruction,
            after_scorer=cascade.detail_top if self.two_models else None,
            window=ranking.window,
            stride=ranking.stride,
            sampling=sampling_settings(model),
            model_id=model.name,
            backend=model.backend,
            run_id=run_id,
            top_k=ranking.top_k,
            keep_reasoning=ranking.keep_reasoning,
            think_tokens=model.think_tokens,
            constrain_answer=model.constrain_answer,
            mode=ranking.mode,
            cascade=Cascade(cascade.first_window, cascade.first_stride, cascade.detail_top, FIRST_PASS_PICTURES) if self.cascade == SAME_MODEL else None,
            scorer_label=self.scorer.family.scorer_label if self.scorer is not None else POINTWISE,
            picture=MAIN_PICTURES,
        )

    def scoring(self, run_id: str = "") -> RankingSettings | None:
        """The two-model cascade's scorer stage: the `scorer` model (a pointwise family, one pair per prompt, or
        ZipRerank, its reference's windows over the first-pass pictures) over the first `ranking.top_k`; None without it."""
        if self.scorer is None:
            return None
        scorer, family = self.scorer.model, self.scorer.family
        return RankingSettings(
            engine_reads_pixels=backend_record(scorer.backend).reads_pixels,
            window=family.window or 2,
            stride=family.stride or 1,
            sampling=SamplingSettings(max_new_tokens=1, stop=()),
            model_id=scorer.name,
            backend=scorer.backend,
            run_id=run_id,
            top_k=self.config.ranking.top_k,
            protocol=family.protocol,
            family=family.name,
            instruction=scorer.instruction,
            scorer_windows=family.protocol != POINTWISE,
            picture=FIRST_PASS_PICTURES,
        )


def _resolved_section(model: ModelConfig, family: Family) -> ModelConfig:
    """A model section with the protocol value naming its family and, where it left the instruction empty, the
    family's default."""
    return model.model_copy(update={"protocol": family.protocol_setting, "instruction": model.instruction or family.default_instruction})


def _family_images(images: ImageConfig, family: Family) -> ImageConfig:
    """The image section with the family's reference picture budget where the config leaves images.image_tokens
    unset (jina-reranker-m0's 768)."""
    if not family.image_tokens or "image_tokens" in images.model_fields_set:
        return images
    return images.model_copy(update={"image_tokens": family.image_tokens})


def _family_windows(ranking: RankingConfig, family: Family) -> RankingConfig:
    """The ranking section with the family's reference window and stride where the config leaves them unset
    (ZipRerank's 20 and 10; MM-R5's are the config's own defaults)."""
    if not family.window or ("window" in ranking.model_fields_set and "stride" in ranking.model_fields_set):
        return ranking
    window = ranking.window if "window" in ranking.model_fields_set else family.window
    stride = ranking.stride if "stride" in ranking.model_fields_set else (family.stride if family.stride < window else max(1, window // 2))
    return ranking.model_copy(update={"window": window, "stride": stride})


def sampling_settings(model: ModelConfig) -> SamplingSettings:
    """The decoding settings of a model section."""
    return SamplingSettings(
        max_new_tokens=model.max_new_tokens,
        min_new_tokens=model.min_new_tokens,
        temperature=model.temperature,
        top_p=model.top_p,
        seed=model.seed,
    )


def cascade_kind(config: RerankerConfig) -> str:
    cascade = config.cascade
    if not cascade.enabled:
        return NO_CASCADE
    return TWO_MODELS if cascade.first_pass == POINTWISE else SAME_MODEL


def resolve_run(config: Config) -> ResolvedRun[Config]:
    """The run `config` describes (a valid config: `RerankerConfig`/`JobConfig` validation already refused what
    cannot run, on the resolved protocols)."""
    family, scorer_family = model_family(config.model), model_family(config.scorer)
    protocol = family.protocol
    kind = cascade_kind(config)
    model = _resolved_section(config.model, family)
    scorer_model = _resolved_section(config.scorer, scorer_family)
    ranking = _family_windows(config.ranking, family)
    images = _family_images(config.images, family)
    resolved = config.model_copy(update={"model": model, "scorer": scorer_model, "ranking": ranking, "images": images})
    cascade = config.cascade

    if protocol == POINTWISE:
        passes: tuple[EnginePass, ...] = (EnginePass(1, images.image_tokens),)
    else:
        passes = (EnginePass(ranking.window, images.image_tokens),)
        if kind == SAME_MODEL:
            # The same-model cascade's first pass shows first_window smaller pictures per prompt.
            passes += (EnginePass(cascade.first_window, cascade.first_image_tokens),)
    main = ModelRun(model, family, passes, patches_in_cpu_stage(images, model) and family.reads_pictures)
    scorer = (
        ModelRun(
            scorer_model,
            scorer_family,
            (EnginePass(scorer_family.window or 1, cascade.first_image_tokens),),
            patches_in_cpu_stage(images, scorer_model) and scorer_family.reads_pictures,
        )
        if kind == TWO_MODELS
        else None
    )
    first = scorer or main
    # The model that reads document text (a pointwise one) and how its text is cut: its tokenizer's tokens, or words
    # for the scripted test engine, which has no tokenizer.
    reader = main if protocol == POINTWISE else scorer
    # A first pass that sees pictures: the same-model cascade's, or a two-model cascade's scorer that reads them.
    first_pictures = kind == SAME_MODEL or (scorer is not None and scorer.family.reads_pictures)
    pictures: tuple[PicturePass, ...] = ()
    if family.reads_pictures:
        pictures = (PicturePass(main.grid, None, model.name if main.patches_in_cpu_stage else None),)
        if first_pictures:
            pictures += (PicturePass(first.grid, cascade.first_image_tokens, first.model.name if first.patches_in_cpu_stage else None, first_pass=True),)
    prepare = PrepareSettings(
        text_tokens=reader.model.document_tokens if reader is not None else None,
        tokenizer_source=reader.model.name if reader is not None and backend_record(reader.model.backend).reads_pixels else None,
        text_cut=reader.family.text_cut if reader is not None else CUT_DOCUMENT_HEAD,
        instruction=reader.model.instruction if reader is not None else "",
        pictures=pictures,
        text_documents=protocol == POINTWISE,
        image_tokens=images.image_tokens,
        jpeg_quality=images.jpeg_quality,
        window=ranking.window,
        prompt_image_tokens=images.prompt_image_tokens,
        policy=images.policy,
        top_k=ranking.top_k,
        detail_top=cascade.detail_top if kind != NO_CASCADE else None,
        scorer_first=kind == TWO_MODELS,
    )
    return ResolvedRun(resolved, kind, main, scorer, prepare)
