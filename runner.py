"""The design card's entry point, kept as a shim: `python runner.py CFG --train ...` is
`darkcfg CFG --train ...` (darkcfg.cli)."""

from darkcfg.cli import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()
