"""The `mmr5-batch` command line."""

from mmr5_batch.cli.main import main

__all__ = ["main"]
