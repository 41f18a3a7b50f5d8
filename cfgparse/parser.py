"""Text -> [Block]: the lark LALR grammar in grammar.lark, then one pass over its tokens.

Darknet's rules (src/parser.c read_cfg, src/option_list.c read_option) are kept: all whitespace
inside a line is removed, the first of
duplicate keys wins, comments start a line with '#' or ';', values keep inline '#' text. Beyond
Darknet we strip a UTF-8 BOM (which crashes Darknet), read CR-only line ends as line ends, and
report problems as located diagnostics (several per run) instead of aborting.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import MappingProxyType

from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters
from lark.lexer import Lexer

from . import schema
from .assembly import (
    FORK_NAMES,
    LayerNumbering,
    ParseResult,
    duplicate_key,
    finish,
    typed_option,
)
from .blocks import Block, Option, make_block
from .characters import odd_space_diagnostic, odd_spaces
from .errors import ERROR, WARNING, CfgError, Collector, Diagnostic, did_you_mean, printable

_GRAMMAR = Path(__file__).with_name("grammar.lark")
_lark: Lark | None = None

# C0 controls other than tab/LF/CR (and DEL): never in a text cfg, always in binary files.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")
_YAML_SUFFIXES = (".yaml", ".yml")


def parse(source: str | os.PathLike | bytes, *, path: str | None = None,
          strict_first: bool = True, flavor: str | None = None) -> ParseResult:
    """Parse a cfg (or YAML) file path, or cfg text, into blocks.

    A str is cfg text when it has a line break or looks like cfg content ('[', '#', ';' first,
    or an '=' and no such file); otherwise it is a path. `flavor` ('alexeyab' or 'pjreddie')
    additionally warns (W201/W206) for keys and sections only the other Darknet fork reads.
    Raises CfgError (with every error found) on bad input; warnings are on `.warnings`.
    """
    text, path = read_source(source, path)
    if path.endswith(_YAML_SUFFIXES):
        from .yaml_io import blocks_from_yaml  # only YAML input needs pyyaml

        return blocks_from_yaml(text, path, strict_first=strict_first, flavor=flavor)
    return parse_text(text, path, strict_first=strict_first, flavor=flavor)


def looks_like_text(source: str) -> bool:
    """True when a str passed to parse() is cfg text rather than a path."""
    if "\n" in source or "\r" in source:  # (unless a file has that name: `new\nline.cfg`)
        return not os.path.isfile(source)
    stripped = source.strip()
    if not stripped or stripped[0] in "[#;":
        return True  # '' and blanks: an empty cfg (E100), not the current directory
    if stripped.lower().endswith((".cfg", ".yaml", ".yml")):
        return False  # a missing file, even in a folder named like `lr=0.1/` (sweeps): E901
    return "=" in stripped and not os.path.exists(source)


def read_source(source: str | os.PathLike | bytes, path: str | None) -> tuple[str, str]:
    """(text, path) for parse(): decode bytes, read a path, or take cfg text as it is."""
    if isinstance(source, (bytes, bytearray)):
        name = path or "<bytes>"
        return decode(bytes(source), name), name
    if isinstance(source, str) and looks_like_text(source):
        return source, path or "<string>"
    name = os.fspath(source)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, IsADirectoryError):
            reason = "it is a directory"
        # the name escaped, as in the path: a line break or an escape sequence in a file name
        # must not split the message or reach the terminal
        raise CfgError(Diagnostic("E901", f"cannot read '{printable(name)}': {reason}", name,
                                  hint="check the path and its permissions")) from None
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise CfgError(Diagnostic("E901", f"cannot read {name!r}: {exc}", "<path>",
                                  hint="pass the path of a .cfg or .yaml file")) from None
    return decode(data, name), path or name


def decode(data: bytes, path: str) -> str:
    """UTF-8 text of a file, or E104 for binary, UTF-16 or otherwise non-UTF-8 data."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise CfgError(Diagnostic("E104", "this file is UTF-16 text, not UTF-8", path, 1, 1,
                                  hint="save the file as UTF-8 (Darknet reads bytes, not UTF-16)"))
    if b"\x00" in data:
        pos = data.index(b"\x00")
        line, col = _line_col(data, pos, b"\n")
        raise CfgError(Diagnostic("E104", "this looks like a binary file, not a cfg (NUL byte)",
                                  path, line, col,
                                  hint="pass a Darknet .cfg text file (is this a .weights file?)"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        col = len(data[start:exc.start].decode("utf-8", "replace")) + 1  # in characters
        end = data.find(b"\n", exc.start)
        source = data[start:end if end >= 0 else len(data)]
        # show the line when it is text with a stray byte (say Latin-1), not a binary blob
        shown = source.decode("utf-8", "replace") if len(source) <= 200 else ""
        raise CfgError(Diagnostic("E104", f"invalid UTF-8 byte 0x{data[exc.start]:02x}", path,
                                  line, col, ERROR, "save the file as UTF-8 text",
                                  shown.translate(_VISIBLE), 1)) from None


def _line_col(data, pos: int, newline) -> tuple[int, int]:
    return data.count(newline, 0, pos) + 1, pos - (data.rfind(newline, 0, pos) + 1) + 1


class _Passthrough(Transformer):
    """Inline LALR callbacks that build no tree: the result is [preamble BODY?, [HEADER, BODY?],
    ...]."""

    def start(self, children):
        if not children:
            return []
        if isinstance(children[-1], list):  # the sections
            return children[:-1] + children[-1]
        return children  # a preamble only

    def sections(self, children):
        if len(children) == 1:
            return children
        children[0].append(children[1])
        return children[0]

    def section(self, tokens):
        return tokens

    def preamble(self, tokens):
        return tokens[0]  # a bare BODY token: options before any header


_token_new = str.__new__


def _possessive(regexp: str) -> str:
    """A terminal's trailing `(...)*` made possessive (`*+`, Python 3.11+). The same tokens: a
    terminal is its longest match and nothing follows the group inside it. Python's `re` keeps a
    backtracking record per iteration of a greedy group, about 400 bytes per line of a BODY:
    12 million comment lines took 7.5 GB; possessive, it keeps none (and is faster)."""
    if sys.version_info >= (3, 11) and regexp.endswith(")*"):
        return regexp + "+"
    return regexp


class _TerminalLexer(Lexer):
    """Lark's lexer contract, for the grammar's own terminals, in one re.finditer pass.

    Same tokens as lark's basic lexer (tests/test_parser.py compares them); it only skips the
    generic per-token bookkeeping, about a quarter of lark's time on these few, long tokens.
    """

    __future_interface__ = 2

    def __init__(self, lexer_conf):
        terminals = sorted(lexer_conf.terminals, key=lambda t: -t.priority)
        self.pattern = re.compile("|".join(f"(?P<{t.name}>{_possessive(t.pattern.to_regexp())})"
                                           for t in terminals))
        self.ignore = frozenset(lexer_conf.ignore)

    def lex(self, lexer_state, parser_state):
        chunk = lexer_state.text
        text, end = chunk.text, chunk.end
        ignore = self.ignore
        line, line_start, pos = 1, 0, chunk.start
        for match in self.pattern.finditer(text, pos, end):
            start = match.start()
            if start != pos:  # cannot happen with a total grammar; lark would raise too
                raise UnexpectedCharacters(text, pos, line, pos - line_start + 1)
            pos = match.end()
            kind = match.lastgroup
            if kind in ignore:
                continue
            newlines = text.count("\n", line_start, start)
            if newlines:
                line += newlines
                line_start = text.rfind("\n", 0, start) + 1
            value = match.group()
            token = _token_new(Token, value)
            token.type, token.value, token.start_pos = kind, value, start
            token.line, token.column = line, start - line_start + 1
            token.end_line = token.end_column = token.end_pos = None
            yield token
        if pos != end:
            raise UnexpectedCharacters(text, pos, line, pos - line_start + 1)


def _parser() -> Lark:
    global _lark
    if _lark is None:
        _lark = Lark(_GRAMMAR.read_text(encoding="utf-8"), parser="lalr",
                     lexer=_TerminalLexer, transformer=_Passthrough(), maybe_placeholders=False)
    return _lark


def parse_text(text: str, path: str = "<string>", *, strict_first: bool = True,
               flavor: str | None = None) -> ParseResult:
    """Parse cfg text. Raises CfgError with every error found; warnings are on `.warnings`."""
    if text[:1] == "\ufeff":
        text = text[1:]  # a BOM segfaults Darknet; we simply drop it
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    bad = _CONTROL.search(text)
    if bad:
        line, col = _line_col(text, bad.start(), "\n")
        source = text.split("\n")[line - 1]
        raise CfgError(Diagnostic(
            "E104", f"control character U+{ord(bad.group()):04X}: binary or garbage input", path,
            line, col, ERROR, "a cfg is plain text: '[section]' lines and key=value lines",
            source.translate(_VISIBLE), 1))
    tables = schema.tables(flavor)
    diags = Collector()
    if not text.isascii():
        text = _odd_spaces(text, path, diags)
    try:
        items = _parser().parse(text)
    except LarkError as exc:  # the grammar is total; this is a safety net, not a code path
        line, col = getattr(exc, "line", 1), getattr(exc, "column", 1)
        raise CfgError(Diagnostic("E106", f"cannot parse: {exc}".splitlines()[0], path, line,
                                  col)) from None
    fast_ok = text.isascii()  # the fast path's str.isdigit() is ASCII-only only then
    blocks: list[Block] = []
    numbering = LayerNumbering()
    for item in items:
        if isinstance(item, Token):
            _preamble(item, text, path, diags)
            continue
        header = item[0]
        name, canonical, table, source = _header(header, text, path, diags, tables, flavor)
        options = _options(item[1], text, path, diags, table, name, flavor, fast_ok) \
            if len(item) > 1 else {}
        blocks.append(make_block(canonical, name, MappingProxyType(options), header.line,
                                 header.column, path, source,
                                 numbering.index(len(blocks), canonical)))
    return finish(blocks, diags, path, strict_first)


_VISIBLE = {c: 0x2400 + c for c in range(0x20)}  # control pictures, so the caret line shows them
_VISIBLE[0x7F] = 0x2421
del _VISIBLE[0x09]


def _odd_spaces(text: str, path: str, diags: Collector) -> str:
    """E109 at the first invisible or non-ASCII space of each line outside comments (the part
    of a line before an inline '#' counts); returns the text with them made ASCII spaces, so
    the rest of the line is read as its author meant it and nothing else is reported twice."""
    lines = text.split("\n")
    changed = False
    for i, line in enumerate(lines):
        if line.isascii() or line.lstrip(" \t")[:1] in ("#", ";"):
            continue
        cut = line.find("#")
        part = line if cut < 0 else line[:cut]
        odd = odd_spaces(part)
        if not odd:
            continue
        chars = list(line)
        for j in odd:
            chars[j] = " "
        rest = "".join(chars).strip(" \t")
        where = "a blank line" if not rest else \
            "a section header" if rest[:1] == "[" else "an option line"
        marks = set(odd)
        shown = "".join("\u2423" if j in marks else c for j, c in enumerate(line))  # visible
        diags.add(odd_space_diagnostic(part, odd, where, path, i + 1, odd[0] + 1,
                                       shown.translate(_VISIBLE)))
        lines[i] = "".join(chars)
        changed = True
    return "\n".join(lines) if changed else text


_YAML_SECTION = re.compile(r"-\s+[\w.-]+\s*:\s*$")  # `- net:`, a YAML architecture's first line


def _preamble(body: Token, text: str, path: str, diags: Collector) -> None:
    for line, col, stripped, source in _body_lines(body, text):
        if _YAML_SECTION.match(stripped.rstrip()) and not path.endswith(_YAML_SUFFIXES):
            # YAML given as cfg text (or a YAML file named .cfg): one error saying so, not one
            # "option before any section" per line
            diags.add(Diagnostic("E103", "this is a YAML architecture, read as cfg text", path,
                                 line, col, ERROR, "name the file .yaml or .yml (it is then "
                                 "read as YAML), or pass YAML text to "
                                 "cfgparse.blocks_from_yaml(text)", source,
                                 len(stripped.rstrip())))
            return
        diags.add(Diagnostic("E103", "option before any section", path, line, col, ERROR,
                             "put a [net] (or other [section]) header above this line",
                             source, len(stripped.rstrip())))


def _body_lines(body: Token, text: str):
    """(line, column, text, source) of each non-comment line of a BODY token."""
    for offset, source in enumerate(_full_lines(body, text)):
        stripped = source.lstrip()
        if stripped and stripped[0] not in "#;":
            yield body.line + offset, len(source) - len(stripped) + 1, stripped, source


def _full_lines(tok: Token, text: str) -> list[str]:
    """The token's lines, the first one with the indentation the lexer skipped put back."""
    lines = tok.split("\n")
    if tok.column > 1:
        lines[0] = text[tok.start_pos - tok.column + 1:tok.start_pos] + lines[0]
    return lines


_new_option = tuple.__new__  # Option(...) without the NamedTuple's Python-level __new__
_SLOW = object()
_SKIP = object()  # memo entry of a blank or comment line
_NO_FAST: dict = {}
_MEMO_LIMIT = 50_000  # distinct lines cached per section type before the cache starts over
_FAST_INT, _FAST_FLOAT, _FAST_CHOICE, _FAST_TEXT, _FAST_INTS, _FAST_FLOATS = (
    schema.FAST_INT, schema.FAST_FLOAT, schema.FAST_CHOICE, schema.FAST_TEXT, schema.FAST_INTS,
    schema.FAST_FLOATS)


def _options(body: Token, text: str, path: str, diags: Collector, table, name: str,
             flavor: str | None, fast_ok: bool) -> dict[str, Option]:
    """The options of one section body, first of duplicates kept (Darknet's option_find)."""
    options: dict[str, Option] = {}
    if table is not None and fast_ok:
        fast, memo = table.fast, table.memo
        if len(memo) > _MEMO_LIMIT:
            memo.clear()
    else:  # unknown section, or non-ASCII text (str.isdigit() would take other digits)
        fast, memo = _NO_FAST, {}
    lineno = body.line - 1
    # The hot loop of the parser. A line seen before in this section type comes from the memo
    # (its key, value and columns do not depend on where it is). A plain `key=value` line of a
    # known key is typed right here with str methods and builtins; anything else (spaces in the
    # key, comments in values, errors, unknown keys) takes _option(), which has every diagnostic.
    for source in _full_lines(body, text):
        lineno += 1
        hit = memo.get(source)
        if hit is not None:
            if hit is _SKIP:
                continue
            key, raw, value, col, value_col = hit
            opt = _new_option(Option, (key, raw, value, lineno, col, value_col, source, ""))
        else:
            stripped = source.lstrip()
            if not stripped or stripped[0] in "#;":
                memo[source] = _SKIP
                continue
            key, _, value_text = stripped.partition("=")
            entry = fast.get(key)
            value = _SLOW
            if entry is not None:
                raw = value_text.strip()
                kind, choices, low = entry
                if kind == _FAST_INT:
                    # ASCII, no sign, no '_' (Python's int() takes those, and '²' is a
                    # digit to isdigit()); long values take the slow path's range check
                    if raw.isdigit() and raw.isascii() and len(raw) < 10:
                        value = int(raw)
                        if low is not None and value < low:
                            value = _SLOW
                elif kind == _FAST_CHOICE:
                    if raw in choices:
                        value = raw
                elif kind == _FAST_FLOAT:
                    if "_" not in raw:
                        try:
                            value = float(raw)
                        except ValueError:
                            pass
                        else:  # inf/nan and out-of-range values get their messages below
                            if value - value != 0.0 or (low is not None and value < low):
                                value = _SLOW
                elif kind == _FAST_TEXT:
                    if raw and " " not in raw and "\t" not in raw:
                        value = raw
                elif " " not in raw and "\t" not in raw and "_" not in raw:  # number lists
                    try:
                        if kind == _FAST_INTS:
                            value = [int(p) for p in raw.split(",")]
                            if any(abs(v) > 999_999_999 for v in value):
                                value = _SLOW
                        else:
                            value = [float(p) for p in raw.split(",")]
                            if any(v - v != 0.0 for v in value):
                                value = _SLOW
                    except ValueError:
                        value = _SLOW
            if value is _SLOW:
                opt = _option(stripped, lineno, len(source) - len(stripped) + 1, source, table,
                              name, path, diags, flavor)
                if opt is None:
                    continue
                key = opt.key
            else:
                col = len(source) - len(stripped) + 1
                skipped = 0 if value_text is raw else len(value_text) - len(value_text.lstrip())
                value_col = col + len(key) + 1 + skipped
                if kind < _FAST_INTS:  # immutable values only: lists are not shared
                    memo[source] = (key, raw, value, col, value_col)
                opt = _new_option(Option, (key, raw, value, lineno, col, value_col, source, ""))
        first = options.setdefault(key, opt)
        if first is not opt:
            diags.add(duplicate_key(first, opt, name, path))
    return options


def _header(tok: Token, text: str, path: str, diags: Collector, tables: dict,
            flavor: str | None):
    """(name as written, canonical name, schema table or None, source line) of a header."""
    if tok.column == 1:  # the common '[name]' line: one dict lookup
        written = tok.rstrip()
        canonical = _CANONICAL.get(written[1:-1]) if written[-1] == "]" else None
        if canonical is not None:
            table = tables[canonical]
            if flavor is None or not table.fork or table.fork == flavor:
                return written[1:-1], canonical, table, written
    source = _full_lines(tok, text)[0]
    line, col0 = tok.line, tok.column  # col0: the column of '['
    written = tok.rstrip()
    close = written.find("]")
    inner = written[1:] if close < 0 else written[1:close]
    name = "".join(inner.split())  # Darknet removes every space, also inside the brackets
    name_col = col0 + 1 + len(inner) - len(inner.lstrip())
    if close < 0:
        diags.add(Diagnostic("E101", f"missing ']' in section header '{written}'", path, line,
                             col0 + len(written), ERROR, f"write '[{name}]'", source, 1))
    else:
        rest = written[close + 1:]
        extra = rest.strip()
        extra_col = col0 + close + 1 + len(rest) - len(rest.lstrip())
        if extra[:1] in ("#", ";"):
            diags.add(Diagnostic("W205", "comment after a section header", path, line,
                                 extra_col, WARNING, "Darknet takes the whole line as the section "
                                 f"name and does not know '{''.join(written.split())}'; move "
                                 "the comment to its own line", source, len(extra)))
        elif extra:
            diags.add(Diagnostic("E106", f"unexpected text '{extra}' after section header",
                                 path, line, extra_col, ERROR,
                                 "a header line holds only '[name]'", source, len(extra)))
    if not name:
        diags.add(Diagnostic("E106", "empty section name", path, line, col0, ERROR,
                             "write the layer type between the brackets, e.g. [convolutional]",
                             source, len(written)))
        return name, name, None, source
    canonical = schema.canonical_section(name)
    if canonical is None:
        hint = did_you_mean(name, schema.section_names()) or (
            "see the README for the sections darkcfg knows")
        diags.add(Diagnostic("E201", f"unknown section type [{name}]", path, line, name_col,
                             ERROR, hint, source, len(name)))
        return name, name, None, source
    table = tables[canonical]
    if flavor is not None and table.fork and table.fork != flavor:
        diags.add(Diagnostic("W206", f"[{name}] is {FORK_NAMES[table.fork]}-only; "
                             f"{FORK_NAMES[flavor]} Darknet does not know it", path, line,
                             name_col, WARNING, "Darknet prints 'Type not recognized' and makes "
                             "an empty layer", source, len(name)))
    return name, canonical, table, source


_CANONICAL = schema._CANONICAL  # the same dict: sections added by plugins appear here


def _option(text: str, line: int, col: int, source: str, table, name: str, path: str,
            diags: Collector, flavor: str | None) -> Option | None:
    """One option line with all of Darknet's rules and all of our diagnostics."""
    eq = text.find("=")
    if eq < 0:
        written = text.rstrip()
        parts = written.split(None, 1)
        if len(parts) == 2:  # 'filters 32': point at the gap where '=' belongs
            gap = col + len(parts[0])
            hint = f"write '{parts[0]}={''.join(parts[1].split())}'"
        else:
            gap, hint = col + len(written), f"write '{written}=<value>'"
        diags.add(Diagnostic("E102", f"missing '=' in '{written}'", path, line, gap, ERROR,
                             hint, source, 1))
        return None
    key = "".join(text[:eq].split())  # Darknet drops every space, also inside key and value
    value_text = text[eq + 1:]
    raw = "".join(value_text.split())
    value_col = col + eq + 1 + len(value_text) - len(value_text.lstrip())
    if not key:
        diags.add(Diagnostic("E102", "option without a key", path, line, col, ERROR,
                             "write 'key=value'", source, 1))
        return None
    if not raw:  # point just after the '='
        diags.add(Diagnostic("E105", f"empty value for '{key}'", path, line, col + eq + 1,
                             ERROR, f"give '{key}' a value or delete the line (Darknet rejects it)",
                             source, 1))
        return None
    return typed_option(key, raw, line, col, value_col, source, len(value_text.strip()), table,
                        name, path, diags, flavor)
