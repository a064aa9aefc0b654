"""One local Ray per integration test module (temp dir under /tmp: socket paths must stay short), an S3 server, and a reader of result folders.

The S3 server is moto in server mode on loopback: a real S3 HTTP API that
s3fs, pyarrow and Ray Data talk to. Its endpoint and test credentials go
into the standard AWS environment (`AWS_ENDPOINT_URL`, ...), so a module
using it must start its Ray after it (the workers inherit the environment).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def read_folder(folder: Path) -> list[dict]:
    """Every row under a result folder (all shard partitions), hidden temporaries excluded."""
    if not folder.exists():
        return []
    files = sorted(path for path in folder.rglob("*.parquet") if not path.name.startswith("."))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    import s3fs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in [*AWS_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=endpoint)
    # fsspec caches filesystem instances: one made for an earlier module's
    # server would still point at its (now closed) port.
    s3fs.S3FileSystem.clear_instance_cache()
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()
