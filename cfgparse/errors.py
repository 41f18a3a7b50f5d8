"""Diagnostics: one format for every error and warning darkcfg reports.

    path:line:col: error[CODE]: message
       |
    12 | filters=abc
       |         ^^^
    help: how to fix it

Codes are stable (tests, CI scripts and the README table depend on them).
"""

from __future__ import annotations

import difflib
import errno
import functools
import os
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

ERROR = "error"
WARNING = "warning"

# Stable codes. Syntax: E1xx, schema/values: E2xx/W2xx, graph: E3xx/W3xx, resources: E4xx,
# training: E5xx, deployment targets (check --target): W6xx, I/O: E9xx.
CODES = {
    "E100": "empty file (outside the checker: a command-line usage error)",
    "E101": "missing ']' in section header",
    "E102": "missing '=' in option line",
    "E103": "option before any section",
    "E104": "binary or non-UTF-8 input",
    "E105": "empty value",
    "E106": "malformed section header",
    "E107": "first section is not [net], or a later one is",
    "E108": "malformed YAML architecture",
    "E109": "invisible or non-ASCII space character (Darknet does not remove it)",
    "E201": "unknown section type",
    "E202": "ill-typed value",
    "E203": "value out of range",
    "E204": "unknown value (activation, policy, ...)",
    "E205": "unknown key in an override (--set, presets)",
    "E206": "a section plugin failed to import",
    "W201": "unknown key (Darknet: Unused field)",
    "W202": "duplicate key",
    "W203": "value Darknet truncates or reinterprets",
    "W204": "unknown activation (Darknet falls back to relu)",
    "W205": "comment after a section header (Darknet: unknown section)",
    "W206": "section only the other Darknet fork knows",
    "E300": "layer cannot be built",
    "E301": "layer reference out of range",
    "E302": "incompatible input shapes",
    "E303": "non-positive output size",
    "E304": "detection head inconsistent with its anchors or input",
    "E305": "[net] training settings inconsistent",
    "W305": "[net] augmentation keys some Darknet builds refuse together (applied anyway)",
    "W306": "[net] training settings Darknet trains with, but not as written (the trainer's "
            "reading of check's E305)",
    "W301": "key read by no builder",
    "W302": "class count disagrees between heads or with [net]",
    "W303": "shortcut resamples a layer of another size (pjreddie only; AlexeyAB aborts)",
    "W304": "anchors, num and mask disagree (Darknet pads or reads past the anchors)",
    "W310": "a detection head's loss reads this key but does not honour it",
    "E401": "estimated memory over the limit (at run time: out of memory)",
    "W601": "section the deployment target (--target) cannot load or run",
    "W602": "activation the deployment target does not have",
    "W603": "key value the deployment target refuses",
    "W604": "key the deployment target reads past (loads, computes without it)",
    "E500": "training stopped: the loss or the network is not finite (diverged)",
    "E501": "a data loader process died under the command (killed: often the out-of-memory "
            "killer) or could not pass a batch over (a full /dev/shm)",
    "E901": "cannot read file",
    "W901": "an image whose header reads but whose pixels do not decode: detect leaves it out, "
            "training skips it, validation scores it as a blank image (Darknet goes on too); a "
            "video packet that does not decode: detect skips it and goes on",
    "E902": "weights that do not fit the network (a .weights file's size; a state_dict that "
            "leaves tensors unfilled without --partial)",
    "E903": "bad detection label file (malformed line, class out of range, bad box)",
    "W903": "label box at or past the image edge or of no size (clipped or left out, as Darknet)",
    "W904": "data set that may not hold what it says (images without a label file, a stated "
            "image size that is not the image's, an image listed twice)",
    "E904": "export or emit failed (the network cannot be written in that form)",
    "E905": "an optional package is missing (install the extra the hint names)",
}


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a file: a stable code (E... error, W... warning), the message, where
    (path, 1-based line and column; 0 for the whole file), a `help:` hint and the source line for
    the caret. `str()` is the located diagnostic, `path:line:col: error[CODE]: message`, the
    source line, a caret and `help:`, as the command line prints it."""

    code: str
    message: str
    path: str = "<string>"
    line: int = 0
    column: int = 0
    severity: str = ERROR
    hint: str = ""
    source: str = ""  # the source line, for the caret display
    span: int = 1  # caret width

    def __post_init__(self) -> None:
        # a message or hint quotes what it is about (a name, a line): a 50 MB line must not
        # make a 50 MB message in every output format
        for name in ("message", "hint"):
            text = getattr(self, name)
            if len(text) > _MAX_TEXT:
                object.__setattr__(self, name, _elide(text, _MAX_TEXT))

    def to_dict(self) -> dict:
        """The diagnostic as `darkcfg check --format json` writes it (file, line, column,
        severity, code, message, hint)."""
        return {
            "file": self.path,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }

    def format(self) -> str:
        """`path:line:col: error[CODE]: message`, the source line with a caret under the span,
        `help: hint`; a finding about a whole file or the command line has no line:col."""
        path = printable(self.path)
        where = f"{path}:{self.line}:{self.column}" if self.line else path
        # a message or hint quoting a file's text (a VOC id with a BOM, a name with an escape)
        # shows what does not print escaped too; its own line breaks stay
        message, hint = ("\n".join(map(printable, text.split("\n")))
                         for text in (self.message, self.hint))
        lines = [f"{where}: {self.severity}[{self.code}]: {message}"]
        if self.line and self.source:
            gutter = str(self.line)
            pad = " " * len(gutter)
            # (a control character at the end is shown: it may be what the finding is about)
            shown, start, before, after = _window(self.source.rstrip(" \t\r\n"), self.column)
            # a character that does not print (a NUL byte, an escape, a line break) is shown
            # escaped as in a path, so it cannot hide, clear or split the line
            cells = [c if c.isprintable() or c == "\t" else printable(c) for c in shown]
            lines.append(f"{pad} |")
            lines.append(f"{gutter} | {before}{''.join(cells)}{after}")
            # keep the source's tabs in the indent, so the caret lands under the same character
            col = max(self.column - 1 - start, 0)
            indent = " " * len(before) + "".join(c if c == "\t" else " " * _columns(c)
                                                 for c in cells[:col])
            span = min(max(self.span, 1), max(len(shown) - col, 1))
            width = sum(_columns(c) for c in cells[col:col + span]) or span
            lines.append(f"{pad} | {indent}{'^' * width}")
        if hint:
            lines.append(f"help: {hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


_MAX_TEXT = 600  # characters of a message or hint


STDOUT = "<stdout>"  # the path of a diagnostic about writing to standard output


def stdout_error(exc: OSError) -> Diagnostic:
    """E901 for a write to stdout that failed (`> /dev/full`, a full disk under a redirect):
    every command line says it the same way, exit status 2."""
    hint = "free some space where stdout goes, or redirect it elsewhere" \
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "redirect stdout elsewhere"
    return Diagnostic("E901", f"cannot write the output to stdout: {exc.strerror or exc}",
                      STDOUT, hint=hint)


def tolerant_output() -> None:
    """Let stdout and stderr escape what their encoding cannot hold (`\\xe9`, `\\udce9`), as
    Python's stderr already does: a non-ASCII file name on an ASCII or cp1252 stdout (a
    redirect on Windows, PYTHONIOENCODING=ascii), or a name of bytes that are not UTF-8 (kept
    as surrogates), must not end a command in a UnicodeEncodeError traceback, exit 1. Every
    command line calls it first."""
    _closed_streams_to_devnull()
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream already closed or detached
                pass


def _closed_streams_to_devnull() -> None:
    """A command started with stdin, stdout or stderr closed (`2>&-`, a daemon or cron job)
    gets /dev/null on that descriptor: else the next file opened takes its number, and what
    torch, FFmpeg or a loader writes to fd 2 lands in a checkpoint or detections.json. A closed
    stderr reads as `2>/dev/null` (training stopped at its progress bar, exit 1); sys.stdout
    stays None, so that a command whose output is lost can still say so (check's E901)."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:  # closed
            pass
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if name != "stdout" and getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
    if sys.stderr is None:  # no descriptor 2 at all (pythonw): messages go nowhere
        sys.stderr = open(os.devnull, "w")


def printable(path: str) -> str:
    """A path with its control characters (and other characters that do not print) escaped as
    Python writes them (`new\\nline.jpg`, `tab\\there.jpg`, `nul\\x00.jpg`), so a file name
    holding a line break cannot split the `path:line:col: error` line in two, nor a result line
    of `detect` or `predict` (docs/detection.md)."""
    return path if path.isprintable() else "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in path)


def plot_text(text: str) -> str:
    """A name as matplotlib draws it literally: printable (a file name of bytes that are not
    UTF-8, kept as surrogates, stopped the run at its chart.png with a TypeError) and with its
    `$` escaped (a pair is mathtext: `a$\\frac$b.cfg` was a ValueError)."""
    return printable(text).replace("$", r"\$")


def _columns(cell: str) -> int:
    """Terminal columns of a shown character: 2 for a wide one (CJK, most emoji), 0 for a
    combining mark, else its length (an escape such as `\\x00` is several)."""
    if len(cell) != 1:
        return len(cell)
    if unicodedata.combining(cell):
        return 0
    return 2 if unicodedata.east_asian_width(cell) in "WF" else 1


_MAX_SHOWN = 160  # characters of a source line shown under a diagnostic
_ELLIPSIS = "..."


def _elide(text: str, limit: int) -> str:
    """`text` cut in the middle to about `limit` characters, saying how long it was."""
    keep = limit // 2
    return f"{text[:keep]}...({len(text)} characters)...{text[-keep // 2:]}"


def _window(source: str, column: int) -> tuple[str, int, str, str]:
    """(the part of a long source line shown, its start, '...' before, '...' after): the
    column's neighbourhood, so a caret stays under its character and a long line (a 50 MB
    anchors list) is not printed whole."""
    if len(source) <= _MAX_SHOWN:
        return source, 0, "", ""
    start = max(min(column - 1 - _MAX_SHOWN // 4, len(source) - _MAX_SHOWN), 0)
    end = start + _MAX_SHOWN
    return (source[start:end], start, _ELLIPSIS if start else "",
            _ELLIPSIS if end < len(source) else "")


class CfgError(Exception):
    """Bad input. Carries one or more located diagnostics; never a traceback for users."""

    def __init__(self, diagnostics: Diagnostic | Iterable[Diagnostic]):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__("\n".join(d.format() for d in self.errors))

    @property
    def errors(self) -> list[Diagnostic]:
        """The error diagnostics (every diagnostic if none is an error)."""
        return [d for d in self.diagnostics if d.severity == ERROR] or self.diagnostics

    @property
    def code(self) -> str:
        """The first error's code, e.g. 'E204' ('' if there is no diagnostic)."""
        return self.first.code if self.diagnostics else ""

    @property
    def first(self) -> Diagnostic:
        """The first error: its path, line, column, message and hint."""
        return self.errors[0]


@dataclass
class Collector:
    """Accumulates diagnostics so one run can report several problems."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, diag: Diagnostic) -> None:
        self.items.append(diag)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == WARNING]

    def raise_if_errors(self) -> None:
        if self.errors:  # warnings travel along, so `check` can show everything at once
            raise CfgError(sorted(self.items, key=lambda d: (d.line, d.column)))


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A 'did you mean' hint from difflib, or '' when nothing is close. Cached: a cfg repeats
    its unknown keys section after section, and difflib costs a fraction of a millisecond."""
    return _did_you_mean(word, tuple(candidates))


@functools.lru_cache(maxsize=4096)
def _did_you_mean(word: str, candidates: tuple[str, ...]) -> str:
    if len(word) > 64:  # no name is that long, and difflib is quadratic in it
        return ""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    return f"did you mean '{matches[0]}'?" if matches else ""
