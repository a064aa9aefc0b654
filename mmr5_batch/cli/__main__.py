"""`python -m mmr5_batch.cli ...`: the same as the `mmr5-batch` command."""

from mmr5_batch.cli.main import main

raise SystemExit(main())
