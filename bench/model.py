"""Model speed: inference GFLOP/s and share of the CPU's fp32 peak of vgg-16, darknet53,
yolov4-tiny and yolov4 (plain path against the inference fast path, same run); our VGG-16
(cfg/vgg16.cfg) against torchvision's vgg16 with the same weights, forward + backward on the
CPU; and the time to meta-build every corpus cfg.

    python bench/model.py [--batch 4] [--size 64] [--repeat 9] [--threads N]
    python bench/model.py --only inference [--peak 157] [--threads 2] [--clock cpu] [--compiled]

Inference: batch 1, eval mode, no autograd; the work is Darknet's BFLOPs (`net.bflops()`). The
default peak, 157 GFLOP/s, is this project's machine: 2 Zen-3 cores x 2.45 GHz x 32 FLOP/cycle
(two 8-wide FMA units); pass `--peak` for another one.

The two models run back to back within each repeat (in alternating order), so a busy machine
slows both alike; min and median over the repeats are printed, their ratios, and the median of
the per-repeat ratios (target: ours <= 1.02x torchvision).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builders import build, native, winograd  # noqa: E402
from builders.presets import load_torchvision_state_dict  # noqa: E402
from cfgparse import CfgError  # noqa: E402
from darkcfg.train.loop import darknet_init  # noqa: E402

CORPUS = ROOT.parent / "shared" / "darknet" / "corpus"


def step_ours(net, logits_index: int, x: torch.Tensor, y: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    logits = net(x, collect=[logits_index])[logits_index].reshape(x.shape[0], -1)
    F.cross_entropy(logits, y).backward()


def step_torchvision(model, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_vgg16(batch: int, size: int, repeat: int) -> None:
    torch.manual_seed(0)
    theirs = torchvision.models.vgg16(weights=None)
    ours = build(ROOT / "cfg" / "vgg16.cfg")
    load_torchvision_state_dict(ours, theirs.state_dict())
    theirs.train()
    ours.train()
    logits_index = len(ours.layers) - 2  # the last [connected]; [softmax] follows
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    for _ in range(2):  # warm-up: allocator, kernels
        step_ours(ours, logits_index, x, y)
        step_torchvision(theirs, x, y)
    ours_t, theirs_t = [], []
    for r in range(repeat):
        pair = [("ours", lambda: step_ours(ours, logits_index, x, y)),
                ("torchvision", lambda: step_torchvision(theirs, x, y))]
        if r % 2:  # alternate who goes first
            pair.reverse()
        for who, fn in pair:
            (ours_t if who == "ours" else theirs_t).append(timed(fn))
    print(f"VGG-16 fwd+bwd, batch {batch} x 3 x {size} x {size}, CPU, "
          f"{torch.get_num_threads()} threads, {repeat} repeats")
    print(f"  {'':<12} {'min':>9} {'median':>9}")
    for who, times in (("darkcfg", ours_t), ("torchvision", theirs_t)):
        print(f"  {who:<12} {min(times) * 1e3:8.1f}ms {statistics.median(times) * 1e3:8.1f}ms")
    print(f"  ratio        {min(ours_t) / min(theirs_t):8.3f}x "
          f"{statistics.median(ours_t) / statistics.median(theirs_t):8.3f}x")
    # each repeat times both back to back: the ratio within a repeat cancels slow load drifts
    paired = statistics.median(o / t for o, t in zip(ours_t, theirs_t, strict=True))
    print(f"  paired ratio (median over repeats) {paired:.3f}x   (target <= 1.02x)")


# the nets and input sizes (AlexeyAB corpus cfgs)
INFERENCE_NETS = {"vgg-16": 224, "darknet53": 256, "yolov4-tiny": 416, "yolov4": 416}
DEFAULT_PEAK = 157.0  # GFLOP/s: 2 Zen-3 cores x 2.45 GHz x 32 fp32 FLOP/cycle


def sized_cfg(path: Path, size: int) -> str:
    """The cfg text with [net] width = height = size and batch 1."""
    text = path.read_text()
    for key, value in (("width", size), ("height", size), ("batch", 1)):
        text = re.sub(rf"(?m)^\s*{key}\s*=.*$", f"{key}={value}", text, count=1)
    return text


class Yardstick:
    """One large float32 matrix product (oneDNN/MKL's best case, about 98% of the nominal peak
    on an idle machine), timed between the repeats of what it is compared with: the machine's
    speed in the same moments, so that a busy spell of this shared host slows both."""

    def __init__(self, now, per: int, n: int = 2048):
        self.now, self.per, self.n = now, per, n
        self.a, self.b = torch.rand(n, n), torch.rand(n, n)
        torch.mm(self.a, self.b)
        self.best = float("inf")

    def time_once(self) -> None:
        start = self.now()
        torch.mm(self.a, self.b)
        self.best = min(self.best, (self.now() - start) / self.per)

    @property
    def rate(self) -> float:
        """GFLOP/s of the best repeat."""
        return 2 * self.n ** 3 / self.best / 1e9


def gemm_rate(now, per: int, repeat: int = 8, n: int = 2048) -> float:
    """GFLOP/s of the yardstick's best of `repeat` products timed back to back."""
    yardstick = Yardstick(now, per, n)
    for _ in range(repeat):
        yardstick.time_once()
    return yardstick.rate


