"""YAML architecture -> blocks, with the cfg reader's schema and diagnostics.

A list with one single-key mapping per section, section name -> its options (what
`writer.to_yaml` writes); the form `{type: NAME, options: {...}}` (what `python -m cfgparse dump
--format json` prints) is read as well. Every value goes through the same schema as cfg text (its
YAML text is the cfg value; lists are joined with ','; true/false mean 1/0), with the same
diagnostics, located at the YAML line and column.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

import yaml

from . import schema
from .assembly import (
    LayerNumbering,
    ParseResult,
    duplicate_key,
    finish,
    typed_option,
)
from .blocks import Block, Option, make_block
from .characters import odd_space_diagnostic, odd_spaces
from .errors import ERROR, CfgError, Collector, Diagnostic, did_you_mean

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: 10x faster
_BOOL = "tag:yaml.org,2002:bool"


class _SafeLoader(_BaseLoader):
    """The safe loader with YAML 1.2's booleans: only true/false (any case) are booleans;
    yes/no/on/off/y/n stay the strings written (YAML 1.1 made `activation: on` True, i.e. the cfg
    value '1', and a class named `no` False)."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()}
_SafeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def blocks_from_yaml(text: str, path: str = "<yaml>", *, strict_first: bool = True,
                     flavor: str | None = None) -> ParseResult:
    """Parse a YAML architecture into blocks, like parser.parse_text does cfg text: returns a
    ParseResult (blocks + `.warnings`), raises CfgError with every error found."""
    if text[:1] == "\ufeff":
        text = text[1:]
    lines = text.splitlines()
    diags = Collector()
    tables = schema.tables(flavor)
    root = compose_yaml(text, path, lines, "fix the YAML syntax")
    if root is None:
        return finish([], diags, path, strict_first)  # E100
    # sections repeated by alias, each holding a long list: quadratic text from a small file
    check_expansion(root, path, lines, "fix the YAML structure", "E108")
    if not isinstance(root, yaml.SequenceNode):
        raise _shape(root, path, lines, "a YAML architecture is a list of sections, e.g. "
                     "'- net: {width: 416}'")
    blocks: list[Block] = []
    numbering = LayerNumbering()
    for item in root.value:
        name_node, options_node = _section_nodes(item, path, lines)
        name = "".join(str(name_node.value).split())
        line, col = name_node.start_mark.line + 1, name_node.start_mark.column + 1
        source = _line(lines, line)
        canonical = schema.canonical_section(name)
        table = tables.get(canonical) if canonical else None
        if canonical is None:
            hint = did_you_mean(name, schema.section_names()) or (
                "see the README for the sections darkcfg knows")
            diags.add(Diagnostic("E201", f"unknown section type [{name}]", path, line, col,
                                 ERROR, hint, source, max(len(name), 1)))
            canonical = name
        options = _options(options_node, name, table, path, lines, diags, flavor)
        blocks.append(make_block(canonical, name, MappingProxyType(options), line, col, path,
                                 source, numbering.index(len(blocks), canonical)))
    return finish(blocks, diags, path, strict_first)


#: Characters a YAML file may hold once its aliases are expanded (a scalar counts its length
#: + 1, a list or mapping 1): far above any real file, far below a "billion laughs" file
#: (nested aliases that repeat a list 10**9 times in 400 bytes).
MAX_YAML_SIZE = 10_000_000


def compose_yaml(text: str, path: str, lines: list[str], hint: str,
                 code: str = "E108") -> yaml.Node | None:
    """The node tree of one YAML document (aliases not expanded: shared nodes), or a located
    `code` error for bad syntax (libyaml also refuses nesting over 1000 levels)."""
    loader = None
    try:
        loader = _SafeLoader(text)  # (libyaml's parser encodes the text here: a lone surrogate
        return loader.get_single_node()  # raises then, before any parsing)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: where it is
            before = text[:exc.position]
            line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CfgError(Diagnostic(code, f"invalid YAML: {problem}", path, line, col, ERROR,
                                  hint, _line(lines, line), 1)) from None
    except RecursionError:  # the pure-Python composer (no libyaml) on deep nesting
        raise CfgError(Diagnostic(code, "invalid YAML: exceeded maximum nesting depth", path, 1,
                                  1, ERROR,
                                  hint, _line(lines, 1), 1)) from None
    except UnicodeError as exc:  # lone surrogates in a str (file input is decoded strictly)
        before = text[: getattr(exc, "start", 0)]
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise CfgError(Diagnostic("E104", "text that is not valid Unicode", path, line, col,
                                  ERROR, "save the file as UTF-8 text", _line(lines, line),
                                  1)) from None
    finally:
        if loader is not None:
            loader.dispose()


