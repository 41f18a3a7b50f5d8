"""The graph rules of `darkcfg check` (those that need torch) and the memory guard.

Everything here works on a meta-device build: shapes and parameter counts without memory, so a
cfg with `filters=1000000000` is reported, not allocated. The builders raise located CfgErrors for
most graph problems themselves (references, route sizes, head channels, ...); the rules below add
what a successful build can still get wrong, and the memory estimate.
"""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from cfgparse import Block, CfgError, Diagnostic
from cfgparse.check import DEFAULT_MAX_MEMORY, item_diagnostic, value
from cfgparse.errors import ERROR, WARNING

from .graph import Network, build
from .registry import Shape

FLOAT_BYTES = 4


def check_graph(blocks: Sequence[Block], *, flavor: str = "alexeyab",
                max_memory: int | None = DEFAULT_MAX_MEMORY) -> list[Diagnostic]:
    """Diagnostics from a meta-device build of `blocks` (already through the block rules)."""
    try:
        net = meta_build(blocks, flavor)
    except CfgError as exc:
        return list(exc.diagnostics)
    except Exception as exc:  # a builder that failed without a CfgError: locate it anyway
        return [crash_diagnostic(exc, blocks)]
    found = list(net.warnings) + shape_rules(net)
    if max_memory and not any(d.severity == ERROR for d in found):
        found += memory_rule(net, max_memory)
    return found


def meta_build(blocks: Sequence[Block], flavor: str) -> Network:
    return build(list(blocks), device="meta", flavor=flavor)


def prepare_workers() -> None:
    """Import every builder family now (the registry loads them lazily), so that processes
    forked for `check --jobs` start with them."""
    from .registry import registered_sections

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
    """Same grid: fine. An integer up/down-scale of the grid: pjreddie's resampling shortcut
    (AlexeyAB Darknet aborts on it), a warning unless checking for pjreddie. Anything else loses
    positions in either fork: an error."""
    block = meta.block
    out_h, out_w = _grid(meta.input)
    found = []
    for item, src in enumerate(meta.sources):
        h, w = _grid(net.shapes[src])
        if (h, w) == (out_h, out_w):
            continue
        scale = _integer_scale(h, w, out_h, out_w)
        sizes = f"layer {src} is {w}x{h}, the previous layer {out_w}x{out_h}"
        if scale is None:
            found.append(item_diagnostic(
                block, "from", item, "E302",
                f"[shortcut] adds layers of different width/height ({sizes})",
                "add layers of the same spatial size (route/shortcut from a layer before the "
                "stride, or resize with [upsample]/[maxpool])"))
        elif net.info.flavor != "pjreddie":
            found.append(item_diagnostic(
                block, "from", item, "W303",
                f"[shortcut] resamples by {scale} ({sizes}): only pjreddie's Darknet runs this; "
                "AlexeyAB's asserts equal sizes", "use a strided 1x1 [convolutional] on the "
                "from-layer to match sizes, or check with --flavor pjreddie", WARNING))
    return found


