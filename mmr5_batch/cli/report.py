"""What the command line prints: the run summary as a table, the exact prompt."""

from __future__ import annotations

from typing import Any

from mmr5_batch.core.vocabulary import STATUSES


def format_summary(summary: dict[str, Any]) -> str:
    total = summary["totals"]
    lines = [
        f"run {summary['run_id']}  model {summary['model']}  backend {summary['backend']}",
        f"output {summary['output']}",
        "",
        f"{'queries':<18}{total['queries']:>10}",
    ]
    # .get: a summary written before a counter existed lacks it.
    for status in STATUSES:
        lines.append(f"{'  ' + status:<18}{total.get(status, 0):>10}")
    for name in ("candidates", "flagged_candidates", "windows", "scored", "image_tokens", "prompt_tokens", "generated_tokens"):
        lines.append(f"{name:<18}{total.get(name, 0):>10}")
    lines.append(f"{'wall seconds':<18}{summary['wall_seconds']:>10.1f}")
    lines.append(f"{'queries/second':<18}{summary['queries_per_second']:>10.2f}")
    shards = summary["shards"]
    lines.append(
        f"shards: {shards['total']} total, {shards['processed']} processed ({shards['reprocessed_changed']} changed), "
        f"{shards['skipped_done_earlier']} done earlier, {shards['bad']} bad"
    )
    for reason in summary["bad_shards"].values():
        lines.append(f"  bad shard: {reason}")
    ignored = summary.get("ignored_files") or {}
    if ignored.get("count"):
        lines.append(f"ignored {ignored['count']} file(s) that are not data ('_' or '.' names, not .parquet): {', '.join(ignored['first'][:5])}")
    if summary["planner_dead_letters"]:
        lines.append(f"dead letters from planning (missing or repeated query_id): {summary['planner_dead_letters']}")
    return "\n".join(lines)


def prompt_suffix_note(model: str | None, protocol: str = "auto") -> str | None:
    """What a family adds to the prompt's token ids beside its text (jina-reranker-m0's score token), for stderr."""
    from mmr5_batch.config.protocol import model_family
    from mmr5_batch.config.sections import ModelConfig

    family = model_family(ModelConfig(name=model or ModelConfig.model_fields["name"].default, protocol=protocol))
    if not family.prompt_suffix_ids:
        return None
    return f"{family.name}: token id(s) {list(family.prompt_suffix_ids)} follow the prompt's own token ids (its score token)"


def show_prompt(query: str, num_candidates: int, model: str | None, protocol: str = "auto", document: str = "the document's text") -> str:
    """The exact prompt text `model`'s family renders: MM-R5's chat template over `num_candidates` images, or a
    pointwise family's prompt for one pair with a text `document` (each candidate gets its own such prompt)."""
    from mmr5_batch.config.protocol import model_family
    from mmr5_batch.config.sections import ModelConfig

    family = model_family(ModelConfig(name=model or ModelConfig.model_fields["name"].default, protocol=protocol))
    if family.render is not None:
        return family.prompt(query, image=False, text=document, instruction="")
    from transformers import AutoTokenizer

    from mmr5_batch.core.prompt import render_prompt

    assert family.window_messages is not None
    tokenizer = AutoTokenizer.from_pretrained(model or "i2vec/MM-R5")
    # A listwise family's window through the checkpoint's chat template, then what its answer starts with (ZipRerank's "[").
    return render_prompt(tokenizer, family.window_messages(query, num_candidates)) + family.answer_prefix
