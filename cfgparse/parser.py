"""Text -> [Block]: the lark LALR grammar in grammar.lark plus an inline transformer.

Darknet's rules (SEMANTICS.md §1) are kept: all whitespace inside a line is removed, the first of
duplicate keys wins, comments start a line with '#' or ';'. Beyond Darknet we strip a UTF-8 BOM
(which crashes Darknet) and report problems as located diagnostics instead of aborting.
"""

from __future__ import annotations

import os
from pathlib import Path

from lark import Lark, Token, Transformer

from . import schema
from .blocks import Block, Option
from .errors import ERROR, WARNING, CfgError, Collector, Diagnostic, did_you_mean

_GRAMMAR = Path(__file__).with_name("grammar.lark")
_parser: Lark | None = None


class ParseResult(list):
    """The blocks, plus the warnings found while parsing (a list subclass, so `parse()` reads
    like returning a list of blocks)."""

    warnings: list[Diagnostic]
    path: str


def parse(source: str | os.PathLike | bytes, *, path: str | None = None,
          strict_first: bool = True) -> ParseResult:
    """Parse a cfg (or YAML) file path, or cfg text, into blocks.

    Raises CfgError (with every error found) on bad input; warnings are on `.warnings`.
    """
    text, path = read_source(source, path)
    if path.endswith((".yaml", ".yml")):
        from .writer import blocks_from_yaml

        return blocks_from_yaml(text, path)
    return parse_text(text, path, strict_first=strict_first)


def read_source(source: str | os.PathLike | bytes, path: str | None) -> tuple[str, str]:
    if isinstance(source, bytes):
        return decode(source, path or "<bytes>"), path or "<bytes>"
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and "\n" not in source and not source.lstrip().startswith("[")
        and source.strip() != ""
    ):
        p = Path(source)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise CfgError(Diagnostic("E901", f"cannot read '{p}': {exc.strerror or exc}",
                                      str(p), hint="check the path and its permissions")) from None
        return decode(data, str(p)), path or str(p)
    return source, path or "<string>"


