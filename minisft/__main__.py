"""`python -m minisft ...`: the `minisft` command."""

import sys

from .app.cli import main

sys.exit(main())
