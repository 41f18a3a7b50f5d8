"""`python -m darkcfg.lint FILE|DIR ...`: the cfg checker (see darkcfg.lint.cli)."""

from darkcfg.lint.cli import main
from darkcfg.stopping import end_process

# (as the `darkcfg` script ends: a stop signal in the interpreter's teardown is still exit 130)
end_process(main(prog="python -m darkcfg.lint"))
