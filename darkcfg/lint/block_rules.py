"""Stage 2 of `darkcfg check`: rules on the parsed blocks. Torch-free by design (`--no-build`
runs only this and the parser).

The rules themselves live in `cfgparse.rules`, where the builders find them too; this module
applies them to a whole cfg and adds the one rule no builder has: the same classes in every
detection head (W302)."""

from __future__ import annotations

from collections.abc import Sequence

from cfgparse import Block, Diagnostic
from cfgparse.errors import WARNING
from cfgparse.rules import (
    HEAD_INPUTS,
    REFERENCE_KEYS,
    anchor_rules,
    as_list,
    feeding_layer_rule,
    missing_reference,
    net_rules,
    reference_problem,
    value,
)


def check_blocks(blocks: Sequence[Block]) -> list[Diagnostic]:
    """Every block rule over a parsed cfg; never raises for bad input."""
    found: list[Diagnostic] = []
    if not blocks:
        return found
    net = blocks[0] if blocks[0].type == "net" else None
    layers = list(blocks[1:]) if net is not None else list(blocks)
    if net is not None:
        found += net_rules(net)
    for block in layers:
        found += reference_rules(block)
    found += head_rules(layers)
    return found


def reference_rules(block: Block) -> list[Diagnostic]:
    """route/shortcut/sam/scale_channels (and conv share_index) name layers before this one."""
    out: list[Diagnostic] = []
    for key, required in REFERENCE_KEYS.get(block.type, ()):
        opt = block.options.get(key)
        if opt is None:
            if required:
                out.append(missing_reference(block, key))
            continue
        for item, ref in enumerate(as_list(opt.value)):
            if not isinstance(ref, int):
                continue  # the parser already reported a non-integer
            problem = reference_problem(block, key, ref, block.index, item)
            if problem is not None:
                out.append(problem)
    return out


def head_rules(layers: Sequence[Block]) -> list[Diagnostic]:
    """Each detection head against its anchors and the layer that feeds it; classes across
    heads."""
    out: list[Diagnostic] = []
    first_head: Block | None = None
    for i, block in enumerate(layers):
        if block.type not in HEAD_INPUTS:
            continue
        out += anchor_rules(block)
        out += feeding_layer_rule(block, layers[i - 1] if i else None)
        if first_head is None:
            first_head = block
        elif value(block, "classes") != value(first_head, "classes"):
            out.append(block.diagnostic(
                "W302", f"classes={value(block, 'classes')} here but "
                f"classes={value(first_head, 'classes')} in the [{first_head.name}] at line "
                f"{first_head.line}", "classes" if "classes" in block else None,
                hint="every detection head of a network predicts the same classes",
                severity=WARNING))
    return out
