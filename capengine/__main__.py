"""`python -m capengine` is the `capengine` command (works before the console script is on PATH)."""

import sys

from capengine.cli import main

sys.exit(main())
