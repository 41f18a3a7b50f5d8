"""How much memory a network needs, from shapes only: the runner's guard (`guard_memory`) and
the figures the linter reports (E401). Works on a meta-device build, so a cfg with
`filters=1000000000` is estimated, never allocated. Imports no torch itself."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cfgparse import Block, CfgError, Diagnostic
from cfgparse.rules import largest_multiscale, value

if TYPE_CHECKING:
    from .graph import Network
    from .registry import Shape

FLOAT_BYTES = 4
DEFAULT_MAX_MEMORY = 4 * 2**30  # the linter's limit when --max-memory is not given


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


def one_forward(net: Network) -> int:
    """The images of the smallest forward `net` runs: a recurrent net's batch is time_steps x
    sequences (step-major), so one sequence is time_steps images; else 1."""
    return max(int(net.info.time_steps or 1), 1)


def meta_build(blocks: Sequence[Block], flavor: str = "alexeyab") -> Network:
    from .graph import build  # torch: only when there is something to build

    return build(list(blocks), device="meta", flavor=flavor)


def estimate_memory(net_or_blocks: Network | Sequence[Block], *, batch: int | None = None,
                    flavor: str = "alexeyab") -> dict:
    """Float32 memory of a network, from shapes only (a meta build when given blocks).

    params_bytes: parameters and buffers. activation_bytes: every layer's output at `batch`
    (what training keeps for backward, and what Darknet allocates). peak_activation_bytes: the
    most outputs alive at once in a forward pass (the network's own liveness plan).
    inference_bytes = params + peak; training_bytes = 2 x (params + activations) (weights and
    their updates, outputs and their gradients; optimizer extras and workspaces not counted).
    derived_bytes: the weights the CPU inference fast path derives and caches beside them
    (`derived_bytes`); cpu_inference_bytes = inference + derived.
    `batch` defaults to the [net] mini-batch (batch/subdivisions)."""
    net = meta_build(net_or_blocks, flavor) if isinstance(net_or_blocks, Sequence) \
        else net_or_blocks
    batch = mini_batch(net) if batch is None else max(int(batch), 1)
    seen: set[int] = set()
    layers = []
    count = derived = 0
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
        derived += derived_bytes(layer, meta.input, batch)
    params_bytes = sum(b.params for b in layers)
    activation_bytes = batch * sum(b.output for b in layers)
    peak = batch * net.liveness.peak([m.output.size for m in net.meta],
                                     net.input_shape.size) * FLOAT_BYTES
    largest = max(layers, key=lambda b: b.params + batch * b.output, default=None)
    return {
        "batch": batch,
        "params": count,
        "params_bytes": params_bytes,
        "activation_bytes": activation_bytes,
        "peak_activation_bytes": peak,
        "inference_bytes": params_bytes + peak,
        "derived_bytes": derived,
        "cpu_inference_bytes": params_bytes + derived + peak,
        "training_bytes": 2 * (params_bytes + activation_bytes),
        "largest_layer": None if largest is None else largest.index,
        "largest_layer_bytes": 0 if largest is None else largest.params + batch * largest.output,
    }


def derived_bytes(layer, input_shape: Shape, batch: int) -> int:
    """Bytes of the weights the CPU inference fast path derives for `layer` from an input of
    `input_shape` at `batch` (builders.conv, builders.dense): batch-norm folded and packed for
    oneDNN, about the weights' size; for the 3x3 layers builders.winograd computes, the
    Winograd-transformed weights, 36/9 (F(4x4, 3x3)) or 16/9 (F(2x2, 3x3)) of them; in
    builders.pointwise's panels (1x1 layers, Winograd's native products, the gathered first
    layers) output channels rounded up to 32."""
    import torch

    from . import winograd
    from .conv import Convolutional, FastPathCache

    weight = getattr(getattr(layer, "conv", None), "weight", None)
    if weight is None:
        weight = getattr(getattr(layer, "linear", None), "weight", None)
    if not isinstance(layer, FastPathCache) or weight is None:
        return 0
    size = weight.numel() * FLOAT_BYTES
    c, h, w = input_shape.c, input_shape.h, input_shape.w
    if not isinstance(layer, Convolutional):
        return size
    k, c_in = weight.shape[:2]
    padded = -(-k // 32) * 32 * c_in * weight[0, 0].numel() * FLOAT_BYTES  # panels of 32
    tile = layer.winograd_tile((batch, c, h, w))
    if tile:
        panels = winograd.native_products(torch.Size([batch, c, h, w]), k, tile)
        return (padded if panels else size) * (tile + 2) ** 2 // 9
    return padded if layer.pointwise_ok or layer.gathers((batch, c, h, w)) else size


# what a guard checks -> the estimate's figure for it
_ESTIMATE_KEYS = {"training": "training_bytes", "inference": "inference_bytes",
                  "cpu inference": "cpu_inference_bytes"}


def multiscale_network(net: Network) -> tuple[Network, str] | None:
    """`net` rebuilt (on the meta device) at the largest input its training reaches, and what
    says so, when `random=` multi-scale in its last detection head trains it larger than the
    cfg's size (Darknet's sizes: cfgparse.rules.largest_multiscale); None otherwise, or when it
    cannot be built at that size (the trainer refuses that, E305)."""
    heads = [i for i in net.loss_layers
             if getattr(net.layers[i], "loss_target", None) == "boxes"]
    data = getattr(net.layers[heads[-1]], "data", None) if heads else None
    random = float(getattr(data, "random", 0) or 0)
    step = value(net.net_block, "resize_step")
    step = 32 if step is None else int(step)
    if not random or step < 1:
        return None
    w0, h0 = net.input_shape.w, net.input_shape.h
    w, h = largest_multiscale(w0, h0, random, step)
    if w * h <= w0 * h0:
        return None
    from .graph import Network

    try:
        big = Network([net.net_block.with_values(width=w, height=h), *(m.block for m in net.meta)],
                      flavor=net.info.flavor, device="meta")
    except CfgError:
        return None
    head = net.meta[heads[-1]].block
    return big, (f"at {w}x{h}, the largest size multi-scale training reaches (random={random:g} "
                 f"in the last [{head.name}], line {head.line}; the cfg says {w0}x{h0})")


def memory_diagnostic(net: Network, estimate: dict, what: str, limit: int,
                      hint: str) -> Diagnostic:
    """E401 located where the memory goes: the largest layer's filters/output, else its header."""
    total = estimate[_ESTIMATE_KEYS[what]]
    activations = estimate["activation_bytes" if what == "training" else "peak_activation_bytes"]
    index = estimate["largest_layer"]
    block = net.meta[index].block if index is not None else net.net_block
    key = next((k for k in ("filters", "output") if k in block), None)
    message = (f"estimated {what} memory {format_bytes(total)} is over the "
               f"{format_bytes(limit)} limit (parameters {format_bytes(estimate['params_bytes'])}"
               f" = {estimate['params']:,} values, activations {format_bytes(activations)} at "
               f"batch {estimate['batch']}"
               + (f": time_steps={one_forward(net)} images a sequence)" if one_forward(net) > 1
                  else ")"))
    if estimate.get("size_note"):
        message += " " + estimate["size_note"]
    if index is not None:
        message += (f"; layer {index} [{block.name}] alone needs "
                    f"{format_bytes(estimate['largest_layer_bytes'])}")
    return block.diagnostic("E401", message, key, hint=hint)


