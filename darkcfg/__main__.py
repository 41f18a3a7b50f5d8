"""`python -m darkcfg ...` is the `darkcfg` console script."""

import sys

from darkcfg.cli import main

sys.exit(main())
