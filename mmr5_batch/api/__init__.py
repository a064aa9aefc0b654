"""The Python API in process: `Reranker` and its `RankedResult`."""
