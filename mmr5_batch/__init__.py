"""mmr5-batch: batch multimodal reranking with MM-R5 on Ray Data and vLLM."""

# Kept equal to pyproject's version (tests/unit/test_cluster_configs.py); the cluster images are tagged with it.
__version__ = "0.1.0"
