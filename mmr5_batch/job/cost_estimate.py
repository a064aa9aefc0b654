"""`mmr5-batch plan`: check the input and estimate the job's cost without running the model.

It plans the input as a run would (shards, layouts, bad shards, rows the
planner would dead-letter, and, given an output prefix, what is done there
already), reads a sample of rows to measure candidates and page sizes (from
image headers; `image_uri`s are fetched), and prices our settings and MM-R5's
reference settings (pages near native size, the same windows) on the same
rows with the cost model in core/cost_model.py, GPU seconds and the engine
actor's CPU both. Next to the configured setting it
prices the other ways to rerank the same lists: sliding windows alone, the
same-model cascade and the two-model cascade (the pointwise scorer first).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from mmr5_batch.config import JobConfig
from mmr5_batch.config.run import NO_CASCADE, SAME_MODEL, TWO_MODELS, ResolvedRun, resolve_run
from mmr5_batch.core.budgets import candidate_budgets
from mmr5_batch.core.cost_model import (
    H200,
    IMAGE_MARKERS,
    ScorerSize,
    WindowCost,
    actor_cpu_seconds,
    gpu_seconds,
    pointwise_gpu_seconds,
    prompt_tokens,
    scorer_size,
)
from mmr5_batch.core.images import GRID, MIN_IMAGE_TOKENS, ImageError, fit_to_token_budget, padded_size
from mmr5_batch.core.layouts import PAIRS
from mmr5_batch.core.preparation import group_pairs, uris_to_fetch
from mmr5_batch.core.rows import READ_PATH
from mmr5_batch.core.vocabulary import MM_R5, POINTWISE, ZIPRERANK
from mmr5_batch.core.windows import first_stage_order, sliding_windows
from mmr5_batch.job.planner import plan_input
from mmr5_batch.output.store import OutputStore
from mmr5_batch.storage.arrow_filesystems import read_parquet
from mmr5_batch.storage.fetching import fetch_images
from mmr5_batch.storage.filesystems import Storage

# What MM-R5's script does: qwen_vl_utils' default max_pixels (12845056 = 16384 tokens), nothing smaller.
REFERENCE_IMAGE_TOKENS = 12845056 // (GRID * GRID)
REFERENCE_MAX_NEW_TOKENS = 8192


@dataclass
class SettingCost:
    name: str
    windows: list[int] = field(default_factory=list)
    image_tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    gpu_seconds: list[float] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)  # pointwise prompts (one per candidate judged)
    actor_seconds: list[float] = field(default_factory=list)  # the engine actor's CPU (cost_model.actor_cpu_seconds)

    def row(self, queries: int) -> dict[str, Any]:
        per_query = mean(self.gpu_seconds) if self.gpu_seconds else 0.0
        actor = mean(self.actor_seconds) if self.actor_seconds else 0.0
        return {
            "actor_cpu_ms_per_query": round(1000 * actor, 1),
            # Cores of actor CPU one GPU keeps busy: above 1, the actor's one event loop, not the GPU, sets the pace.
            "actor_cores_per_gpu": round(actor / per_query, 3) if per_query else 0.0,
            "setting": self.name,
            "queries": queries,
            "windows_per_query": round(mean(self.windows), 2) if self.windows else 0,
            "scored_per_query": round(mean(self.scored), 2) if self.scored else 0,
            "image_tokens_per_query": round(mean(self.image_tokens)) if self.image_tokens else 0,
            "prompt_tokens_per_query": round(mean(self.prompt_tokens)) if self.prompt_tokens else 0,
            "gpu_seconds_per_query": round(per_query, 3),
            "gpu_hours_total": round(per_query * queries / 3600, 2),
        }


def reference_tokens(width: int, height: int) -> int:
    """Image tokens of a page as MM-R5's script sends it (qwen_vl_utils' smart_resize, default bounds)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    new_height, new_width = smart_resize(height, width, factor=GRID, min_pixels=MIN_IMAGE_TOKENS * GRID * GRID, max_pixels=REFERENCE_IMAGE_TOKENS * GRID * GRID)
    return (new_height // GRID) * (new_width // GRID)


def _size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as picture:  # the header only: no decode
            width, height = picture.size
    except Exception as error:  # PIL raises many types for bytes that are no picture: this candidate's problem
        raise ImageError(f"undecodable image: {type(error).__name__}: {error}") from error
    return padded_size(width, height)


def price_query(
    setting: SettingCost,
    tokens_by_position: list[int],
    window: int,
    stride: int,
    top_k: int | None,
    generated: int,
    engine_processes: bool = True,
    full_last: bool = True,
) -> None:
    """One pass of sliding windows; `engine_processes`: the engine decodes and processes the pictures itself (no
    patches); `full_last`: the family's topmost-window rule."""
    depth = len(tokens_by_position) if top_k is None else min(top_k, len(tokens_by_position))
    # The first-stage order stands in for the order the windows will see.
    plan = sliding_windows(depth, window, stride, full_last) if depth >= 2 else []
    costs = [WindowCost(prompt_tokens(tokens_by_position[a:b]), sum(tokens_by_position[a:b]), generated) for a, b in plan]
    setting.windows.append(len(costs))
    setting.scored.append(0)
    setting.image_tokens.append(sum(cost.image_tokens for cost in costs))
    setting.prompt_tokens.append(sum(cost.prompt_tokens for cost in costs))
    setting.gpu_seconds.append(sum(gpu_seconds(cost, H200) for cost in costs))
    setting.actor_seconds.append(actor_cpu_seconds(len(costs), setting.image_tokens[-1] if engine_processes else 0))


def price_pointwise(setting: SettingCost, tokens_by_position: list[int], top_k: int | None, scorer: ScorerSize, engine_processes: bool = True) -> None:
    """A pointwise pass: one prefill per candidate within `top_k`, nothing generated."""
    judged = tokens_by_position if top_k is None else tokens_by_position[:top_k]
    setting.windows.append(0)
    setting.scored.append(len(judged))
    setting.image_tokens.append(sum(judged))
    setting.prompt_tokens.append(sum(scorer.prompt_text_tokens + tokens + IMAGE_MARKERS for tokens in judged))
    setting.gpu_seconds.append(sum(pointwise_gpu_seconds(tokens, H200, scorer) for tokens in judged))
    setting.actor_seconds.append(actor_cpu_seconds(len(judged), sum(judged) if engine_processes else 0))


def _add(total: SettingCost, *parts: SettingCost) -> None:
    """One query's cost as the sum of its passes' (each priced as one query)."""
    for name in ("windows", "scored", "image_tokens", "prompt_tokens", "gpu_seconds", "actor_seconds"):
        getattr(total, name).append(sum(getattr(part, name)[-1] for part in parts))


def _sample_rows(plan: Any, storage: Storage, sample: int) -> list[dict[str, Any]]:
    """Up to `sample` grouped rows from the shards to run, in shard order."""
    rows: list[dict[str, Any]] = []
    for shard in plan.to_run:
        if len(rows) >= sample:
            break
        table = read_parquet(storage, shard.uri)
        if plan.layout == PAIRS:
            groups: dict[Any, list[dict[str, Any]]] = {}
            for row in table.to_pylist():
                groups.setdefault(row["query_id"], []).append(row | {READ_PATH: shard.path})
            rows += [group_pairs(group) for group in groups.values()]
        else:
            rows += table.to_pylist()
    return rows[:sample]


def _page_sizes(row: dict[str, Any], fetched: dict[str, bytes | Exception]) -> tuple[list[tuple[int, int]], int]:
    """The (width, height) of each usable candidate in first-stage order, and how many were unusable."""
    items = row.get("candidates") or []
    sizes, unusable = [], 0
    for index in first_stage_order([item.get("score") for item in items]):
        item = items[index]
        data = item.get("image") or fetched.get(item.get("image_uri") or "")
        try:
            if not isinstance(data, bytes) or not data:
                raise ImageError("no image")
            sizes.append(_size(data))
        except ImageError:  # only the data's problems: anything else is a bug and stops the plan
            unusable += 1
    return sizes, unusable


def price_setting(ours: SettingCost, run: ResolvedRun, sizes: list[tuple[int, int]], generated: int) -> None:
    """Our cost for one query: the budgets the job would give, the cascade when on (the same model's, or the two-model one)."""
    config = run.config
    images, ranking, cascade = config.images, config.ranking, config.cascade
    budgets = candidate_budgets(len(sizes), cap=images.image_tokens, window=ranking.window, prompt_total=images.prompt_image_tokens, policy=images.policy)
    tokens = [fit_to_token_budget(w, h, budget, run.main.grid).tokens for (w, h), budget in zip(sizes, budgets)]
    # Without the CPU stage's patches the engine decodes and processes every picture it is sent; with them, only a
    # cascade's detail-pass pictures (which ones is known only after the first pass).
    in_engine = not run.main.patches_in_cpu_stage
    if run.protocol == ZIPRERANK:
        # One prefill per window and one token: its letters' scores (priced with MM-R5's 7.6 B language model; ZipRerank's
        # Qwen3-VL-8B has 8.2 B, a prefill 8% dearer).
        price_query(ours, tokens, ranking.window, ranking.stride, ranking.top_k, 1, in_engine, full_last=False)
        return
    if run.protocol == POINTWISE:
        family = run.main.family
        # A text family sees no picture: its pages cost their text only (in the sizes' prompt tokens).
        shown_tokens = tokens if family.reads_pictures else [0] * len(tokens)
        price_pointwise(ours, shown_tokens, ranking.top_k, scorer_size(config.model.name, family), in_engine and family.reads_pictures)
        return
    shown = len(sizes) if ranking.top_k is None else min(ranking.top_k, len(sizes))
    if run.scorer is not None:
        # The scorer judges every candidate small (on its 32-px grid); MM-R5 reasons over its best in detail.
        scorer, detail = SettingCost("scorer"), SettingCost("detail")
        family = run.scorer.family
        reads = family.reads_pictures
        small = [fit_to_token_budget(w, h, cascade.first_image_tokens, run.scorer.grid).tokens if reads else 0 for w, h in sizes]
        if family.protocol == ZIPRERANK:  # its windows over the small pictures, one prefill each
            price_query(scorer, small, family.window, family.stride, ranking.top_k, 1, not run.scorer.patches_in_cpu_stage, full_last=False)
        else:
            price_pointwise(scorer, small, ranking.top_k, scorer_size(config.scorer.name, family), reads and not run.scorer.patches_in_cpu_stage)
        price_query(detail, tokens[: cascade.detail_top], ranking.window, ranking.stride, None, generated, in_engine or shown > cascade.detail_top)
        _add(ours, scorer, detail)
        return
    if not (cascade.enabled and len(sizes) > cascade.detail_top):
        price_query(ours, tokens, ranking.window, ranking.stride, ranking.top_k, generated, in_engine)
        return
    # First pass: every candidate small, big windows; then the top in detail, summed as one query.
    first = SettingCost("first")
    small = [fit_to_token_budget(w, h, cascade.first_image_tokens).tokens for w, h in sizes]
    price_query(first, small, cascade.first_window, cascade.first_stride, ranking.top_k, generated, in_engine)
    detail = SettingCost("detail")
    price_query(detail, tokens[: cascade.detail_top], ranking.window, ranking.stride, None, generated, True)
    _add(ours, first, detail)


def _setting_label(run: ResolvedRun) -> str:
    config = run.config
    if run.protocol == POINTWISE:
        seen = f"{config.images.image_tokens}-token cap" if run.main.family.reads_pictures else "text only"
        return f"pointwise {config.model.name}: {seen}, one prompt per candidate"
    if run.protocol == ZIPRERANK:
        return f"ziprerank {config.model.name}: {config.images.image_tokens}-token cap, window {config.ranking.window}, one forward pass each"
    label = f"{config.images.image_tokens}-token cap, {config.images.policy}, window {config.ranking.window}"
    cascade = config.cascade
    if run.two_models:
        at = f"at {cascade.first_image_tokens} tokens" if run.scorer is None or run.scorer.family.reads_pictures else "on the text"
        label += f", two-model cascade: {config.scorer.name} {at}, then top {cascade.detail_top}"
    elif cascade.enabled:
        label += f", cascade {cascade.first_image_tokens} x {cascade.first_window} then top {cascade.detail_top}"
    return label


def alternatives(run: ResolvedRun) -> list[ResolvedRun]:
    """The configured setting first, then the other ways to rerank with MM-R5: windows alone, the same-model cascade,
    the two-model cascade (with the configured budgets and scorer)."""
    options = [run]
    if run.protocol != MM_R5:  # a pointwise model or ZipRerank alone: its cascades are MM-R5's
        return options
    config = run.config
    for kind in (NO_CASCADE, SAME_MODEL, TWO_MODELS):
        if kind != run.cascade:
            update = {"enabled": kind != NO_CASCADE, **({"first_pass": POINTWISE if kind == TWO_MODELS else "same-model"} if kind != NO_CASCADE else {})}
            options.append(resolve_run(config.model_copy(update={"cascade": config.cascade.model_copy(update=update)})))
    return options


def estimate(config: JobConfig, sample: int = 200, generated_tokens: int = 400) -> dict[str, Any]:
    """The plan report as data: shards, problems found, and the cost table rows."""
    run = resolve_run(config)
    config = run.config
    storage = Storage(config.storage.s3_options())
    plan = plan_input(config, storage, OutputStore(storage, config.output))
    rows = _sample_rows(plan, storage, sample)
    images = config.images
    fetched = fetch_images(storage, uris_to_fetch(rows, run.prepare), images.allowed_uri_prefixes, images.fetch_concurrency, images.fetch_retries)
    options = alternatives(run)
    costs = [SettingCost(("ours: " if index == 0 else "") + _setting_label(option)) for index, option in enumerate(options)]
    reference = SettingCost("MM-R5 reference: pages near native size")
    unusable, candidates = 0, []
    ranking = config.ranking
    for row in rows:
        sizes, bad = _page_sizes(row, fetched)
        unusable += bad
        candidates.append(len(row.get("candidates") or []))
        if not sizes:
            continue
        for option, cost in zip(options, costs):
            price_setting(cost, option, sizes, min(generated_tokens, config.model.think_tokens or config.model.max_new_tokens))
        reference_tokens_list = [reference_tokens(w, h) for w, h in sizes]
        price_query(reference, reference_tokens_list, ranking.window, ranking.stride, ranking.top_k, min(generated_tokens, REFERENCE_MAX_NEW_TOKENS))

    queries = sum(shard.remaining() for shard in plan.to_run)
    return {
        "input": config.input,
        "shards": {"to_process": len(plan.to_run), "done_earlier": len(plan.skipped), "changed": len(plan.changed), "bad": len(plan.bad)},
        "bad_shards": plan.bad,
        "queries": queries,
        # Rows without an id, copies of a repeated id none of which is written yet.
        "planner_dead_letters": sum(shard.remaining() - shard.pending for shard in plan.to_run),
        "sampled_queries": len(rows),
        "candidates_per_query": round(mean(candidates), 2) if candidates else 0,
        "unusable_candidates_in_sample": unusable,
        "generated_tokens_assumed": generated_tokens,
        "gpu": H200.name,
        "settings": [*(cost.row(queries) for cost in costs), reference.row(queries)],
    }


def format_estimate(report: dict[str, Any]) -> str:
    shards = report["shards"]
    lines = [
        f"input {report['input']}",
        f"shards: {shards['to_process']} to process ({shards['changed']} changed), {shards['done_earlier']} done earlier, {shards['bad']} bad",
    ]
    lines += [f"  bad shard: {reason}" for reason in report["bad_shards"].values()]
    lines += [
        f"queries to rerank: {report['queries']} ({report['planner_dead_letters']} rows would be dead-lettered by the planner)",
        f"sample: {report['sampled_queries']} queries, {report['candidates_per_query']} candidates each, "
        f"{report['unusable_candidates_in_sample']} candidates without a usable image",
        f"cost model: {report['gpu']}, {report['generated_tokens_assumed']} generated tokens per window (see mmr5_batch/core/cost_model.py)",
        "",
        "| setting | windows/query | scored/query | image tokens/query | prompt tokens/query | GPU-s/query | GPU-hours total | actor CPU ms/query | actor cores per GPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["settings"]:
        lines.append(
            f"| {row['setting']} | {row['windows_per_query']} | {row['scored_per_query']} | {row['image_tokens_per_query']} | {row['prompt_tokens_per_query']} | "
            f"{row['gpu_seconds_per_query']:.3f} | {row['gpu_hours_total']:.2f} | {row['actor_cpu_ms_per_query']} | {row['actor_cores_per_gpu']:.2f} |"
        )
    return "\n".join(lines)
