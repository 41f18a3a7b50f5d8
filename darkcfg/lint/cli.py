"""`darkcfg check` (also `python -m darkcfg.lint`, `python runner.py CFG --check`, and the old
`python -m cfgparse check`): lint Darknet cfg files for CI. The argument parser every darkcfg
command line uses (`CommandParser`: usage errors as one E100 diagnostic) is cfgparse.usage's.

Exit status: 0 clean, 1 findings (errors; warnings too with --strict), 2 usage or I/O error.
The rule codes are stable; the README (Checking cfg files) lists each with an example.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys

from builders.memory import DEFAULT_MAX_MEMORY, parse_size
from cfgparse.errors import ERROR, WARNING, Diagnostic, stdout_error, tolerant_output
from cfgparse.usage import CommandParser
from darkcfg.lint.pool import check_paths, default_jobs, expand
from darkcfg.lint.report import FORMATS, render
from darkcfg.lint.stages import STDIN, STDIN_NAME, Options
from darkcfg.lint.targets import TARGETS

IO_CODES = frozenset({"E901"})  # findings that mean "could not check", not "the cfg is wrong"


def memory_size(text: str) -> int:
    """--max-memory SIZE for argparse (this command line's and darkcfg train's)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def arg_parser(prog: str = "darkcfg check") -> argparse.ArgumentParser:
    p = CommandParser(
        prog=prog,
        description="Check Darknet .cfg files: syntax, schema, graph (meta-device build) and "
        "memory. Exit 0 clean, 1 findings, 2 usage or I/O error.")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="cfg files (a directory stands for the .cfg files under it; - reads "
                   "one cfg from stdin)")
    p.add_argument("--format", choices=FORMATS, default="text", help="output format")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--no-build", action="store_true",
                   help="syntax, schema and block rules only (no torch, no graph checks)")
    p.add_argument("--max-memory", type=memory_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                   help="memory limit for the estimate (default 4G; e.g. 8G, 512M)")
    p.add_argument("--jobs", "-j", type=int, default=0, metavar="N",
                   help="check files in N processes (default: one per CPU)")
    p.add_argument("--flavor", choices=("alexeyab", "pjreddie"), default=None,
                   help="check against one Darknet fork: warn about keys and sections only the "
                   "other fork reads, and judge shortcuts as this fork does (default: accept "
                   "both forks' keys, AlexeyAB's shapes)")
    p.add_argument("--target", action="append", default=[], choices=TARGETS,
                   help="also warn about what this deployment runtime does not run as Darknet "
                   "does (W601-W604; repeatable)")
    return p


def main(argv: list[str] | None = None, prog: str = "darkcfg check") -> int:
    tolerant_output()
    parser = arg_parser(prog)
    try:
        args = parser.parse_args(argv)
        if not args.files:
            parser.error("no files to check")
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return int(exc.code or 0)
    options = Options(build=not args.no_build, max_memory=args.max_memory, flavor=args.flavor,
                      targets=tuple(dict.fromkeys(args.target)))
    unreadable: list[Diagnostic] = []  # folders with no cfg, or not all read (E901)
    files = expand(args.files, unreadable)
    stdin = None
    if STDIN in files:
        stdin, failed = read_stdin()
        if failed is not None:
            files.remove(STDIN)
            unreadable.insert(0, failed)
    try:
        found = check_paths(files, options, args.jobs if args.jobs > 0 else default_jobs(),
                            stdin)
        found += unreadable
    except KeyboardInterrupt:  # Ctrl-C, as every darkcfg command says it (no traceback)
        print("interrupted", file=sys.stderr)
        return 130
    if args.strict:
        found = [dataclasses.replace(d, severity=ERROR) if d.severity == WARNING else d
                 for d in found]
    if args.format != "text":  # the machine formats keep stdout parseable; say it here too
        for d in found:
            if d.code in IO_CODES:
                print(f"darkcfg check: {d.message}", file=sys.stderr)
    report = render(args.format, found, len(files))
    try:
        if report:
            if sys.stdout is None:  # started with stdout closed (`>&-`): the report is lost
                raise OSError(errno.EBADF, "stdout is closed")
            sys.stdout.write(report + "\n")
            sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader left early; the exit status still counts
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:  # `> darkcfg.sarif` on a full disk: the report is not all there
        print(stdout_error(exc).format(), file=sys.stderr)
        if sys.stdout is not None:  # what is still buffered would fail again at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    if any(d.code in IO_CODES for d in found):
        return 2
    return 1 if any(d.severity == ERROR for d in found) else 0


def read_stdin() -> tuple[bytes | None, Diagnostic | None]:
    """The cfg `-` stands for: stdin's bytes, or the E901 of a stdin that cannot be read."""
    try:
        if sys.stdin is None:  # started with stdin closed (`<&-`)
            raise OSError(errno.EBADF, "stdin is closed")
        return sys.stdin.buffer.read(), None
    except OSError as exc:
        return None, Diagnostic("E901", f"cannot read {STDIN_NAME}: {exc.strerror or exc}",
                                STDIN_NAME, hint="pipe the cfg in (`darkcfg check - < x.cfg`) or "
                                "name the file")
