"""`python -m lc.cli` (what torchrun launches): the `lc` command."""
from lc.cli.entry import run

raise SystemExit(run())
