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
