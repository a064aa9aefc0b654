"""A real Ray head for `ray job submit` tests, started the way users start one.

`ray start --head` with token authentication on and the dashboard's job
server on loopback, optionally with Ray's fake multi-node autoscaler behind
it (its node types become local processes). Jobs go in over HTTP with the
`ray` CLI of this environment, exactly as the README says.

The fake autoscaler's nodes share the head's session directory, so a job
with a working dir must not run there: every node's runtime-env agent unpacks
the working dir with overwrite, which on one shared disk deletes the
directory under the head's running workers. On a real cluster each node has
its own disk. The autoscaling tests therefore submit the way the KubeRay
manifests do, with the code installed and no working dir.
"""

from __future__ import annotations

import json
import os
import secrets
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
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        # The job's `python` and the workers are this environment's.
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
    )
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
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    head = Head(address=f"http://127.0.0.1:{dashboard_port}", env=env, root=root)
    deadline = time.monotonic() + 120
    while ray_cli(head, "job", "list").returncode != 0:  # the job server comes up after `ray start` returns
        if time.monotonic() > deadline:
            stop_head(head)
            raise RuntimeError("the dashboard's job server did not come up")
        time.sleep(1)
    return head


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
    request = urllib.request.Request(f"{head.address}/api/jobs/{submission_id}", headers={"Authorization": f"Bearer {(head.root / 'token').read_text()}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def ranked_query_ids(output: Path) -> Counter:
    return Counter(qid for path in (output / "ranked").rglob("*.parquet") for qid in pq.read_table(path, columns=["query_id"])["query_id"].to_pylist())
