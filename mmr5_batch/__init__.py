"""mmr5-batch: multimodal reranking with MM-R5 as a library, a Ray Data step and an exactly-once Ray job.

    from mmr5_batch import Reranker                  # one query, in process
    from mmr5_batch import build_reranker            # a step of a Ray Data pipeline
    from mmr5_batch import JobConfig, run_job        # the exactly-once job over Parquet shards

The names load on first use, so `import mmr5_batch` stays light (no Ray, no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Kept equal to pyproject's version (tests/cluster/test_cluster_configs.py); the cluster images are tagged with it.
__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "Reranker": "mmr5_batch.api.reranker",
    "RankedResult": "mmr5_batch.api.reranker",
    "build_reranker": "mmr5_batch.stages.step",
    "rerank_dataset": "mmr5_batch.stages.step",
    "RerankStep": "mmr5_batch.stages.step",
    "ColumnMapping": "mmr5_batch.stages.step",
    "run_job": "mmr5_batch.job.runner",
    "JobConfig": "mmr5_batch.config",
    "RerankerConfig": "mmr5_batch.config",
    "load_config": "mmr5_batch.config",
    "ConfigError": "mmr5_batch.errors",
    "ContractError": "mmr5_batch.errors",
    "EngineUnavailable": "mmr5_batch.errors",
    "JobError": "mmr5_batch.errors",
    "QueryFailed": "mmr5_batch.errors",
    "PageUnreadable": "mmr5_batch.errors",
}

__all__ = [
    "ColumnMapping",
    "ConfigError",
    "ContractError",
    "EngineUnavailable",
    "JobConfig",
    "JobError",
    "PageUnreadable",
    "QueryFailed",
    "RankedResult",
    "RerankStep",
    "Reranker",
    "RerankerConfig",
    "__version__",
    "build_reranker",
    "load_config",
    "rerank_dataset",
    "run_job",
]

if TYPE_CHECKING:
    from mmr5_batch.api.reranker import RankedResult, Reranker
    from mmr5_batch.config import JobConfig, RerankerConfig, load_config
    from mmr5_batch.errors import ConfigError, ContractError, EngineUnavailable, JobError, PageUnreadable, QueryFailed
    from mmr5_batch.job.runner import run_job
    from mmr5_batch.stages.step import ColumnMapping, RerankStep, build_reranker, rerank_dataset


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mmr5_batch' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
