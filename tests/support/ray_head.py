"""A real Ray head for `ray job submit` tests, started the way users start one.

`ray start --head` with Ray's defaults (no `RAY_*` variable; its own home
directory holding a token in `~/.ray/auth_token`, as any machine where Ray
ran locally does, so Ray turns token authentication on by itself) and the dashboard's job server on loopback, optionally with Ray's fake
multi-node autoscaler behind it (its node types become local processes).
Jobs go in over HTTP with the `ray` CLI of this environment, from a client
environment holding only what docs/cluster.md tells a user to set
(`RAY_AUTH_MODE=token`; the token in `~/.ray/auth_token`), exactly as the
docs say. `start_head` returns once the head accepts a job, not only once
it answers a listing: its job agent registers later.

The fake autoscaler's nodes share the head's session directory, so a job
with a working dir must not run there: every node's runtime-env agent unpacks
the working dir with overwrite, which on one shared disk deletes the
directory under the head's running workers. On a real cluster each node has
its own disk. The autoscaling tests therefore submit the way the KubeRay
manifests do, with the code installed and no working dir.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import _free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


@dataclass
class Head:
    address: str
    env: dict
    root: Path

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"


def fake_autoscaling_config(gcs_address: str, worker_resources: dict[str, float]) -> dict:
    """Ray's fake_multinode provider with one worker type, none running at the start."""
    return {
        "cluster_name": "mmr5-test",
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "worker": {"resources": worker_resources, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")},
        **{key: [] for key in ("head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


def start_head(autoscaling_worker: dict[str, float] | None = None) -> Head:
    """Start a head (and, given a worker's resources, a fake autoscaler that can add one such node); wait for its job server."""
    from ray._private.services import get_node_ip_address

    # Under /tmp: Ray's socket paths must stay short.
    root = Path(tempfile.mkdtemp(prefix="mmr5-rj-", dir="/tmp"))
    (root / "home").mkdir()
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    # The job's `python` and the workers are this environment's; the head's home is its own, as on a fresh machine.
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(root / "home"))
    start = [
        RAY, "start", "--head", f"--port={gcs_port}", "--num-cpus=2",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--temp-dir={root / 'ray'}", "--disable-usage-stats",
    ]  # fmt: skip
    if autoscaling_worker is not None:
        config = root / "autoscaling.json"
        config.write_text(json.dumps(fake_autoscaling_config(f"{get_node_ip_address()}:{gcs_port}", autoscaling_worker)))
        start.append(f"--autoscaling-config={config}")
        env.update(AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
    # The token a user's machine holds once Ray ran there (every local ray.init() leaves ~/.ray/auth_token), made
    # the way docs/cluster.md says; `ray start --head` then turns token authentication on by itself.
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    started = subprocess.run(start, env=env, check=True, capture_output=True, text=True, timeout=180)
    assert "Token authentication is enabled" in started.stdout + started.stderr, "Ray's default for `ray start --head` changed"
    # The client: what docs/cluster.md tells a user on the head's machine to set, and nothing else.
    head = Head(address=f"http://127.0.0.1:{dashboard_port}", env={**env, "RAY_AUTH_MODE": "token"}, root=root)
    try:
        wait_until_it_accepts_a_job(head)
    except BaseException:
        stop_head(head)
        raise
    return head


# What a head answers while it cannot take a job yet (its job agent has not registered).
NOT_READY = ("No available agent", "try again later", "Connection refused", "Failed to connect")


def wait_until_it_accepts_a_job(head: Head, seconds: float = 300) -> None:
    """Submit a no-op job until the head takes it, backing off while it says it is not ready; then wait for the job
    to end. A head that never takes one fails with its last answer."""
    deadline, pause, answer = time.monotonic() + seconds, 0.5, ""
    for attempt in itertools.count():
        if time.monotonic() >= deadline:
            break
        done = subprocess.run(
            [RAY, "job", "submit", "--address", head.address, "--submission-id", f"mmr5-ready-{attempt}", "--", "python", "-c", "pass"],
            env=head.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        answer = done.stdout + done.stderr
        if done.returncode == 0:
            return
        if not any(sign in answer for sign in NOT_READY):
            raise RuntimeError(f"the head refused a no-op job: {answer[-2000:]}")
        time.sleep(pause)
        pause = min(2 * pause, 5)
    raise RuntimeError(f"the head did not accept a job within {seconds:.0f} s; its last answer: {answer[-2000:]}")


def stop_head(head: Head) -> None:
    subprocess.run([RAY, "stop", "--force"], env=head.env, capture_output=True, timeout=180)
    shutil.rmtree(head.root, ignore_errors=True)


def ray_cli(head: Head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args, "--address", head.address], env=head.env, capture_output=True, text=True, timeout=timeout)


def submit(head: Head, submission_id: str, entrypoint: list[str], runtime_env: Path, working_dir: Path | None = None) -> subprocess.CompletedProcess:
    """`ray job submit` and wait for the job, as a user does; returns the CLI's exit code and the job's log."""
    command = [RAY, "job", "submit", "--address", head.address, "--submission-id", submission_id]
    if working_dir is not None:
        command += ["--working-dir", str(working_dir)]
    command += ["--runtime-env", str(runtime_env), "--", *entrypoint]
    return subprocess.run(command, env=head.env, capture_output=True, text=True, timeout=600)


def job_info(head: Head, submission_id: str) -> dict:
    """The job's record from the Jobs REST API (status, message, entrypoint, ...)."""
    token = (Path(head.env["HOME"]) / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{head.address}/api/jobs/{submission_id}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def job_logs(head: Head, submission_id: str) -> str:
    """The job's own log (what its entrypoint printed: its console), from the Jobs REST API."""
    token = (Path(head.env["HOME"]) / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{head.address}/api/jobs/{submission_id}/logs", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["logs"]


def ranked_query_ids(output: Path) -> Counter:
    return Counter(qid for path in (output / "ranked").rglob("*.parquet") for qid in pq.read_table(path, columns=["query_id"])["query_id"].to_pylist())
