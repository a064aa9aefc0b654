"""The command line's arguments: the subcommands, and the rerank flags, each one a config field.

Every rerank flag names the config field it sets (`RERANK_FLAGS`), so the
flags and the config tree cannot drift apart; a flag given overrides the
YAML file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from mmr5_batch.config import JobConfig, load_config
from mmr5_batch.config.backends import known_backends
from mmr5_batch.core.vocabulary import PROTOCOL_SETTINGS
from mmr5_batch.devtools.tiny_model import TINY_MODEL_KINDS

# CLI flag -> dotted config field; every flag overrides the YAML when given.
RERANK_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--input": ("input", {"help": "input Parquet file or prefix (any fsspec URI)"}),
    "--output": ("output", {"help": "output prefix"}),
    "--run-id": ("run_id", {"help": "run identifier (default: generated)"}),
    "--model": ("model.name", {"help": "model id or checkpoint directory (default i2vec/MM-R5)"}),
    "--backend": ("model.backend", {"choices": known_backends()}),
    "--device": ("model.device", {"choices": ["auto", "cpu", "cuda"]}),
    "--protocol": (
        "model.protocol",
        {
            "choices": ["auto", *PROTOCOL_SETTINGS],
            "help": (
                "mm-r5: listwise reasoning; pointwise: P(yes) per pair; jina-m0: jina-reranker-m0's score per pair; "
                "ziprerank: letter logits per window (default: from the checkpoint)"
            ),
        },
    ),
    "--first-pass": (
        "cascade.first_pass",
        {"choices": ["same-model", "pointwise"], "help": "the cascade's first pass: MM-R5 on small images, or the scorer model (two-model cascade)"},
    ),
    "--detail-top": ("cascade.detail_top", {"type": int, "help": "the cascade's first pass's best this many go to MM-R5 in detail (default 5)"}),
    "--scorer-model": ("scorer.name", {"help": "the two-model cascade's scorer (default Qwen/Qwen3-VL-Reranker-2B)"}),
    "--scorer-protocol": (
        "scorer.protocol",
        {
            "choices": ["auto", "pointwise", "jina-m0", "ziprerank"],
            "help": "the scorer's protocol (default pointwise; jina-m0 for jina-reranker-m0, ziprerank for ZipRerank first)",
        },
    ),
    "--scorer-backend": ("scorer.backend", {"choices": known_backends()}),
    "--scorer-device": ("scorer.device", {"choices": ["auto", "cpu", "cuda"]}),
    "--max-new-tokens": ("model.max_new_tokens", {"type": int}),
    "--min-new-tokens": ("model.min_new_tokens", {"type": int}),
    "--temperature": ("model.temperature", {"type": float}),
    "--think-tokens": ("model.think_tokens", {"type": int, "help": "thinking budget per window; then the answer is forced"}),
    "--constrain-answer": (
        "model.constrain_answer",
        {"action": "store_const", "const": True, "help": "a forced answer may only list the window's ids, each once"},
    ),
    "--emit": ("relabel.emit", {"choices": ["queries", "pairs"], "help": "pairs: also one row per query-candidate with a label"}),
    "--positives-top-k": ("relabel.positives_top_k", {"type": int, "help": "relabel rule: the reranked top K are positives"}),
    "--label-column": ("relabel.label_column", {"help": "passthrough column with the existing positive doc ids"}),
    "--mode": ("ranking.mode", {"choices": ["reasoning", "fast"], "help": "fast: rank from first-token scores, no reasoning"}),
    "--window": ("ranking.window", {"type": int, "help": "candidates per prompt (default 5; ZipRerank 20)"}),
    "--stride": ("ranking.stride", {"type": int, "help": "sliding-window step (default 3; ZipRerank 10)"}),
    "--top-k": ("ranking.top_k", {"type": int, "help": "rerank only the first K by first-stage score"}),
    "--image-tokens": ("images.image_tokens", {"type": int, "help": "image-token budget per candidate"}),
    "--prompt-image-tokens": ("images.prompt_image_tokens", {"type": int, "help": "image-token budget per prompt (one window)"}),
    "--budget-policy": ("images.policy", {"choices": ["uniform", "rank"], "help": "how budgets are shared among candidates"}),
    "--actors": ("execution.actors", {"type": int, "help": "rerank actors (one engine each)"}),
    "--gpus-per-actor": ("execution.gpus_per_actor", {"type": float, "help": "GPUs per rerank actor (default: what the engine needs)"}),
    "--max-actors": ("execution.max_actors", {"type": int, "help": "most rerank actors as the autoscaler adds GPU nodes"}),
    "--gpu-wait-seconds": ("execution.gpu_wait_seconds", {"type": float, "help": "wait this long for the autoscaler to add GPUs (default 0)"}),
    "--batch-size": ("execution.batch_size", {"type": int, "help": "queries per actor call"}),
    "--concurrent-batches": ("execution.concurrent_batches", {"type": int, "help": "batches one actor works on at once (default 4)"}),
    "--vllm-engine": ("model.vllm_engine", {"choices": ["async", "offline"], "help": "vLLM engine kind (default async)"}),
    "--progress-seconds": ("execution.progress_seconds", {"type": float, "help": "seconds between progress lines when not on a terminal (default 30)"}),
    "--address": ("execution.address", {"help": "Ray address (default: RAY_ADDRESS or a local Ray)"}),
    "--max-error-rate": ("execution.max_error_rate", {"type": float, "help": "share of dead-lettered queries or bad shards that fails the job (default 0.01)"}),
    "--s3-endpoint-url": ("storage.endpoint_url", {"help": "S3 endpoint (default: AWS_ENDPOINT_URL or AWS)"}),
    "--s3-region": ("storage.region", {"help": "S3 region (default: the AWS chain's)"}),
}


# Switches: a flag that sets a boolean config field to true.
SWITCHES: dict[str, tuple[str, str]] = {
    "--keep-reasoning": ("ranking.keep_reasoning", "keep the model output per window"),
    "--overwrite": ("overwrite", "replace an earlier run's results in --output (each kept until its replacement is complete)"),
    "--cascade": ("cascade.enabled", "details-inspection cascade (settings under cascade: in the config)"),
}


def flag_of(dotted: str) -> str | None:
    """The command-line flag that sets a config field, if one does."""
    for flag, (field_name, *_) in {**RERANK_FLAGS, **SWITCHES}.items():
        if field_name == dotted:
            return flag
    return None


def _add_rerank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="job config YAML; flags override it")
    for flag, (_, options) in RERANK_FLAGS.items():
        parser.add_argument(flag, **options)
    for flag, (_, text) in SWITCHES.items():
        parser.add_argument(flag, action="store_const", const=True, help=text)


def config_from_args(args: argparse.Namespace) -> JobConfig:
    overrides = {dotted: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (dotted, _) in RERANK_FLAGS.items()}
    for flag, (dotted, _) in SWITCHES.items():
        overrides[dotted] = getattr(args, flag.lstrip("-").replace("-", "_"))
    return load_config(args.config, overrides)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser(width: int | None = None) -> argparse.ArgumentParser:
    """The whole command line; `width` fixes the help's line width (the generated reference uses it)."""

    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(prog, width=width) if width else argparse.HelpFormatter(prog)

    parser = argparse.ArgumentParser(prog="mmr5-batch", description="Batch multimodal reranking with MM-R5 on Ray.", formatter_class=formatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    # Every command's console options (cli/console.py).
    console = argparse.ArgumentParser(add_help=False)
    console.add_argument("--verbose", action="store_true", help="also show Ray's, vLLM's and the actors' output on the console (always in the log file)")
    console.add_argument(
        "--log-file", help="where the log goes (default: a new file in the per-user, owner-only $TMPDIR/mmr5-batch-UID/, named COMMAND-TIME-PID.log)"
    )

    def command(name: str, **options: Any) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[console], **options)

    rerank = command("rerank", formatter_class=formatter, help="rerank an input prefix and write ranked rows")
    _add_rerank_arguments(rerank)

    plan = command("plan", formatter_class=formatter, help="check the input and estimate the cost without running the model")
    _add_rerank_arguments(plan)
    plan.add_argument("--sample", type=int, default=200, help="queries read to measure candidates and page sizes")
    plan.add_argument("--gen-tokens", type=int, default=400, help="generated tokens per window assumed by the cost model")
    plan.add_argument("--json", action="store_true", help="print the report as JSON")

    show = command("show-prompt", formatter_class=formatter, help="print the exact prompt text the model receives")
    show.add_argument("--query", required=True)
    show.add_argument("--num-candidates", type=int, required=True, help="candidates in one prompt (a pointwise family's prompt holds one)")
    show.add_argument("--model", help="checkpoint directory or model id whose chat template renders the prompt")
    show.add_argument(
        "--protocol",
        choices=["auto", *PROTOCOL_SETTINGS],
        default="auto",
        help="the model's protocol, as model.protocol ('auto': from the checkpoint); a pointwise family's prompt is shown for one text document",
    )
    show.add_argument("--document", default="the document's text", help="a pointwise prompt's document text")

    tiny = command(
        "tiny-model",
        formatter_class=formatter,
        help="build a tiny random-weights checkpoint offline of a family's architecture (MM-R5, Qwen3-VL-Reranker, Qwen3-Reranker, ZipRerank, jina-reranker-m0)",
    )
    tiny.add_argument("directory")
    tiny.add_argument(
        "--kind",
        choices=list(TINY_MODEL_KINDS),
        default="mm-r5",
        help=(
            "mm-r5: MM-R5's architecture; pointwise: Qwen3-VL-Reranker's; qwen3-reranker: the text Qwen3-Reranker's; "
            "ziprerank: ZipRerank's (a Qwen3-VL generative model); jina-m0: jina-reranker-m0's (Qwen2-VL with its score head)"
        ),
    )
    tiny.add_argument("--seed", type=int, default=0)

    demo = command("demo-data", formatter_class=formatter, help="write the synthetic demo dataset (pages with text, queries)")
    demo.add_argument("directory")
    demo.add_argument("--queries", type=int, default=50)
    demo.add_argument("--candidates", type=int, default=8)
    demo.add_argument("--shards", type=int, default=4)
    demo.add_argument("--qrels", help="also write the demo's TREC qrels (gold pages) to this file")
    demo.add_argument("--page-text", action="store_true", help="also give each page its text (what is written on it), for the text rerankers")

    convert = subparsers.add_parser("convert", formatter_class=formatter, help="turn a public dataset's files into input shards and qrels")
    formats = convert.add_subparsers(dest="dataset", required=True)
    mmdocir = formats.add_parser("mmdocir", parents=[console], formatter_class=formatter, help="MMDocIR pages parquet + annotations JSONL + a first-stage run")
    mmdocir.add_argument("--pages", required=True, help="MMDocIR_pages.parquet")
    mmdocir.add_argument("--annotations", required=True, help="MMDocIR_annotations.jsonl")
    mmdocir.add_argument("--run", required=True, help="first-stage run: TREC run file or Parquet (query_id, doc_id, score)")
    mmdocir.add_argument("--output", required=True, help="folder for input/ shards and qrels.trec")
    mmdocir.add_argument("--top-k", type=int, default=20, help="candidates per question")
    mmdocir.add_argument("--shard-size", type=int, default=500, help="questions per shard")

    evaluate = command("evaluate", formatter_class=formatter, help="recall/nDCG/MRR of a run's reranked and first-stage orders")
    evaluate.add_argument("--run", required=True, help="the output prefix of a rerank run")
    evaluate.add_argument("--qrels", required=True, help="TREC qrels, or Parquet/JSONL with query_id, doc_id, relevance")
    evaluate.add_argument("--k", default="1,3,5,10", help="cut-offs, comma-separated")
    evaluate.add_argument("--group-by", help="a passthrough column to macro-average over (e.g. domain)")
    evaluate.add_argument(
        "--protocol", choices=["standard", "mmdocir"], default="standard", help="metric definitions: ours, or MMDocIR's exact ones (fixed domains, MRR@k)"
    )
    evaluate.add_argument("--domains", help="mmdocir protocol: the fixed domains, comma-separated (default: domains.txt beside --qrels)")
    evaluate.add_argument("--json", help="where to write the report (default RUN/evaluation.json)")
    evaluate.add_argument(
        "--partial", action="store_true", help="score a run that has not finished (killed, waves or an --overwrite in progress); the report says so"
    )
    evaluate.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    return parser
