"""Stage 3 of `darkcfg check` (skipped by --no-build): rules that need a build, on PyTorch's meta
device (shapes and parameter counts without memory).

The builders raise located CfgErrors for most graph problems themselves (references, route
sizes, head channels, ...); the rules below add what a successful build can still get wrong
([shortcut] sizes, non-positive sizes), the keys no builder read (W301) and the memory estimate
(E401, `builders.memory`)."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from builders.graph import Network
from builders.memory import (
    DEFAULT_MAX_MEMORY,
    estimate_memory,
    memory_diagnostic,
    meta_build,
    one_forward,
)
from builders.registry import Shape
from cfgparse import Block, CfgError, Diagnostic
from cfgparse.errors import ERROR
from cfgparse.rules import shortcut_grid_rule


def check_graph(blocks: Sequence[Block], *, flavor: str = "alexeyab",
                max_memory: int | None = DEFAULT_MAX_MEMORY,
                targets: Sequence[str] = ()) -> list[Diagnostic]:
    """Diagnostics from a meta-device build of `blocks` (already through the block rules);
    `targets`: also the deployment runtimes' rules that need layer shapes."""
    try:
        net = meta_build(blocks, flavor)
    except CfgError as exc:
        return list(exc.diagnostics)
    except Exception as exc:  # a builder that failed without a CfgError: locate it anyway
        return [crash_diagnostic(exc, blocks)]
    found = list(net.warnings) + shape_rules(net)
    if targets:
        from darkcfg.lint.targets import check_target_runs, check_target_shapes

        def chw(shape):
            return shape.c, shape.h, shape.w

        inputs = [net.input_shape, *net.shapes][:len(net.meta)]  # (a cfg of no layers: none)
        layers = [(m.block, chw(s), [chw(net.shapes[j]) for j in m.sources], m.sources)
                  for m, s in zip(net.meta, inputs, strict=True)]
        stops = [layer.run_error for layer in net.layers if layer.run_error is not None]
        for target in targets:
            found += check_target_shapes(layers, target)
            found += check_target_runs(stops, target)
    if max_memory and not any(d.severity == ERROR for d in found):
        found += memory_rule(net, max_memory)
    return found


def prepare_workers() -> None:
    """Import every builder family now (the registry loads them lazily), so that processes
    forked for `check --jobs` start with them."""
    from builders.registry import registered_sections

    registered_sections()


def crash_diagnostic(exc: Exception, blocks: Sequence[Block]) -> Diagnostic:
    """E300 at the block whose builder raised (the innermost frame holding a `block`)."""
    block = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        candidate = frame.f_locals.get("block")
        if isinstance(candidate, Block):
            block = candidate
    message = f"this layer cannot be built: {type(exc).__name__}: {exc}"
    hint = "check this section's values against the README; if they look right, it is a " \
        "darkcfg bug"
    if block is None:
        path = blocks[0].path if blocks else "<string>"
        return Diagnostic("E300", message, path, hint=hint)
    return block.diagnostic("E300", f"[{block.name}] {message}", hint=hint)


# -- shapes --------------------------------------------------------------------------------------

def _grid(shape: Shape) -> tuple[int, int]:
    """Height and width as Darknet compares them; a flat output counts as 1x1."""
    if shape.c * shape.h * shape.w:
        return shape.h, shape.w
    return 1, 1


def _positive(shape: Shape) -> bool:
    if shape.size <= 0 or min(shape.c, shape.h, shape.w) < 0:
        return False
    return (shape.h == 0) == (shape.w == 0)  # flat (no grid) or a whole grid


def shape_rules(net: Network) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for meta in net.meta:
        block = meta.block
        if not _positive(meta.output):
            key = next((k for k in ("size", "stride", "stride_x", "stride_y") if k in block), None)
            o, i = meta.output, meta.input
            found.append(block.diagnostic(
                "E303", f"[{block.name}] output is {o.c}x{o.h}x{o.w} ({o.size} values) for a "
                f"{i.c}x{i.h}x{i.w} input: sizes must be positive", key,
                hint="use a smaller size or stride, pad=1, or a larger input (width/height)"))
            break  # every later shape follows from this one
        if meta.type == "shortcut":
            found += shortcut_rule(net, meta)
    return found


def shortcut_rule(net: Network, meta) -> list[Diagnostic]:
    """cfgparse.rules.shortcut_grid_rule on the built shapes (its E302 the builder raised)."""
    return shortcut_grid_rule(meta.block, meta.sources,
                              [_grid(net.shapes[src]) for src in meta.sources],
                              _grid(meta.input), net.info.flavor)


# -- memory --------------------------------------------------------------------------------------

def memory_rule(net: Network, limit: int) -> list[Diagnostic]:
    """The check's guard: can this network be instantiated and run once (one item: time_steps
    images for a recurrent net)?"""
    estimate = estimate_memory(net, batch=one_forward(net))
    total = estimate["inference_bytes"]
    if total <= limit:
        return []
    return [memory_diagnostic(
        net, estimate, "inference", limit,
        f"reduce filters/output/width/height, or raise the limit with --max-memory "
        f"{_suggest(total)}")]


def _suggest(total: int) -> str:
    """A --max-memory value just above `total`, in whole GiB or TiB."""
    gib = -(-total // 2**30)
    return f"{gib}G" if gib < 1024 else f"{-(-gib // 1024)}T"
