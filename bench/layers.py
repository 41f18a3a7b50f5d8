"""Where a net's inference time goes: per-layer times of the inference fast path (batch 1, eval,
no autograd), grouped by what each layer computes, with each group's share of the summed layer
times and its GFLOP/s against a same-run matrix product (bench/model.py's yardstick).

    python bench/layers.py [--nets darknet53 yolov4-tiny yolov4] [--repeat 7] [--top 8]
    python bench/layers.py --cfg cfg/yolov4-tiny.cfg [--size 416]

Each layer is timed on its own by forward hooks around it, best of the repeats per layer, so a
group's figure is what that layer costs inside the net (its inputs where the net left them, in
cache or not), and the sum is close to the net's forward. docs/benchmarks.md "What limits each
net" quotes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builders import build, winograd  # noqa: E402
from builders.conv import Convolutional  # noqa: E402
from darkcfg.export.int8 import latency  # noqa: E402
from darkcfg.train.loop import darknet_init  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from model import CORPUS, INFERENCE_NETS, gemm_rate, sized_cfg  # noqa: E402


def group_of(layer, shape_in) -> str:
    """A short name for what `layer` computes on input `shape_in` (N, C, H, W)."""
    kind = type(layer).__name__
    if isinstance(layer, Convolutional):
        conv = layer.conv
        k, s = conv.kernel_size[0], conv.stride[0]
        if k == 1:
            return "conv 1x1"
        if shape_in[1] <= 4:
            return "conv first (3 channels)"
        if k == 3 and s == 1:
            tile = layer.winograd_tile(shape_in)
            if not tile:
                return "conv 3x3 direct"
            native = winograd.native_products(torch.Size(shape_in), conv.out_channels, tile)
            return f"conv 3x3 Winograd F{tile}" + (" native" if native else "")
        return f"conv {k}x{k} stride {s}"
    return kind.lower()


def profile(net, x: torch.Tensor, repeat: int):
    """Per-layer best-of-`repeat` seconds, input shapes and BFLOPs."""
    times = defaultdict(lambda: float("inf"))
    shapes = {}
    starts = {}

    def before(i):
        def hook(module, args):
            shapes[i] = tuple(args[0].shape)
            starts[i] = time.perf_counter()
        return hook

    def after(i):
        def hook(module, args, out):
            times[i] = min(times[i], time.perf_counter() - starts[i])
        return hook

    handles = []
    for i, layer in enumerate(net.layers):
        handles.append(layer.register_forward_pre_hook(before(i)))
        handles.append(layer.register_forward_hook(after(i)))
    with torch.no_grad():  # warm-up: packed and transformed weights, allocator
        total = latency(net, x, repeats=repeat, warmup=2)
    for h in handles:
        h.remove()
    return times, shapes, total


def report(path: Path, size: int, repeat: int, top: int) -> None:
    name = path.stem
    torch.manual_seed(0)
    net = build(sized_cfg(path, size)).eval()
    with torch.no_grad():
        darknet_init(net)
    x = torch.rand(1, 3, size, size)
    gemm = gemm_rate(time.perf_counter, 1)
    times, shapes, total = profile(net, x, repeat)
    groups = defaultdict(lambda: [0.0, 0.0, 0])
    for i, layer in enumerate(net.layers):
        if i not in shapes:  # not called: a [shortcut] the layer before added in its kernel
            g = groups[f"{type(layer).__name__.lower()} (fused)"]
            g[2] += 1
            continue
        g = groups[group_of(layer, shapes[i])]
        g[0] += times[i]
        g[1] += float(layer.bflops)
        g[2] += 1
    summed = sum(times.values())
    print(f"{name} {size}x{size}: forward {total * 1e3:.1f} ms (layers summed "
          f"{summed * 1e3:.1f}), {net.bflops() / total:.0f} GF/s = "
          f"{net.bflops() / total / gemm:.0%} of the matrix product's {gemm:.0f} GF/s")
    print(f"  {'group':<28} {'layers':>6} {'ms':>7} {'share':>6} {'GF/s':>6} {'of gemm':>7}")
    for key, (t, bf, count) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        rate = f"{bf / t:6.0f} {bf / t / gemm:7.0%}" if bf and t else f"{'':>6} {'':>7}"
        print(f"  {key:<28} {count:>6} {t * 1e3:7.2f} {t / summed:6.1%} {rate}")
    if top:
        print(f"  the {top} slowest layers:")
        for i in sorted(times, key=lambda i: -times[i])[:top]:
            layer = net.layers[i]
            bf = float(layer.bflops)
            rate = f"{bf / times[i]:6.0f} GF/s" if bf else ""
            print(f"    {i:>3} {group_of(layer, shapes[i]):<28} {str(shapes[i]):<22} "
                  f"{times[i] * 1e3:6.2f} ms {rate}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(INFERENCE_NETS))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--top", type=int, default=8, help="list the N slowest layers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cfg", type=Path, help="profile this cfg instead of corpus nets")
    parser.add_argument("--size", type=int, help="input width = height (default: the net's "
                        "benchmark size, 416 for --cfg)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    jobs = [(args.cfg, args.size or 416)] if args.cfg else [
        (CORPUS / "alexeyab" / f"{name}.cfg", args.size or INFERENCE_NETS.get(name, 416))
        for name in args.nets]
    for path, size in jobs:
        if not path.exists():
            print(f"{path} not found (the corpus lives in ../shared/darknet/corpus)")
            continue
        report(path, size, args.repeat, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
