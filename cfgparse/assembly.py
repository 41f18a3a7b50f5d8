"""What the cfg reader (parser.py) and the YAML reader (yaml_io.py) share: typing one option
against the schema, the duplicate-key rule, layer numbering, and the file-level checks that end a
parse. Both readers import this module; it imports neither."""

from __future__ import annotations

from . import schema
from .blocks import Block, Option
from .errors import ERROR, WARNING, Collector, Diagnostic, did_you_mean

FORK_NAMES = {schema.AB: "AlexeyAB", schema.PJ: "pjreddie"}


class ParseResult(list):
    """The blocks, plus the warnings found while parsing (a list subclass, so `parse()` reads
    like returning a list of blocks)."""

    warnings: list[Diagnostic]
    path: str


def typed_option(key: str, raw: str, line: int, col: int, value_col: int, source: str,
                 span: int, table, name: str, path: str, diags: Collector,
                 flavor: str | None) -> Option | None:
    """The schema's part of an option (cfg or YAML): W201 for keys the chosen Darknet does not
    read, typing and range checks (E202-E204), W203 for values Darknet reads differently."""
    spec = None
    if table is not None:
        spec = table.read.get(key)
        if spec is None:
            spec = table.known.get(key)
            if spec is not None:  # read only by the fork the caller did not choose
                other = FORK_NAMES[spec.fork]
                message = (f"{FORK_NAMES[flavor]} Darknet does not read '{key}' in [{name}] "
                           f"(Unused field; only {other} does)")
                hint = "delete it, or parse for the other fork"
            else:
                if table.known is schema.SECTIONS["net"]:
                    message = f"unknown key '{key}' in [{name}] (Darknet ignores it)"
                else:
                    message = f"unknown key '{key}' in [{name}] (Darknet: Unused field)"
                hint = did_you_mean(key, table.known) or f"no Darknet reads '{key}' here; " \
                    "delete it"
            diags.add(Diagnostic("W201", message, path, line, col, WARNING, hint, source,
                                 len(key)))
    try:
        value, note = schema.convert(spec, key, raw)
    except schema.ValueProblem as exc:
        at, width = value_col, span
        if exc.length:
            at, width = _raw_columns(source, value_col, raw, exc.offset, exc.length) or (at, width)
        diags.add(Diagnostic(exc.code, str(exc), path, line, at, ERROR, exc.hint,
                             source, width))
        return None
    if note:
        diags.add(Diagnostic("W203", note, path, line, value_col, WARNING,
                             "write the value Darknet uses", source, span))
    return Option(key, raw, value, line, col, value_col, source)


def _raw_columns(source: str, value_col: int, raw: str, offset: int, length: int
                 ) -> tuple[int, int] | None:
    """(column, width) in `source` of raw[offset:offset + length], where `raw` is the value
    written from `value_col` on with its spaces and tabs removed; None when the source does not
    hold it that way (a quoted YAML value, a list in brackets)."""
    pos, seen, start = value_col - 1, 0, None
    while seen < offset + length:
        if pos >= len(source):
            return None
        ch = source[pos]
        if ch not in " \t":
            if ch != raw[seen]:
                return None
            if seen == offset:
                start = pos
            seen += 1
        pos += 1
    return (start + 1, pos - start) if start is not None else None


def duplicate_key(first: Option, again: Option, name: str, path: str) -> Diagnostic:
    """W202 for a key given twice in one section: the first value counts (Darknet's
    option_find); located at the second."""
    return Diagnostic(
        "W202", f"duplicate key '{again.key}' in [{name}]: Darknet uses the first value, "
        f"'{first.raw}' (line {first.line})", path, again.line, again.column, WARNING,
        "delete one of the two", again.source, len(again.key))


class LayerNumbering:
    """Darknet's layer indices: a leading [net] is no layer (-1), every other section is the
    next layer, from 0."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def index(self, blocks_so_far: int, canonical: str) -> int:
        if not blocks_so_far and canonical == "net":
            return -1
        self.count += 1
        return self.count - 1


def finish(blocks: list[Block], diags: Collector, path: str, strict_first: bool) -> ParseResult:
    """The file-level checks (E100 empty, E107 first not [net] or a later [net]); raise or
    return the result."""
    if not blocks and not diags.errors:
        diags.add(Diagnostic("E100", "empty cfg: no [section] found", path, 1, 1, ERROR,
                             "a cfg starts with a [net] section, then one section per layer"))
    elif blocks and strict_first and blocks[0].type != "net" and \
            blocks[0].type in schema.SECTIONS:  # an unknown first section has its E201/E106
        b = blocks[0]
        diags.add(Diagnostic("E107", f"the first section must be [net], not [{b.name}]", path,
                             b.line, b.column, ERROR, "add a [net] section with width, height, "
                             "channels and the training settings at the top", b.source,
                             len(b.name) + 2))
    if strict_first and blocks and blocks[0].type == "net":
        for b in blocks[1:]:
            if b.type == "net":  # Darknet: "Type not recognized", an empty layer
                diags.add(Diagnostic(
                    "E107", f"[{b.name}] may only be the first section; this one would be layer "
                    f"{b.index}", path, b.line, b.column, ERROR, f"delete it, or move its keys "
                    f"into the [{blocks[0].name}] at line {blocks[0].line}", b.source,
                    len(b.name) + 2))
    diags.raise_if_errors()
    result = ParseResult(blocks)
    result.warnings = diags.warnings
    result.path = path
    return result
