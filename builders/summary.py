"""The network summary: a Darknet-style layer table (text) and the same facts as JSON.

Everything comes from the graph (`net.meta` shapes) and the layers' own `bflops`, `describe`,
`filters` and parameters, so it works on a meta-device build.
"""

from __future__ import annotations

from .graph import Network
from .registry import Shape


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary_json(net: Network) -> dict:
    """{"layers": [{"index", "type", "output": [c, h, w], "outputs", "params", "bflops"}],
    "params", "weight_floats", "bflops"}; `output` is Darknet's out_c, out_h, out_w."""
    layers = []
    for meta, layer in zip(net.meta, net.layers, strict=True):
        out = meta.output
        layers.append({
            "index": meta.index,
            "type": meta.type,
            "output": [out.c, out.h, out.w],
            "outputs": out.size,
            "params": _params(layer),
            "bflops": float(layer.bflops),
        })
    return {"layers": layers, **_totals(net)}


def _dims(shape: Shape) -> str:
    """Darknet prints w x h x c; layers that only set `outputs` show that count."""
    if shape.c * shape.h * shape.w == 0:
        return f"{shape.size:>17}"
    return f"{shape.w:>4} x{shape.h:>4} x{shape.c:>5}"


def summary_text(net: Network) -> str:
    """Darknet-style table: index, type, filters, size/stride, input -> output, BFLOPs, params;
    then the totals."""
    width = max([len(m.type) for m in net.meta] + [4])
    window = max([len(layer.describe) + 1 for layer in net.layers] + [12])
    head = (f"{'layer':>5} {'type':<{width}} {'filters':>7}  {'size/stride':<{window}}"
            f"{'input':>17}    {'output':>17} {'BFLOPs':>9} {'params':>11}")
    lines = [head]
    for meta, layer in zip(net.meta, net.layers, strict=True):
        lines.append(
            f"{meta.index:>5} {meta.type:<{width}} {str(layer.filters):>7}  "
            f"{layer.describe:<{window}}{_dims(meta.input)} -> {_dims(meta.output)} "
            f"{float(layer.bflops):>9.3f} {_params(layer):>11,}")
    info = _totals(net)
    lines.append(f"Total: {info['params']:,} params, {info['weight_floats']:,} weight floats "
                 f"(.weights file: {20 + 4 * info['weight_floats']:,} bytes), "
                 f"{info['bflops']:.3f} BFLOPs")
    return "\n".join(lines)


def _totals(net: Network) -> dict:
    # net.parameters() lists each shared parameter once
    return {"params": _params(net), "weight_floats": net.num_weight_floats(),
            "bflops": net.bflops()}