def check_expansion(root: yaml.Node, path: str, lines: list[str], hint: str,
                    code: str) -> list[yaml.MappingNode]:
    """Refuse (located `code`) a node tree that contains itself or whose aliases expand past
    MAX_YAML_SIZE characters; returns its mappings, each once."""
    sizes, mappings, cycle = _expanded_sizes(root)
    if cycle is not None:
        raise _located(code, "these values contain themselves (a YAML alias inside its own "
                       "anchor)", path, lines, cycle, hint)
    node = root
    while sizes[id(node)] > MAX_YAML_SIZE:  # down to the smallest node that is too big
        node = next((c for c in _children(node) if sizes[id(c)] > MAX_YAML_SIZE), node)
        if all(sizes[id(c)] <= MAX_YAML_SIZE for c in _children(node)):
            raise _located(code, f"these values expand to {sizes[id(node)]:,} characters "
                           f"through YAML aliases (*name): more than {MAX_YAML_SIZE:,}", path,
                           lines, node,
                           "write the values out, or use fewer nested aliases")
    return mappings


def load_yaml(text: str, path: str, hint: str, code: str = "E901") -> tuple[Any, Any]:
    """(data, root node) of a YAML file read safely (no Python tags), or a located `code` error:
    bad syntax, a tag with no safe meaning, aliases expanding past MAX_YAML_SIZE characters, or a
    key given twice in one mapping (YAML keeps the last without a word)."""
    if text[:1] == "\ufeff":
        text = text[1:]
    lines = text.splitlines()
    root = compose_yaml(text, path, lines, hint, code)
    if root is None:
        return None, None
    mappings = check_expansion(root, path, lines, hint, code)
    for mapping in mappings:
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in mapping.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                raise _located(code, f"key '{key.value}' is given twice (first on line "
                               f"{first.start_mark.line + 1}): YAML would keep this one "
                               "without a word", path, lines, key, "delete one of the two")
    loader = _SafeLoader("")
    try:
        return loader.construct_document(root), root
    except yaml.YAMLError as exc:  # e.g. !!python/object: no safe constructor
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None) or \
            root.start_mark
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CfgError(Diagnostic(code, f"invalid YAML: {problem}", path, mark.line + 1,
                                  mark.column + 1, ERROR, hint, _line(lines, mark.line + 1),
                                  1)) from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        node = _first_huge_int(root) or root
        raise _located(code, f"invalid YAML: {str(exc).split(';')[0]}", path, lines, node,
                       "write fewer digits (no count or size is that large)") from None
    finally:
        if loader is not None:
            loader.dispose()


def _first_huge_int(root: yaml.Node) -> yaml.Node | None:
    """The first integer scalar with more digits than int() takes, or None."""
    import sys

    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    stack = [root]
    while stack:
        node = stack.pop(0)
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":int") and limit and \
                sum(c.isdigit() for c in node.value) > limit:
            return node
        stack.extend(_children(node))
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_sizes(root: yaml.Node):
    """({id(node): its size with every alias expanded}, the mappings, a node that
    contains itself or None). Each shared node is visited once, so a bomb is measured, never
    built; iterative, so deep nesting hits no recursion limit."""
    sizes: dict[int, int] = {}
    mappings: list[yaml.MappingNode] = []
    open_: set[int] = set()  # on the current path: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            open_.discard(id(node))
            own = len(node.value) + 1 if isinstance(node, yaml.ScalarNode) else 1
            sizes[id(node)] = own + sum(sizes[id(c)] for c in _children(node))
            if isinstance(node, yaml.MappingNode):
                mappings.append(node)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_:
            return sizes, mappings, node
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes, mappings, None


def _located(code: str, message: str, path: str, lines: list[str], node: yaml.Node,
             hint: str) -> CfgError:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    return CfgError(Diagnostic(code, message, path, line, col, ERROR, hint, _line(lines, line),
                               1))


def _section_nodes(item: yaml.Node, path: str, lines: list[str]) -> tuple[yaml.Node, Any]:
    """(name node, options node or None) of one list item, in either accepted form."""
    if not isinstance(item, yaml.MappingNode) or not item.value:
        raise _shape(item, path, lines, "each list item is one section: '- NAME: {KEY: VALUE}'")
    keys = {k.value: (k, v) for k, v in item.value if isinstance(k, yaml.ScalarNode)}
    if "type" in keys and set(keys) <= {"type", "options", "line"} and \
            isinstance(keys["type"][1], yaml.ScalarNode):
        return keys["type"][1], keys["options"][1] if "options" in keys else None
    if len(item.value) != 1 or not isinstance(item.value[0][0], yaml.ScalarNode):
        raise _shape(item, path, lines, "each list item is one section: '- NAME: {KEY: VALUE}' "
                     "(or '{type: NAME, options: {...}}')")
    return item.value[0]


