"""Entry point for `ray job submit ... -- python jobs/evaluate.py --run ... --qrels ...`.

Same flags and exit codes as `mmr5-batch evaluate`; it scores the run on Ray
Data, so it scales with the run. Inside a submitted job RAY_ADDRESS is set.
"""

from __future__ import annotations

import sys
from pathlib import Path

# With --working-dir the package sits beside this folder and may not be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmr5_batch.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
