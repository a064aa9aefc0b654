"""The one typed config tree (pydantic): sections, the reranker and job trees, and how they are made."""

from mmr5_batch.config.job_config import JobConfig, RerankerConfig
from mmr5_batch.config.loading import SECRET_FIELDS, config_from_keywords, config_to_yaml, load_config, public_dump, validate_config
from mmr5_batch.config.sections import (
    CascadeConfig,
    ExecutionConfig,
    ImageConfig,
    ModelConfig,
    RankingConfig,
    RelabelConfig,
    StorageConfig,
)
from mmr5_batch.errors import ConfigError

__all__ = [
    "SECRET_FIELDS",
    "CascadeConfig",
    "ConfigError",
    "ExecutionConfig",
    "ImageConfig",
    "JobConfig",
    "ModelConfig",
    "RankingConfig",
    "RelabelConfig",
    "RerankerConfig",
    "StorageConfig",
    "config_from_keywords",
    "config_to_yaml",
    "load_config",
    "public_dump",
    "validate_config",
]