def guard_memory(net: Network, limit_bytes: int, *, batch: int | None = None,
                 training: bool = True, cpu: bool = False, forceable: bool = True) -> dict:
    """Raise CfgError E401 when `net` (built on any device, or meta) would need more than
    `limit_bytes` to train (or, with training=False, to run: with `cpu`, the fast path's derived
    weights counted); return the estimate otherwise. The runner calls this before allocating,
    unless forced (`forceable`: the help offers that). Training is estimated at the largest
    input it reaches (`random=` multi-scale: multiscale_network), where the estimate's
    `size_note` says so."""
    bigger = multiscale_network(net) if training else None
    if bigger is not None:
        net = bigger[0]
    estimate = estimate_memory(net, batch=batch)
    hint = "reduce batch/subdivisions, filters, width or height, raise the limit"
    if bigger is not None:
        estimate["size_note"] = bigger[1]
        hint = ("reduce batch/subdivisions, filters, width or height, or random= (multi-scale "
                "up to 1.4x: random=0 trains at the cfg's size), raise the limit")
    hint += ", or force it" if forceable else ""
    what = "training" if training else ("cpu inference" if cpu else "inference")
    total = estimate[_ESTIMATE_KEYS[what]]
    if total > limit_bytes:
        raise CfgError(memory_diagnostic(net, estimate, what, limit_bytes, hint))
    return estimate


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


# ASCII digits (re's \d also takes '٤', which float() reads as 4)
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*\Z", re.IGNORECASE | re.ASCII)


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GiB', '8gb', '1000000' -> bytes (binary units: 1G = 2**30); ValueError
    with the reason otherwise (the command lines' --max-memory: darkcfg.lint.cli.memory_size)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(
            f"invalid size '{text}' (use e.g. 4G, 512M, 1.5GiB or a number of bytes)")
    number, unit = float(m.group(1)), m.group(2).lower()
    size = int(number * 1024 ** " kmgt".index(unit or " "))
    if size <= 0:
        raise ValueError(f"--max-memory must be positive, got '{text}'")
    return size
