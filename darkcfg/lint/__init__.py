"""lint: `darkcfg check`, the Darknet cfg linter, above cfgparse and builders.

    block_rules  stage 2, torch-free: the [net], reference and head rules of cfgparse.rules
    graph_rules  stage 3: a meta-device build, shapes, unread keys, the memory estimate
    stages       one file through parse -> block rules -> graph rules
    pool         many files, in forked worker processes
    report       text, json, github and sarif output
    cli          the command line (`darkcfg check`, `python -m darkcfg.lint`)

Importing this package, `darkcfg.lint.block_rules` or `darkcfg.lint.cli` does not import torch;
the graph
stage does, when it runs.
"""

from darkcfg.lint.cli import main
from darkcfg.lint.pool import check_paths
from darkcfg.lint.stages import Options, check_file

__all__ = ["Options", "check_file", "check_paths", "main"]
