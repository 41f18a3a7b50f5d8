"""darkcfg's command line: `darkcfg COMMAND ...`, one module per command, and the flag form of
runner.py (`darkcfg CFG --train ...`, darkcfg.cli.flags), kept as a thin translation.

Each command module has `main(argv: list[str]) -> int`: it parses its own arguments into typed
options (`parse(argv)`, a dataclass) and runs them (`run(options)`) with library functions that
never see argparse; `darkcfg.cli.common.guarded` turns bad input into diagnostics and exit 2
for all of them. Modules load on first use, so that `darkcfg check` stays torch-free."""

from __future__ import annotations

import importlib
import sys

#: command -> the module whose main(argv) runs it.
COMMANDS = {
    "train": "darkcfg.cli.train",
    "valid": "darkcfg.cli.valid",
    "predict": "darkcfg.cli.predict",
    "detect": "darkcfg.cli.detect",
    "export": "darkcfg.cli.export",
    "emit": "darkcfg.cli.emit",
    "summary": "darkcfg.cli.summary",
    "weights": "darkcfg.cli.weights",
    "check": "darkcfg.lint.cli",
    "data": "darkcfg.cli.data",
    "anchors": "darkcfg.cli.anchors",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        from darkcfg.cli.common import guarded

        module = importlib.import_module(COMMANDS[argv[0]])
        return guarded(lambda: module.main(argv[1:]))
    from darkcfg.cli.flags import main as flag_form

    return flag_form(argv)


__all__ = ["COMMANDS", "main"]
