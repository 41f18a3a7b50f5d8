"""A network written as a cfg trains as well as the same network written by hand in PyTorch.

Trains cfg/digits.cfg with runner.py (`--data digits`) and the same network as a hand-written
nn.Sequential loop — the same init (He normal kernels, zero biases: Darknet's), SGD with momentum
and decay on kernels only, the cfg's burn-in + steps schedule, batch 32, the same number of
updates — over several seeds on the same seeded 80/20 split of scikit-learn's 1,797 8x8 digits,
in one run. Prints mean/std validation top-1 and wall time of each, and their ratios.

    python bench/accuracy.py [--seeds 5] [--threads 1]

Both sides run in this process, one after the other per seed (interleaved, so load drifts hit
both), after one untimed warm-up pair: the first run in a process pays one-off costs that are not
training (importing torch._dynamo on the first SGD, scikit-learn, matplotlib), and whichever side
ran first would pay them. One thread by default: 8x8 images in batches of 32 are too little work
to split across cores (two threads take 2.6x longer here, and far more on a loaded machine).
darkcfg runs as a user would run it (`runner.main`, progress bar off), validating once at the
end (`--valid-every 1350`) and checkpointing once, as the hand-written loop does.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import darkcfg.cli.flags as runner  # noqa: E402
from darkcfg.data.digits import digits_arrays  # noqa: E402

CFG = ROOT / "cfg" / "digits.cfg"
# cfg/digits.cfg's [net], written out again by hand for the PyTorch side
BATCH, LR, MOMENTUM, DECAY = 32, 0.05, 0.9, 0.0005
BURN_IN, POWER, STEPS, SCALES, MAX_BATCHES = 45, 4, (900, 1200), (0.1, 0.1), 1350


def hand_written_net() -> nn.Sequential:
    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1), nn.LeakyReLU(0.1, inplace=True)]

    return nn.Sequential(*conv(1, 32), *conv(32, 32), nn.MaxPool2d(2), *conv(32, 64),
                         nn.MaxPool2d(2), nn.Conv2d(64, 10, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def rate(k: int) -> float:
    if k < BURN_IN:
        return LR * (k / BURN_IN) ** POWER
    return LR * math.prod(s for step, s in zip(STEPS, SCALES, strict=True) if step <= k)


def train_by_hand(seed: int) -> float:
    torch.manual_seed(seed)
    x_train, y_train, x_val, y_val = digits_arrays(seed)
    net = hand_written_net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
    kernels = [p for p in net.parameters() if p.dim() > 1]
    others = [p for p in net.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": kernels, "weight_decay": DECAY},
                           {"params": others, "weight_decay": 0.0}], lr=LR, momentum=MOMENTUM)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train),
                                         batch_size=BATCH, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    net.train()
    k = 0
    while k < MAX_BATCHES:
        for images, labels in loader:
            k += 1
            for group in opt.param_groups:
                group["lr"] = rate(k)
            loss = nn.functional.cross_entropy(net(images.float() / 255), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k == MAX_BATCHES:
                break
    net.eval()
    with torch.no_grad():
        predicted = net(x_val.float() / 255).argmax(1)
    return (predicted == y_val).float().mean().item()


def train_with_darkcfg(seed: int, out: Path) -> float:
    code = runner.main([str(CFG), "--train", "--data", "digits", "--seed", str(seed),
                        "--out", str(out), "--no-progress", "--valid-every", str(MAX_BATCHES),
                        "--checkpoint-every", str(MAX_BATCHES), "--workers", "0"])
    if code != 0:
        raise SystemExit(f"darkcfg training failed (status {code})")
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_top1")]
    return float(rows[-1]["val_top1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[tuple[float, float]]] = {"darkcfg": [], "hand-written": []}
    with tempfile.TemporaryDirectory() as tmp:
        train_with_darkcfg(0, Path(tmp) / "warm-up")
        train_by_hand(0)
        for seed in range(args.seeds):
            start = time.perf_counter()
            top1 = train_with_darkcfg(seed, Path(tmp) / f"seed{seed}")
            results["darkcfg"].append((top1, time.perf_counter() - start))
            start = time.perf_counter()
            top1 = train_by_hand(seed)
            results["hand-written"].append((top1, time.perf_counter() - start))
            print(f"seed {seed}: darkcfg top-1 {results['darkcfg'][-1][0]:.4f} in "
                  f"{results['darkcfg'][-1][1]:.1f} s, hand-written {top1:.4f} in "
                  f"{results['hand-written'][-1][1]:.1f} s", flush=True)
    print(f"\ncfg/digits.cfg, {args.seeds} seeds, {MAX_BATCHES} updates of {BATCH}, "
          f"{args.threads} threads")
    print(f"{'':14} {'top-1 mean':>10} {'std':>7} {'wall s mean':>11}")
    summary = {}
    for name, rows in results.items():
        accs, times = [r[0] for r in rows], [r[1] for r in rows]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        summary[name] = (statistics.mean(accs), statistics.mean(times))
        mean_acc, mean_time = summary[name]
        print(f"{name:14} {100 * mean_acc:9.2f}% {100 * std:6.2f}  {mean_time:10.1f}")
    gap = 100 * (summary["darkcfg"][0] - summary["hand-written"][0])
    ratio = summary["darkcfg"][1] / summary["hand-written"][1]
    print(f"darkcfg - hand-written: {gap:+.2f} points top-1; wall time ratio {ratio:.2f}x "
          "(targets: >= -0.5 points, both >= 97%, <= 1.05x)")


if __name__ == "__main__":
    main()