def bench_inference(corpus: Path, names: list[str], repeat: int, peak: float, clock: str,
                    compiled: bool = False) -> None:
    """Batch-1 eval forward: plain path against the fast path, interleaved within each repeat;
    with `compiled`, also torch.compile (Inductor, freezing=True: batch-norm folded, weights
    prepacked, pointwise ops fused) after the first two, its compilation time printed."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    threads = torch.get_num_threads()
    # cpu time adds up all threads: divide by them for a wall-equivalent figure
    per = threads if clock == "cpu" else 1
    print(f"Inference, batch 1, eval, CPU, {threads} threads, {clock} clock, {repeat}+ repeats; "
          f"peak {peak:g} GFLOP/s (--peak; 157 = this project's 2 Zen-3 cores); best repeat")
    print(f"  fast path's mish and Winograd transforms: {native.status()}; Winograd "
          f"{'on' if winograd.enabled() else 'off (DARKCFG_WINOGRAD=0 or no native kernels)'}")
    print("  gemm: a 2048 x 2048 matrix product timed between the net's repeats (the "
          "machine's speed\n  in the same moments); fast/gemm: the fast path's rate as a share "
          "of it; best repeat of each")
    print(f"  {'net':<12} {'size':>4} {'BFLOPs':>7} {'plain':>16} {'fast':>16} {'speedup':>8} "
          f"{'paired':>7} {'gemm':>16} {'fast/gemm':>9}"
          + (f" {'compiled':>16} {'compile s':>9}" if compiled else ""))
    for name in names:
        path = corpus / "alexeyab" / f"{name}.cfg"
        if not path.exists():
            print(f"  {name}: {path} not found")
            continue
        size = INFERENCE_NETS.get(name, 416)
        torch.manual_seed(0)
        net = build(sized_cfg(path, size)).eval()
        with torch.no_grad():
            darknet_init(net)  # He init: torch's default starves deep nets into denormals
        x = torch.rand(1, 3, size, size)
        bflops = net.bflops()
        times: dict[bool, list[float]] = {False: [], True: []}
        yardstick = Yardstick(now, per)
        with torch.no_grad():
            for fast in (False, True, False, True):  # warm-up: allocator, packed weights
                start = now()
                net.use_fast_inference(fast)(x)
            # at least `repeat` repeats, more for fast nets: ~2 s of fast forwards in all
            repeats = min(4 * repeat, max(repeat, int(2.0 / max(now() - start, 1e-3))))
            for r in range(repeats):
                yardstick.time_once()
                for fast in ((False, True) if r % 2 else (True, False)):
                    net.use_fast_inference(fast)
                    start = now()
                    net(x)
                    times[fast].append((now() - start) / per)
        gemm = yardstick.rate
        net.use_fast_inference(True)
        cells = []
        for fast in (False, True):
            rate = bflops / min(times[fast])
            cells.append(f"{rate:6.1f} GF/s {rate / peak:4.0%}")
        paired = statistics.median(p / f for p, f in zip(times[False], times[True], strict=True))
        extra = ""
        if compiled:
            rate, took = compiled_rate(net, x, repeat, now, per, bflops)
            extra = f" {f'{rate:6.1f} GF/s {rate / peak:4.0%}':>16} {took:9.0f}"
        fast_rate = bflops / min(times[True])
        print(f"  {name:<12} {size:>4} {bflops:7.2f} {cells[0]:>16} {cells[1]:>16} "
              f"{min(times[False]) / min(times[True]):7.2f}x {paired:6.2f}x "
              f"{f'{gemm:6.1f} GF/s {gemm / peak:4.0%}':>16} {fast_rate / gemm:9.0%}" + extra,
              flush=True)


def compiled_rate(net, x: torch.Tensor, repeat: int, now, per: int, bflops: float):
    """GFLOP/s of torch.compile(net) (best of `repeat`) and the seconds its compilation took."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    with torch.no_grad():
        start = time.perf_counter()
        program = torch.compile(net)
        program(x)
        took = time.perf_counter() - start
        best = float("inf")
        for _ in range(repeat):
            t0 = now()
            program(x)
            best = min(best, (now() - t0) / per)
    return bflops / best, took