def decode(data: bytes, path: str) -> str:
    if b"\x00" in data[:4096]:
        raise CfgError(Diagnostic("E104", "this looks like a binary file, not a cfg", path, 1, 1,
                                  hint="pass a Darknet .cfg text file (is this a .weights file?)"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CfgError(Diagnostic("E104", f"invalid UTF-8 byte 0x{data[exc.start]:02x}", path,
                                  line, col, hint="save the file as UTF-8 text")) from None


def parse_text(text: str, path: str = "<string>", *, strict_first: bool = True) -> ParseResult:
    global _parser
    if text.startswith("\ufeff"):
        text = text[1:]  # a BOM segfaults Darknet; we simply drop it
    diags = Collector()
    if _parser is None:
        _parser = Lark(_GRAMMAR.read_text(), parser="lalr", lexer="basic",
                       transformer=_ToBlocks(), maybe_placeholders=False)
    _ToBlocks.context = (path, diags)
    blocks: list[Block] = _parser.parse(text)
    if not blocks and not diags.errors:
        diags.add(Diagnostic("E100", "empty cfg: no [section] found", path, 1, 1,
                             hint="a cfg starts with a [net] section, then one section per layer"))
    elif blocks and strict_first and blocks[0].type != "net":
        b = blocks[0]
        diags.add(Diagnostic("E107", f"the first section must be [net], not [{b.name}]", path,
                             b.line, b.column, ERROR, "add a [net] section with width, height, "
                             "channels and the training settings at the top", b.source,
                             len(b.name) + 2))
    diags.raise_if_errors()
    result = ParseResult(blocks)
    result.warnings = diags.warnings
    result.path = path
    return result


class _ToBlocks(Transformer):
    """Inline LALR callbacks: build Blocks straight from tokens, no tree."""

    context: tuple[str, Collector] = ("<string>", Collector())

    def start(self, children):
        sections = [c for c in children if c is not None]
        layer = 0
        for i, b in enumerate(sections):
            if i > 0 or b.type != "net":
                object.__setattr__(b, "index", layer)
                layer += 1
        return sections

    def preamble(self, tokens: list[Token]):
        path, diags = self.context
        for line, col, text, source in _body_lines(tokens[0]):
            diags.add(Diagnostic("E103", "option before any section", path, line, col, ERROR,
                                 "put a [net] (or other [section]) header above this line",
                                 source, len(text.rstrip())))
        return None

    def section(self, tokens: list[Token]) -> Block:
        path, diags = self.context
        header = tokens[0]
        name, canonical = _header(header, path, diags)
        specs = schema.SECTIONS.get(canonical)
        options: dict[str, Option] = {}
        if len(tokens) > 1:
            body = tokens[1]
            first_line = body.line
            for offset, source in enumerate(body.value.split("\n")):
                # the hot loop of the parser: plain str methods, one Option per line
                text = source.lstrip()
                if not text or text[0] in "#;":
                    continue
                col = body.column if offset == 0 else len(source) - len(text) + 1
                key, eq, value_text = text.partition("=")
                raw = value_text.strip()
                spec = specs.get(key) if specs is not None and eq else None
                fast = spec.fast if spec is not None else None
                opt = None
                if fast is not None and raw and " " not in raw and "\t" not in raw:
                    try:
                        value = fast(raw)
                        if spec.min is None or value >= spec.min:
                            opt = Option(key, raw, value, first_line + offset, col,
                                         col + len(text) - len(value_text.lstrip()), source)
                    except ValueError:
                        pass
                if opt is None:  # anything unusual: the full path with its diagnostics
                    opt = _option(text, first_line + offset, col, source, specs, name, path,
                                  diags)
                    if opt is None:
                        continue
                first = options.get(opt.key)
                if first is None:
                    options[opt.key] = opt
                else:
                    diags.add(Diagnostic(
                        "W202", f"duplicate key '{opt.key}' in [{name}]", path, opt.line,
                        opt.column, WARNING,
                        f"Darknet uses the first value '{first.raw}' (line {first.line}); "
                        "delete one of them", opt.source, len(opt.key)))
        return Block(canonical, name, options, header.line, header.column, path,
                     header.value.rstrip())


def _body_lines(tok: Token):
    """(line, column, text, source) of each option line in a BODY token; comments skipped."""
    for offset, source in enumerate(tok.value.split("\n")):
        text = source.lstrip()
        if text and text[0] not in "#;":
            col = tok.column if offset == 0 else len(source) - len(text) + 1
            yield tok.line + offset, col, text, source


def _header(tok: Token, path: str, diags: Collector) -> tuple[str, str]:
    text = tok.value.rstrip()
    source = text
    close = text.find("]")
    if close < 0:
        diags.add(Diagnostic("E101", f"missing ']' in section header '{text}'", path, tok.line,
                             tok.column + len(text), ERROR,
                             f"write '{text}]'", source, 1))
        name = "".join(text[1:].split())
    else:
        name = "".join(text[1:close].split())
        rest = text[close + 1:].strip()
        if rest and rest[0] not in "#;":
            diags.add(Diagnostic("E106", f"unexpected text '{rest}' after section header", path,
                                 tok.line, tok.column + close + 1 + text[close + 1:].find(rest[0]),
                                 ERROR, "a header line holds only '[name]'", source, len(rest)))
    canonical = schema.canonical_section(name)
    if canonical is None:
        hint = did_you_mean(name, schema.section_names()) or (
            "see the README for the sections darkcfg knows")
        diags.add(Diagnostic("E201", f"unknown section type [{name}]", path, tok.line,
                             tok.column + 1, ERROR, hint, source, max(len(name), 1)))
        canonical = name
    return name, canonical


def _option(text: str, line: int, col: int, source: str, specs: dict | None, name: str,
            path: str, diags: Collector) -> Option | None:
    eq = text.find("=")
    if eq < 0:
        key = "".join(text.split())
        diags.add(Diagnostic("E102", f"missing '=' in '{key}'", path, line,
                             col + len(text.rstrip()), ERROR,
                             f"write '{key}=<value>'", source, 1))
        return None
    key = text[:eq]
    value_text = text[eq + 1:]
    raw = value_text.strip()
    if " " in raw or "\t" in raw or " " in key or "\t" in key:  # Darknet drops inner spaces
        raw = "".join(raw.split())
        key = "".join(key.split())
    else:
        key = key.rstrip()
    value_col = col + eq + 1 + (len(value_text) - len(value_text.lstrip()))
    if not key:
        diags.add(Diagnostic("E102", "option without a key", path, line, col, ERROR,
                             "write 'key=value'", source, 1))
        return None
    if not raw:
        diags.add(Diagnostic("E105", f"empty value for '{key}'", path, line, value_col,
                             ERROR, f"give '{key}' a value or delete the line (Darknet rejects it)",
                             source, 1))
        return None
    spec = specs.get(key) if specs is not None else None
    if spec is None and specs is not None:
        hint = did_you_mean(key, specs) or f"[{name}] does not read '{key}'; delete it"
        diags.add(Diagnostic("W201", f"unknown key '{key}' in [{name}] (Darknet: Unused field)",
                             path, line, col, WARNING, hint, source, len(key)))
    try:
        value, note = schema.convert(spec, key, raw)
    except schema.ValueProblem as exc:
        diags.add(Diagnostic(exc.code, str(exc), path, line, value_col, ERROR, exc.hint,
                             source, len(raw)))
        return None
    if note:
        diags.add(Diagnostic("W203", note, path, line, value_col, WARNING, "", source, len(raw)))
    return Option(key, raw, value, line, col, value_col, source)


def check_text(text: str, path: str = "<string>") -> list[Diagnostic]:
    """All diagnostics (errors and warnings) for a cfg text, without raising."""
    try:
        result = parse_text(text, path)
    except CfgError as exc:
        return exc.diagnostics
    return list(result.warnings)
