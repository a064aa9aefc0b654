"""The `mmr5-batch` command line (main.py), a thin caller of the library; `python -m mmr5_batch.cli` runs it too."""
