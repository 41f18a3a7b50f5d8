"""darkcfg's command line: `darkcfg COMMAND ...`, one module per command, and the flag form of
runner.py (`darkcfg CFG --train ...`, darkcfg.cli.flags), kept as a thin translation.

Each command module has `main(argv: list[str]) -> int`: it parses its own arguments into typed
options (`parse(argv)`, a dataclass) and runs them (`run(options)`) with library functions that
never see argparse; `darkcfg.cli.common.guarded` turns bad input into diagnostics and exit 2
for all of them. Modules load on first use, so that `darkcfg check` stays torch-free."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

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
    if argv and not argv[0].startswith("-") and not looks_like_a_model(argv[0]):
        from cfgparse.errors import did_you_mean
        from darkcfg.cli.common import describe, usage_error

        guess = did_you_mean(argv[0], COMMANDS)
        error = usage_error(f"'{argv[0]}' is neither a command nor a cfg file",
                            hint=(f"{guess}; " if guess else "")
                            + "commands: " + ", ".join(COMMANDS))
        print(describe(error.first), file=sys.stderr)
        return 2
    from darkcfg.cli.flags import main as flag_form

    return flag_form(argv)


def looks_like_a_model(arg: str) -> bool:
    """The flag form's first argument: an existing file, or a name that says cfg/YAML (a
    missing one then gets the flag form's own located error)."""
    return Path(arg).exists() or Path(arg).suffix.lower() in (".cfg", ".yaml", ".yml")


__all__ = ["COMMANDS", "main"]
