"""How the job's own cost grows with shards and queries: planning, first row, end of run, driver memory, files, S3 requests.

The model's cost is taken out (the scripted test engine, 2 candidates per
query, one tiny inline PNG each), so what is left is the job: listing,
ledger, survey, read tasks, write tasks, readback. Each case runs the real
job in a fresh driver process on a local Ray, twice: a first run over an
empty output, then a rerun over the same input (every shard is in the
ledger, so it must do nothing, quickly). S3 cases use a moto server on
loopback that counts the requests it serves.

    python bench/scale.py                                   # the default cases
    python bench/scale.py --cases 10x1000,100x10000 --s3-cases 100x10000
    git worktree add /tmp/before 83952bd                    # the job before this design, same cases
    python bench/scale.py --code /tmp/before --cases 1000x10000 --s3-cases ""

Columns: plan s (listing, ledger, survey), first row s (from the call to
the first request reaching an engine), end s (readback and ledger after the
last write), total s, driver MB (peak RSS of the driver process), files
(written under the output), S3 req/shard; then the same for the rerun.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The package under test: this checkout, or another one for a before/after table (--code).
sys.path.insert(0, os.environ.get("MMR5_BENCH_CODE") or str(Path(__file__).resolve().parents[1]))

DEFAULT_CASES = "10x1000,100x10000,1000x100000,5000x100000,5000x1000000"
DEFAULT_S3_CASES = "100x10000,1000x10000"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="local cases, SHARDSxQUERIES, comma separated")
    parser.add_argument("--s3-cases", default=DEFAULT_S3_CASES, help="cases on S3 (moto on loopback); '' for none")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of each case's local Ray")
    parser.add_argument("--batch-size", type=int, default=256, help="queries per actor call and per preparation task")
    parser.add_argument(
        "--queries-per-wave", type=int, default=None, help="execution.queries_per_wave (default: the job's own); 0: one wave, as before waves existed"
    )
    parser.add_argument("--workdir", default=None, help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--code", default=None, help="run the job from this checkout instead (an older commit, for a before/after table)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one driver run may take before it counts as not finished")
    parser.add_argument("--driver", default=None, help=argparse.SUPPRESS)  # internal: run one job as the driver
    return parser.parse_args(argv)


def tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 90).save(buffer, format="PNG")
    return buffer.getvalue()


def shard_tables(shards: int, queries: int):
    """(file name, table) per shard: `queries` spread evenly, 2 candidates each, one tiny inline PNG."""
    import pyarrow as pa

    from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA

    image = tiny_png()
    per_shard = [queries // shards + (1 if index < queries % shards else 0) for index in range(shards)]
    candidates = [{"doc_id": f"d{c}", "image": image, "image_uri": None, "text": None, "score": 1 - c / 10} for c in range(2)]
    start = 0
    for index, count in enumerate(per_shard):
        ids = [f"q{number:08d}" for number in range(start, start + count)]
        start += count
        table = pa.Table.from_pydict(
            {"query_id": ids, "query": ["Which page?"] * count, "candidates": [candidates] * count},
            schema=GROUPED_INPUT_SCHEMA,
        )
        yield f"part-{index:05d}.parquet", table


def write_local(folder: Path, shards: int, queries: int) -> None:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for name, table in shard_tables(shards, queries):
        pq.write_table(table, folder / name)


def write_s3(bucket: str, prefix: str, shards: int, queries: int) -> None:
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    client = boto3.client("s3")
    for name, table in shard_tables(shards, queries):
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=buffer.getvalue().to_pybytes())


class CountingS3Server:
    """moto's S3 on loopback, counting the requests it serves."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.requests = 0
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            self.requests += 1
            return app(environ, start_response)

        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.server = make_server("127.0.0.1", 0, counting, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()


def run_driver(case: dict) -> dict:
    """In the driver process: run the job once, return its figures."""
    import logging

    import ray

    logging.basicConfig(level=logging.WARNING)
    ray.init(num_cpus=case["cpus"], include_dashboard=False, logging_level=logging.WARNING, _temp_dir=case["ray_dir"])
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    import inspect

    from mmr5_batch import run_job
    from mmr5_batch.devtools.scripted_engine import ScriptedTestEngine

    marker = case["first_call_file"]
    # Older checkouts (--code) lack the first-call marker and the timings: those figures are left blank.
    noted = "first_call_file" in inspect.signature(ScriptedTestEngine.__init__).parameters
    started = time.time()
    summary = run_job(
        input=case["input"],
        output=case["output"],
        run_id=case["run_id"],
        **{
            "model.backend": "scripted-test",
            "model.engine_kwargs": {"first_call_file": marker} if noted else {},
            "execution.batch_size": case["batch_size"],
            "execution.prepare_batch_size": case["batch_size"],
            "execution.max_error_rate": 0.0,
            **({} if case["queries_per_wave"] is None else {"execution.queries_per_wave": case["queries_per_wave"] or None}),
        },
    )
    total = time.time() - started
    first = float(Path(marker).read_text()) - started if os.path.exists(marker) else None
    timings = summary.get("timings", {})
    return {
        "plan_s": timings.get("plan_seconds"),
        "first_row_s": first,
        "end_s": timings.get("readback_seconds"),
        "total_s": total,
        "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "processed": summary["shards"]["processed"],
        "skipped": summary["shards"]["skipped_done_earlier"],
        "reranked": summary["totals"]["queries"],
        "failed": summary["failed"],
    }


def drive(case: dict, env: dict[str, str], code: Path, timeout: float) -> dict:
    """Run one job in a fresh driver process (the package from `code`); a run past `timeout` counts as not finished.

    Nothing else may use Ray on the machine meanwhile: the test suite's cluster tests stop every Ray on it."""
    if os.path.exists(case["first_call_file"]):
        os.remove(case["first_call_file"])
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--driver", json.dumps(case)],
            capture_output=True,
            text=True,
            env=env | {"MMR5_BENCH_CODE": str(code)},
            cwd=code,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, check=False)
        return {"plan_s": None, "first_row_s": None, "end_s": None, "total_s": None, "driver_mb": None, "failed": f"not finished in {timeout:.0f} s"}
    if done.returncode != 0:
        sys.stderr.write(f"driver failed:\n{done.stderr[-4000:]}\n")
        return {"plan_s": None, "first_row_s": None, "end_s": None, "total_s": None, "driver_mb": None, "failed": f"driver exited {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def count_files(output: str, storage: str) -> int:
    if storage == "local":
        return sum(1 for path in Path(output).rglob("*") if path.is_file())
    import boto3

    bucket, _, prefix = output.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return sum(len(page.get("Contents", [])) for page in pages)


def run_case(storage: str, shards: int, queries: int, args: argparse.Namespace, work: Path, server: CountingS3Server | None) -> list[dict]:
    name = f"{storage}-{shards}x{queries}"
    env = dict(os.environ)
    if storage == "s3":
        import boto3

        bucket = name.lower().replace("x", "-")
        boto3.client("s3").create_bucket(Bucket=bucket)
        write_s3(bucket, "in", shards, queries)
        source, output = f"s3://{bucket}/in", f"s3://{bucket}/out"
    else:
        write_local(work / name / "in", shards, queries)
        source, output = str(work / name / "in"), str(work / name / "out")
    case = {
        "input": source,
        "output": output,
        "cpus": args.cpus,
        "batch_size": args.batch_size,
        "queries_per_wave": args.queries_per_wave,
        "first_call_file": str(work / f"{name}.first"),
        "ray_dir": tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
    }
    rows = []
    for run in ("first", "rerun"):
        before = server.requests if server else 0
        figures = drive(case | {"run_id": f"{run}-run"}, env, Path(args.code or Path(__file__).resolve().parents[1]), args.timeout)
        figures["s3_requests_per_shard"] = (server.requests - before) / shards if server else None
        figures["files"] = count_files(output, storage)
        rows.append({"storage": storage, "shards": shards, "queries": queries, "run": run, **figures})
        print(format_row(rows[-1]), flush=True)
    shutil.rmtree(case["ray_dir"], ignore_errors=True)
    if storage == "local":
        shutil.rmtree(work / name, ignore_errors=True)
    return rows


HEADER = f"{'storage':7} {'shards':>6} {'queries':>8} {'run':5} {'plan s':>7} {'1st row s':>9} {'end s':>6} {'total s':>8} {'driver MB':>9} {'files':>6} {'S3 req/shard':>12}"


def format_row(row: dict) -> str:
    def number(value, spec):
        return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))

    line = (
        f"{row['storage']:7} {row['shards']:>6} {row['queries']:>8} {row['run']:5} {number(row['plan_s'], '7.1f')} {number(row['first_row_s'], '9.1f')} "
        f"{number(row['end_s'], '6.1f')} {number(row['total_s'], '8.1f')} {number(row['driver_mb'], '9.0f')} {row['files']:>6} "
        f"{number(row['s3_requests_per_shard'], '12.1f')}"
    )
    return line + (f"  ({row['failed']})" if row.get("failed") else "")


