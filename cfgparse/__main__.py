"""Command line: `python -m cfgparse dump FILE`, and `python -m cfgparse check FILE...` (kept for
existing pre-commit configs and CI scripts; the checker is `darkcfg check`, also
`python -m darkcfg.lint`). Usage errors are one E100 diagnostic, as in every darkcfg command.

Exit status: 0 ok, 1 findings (errors in the cfg), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import schema
from .errors import CfgError, stdout_error, tolerant_output
from .parser import parse
from .usage import CommandParser
from .writer import to_yaml, write

FORMATS = ("json", "yaml", "cfg")


def arg_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cfgparse", description="Darknet .cfg parser, checker and converter.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    dump = commands.add_parser(
        "dump", help="print a cfg (or .yaml) as JSON, YAML or canonical cfg",
        description="Parse FILE and print its sections. JSON is a list of "
                    '{"type": str, "line": int, "options": {key: typed value}}.')
    dump.add_argument("file", metavar="FILE", help="a .cfg or .yaml/.yml file, or - for stdin")
    dump.add_argument("--format", choices=FORMATS, default="json", help="output (default json)")
    dump.add_argument("--flavor", choices=schema.FLAVORS, default=None,
                      help="also warn about keys only the other Darknet fork reads")
    commands.add_parser("check", add_help=False,
                        help="lint cfg files (see: python -m cfgparse check --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    tolerant_output()
    try:
        return _main(argv)
    except BrokenPipeError:  # `python -m cfgparse dump X | head`: the reader left early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:  # a shim for existing configs: the checker is the lint package
        from darkcfg.lint.cli import main as check_main

        return check_main(argv[1:], prog="python -m cfgparse check")
    parser = arg_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return 2 if exc.code is None else int(exc.code)
    if args.command is None:
        try:
            parser.error("a command is required (dump or check)")
        except SystemExit as exc:
            return int(exc.code)
    return dump(args.file, args.format, args.flavor)


def dump(file: str, fmt: str, flavor: str | None) -> int:
    try:
        if file == "-":
            blocks = parse(sys.stdin.buffer.read(), path="<stdin>", flavor=flavor)
        else:
            blocks = parse(Path(file), flavor=flavor)  # a Path: never taken for cfg text
    except CfgError as exc:
        io_errors = [d for d in exc.errors if d.code.startswith("E9")]
        if io_errors:  # no source excerpt: there is no source (the message and its help)
            print(io_errors[0].format(), file=sys.stderr)
            return 2
        print("\n\n".join(d.format() for d in exc.diagnostics), file=sys.stderr)
        return 1
    for warning in blocks.warnings:
        print(warning.format(), file=sys.stderr)
    if fmt == "json":
        text = json.dumps([b.to_dict() for b in blocks], indent=2) + "\n"
    elif fmt == "yaml":
        text = to_yaml(blocks)
    else:
        text = write(blocks)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader left; not an error of ours
        sys.stderr.close()
    except OSError as exc:  # `> /dev/full`, a full disk under the redirect
        print(stdout_error(exc).format(), file=sys.stderr)
        # what is still buffered would fail again, as a traceback, when Python exits
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
