"""Detection data cost: one augmented training image vs one image of forward+backward.

    python bench/detect_data.py [--cfg CFG] [--size 160] [--images 64] [--rounds 3] [--set K=V]

Both sides run on one thread in this process and are timed in CPU seconds (a shared machine's
load inflates neither much). The data side is `DetectionTrain[Slot(iteration, slot)]` on
the embedded set (decode-free: generation + the cfg's augmentation, multi-scale included);
the network side is a forward and backward of a batch at the cfg size. Prints images/s of both
and their ratio: the share of one core the loader needs per core of training (< 1: a single
loader worker keeps up with one training core).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    from builders import build
    from darkcfg.data.detection.augment import DetectionSettings
    from darkcfg.data.detection.dataset import Slot, embedded_detection
    from darkcfg.model import load_blocks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cfg", default=str(ROOT / "cfg" / "yolov3-tiny.cfg"))
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sets = [f"width={args.size}", f"height={args.size}", "batch=8", *args.sets]
    blocks, _ = load_blocks(args.cfg, sets)
    net = build(blocks)
    settings = DetectionSettings.from_network(net)
    splits = embedded_detection(settings, seed=0, train_size=1024, val_size=8)
    train = splits.train
    x = torch.rand(8, settings.channels, settings.height, settings.width)
    outputs = [i for i, layer in enumerate(net.layers) if layer.is_output]

    def data_round(r: int) -> float:
        t = time.process_time()
        for k in range(args.images):
            train[Slot(r * 1000 + k // 8, k % 8)]
        return args.images / (time.process_time() - t)

    def net_round(_: int) -> float:
        t = time.process_time()
        for _ in range(max(args.images // 8, 1)):
            out = net(x, collect=outputs)
            sum(out[i].float().square().mean() for i in outputs).backward()
        return max(args.images // 8, 1) * 8 / (time.process_time() - t)

    data_round(0), net_round(0)  # warm-up (imports, allocator)
    data = max(data_round(r + 1) for r in range(args.rounds))
    nets = max(net_round(r + 1) for r in range(args.rounds))
    print(f"cfg {Path(args.cfg).name} at {args.size}x{args.size}; augment: "
          f"{', '.join(settings.honoured()) or 'none'}")
    print(f"data    {data:8.1f} img/s per core (embedded set, augmented)")
    print(f"network {nets:8.1f} img/s per core (forward + backward)")
    print(f"ratio   {nets / data:8.2f} loader cores per training core")


if __name__ == "__main__":
    main()
