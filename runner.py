"""The design card's entry point, kept as a shim: `python runner.py CFG --train ...` is
`darkcfg CFG --train ...` (darkcfg.cli)."""

import sys

from darkcfg.cli import main

if __name__ == "__main__":
    sys.exit(main())