def _integer_scale(h: int, w: int, out_h: int, out_w: int) -> str | None:
    """'1/k' or 'k' when one grid is exactly k times the other in both directions."""
    for a_h, a_w, b_h, b_w, name in ((h, w, out_h, out_w, "1/{}"), (out_h, out_w, h, w, "{}")):
        if b_h and b_w and a_h % b_h == 0 and a_w % b_w == 0 and a_h // b_h == a_w // b_w:
            return name.format(a_h // b_h)
    return None


# -- memory --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerBytes:
    index: int
    params: int
    output: int  # one batch's worth

    @property
    def total(self) -> int:
        return self.params + self.output


def mini_batch(net: Network) -> int:
    """Darknet's images per forward: batch / subdivisions ([net], at least 1)."""
    batch, subdivisions = value(net.net_block, "batch"), value(net.net_block, "subdivisions")
    return max(int(batch or 1) // max(int(subdivisions or 1), 1), 1)


def estimate_memory(net_or_blocks: Network | Sequence[Block], *, batch: int | None = None,
                    flavor: str = "alexeyab") -> dict:
    """Float32 memory of a network, from shapes only (a meta build when given blocks).

    params_bytes: parameters and buffers. activation_bytes: every layer's output at `batch`
    (what training keeps for backward, and what Darknet allocates). peak_activation_bytes: the
    most outputs alive at once in a forward pass (the graph frees an output after its last use).
    inference_bytes = params + peak; training_bytes = 2 x (params + activations) (weights and
    their updates, outputs and their gradients; optimizer extras and workspaces not counted).
    `batch` defaults to the [net] mini-batch (batch/subdivisions)."""
    net = net_or_blocks if isinstance(net_or_blocks, Network) else meta_build(
        net_or_blocks, flavor)
    batch = mini_batch(net) if batch is None else max(int(batch), 1)
    seen: set[int] = set()
    layers = []
    count = 0
    for meta, layer in zip(net.meta, net.layers, strict=True):
        params = 0
        # each module's own tensors: a third of the time of parameters() + buffers(), which
        # matters when the whole corpus is checked
        for module in layer.modules():
            for t in itertools.chain(module._parameters.values(), module._buffers.values()):
                if t is not None and id(t) not in seen:  # shared weights count once
                    seen.add(id(t))
                    params += t.numel() * t.element_size()
                    count += t.numel()
        layers.append(LayerBytes(meta.index, params, max(meta.output.size, 0) * FLOAT_BYTES))
    params_bytes = sum(b.params for b in layers)
    activation_bytes = batch * sum(b.output for b in layers)
    peak = batch * _peak_live_outputs(net) * FLOAT_BYTES
    largest = max(layers, key=lambda b: b.params + batch * b.output, default=None)
    return {
        "batch": batch,
        "params": count,
        "params_bytes": params_bytes,
        "activation_bytes": activation_bytes,
        "peak_activation_bytes": peak,
        "inference_bytes": params_bytes + peak,
        "training_bytes": 2 * (params_bytes + activation_bytes),
        "largest_layer": None if largest is None else largest.index,
        "largest_layer_bytes": 0 if largest is None else largest.params + batch * largest.output,
    }


def _peak_live_outputs(net: Network) -> int:
    """Most values alive at once in Network.forward: the current input and output, plus the
    outputs kept for later layers or as network outputs."""
    last_use: dict[int, int] = {}
    for meta in net.meta:
        for j in meta.sources:
            last_use[j] = meta.index
    keep = set(net.output_indices)
    live: dict[int, int] = {}
    peak = 0
    previous = max(net.input_shape.size, 0)
    for meta in net.meta:
        i, size = meta.index, max(meta.output.size, 0)
        held_input = 0 if (i - 1) in live else previous
        peak = max(peak, held_input + size + sum(live.values()))
        if i in last_use or i in keep:
            live[i] = size
        for j in [j for j in live if j not in keep and last_use.get(j, -1) <= i and j != i]:
            del live[j]
        previous = size
    return peak


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def memory_diagnostic(net: Network, estimate: dict, what: str, limit: int,
                      hint: str) -> Diagnostic:
    """E401 located where the memory goes: the largest layer's filters/output, else its header."""
    total = estimate[f"{what}_bytes"]
    activations = estimate["peak_activation_bytes" if what == "inference" else "activation_bytes"]
    index = estimate["largest_layer"]
    block = net.meta[index].block if index is not None else net.net_block
    key = next((k for k in ("filters", "output") if k in block), None)
    message = (f"estimated {what} memory {format_bytes(total)} is over the "
               f"{format_bytes(limit)} limit (parameters {format_bytes(estimate['params_bytes'])}"
               f" = {estimate['params']:,} values, activations {format_bytes(activations)} at "
               f"batch {estimate['batch']})")
    if index is not None:
        message += (f"; layer {index} [{block.name}] alone needs "
                    f"{format_bytes(estimate['largest_layer_bytes'])}")
    return block.diagnostic("E401", message, key, hint=hint)


def memory_rule(net: Network, limit: int) -> list[Diagnostic]:
    """The check's guard: can this network be instantiated and run once (batch 1 forward)?"""
    estimate = estimate_memory(net, batch=1)
    total = estimate["inference_bytes"]
    if total <= limit:
        return []
    return [memory_diagnostic(
        net, estimate, "inference", limit,
        f"reduce filters/output/width/height, or raise the limit with --max-memory "
        f"{_suggest(total)}")]


def guard_memory(net: Network, limit_bytes: int, *, batch: int | None = None,
                 training: bool = True) -> dict:
    """Raise CfgError E401 when `net` (built on any device, or meta) would need more than
    `limit_bytes` to train (or, with training=False, to run); return the estimate otherwise.
    The runner calls this before allocating, unless forced."""
    estimate = estimate_memory(net, batch=batch)
    what = "training" if training else "inference"
    total = estimate[f"{what}_bytes"]
    if total > limit_bytes:
        raise CfgError(memory_diagnostic(
            net, estimate, what, limit_bytes,
            "reduce batch/subdivisions, filters, width or height, raise the limit, or force it"))
    return estimate


def _suggest(total: int) -> str:
    """A --max-memory value just above `total`, in whole GiB or TiB."""
    gib = -(-total // 2**30)
    return f"{gib}G" if gib < 1024 else f"{-(-gib // 1024)}T"