def fit(rows: list[dict]) -> list[str]:
    """Least-squares fit of each first-run figure as a + b*shards + c*queries, extrapolated to 20,000 shards and 10M queries."""
    import numpy as np

    first = [row for row in rows if row["run"] == "first" and row["storage"] == "local" and row["total_s"] is not None and row["plan_s"] is not None]
    if len(first) < 3:
        return []
    design = np.array([[1.0, row["shards"], row["queries"]] for row in first])
    lines = ["extrapolated to 20,000 shards and 10,000,000 queries (local files; fit a + b*shards + c*queries over the first runs):"]
    for column, label in (("plan_s", "plan s"), ("total_s", "total s"), ("driver_mb", "driver MB"), ("files", "files")):
        values = np.array([row[column] for row in first], dtype=float)
        (a, b, c), *_ = np.linalg.lstsq(design, values, rcond=None)
        lines.append(f"  {label:9}: {a + b * 20_000 + c * 10_000_000:12.1f}   (a={a:.3g}, per shard {b:.3g}, per query {c:.3g})")
    reruns = [row for row in rows if row["run"] == "rerun" and row["storage"] == "local" and row["total_s"] is not None]
    if reruns:
        slope = max(row["total_s"] / row["shards"] for row in reruns)
        lines.append(f"  no-op rerun: at most {slope * 20_000:.0f} s for 20,000 ledgered shards (the highest seconds per shard measured)")
    return lines


def parse_cases(text: str) -> list[tuple[int, int]]:
    return [tuple(int(part) for part in case.split("x")) for case in text.split(",") if case.strip()]  # type: ignore[misc]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.driver:
        print(json.dumps(run_driver(json.loads(args.driver))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scale-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    s3_cases = parse_cases(args.s3_cases)
    if s3_cases:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1")
        server = CountingS3Server()
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    wave = "job default" if args.queries_per_wave is None else (args.queries_per_wave or "one wave")
    print(f"scripted engine, 2 candidates per query, {args.cpus} CPUs, batch {args.batch_size}, queries per wave: {wave}; plan = listing + ledger + survey")
    print(HEADER, flush=True)
    rows = []
    for shards, queries in parse_cases(args.cases):
        rows += run_case("local", shards, queries, args, work, None)
    for shards, queries in s3_cases:
        rows += run_case("s3", shards, queries, args, work, server)
    for line in fit(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if server:
        server.stop()


if __name__ == "__main__":
    main()
