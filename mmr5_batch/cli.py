"""The `mmr5-batch` command line: rerank, show-prompt, tiny-model, demo-data.

Exit codes: 0 done; 2 the job could not start or failed as a whole (bad
config, missing input, no engine), with one line on stderr saying why; 3 the
job ran and wrote its outputs but too many queries or shards failed
(`--max-error-rate`), or a shard is not fully accounted for; 1 an unexpected
error (with a traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

# CLI flag -> dotted config field; every flag overrides the YAML when given.
RERANK_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--input": ("input", {"help": "input Parquet file or prefix (any fsspec URI)"}),
    "--output": ("output", {"help": "output prefix"}),
    "--run-id": ("run_id", {"help": "run identifier (default: generated)"}),
    "--model": ("model.name", {"help": "model id or checkpoint directory (default i2vec/MM-R5)"}),
    "--backend": ("model.backend", {"choices": ["hf", "vllm", "scripted-test"]}),
    "--device": ("model.device", {"choices": ["auto", "cpu", "cuda"]}),
    "--max-new-tokens": ("model.max_new_tokens", {"type": int}),
    "--min-new-tokens": ("model.min_new_tokens", {"type": int}),
    "--temperature": ("model.temperature", {"type": float}),
    "--think-tokens": ("model.think_tokens", {"type": int, "help": "thinking budget per window; then the answer is forced"}),
    "--constrain-answer": ("model.constrain_answer", {"action": "store_const", "const": True, "help": "a forced answer may only list the window's ids, each once"}),
    "--emit": ("relabel.emit", {"choices": ["queries", "pairs"], "help": "pairs: also one row per query-candidate with a label"}),
    "--positives-top-k": ("relabel.positives_top_k", {"type": int, "help": "relabel rule: the reranked top K are positives"}),
    "--label-column": ("relabel.label_column", {"help": "passthrough column with the existing positive doc ids"}),
    "--mode": ("ranking.mode", {"choices": ["reasoning", "fast"], "help": "fast: rank from first-token scores, no reasoning"}),
    "--window": ("ranking.window", {"type": int, "help": "candidates per prompt (default 5)"}),
    "--stride": ("ranking.stride", {"type": int, "help": "sliding-window step (default 3)"}),
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
    "--address": ("execution.address", {"help": "Ray address (default: RAY_ADDRESS or a local Ray)"}),
    "--max-error-rate": ("execution.max_error_rate", {"type": float, "help": "share of dead-lettered queries or bad shards that fails the job (default 0.01)"}),
    "--s3-endpoint-url": ("storage.endpoint_url", {"help": "S3 endpoint (default: AWS_ENDPOINT_URL or AWS)"}),
    "--s3-region": ("storage.region", {"help": "S3 region (default: the AWS chain's)"}),
}


def _add_rerank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="job config YAML; flags override it")
    for flag, (_, options) in RERANK_FLAGS.items():
        parser.add_argument(flag, **options)
    parser.add_argument("--keep-reasoning", action="store_const", const=True, help="keep the model output per window")
    parser.add_argument("--overwrite", action="store_const", const=True, help="replace an earlier run's results in --output")
    parser.add_argument("--cascade", action="store_const", const=True, help="details-inspection cascade (settings under cascade: in the config)")


def config_from_args(args: argparse.Namespace):
    from .config import load_config

    overrides = {dotted: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (dotted, _) in RERANK_FLAGS.items()}
    overrides["ranking.keep_reasoning"] = args.keep_reasoning
    overrides["overwrite"] = args.overwrite
    overrides["cascade.enabled"] = args.cascade
    return load_config(args.config, overrides)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmr5-batch", description="Batch multimodal reranking with MM-R5 on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    rerank = commands.add_parser("rerank", help="rerank an input prefix and write ranked rows")
    _add_rerank_arguments(rerank)

    plan = commands.add_parser("plan", help="check the input and estimate the cost without running the model")
    _add_rerank_arguments(plan)
    plan.add_argument("--sample", type=int, default=200, help="queries read to measure candidates and page sizes")
    plan.add_argument("--gen-tokens", type=int, default=400, help="generated tokens per window assumed by the cost model")
    plan.add_argument("--json", action="store_true", help="print the report as JSON")

    show = commands.add_parser("show-prompt", help="print the exact prompt text the model receives")
    show.add_argument("--query", required=True)
    show.add_argument("--num-candidates", type=int, required=True)
    show.add_argument("--model", help="checkpoint directory or model id whose chat template renders the prompt")

    tiny = commands.add_parser("tiny-model", help="build a tiny random-weights Qwen2.5-VL checkpoint offline")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)

    demo = commands.add_parser("demo-data", help="write the synthetic demo dataset (pages with text, queries)")
    demo.add_argument("directory")
    demo.add_argument("--queries", type=int, default=50)
    demo.add_argument("--candidates", type=int, default=8)
    demo.add_argument("--shards", type=int, default=4)
    demo.add_argument("--qrels", help="also write the demo's TREC qrels (gold pages) to this file")

    convert = commands.add_parser("convert", help="turn a public dataset's files into input shards and qrels")
    formats = convert.add_subparsers(dest="dataset", required=True)
    mmdocir = formats.add_parser("mmdocir", help="MMDocIR pages parquet + annotations JSONL + a first-stage run")
    mmdocir.add_argument("--pages", required=True, help="MMDocIR_pages.parquet")
    mmdocir.add_argument("--annotations", required=True, help="MMDocIR_annotations.jsonl")
    mmdocir.add_argument("--run", required=True, help="first-stage run: TREC run file or Parquet (query_id, doc_id, score)")
    mmdocir.add_argument("--output", required=True, help="folder for input/ shards and qrels.trec")
    mmdocir.add_argument("--top-k", type=int, default=20, help="candidates per question")
    mmdocir.add_argument("--shard-size", type=int, default=500, help="questions per shard")

    evaluate = commands.add_parser("evaluate", help="recall/nDCG/MRR of a run's reranked and first-stage orders")
    evaluate.add_argument("--run", required=True, help="the output prefix of a rerank run")
    evaluate.add_argument("--qrels", required=True, help="TREC qrels, or Parquet/JSONL with query_id, doc_id, relevance")
    evaluate.add_argument("--k", default="1,3,5,10", help="cut-offs, comma-separated")
    evaluate.add_argument("--group-by", help="a passthrough column to macro-average over (e.g. domain)")
    evaluate.add_argument("--json", help="where to write the report (default RUN/evaluation.json)")
    evaluate.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    return parser.parse_args(argv)


def format_summary(summary: dict[str, Any]) -> str:
    total = summary["totals"]
    lines = [
        f"run {summary['run_id']}  model {summary['model']}  backend {summary['backend']}",
        f"output {summary['output']}",
        "",
        f"{'queries':<18}{total['queries']:>10}",
    ]
    for status in ("ok", "repaired", "fallback", "fast", "error"):
        lines.append(f"{'  ' + status:<18}{total[status]:>10}")
    for name in ("candidates", "flagged_candidates", "windows", "image_tokens", "prompt_tokens", "generated_tokens"):
        lines.append(f"{name:<18}{total[name]:>10}")
    lines.append(f"{'wall seconds':<18}{summary['wall_seconds']:>10.1f}")
    lines.append(f"{'queries/second':<18}{summary['queries_per_second']:>10.2f}")
    shards = summary["shards"]
    lines.append(
        f"shards: {shards['total']} total, {shards['processed']} processed ({shards['reprocessed_changed']} changed), "
        f"{shards['skipped_done_earlier']} done earlier, {shards['bad']} bad"
    )
    for reason in summary["bad_shards"].values():
        lines.append(f"  bad shard: {reason}")
    if summary["planner_dead_letters"]:
        lines.append(f"dead letters from planning (missing or repeated query_id): {summary['planner_dead_letters']}")
    return "\n".join(lines)


def show_prompt(query: str, num_candidates: int, model: str | None) -> str:
    from transformers import AutoTokenizer

    from .prompt import build_messages, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model or "i2vec/MM-R5")
    return render_prompt(tokenizer, build_messages(query, num_candidates))


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners and notebooks swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    """Our progress lines on stderr: a terminal, or the job's log in the Ray dashboard."""
    package = logging.getLogger("mmr5_batch")
    if not package.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s mmr5-batch: %(message)s", "%H:%M:%S"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _log_to_stderr()
    if args.command == "rerank":
        from .config import ConfigError
        from .engines import EngineUnavailable
        from .pipeline import JobError, run_job

        try:
            config = config_from_args(args)
            if not config.input or not config.output:
                raise ConfigError("--input and --output are required (or input/output in the config file)")
            summary = run_job(config)
        except (ConfigError, JobError, EngineUnavailable) as error:
            print(f"mmr5-batch: error: {error}", file=sys.stderr)
            return 2
        except Exception as error:  # an engine failing at start surfaces wrapped by Ray
            cause = _engine_unavailable_cause(error)
            if cause is None:
                raise
            print(f"mmr5-batch: error: {cause}", file=sys.stderr)
            return 2
        print(format_summary(summary))
        if summary["failed"]:
            print(f"mmr5-batch: error: {summary['failed']}", file=sys.stderr)
            return 3
        return 0
    if args.command == "plan":
        from .config import ConfigError
        from .estimate import estimate, format_estimate
        from .pipeline import JobError

        try:
            if not args.output:
                args.output = ""
            config = config_from_args(args)
            if not config.input:
                raise ConfigError("--input is required (or input in the config file)")
            report = estimate(config, sample=args.sample, generated_tokens=args.gen_tokens)
        except (ConfigError, JobError) as error:
            print(f"mmr5-batch: error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2) if args.json else format_estimate(report))
        return 0
    if args.command == "show-prompt":
        try:
            sys.stdout.write(show_prompt(args.query, args.num_candidates, args.model))
        except (OSError, ValueError) as error:
            print(f"mmr5-batch: error: {str(error).splitlines()[0]}", file=sys.stderr)
            return 2
        return 0
    if args.command == "tiny-model":
        from .tiny_model import build_tiny_model

        print(build_tiny_model(args.directory, seed=args.seed))
        return 0
    if args.command == "demo-data":
        from .demo_data import write_demo_dataset

        paths = write_demo_dataset(args.directory, queries=args.queries, candidates=args.candidates, shards=args.shards)
        if args.qrels:
            from pathlib import Path

            from .demo_data import demo_qrels_text

            Path(args.qrels).parent.mkdir(parents=True, exist_ok=True)
            Path(args.qrels).write_text(demo_qrels_text(queries=args.queries, candidates=args.candidates))
        print(json.dumps([str(path) for path in paths]))
        return 0
    if args.command == "evaluate":
        return evaluate_command(args)
    if args.command == "convert":
        from .mmdocir import ConvertError, convert_mmdocir

        try:
            counts = convert_mmdocir(args.pages, args.annotations, args.run, args.output, top_k=args.top_k, shard_size=args.shard_size)
        except (ConvertError, FileNotFoundError) as error:
            print(f"mmr5-batch: error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(counts, indent=2))
        return 0
    return 2


def evaluate_command(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run, format_report
    from .pipeline import ensure_ray
    from .qrels import QrelsError
    from .storage import Storage, join

    try:
        ks = [int(value) for value in args.k.split(",") if value.strip()]
        if not ks or min(ks) < 1:
            raise ValueError
    except ValueError:
        print(f"mmr5-batch: error: --k must be positive integers separated by commas, got {args.k!r}", file=sys.stderr)
        return 2
    storage = Storage()
    try:
        ensure_ray(args.address)
        report = evaluate_run(args.run, args.qrels, ks, args.group_by, storage)
    except (QrelsError, FileNotFoundError) as error:
        print(f"mmr5-batch: error: {error}", file=sys.stderr)
        return 2
    storage.write_json(args.json or join(args.run, "evaluation.json"), report)
    print(format_report(report))
    return 0


def _engine_unavailable_cause(error: BaseException) -> str | None:
    """The message of an EngineUnavailable raised inside a Ray actor, if that is what failed."""
    from .engines import EngineUnavailable

    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EngineUnavailable):
            return str(current)
        text = str(current)
        if "EngineUnavailable" in text:
            return text.split("EngineUnavailable:", 1)[-1].strip().splitlines()[0]
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])
    return None


if __name__ == "__main__":
    raise SystemExit(main())