def _options(node: Any, name: str, table: Any, path: str, lines: list[str],
             diags: Collector, flavor: str | None) -> dict[str, Option]:
    options: dict[str, Option] = {}
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return options
    if not isinstance(node, yaml.MappingNode):
        raise _shape(node, path, lines, f"the options of [{name}] are a mapping 'KEY: VALUE'")
    for key_node, value_node in node.value:
        line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
        source = _line(lines, line)
        if not isinstance(key_node, yaml.ScalarNode):
            raise _shape(key_node, path, lines, f"a key of [{name}] must be a plain name")
        if key_node.tag.endswith(":merge"):  # its value is the anchor's node: say it here
            diags.add(Diagnostic("E108", f"a YAML merge key ('<<') in [{name}] is not read",
                                 path, line, col, ERROR, "write the keys out in this section",
                                 source, 2))
            continue
        odd = _odd_in(key_node, value_node)
        if odd is not None:
            node, where = odd
            at = odd_spaces(str(node.value))
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
            if not node.style and node.end_mark.line + 1 == line:  # plain: the text as written
                col += at[0]
            shown = "".join("\u2423" if odd_spaces(c) else c for c in _line(lines, line))
            diags.add(odd_space_diagnostic(str(node.value), at, where, path, line, col, shown))
            continue
        key = "".join(key_node.value.split())
        if not key or "=" in key or key[0] in "#;[":  # not expressible as a cfg line
            raise _shape(key_node, path, lines, f"'{key}' cannot be a key: keys are non-empty, "
                         "have no '=' and do not start with '#', ';' or '['")
        same_line = value_node.start_mark.line + 1 == line
        value_col = value_node.start_mark.column + 1 if same_line else col
        raw = _raw(value_node, key, path, lines, diags)
        if raw is None:
            continue
        if not raw:
            diags.add(Diagnostic("E105", f"empty value for '{key}'", path, line, value_col,
                                 ERROR, f"give '{key}' a value or delete it", source, 1))
            continue
        span = max(value_node.end_mark.column - value_node.start_mark.column, 1) \
            if same_line and value_node.end_mark.line == value_node.start_mark.line else 1
        opt = typed_option(key, raw, line, col, value_col, source, span, table, name, path,
                           diags, flavor)
        if opt is None:
            continue
        first = options.setdefault(key, opt)
        if first is not opt:
            diags.add(duplicate_key(first, opt, name, path))
    return options


def _odd_in(key_node: yaml.Node, value_node: yaml.Node) -> tuple[yaml.Node, str] | None:
    """(the node, what it is) of the key or value scalar that holds an invisible or non-ASCII
    space (E109: cfg text reads them as Darknet does, so YAML does too)."""
    values = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
    for node, where in ((key_node, "a key"), *((v, "a value") for v in values)):
        if isinstance(node, yaml.ScalarNode) and odd_spaces(str(node.value)):
            return node, where
    return None


def _raw(node: yaml.Node, key: str, path: str, lines: list[str],
         diags: Collector) -> str | None:
    """The cfg text of a YAML value: its scalar text, list items joined by ','; None after an
    error (reported)."""
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node)
    if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.ScalarNode)
                                                    for n in node.value):
        return ",".join(_scalar(n) for n in node.value)
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    diags.add(Diagnostic("E202", f"'{key}' must be a value or a list of values", path, line, col,
                         ERROR, f"write {key}: VALUE or {key}: [A, B, C]", _line(lines, line),
                         1))
    return None


def _scalar(node: yaml.ScalarNode) -> str:
    if node.tag.endswith(":bool") and not node.style:  # true/false only (_SafeLoader)
        return "1" if node.value.lower() == "true" else "0"
    if node.tag.endswith(":null") and not node.style:
        return ""
    return "".join(str(node.value).split())  # Darknet drops whitespace inside values


def _shape(node: yaml.Node, path: str, lines: list[str], hint: str) -> CfgError:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    return CfgError(Diagnostic("E108", "unexpected YAML structure", path, line, col, ERROR, hint,
                               _line(lines, line), 1))


def _line(lines: list[str], line: int) -> str:
    return lines[line - 1] if 0 < line <= len(lines) else ""
