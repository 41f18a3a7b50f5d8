"""`python -m darkcfg.lint FILE|DIR ...`: the cfg checker (see darkcfg.lint.cli)."""

import sys

from darkcfg.lint.cli import main

sys.exit(main(prog="python -m darkcfg.lint"))
