"""The Ray cluster as the stages see it: joining or starting Ray, and how many GPUs it has and can have."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from mmr5_batch.stages.placement import ClusterGpus

log = logging.getLogger(__name__)


def ray_is_local(address: str | None) -> bool:
    """Whether the job starts a Ray of its own here (no address given): its actors then run in this Python."""
    import ray

    return not (ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"))


def ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)


def cluster_gpus(wanted: float, wait_seconds: float) -> ClusterGpus:
    """GPUs in the Ray cluster now, and the most it can have.

    An autoscaling cluster may have no GPU node until something asks for one
    (a GPU worker group scaled to zero between scheduled runs). Given
    `wait_seconds`, the autoscaler is asked for `wanted` GPUs and the job
    waits that long for them. Without it nothing is waited for: a local or
    fixed cluster without GPUs fails at once instead of hanging.
    """
    now = _gpus_now()
    reachable = max(now, float(_autoscaler_limits().get("GPU", 0) or 0))
    waited = 0.0
    if wanted > 0 and now < wanted and wait_seconds > 0:
        from ray.autoscaler.sdk import request_resources

        log.info("the Ray cluster has %g GPU(s): asking the autoscaler for %g GPU(s), waiting up to %gs", now, wanted, wait_seconds)
        request_resources(bundles=[{"GPU": wanted}])
        started = time.monotonic()
        while now < wanted and time.monotonic() - started < wait_seconds:
            time.sleep(2.0)
            # Asked again each time: a request replaces the last one, and Ray Data's autoscaling coordinator
            # (left running by planning's Ray Data tasks) sends its own every 20 s, which would drop ours.
            request_resources(bundles=[{"GPU": wanted}])
            now = _gpus_now()
        waited = time.monotonic() - started
        # The request is persistent: drop it, the rerank actors hold the nodes from here on.
        request_resources(bundles=[])
        reachable = max(reachable, now)
        log.info("GPUs in the cluster after %.0fs: %g", waited, now)
    return ClusterGpus(now=now, reachable=reachable, waited_seconds=waited)


def _gpus_now() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def _autoscaler_limits() -> dict[str, Any]:
    """The most resources per kind the autoscaler can reach, where Ray publishes its node types (Ray Data reads the same).

    The v1 autoscaler (KubeRay's default, the cluster launcher's) does not
    publish them: then this is empty and `execution.max_actors` bounds growth.
    """
    import ray

    try:
        return ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception as error:  # a private API: never let it stop the job
        log.debug("no autoscaler limits: %s", error)
        return {}