def bench_meta_build(corpus: Path) -> None:
    files = sorted(corpus.glob("*/*.cfg"))
    if not files:
        print(f"meta build: no corpus at {corpus}")
        return
    failed: list[str] = []
    times: list[tuple[float, str]] = []
    start = time.perf_counter()
    for path in files:
        flavor = "pjreddie" if path.parent.name == "pjreddie" else "alexeyab"
        t0 = time.perf_counter()
        try:
            build(path, device="meta", flavor=flavor)
        except CfgError as exc:
            failed.append(f"{path.parent.name}/{path.name} [{exc.code}]")
        times.append((time.perf_counter() - t0, f"{path.parent.name}/{path.name}"))
    total = time.perf_counter() - start
    slowest = max(times)
    print(f"meta build of the corpus: {len(files)} cfgs in {total:.2f}s "
          f"({total / len(files) * 1e3:.1f}ms each on average; slowest {slowest[1]} "
          f"{slowest[0] * 1e3:.0f}ms); {len(failed)} rejected with a CfgError"
          + (f": {', '.join(failed)}" if failed else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="input width = height")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--only", choices=("inference", "train", "meta"), action="append",
                    help="run only these parts (repeatable); default all")
    ap.add_argument("--peak", type=float, default=DEFAULT_PEAK,
                    help=f"fp32 peak GFLOP/s of the machine (default {DEFAULT_PEAK:g})")
    ap.add_argument("--nets", nargs="+", default=list(INFERENCE_NETS),
                    help="AlexeyAB corpus cfg names for the inference part")
    ap.add_argument("--inference-threads", type=int, default=2,
                    help="torch threads for the inference part (default 2, the peak's cores)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="inference timing: wall time, or process CPU time / threads (steadier "
                    "on a shared machine; counts OpenMP spin-waits, so it errs low)")
    ap.add_argument("--compiled", action="store_true",
                    help="inference: also torch.compile (Inductor, freezing), and its compile time")
    args = ap.parse_args(argv)
    parts = args.only or ["inference", "train", "meta"]
    if "inference" in parts:
        saved = torch.get_num_threads()
        torch.set_num_threads(args.inference_threads)
        bench_inference(args.corpus, args.nets, max(args.repeat // 2, 3), args.peak, args.clock,
                        args.compiled)
        torch.set_num_threads(saved)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "train" in parts:
        bench_vgg16(args.batch, args.size, args.repeat)
    if "meta" in parts:
        bench_meta_build(args.corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
