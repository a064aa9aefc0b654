"""The package version: kept equal to pyproject's (tests/cluster/test_cluster_configs.py); the cluster images are tagged with it."""

__version__ = "0.1.0"
