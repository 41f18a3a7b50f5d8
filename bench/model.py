"""Model speed: our VGG-16 (cfg/vgg16.cfg) against torchvision's vgg16 with the same weights,
forward + backward on the CPU; and the time to meta-build every corpus cfg.

    python bench/model.py [--batch 4] [--size 64] [--repeat 9] [--threads N]

The two models run back to back within each repeat (in alternating order), so a busy machine
slows both alike; min and median over the repeats are printed, their ratios, and the median of
the per-repeat ratios (target: ours <= 1.02x torchvision).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builders import build  # noqa: E402
from builders.presets import load_torchvision_state_dict  # noqa: E402
from cfgparse import CfgError  # noqa: E402

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
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_vgg16(args.batch, args.size, args.repeat)
    bench_meta_build(args.corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
