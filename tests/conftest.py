"""Shared fixtures and cost markers.

One tiny offline checkpoint per test session; small images; one local Ray
per test module (temp dir under /tmp: socket paths must stay short); an S3
server (moto in server mode on loopback: a real S3 HTTP API that s3fs,
pyarrow and Ray Data talk to; its endpoint and test credentials go into the
standard AWS environment, so a module using it must start its Ray after it);
a reader of result folders.

Every test gets one cost marker (`unit`, `ray`, `cluster`, `vllm`; see
pyproject), from what it uses: `make test-fast` runs the unit lane alone.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from mmr5_batch.devtools.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_pointwise_dir(tmp_path_factory):
    from mmr5_batch.devtools.tiny_model import build_tiny_pointwise_model

    return str(build_tiny_pointwise_model(tmp_path_factory.mktemp("tiny-qwen3-vl-reranker")))


@pytest.fixture(scope="session")
def tiny_text_reranker_dir(tmp_path_factory):
    from mmr5_batch.devtools.tiny_model import build_tiny_text_reranker_model

    return str(build_tiny_text_reranker_model(tmp_path_factory.mktemp("tiny-text-reranker")))


def grey_jpeg(level: int, size: tuple[int, int] = (120, 160)) -> bytes:
    """A uniform grey picture; the scripted test engine ranks darker (lower level) first."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (level, level, level)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def make_grey_jpeg():
    return grey_jpeg


def read_folder(folder: Path) -> list[dict]:
    """Every row under a result folder (all shard partitions), hidden temporaries excluded."""
    if not folder.exists():
        return []
    files = sorted(path for path in folder.rglob("*.parquet") if not path.name.startswith("."))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def ray_session():
    """The module's local Ray; its metrics export on a port of our own (tests/support/metrics_export.py reads it)."""
    import ray

    from tests.support.metrics_export import pick_metrics_port

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Ray gives its raylet a fixed 30 s to register; on a loaded 2-core machine (the previous module's cluster still
    # tearing down) it can take longer. Then the node is started again, up to three times in all, rather than failing
    # every test of the module on a start that was only slow.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR", _metrics_export_port=pick_metrics_port())
            break
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == 2:
                raise
            ray.shutdown()
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


# Test modules that start Ray clusters of their own (test_console: in the commands they run), kill processes or submit
# jobs: the slowest lane.
CLUSTER_MODULES = ("test_console", "test_faults", "test_driver_kill", "test_job_submit", "test_job_submit_autoscaling", "test_ray_pipeline")


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if item.get_closest_marker("vllm"):
            continue
        if module in CLUSTER_MODULES:
            item.add_marker(pytest.mark.cluster)
        elif "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def tiny_ziprerank_dir(tmp_path_factory):
    from mmr5_batch.devtools.tiny_model import build_tiny_ziprerank_model

    # The folder's name says 'ziprerank': that is how `auto` tells it from a Qwen3-VL-Reranker checkpoint.
    return str(build_tiny_ziprerank_model(tmp_path_factory.mktemp("tiny-ziprerank")))


@pytest.fixture(scope="session")
def tiny_jina_dir(tmp_path_factory):
    from mmr5_batch.devtools.tiny_model import build_tiny_jina_model

    # No name needed: its config.json's architecture (JinaVLForRanking) says what it is.
    return str(build_tiny_jina_model(tmp_path_factory.mktemp("tiny-jina")))
