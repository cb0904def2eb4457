"""`python -m lc.cli` (what torchrun launches): the `lc` command."""
from lc.cli.main import main

raise SystemExit(main())
