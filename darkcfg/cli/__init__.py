"""darkcfg's command line."""

from darkcfg.cli.flags import main

__all__ = ["main"]
