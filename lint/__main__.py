"""`python -m lint FILE|DIR ...`: the cfg checker (see lint.cli)."""

import sys

from .cli import main

sys.exit(main(prog="python -m lint"))
