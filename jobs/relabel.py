"""Entry point for `ray job submit ... -- python jobs/relabel.py --input ... --output ... [--positives-top-k K] [--label-column COL]`.

A rerank run that also writes one row per query-candidate (`--emit pairs`):
the reranked and first-stage ranks, a label by the rule, the existing label
and a `disagrees` flag (see mmr5_batch/relabel.py). Same exit codes as
`mmr5-batch rerank`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# With --working-dir the package sits beside this folder and may not be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmr5_batch.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["rerank", "--emit", "pairs", *sys.argv[1:]]))
