"""`python -m darkcfg ...` is the `darkcfg` console script."""

from darkcfg.cli import run

run()
