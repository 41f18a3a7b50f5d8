"""Blocks -> canonical cfg text, and blocks -> YAML (reading YAML: yaml_io.py).

Canonical cfg: one `[canonical_name]` header per block, a blank line between blocks, `key=value`
lines in the order parsed (first of duplicates only), no comments, typed values written back so
that they type the same again (`parse(write(blocks)) == blocks`).

YAML: a list with one single-key mapping per section, section name -> its options:

    - net: {batch: 64, width: 416, height: 416, channels: 3, steps: [400000, 450000]}
    - convolutional:
        filters: 32
        activation: leaky
    - avgpool: {}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from . import schema
from .blocks import Block, format_value

_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# -- cfg ------------------------------------------------------------------------------------------
def write(blocks: Iterable[Block]) -> str:
    """Canonical cfg text of the blocks."""
    lines: list[str] = []
    for block in blocks:
        if lines:
            lines.append("")
        lines.append(f"[{block.type}]")
        lines.extend(f"{key}={cfg_value(block.type, key, opt.value)}"
                     for key, opt in block.options.items())
    return "\n".join(lines) + "\n"


def cfg_value(section: str, key: str, value: Any) -> str:
    """cfg text that the schema types back to `value` (same type, same value)."""
    spec = schema.key_spec(section, key)
    if spec is None:  # typed by schema.infer(): a float must keep its '.0' to stay a float
        if isinstance(value, list):
            return ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
        return repr(value) if isinstance(value, float) else str(value)
    return format_value(value)


# -- YAML -----------------------------------------------------------------------------------------
class _FlowList(list):
    """A value list: written in flow style ([1, 2, 3]); everything else in block style."""


class _Dumper(_SafeDumper):
    pass


def _flow_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(_FlowList, _flow_list)


def to_yaml(blocks: Iterable[Block]) -> str:
    """The blocks as a YAML list of `{section: {key: value, ...}}` mappings."""
    data = [{block.type: {key: _FlowList(v) if isinstance(v, list) else v
                          for key, v in block.values().items()}} for block in blocks]
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)


# -- editing cfg text in place --------------------------------------------------------------------
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def edit(text: str, changes: Iterable[tuple[Block, str, str]]) -> str:
    """`text` (the cfg the blocks were parsed from) with some values replaced: each change is
    (block, key, new value text). An existing key's value is replaced where it stands (what
    follows an inline '#' and the line end are kept); a missing key gets a `key=value` line
    after the block's last option. Every other byte is kept: comments, blank lines, spacing,
    line ends, key order."""
    lines = _LINES.findall(text)
    replaced: dict[int, str] = {}
    added: dict[int, list[str]] = {}
    for block, key, new in changes:
        opt = block.options.get(key)
        if opt is not None and opt.line:
            line = replaced.get(opt.line - 1, lines[opt.line - 1])
            body = line.rstrip("\r\n")
            start = opt.value_column - 1
            comment = body.find("#", start)
            end = comment if comment >= 0 else len(body)
            while end > start and body[end - 1] in " \t":
                end -= 1
            replaced[opt.line - 1] = body[:start] + new + body[end:] + line[len(body):]
        else:
            last = max([o.line for o in block.options.values()] + [block.line])
            added.setdefault(last - 1, []).append(f"{key}={new}")
    ending = next((line[len(line.rstrip("\r\n")):] for line in lines
                   if line.endswith(("\n", "\r"))), "\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        line = replaced.get(i, line)
        if i in added and not line.endswith(("\n", "\r")):
            line += ending
        out.append(line)
        out.extend(f"{new}{ending}" for new in added.get(i, []))
    if added and not text.endswith(("\n", "\r")) and out:  # keep a missing final line end
        out[-1] = out[-1].rstrip("\r\n")
    return "".join(out)
