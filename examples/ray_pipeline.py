"""Reranking as one step of your own Ray Data pipeline: read Parquet -> rerank -> keep what ranked -> write Parquet.

    python examples/ray_pipeline.py --input demo/input --output demo/pipeline-out \
        --model demo/tiny-model --device cpu --max-new-tokens 8

The input is the grouped layout (query_id, query, candidates); any other
column passes through. Rows that could not be reranked (`status == "error"`)
are written to OUTPUT/errors instead, each with its `reason`. This is a plain
pipeline: for resumable, exactly-once runs over shards use `run_job` (or
`mmr5-batch rerank`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from mmr5_batch import build_reranker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", default="i2vec/MM-R5")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm", "scripted-test"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()

    reranker = build_reranker(
        model={"name": args.model, "backend": args.backend, "device": args.device, "max_new_tokens": args.max_new_tokens},
        actors=args.actors,
    )
    dataset = ray.data.read_parquet(args.input)
    reranked = reranker(dataset).materialize()  # computed once, read twice below
    reranked.filter(lambda row: row["status"] != "error").write_parquet(f"{args.output}/ranked")
    reranked.filter(lambda row: row["status"] == "error").write_parquet(f"{args.output}/errors")
    print(f"{reranked.count()} queries reranked; results under {args.output}/ranked, errors under {args.output}/errors")


if __name__ == "__main__":
    main()
