"""Training throughput: the runner's own step vs a minimal hand-written PyTorch loop.

    python bench/train.py [--cfg CFG] [--set KEY=VALUE ...] [--steps N] [--rounds R] [--device D]

Both sides train the same network (two copies with identical initial weights) on the same
in-memory batch: the runner through `darkcfg.train.loop.Trainer.step` (Darknet lr schedule, param
groups, accumulation, AMP/channels_last on CUDA), the baseline through the PyTorch how-to's
zero_grad / forward / loss / backward / step with one torch.optim.SGD. Rounds alternate between
the two and each side's figure is its best round, so a shared machine's background load inflates
neither. Prints images/s of both and their ratio (target >= 0.97 on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from darkcfg.config import apply_overrides  # noqa: E402

# A small classifier in the shape of the presets (conv/BN/leaky, pools, connected, softmax).
DEFAULT_CFG = """
[net]
width=32
height=32
channels=3
batch=32
subdivisions=1
learning_rate=0.01
momentum=0.9
decay=0.0005
max_batches=1000000

[convolutional]
filters=32
size=3
pad=1
batch_normalize=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=64
size=3
pad=1
batch_normalize=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=128
size=3
pad=1
batch_normalize=1
activation=leaky

[avgpool]

[connected]
output=10
activation=linear

[softmax]
"""


def build(source: str, sets: list[str], seed: int):
    from builders import build as build_net
    from cfgparse import parse
    from darkcfg.config import NetConfig

    blocks = list(parse(source))
    blocks[0], _ = apply_overrides(blocks[0], sets)
    torch.manual_seed(seed)
    net = build_net(blocks)
    return net, NetConfig.from_block(net.net_block)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default=None, help="cfg file (default: a small built-in classifier)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=20, help="steps per round (20)")
    p.add_argument("--rounds", type=int, default=10, help="rounds per side (10)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    from darkcfg.train.loop import Trainer

    device = torch.device(args.device)
    source = args.cfg or DEFAULT_CFG
    sets = ["subdivisions=1", *args.set]  # the baseline has no accumulation
    runner_net, cfg = build(source, sets, 0)
    hand_net, _ = build(source, sets, 0)
    trainer = Trainer(runner_net, cfg, device)
    index = trainer.task.heads[-1]

    shape = runner_net.input_shape
    batch = cfg.images_per_iteration
    gen = torch.Generator().manual_seed(1)
    inputs = (shape.c, shape.h, shape.w) if shape.c * shape.h * shape.w else (shape.size,)
    classes = runner_net.meta[index].input.size
    x = torch.rand(batch, *inputs, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)

    hand_net.to(device).train()
    opt = torch.optim.SGD(hand_net.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                          weight_decay=cfg.decay)
    loss_fn = torch.nn.CrossEntropyLoss()

    def hand_step():
        opt.zero_grad()
        logits = hand_net(x, collect=[index - 1])[index - 1]
        loss = loss_fn(logits.reshape(batch, -1), y)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(step) -> tuple[float, float]:
        """(images/s of wall time, images/s of this process's CPU time) over args.steps."""
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            loss = step()
        float(loss)
        sync()
        images = args.steps * batch
        return (images / (time.perf_counter() - start),
                images / max(time.process_time() - cpu, 1e-9))

    runner_step = lambda: trainer.step(x, y)  # noqa: E731
    for step in (runner_step, hand_step):  # warm-up (allocator, oneDNN/cuDNN plans)
        for _ in range(3):
            step()
    rounds: dict[str, list[tuple[float, float]]] = {"runner": [], "hand": []}
    for r in range(args.rounds):
        order = (("runner", runner_step), ("hand", hand_step))
        for name, step in order if r % 2 == 0 else order[::-1]:
            rounds[name].append(timed(step))
    best = {name: max(w for w, _ in rs) for name, rs in rounds.items()}
    # CPU time is what the process itself spent: other jobs on a shared machine inflate wall
    # time far more than CPU time; paired per round, then the median
    cpu_ratio = statistics.median(rc / hc for (_, rc), (_, hc)
                                  in zip(rounds["runner"], rounds["hand"], strict=True))
    print(f"device {device}, batch {batch}, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"runner Trainer.step : {best['runner']:9.1f} img/s (best round, wall)")
    print(f"hand-written loop   : {best['hand']:9.1f} img/s (best round, wall)")
    print(f"ratio runner/hand   : {best['runner'] / best['hand']:9.3f}  wall, best rounds")
    print(f"ratio runner/hand   : {cpu_ratio:9.3f}  CPU time, median of paired rounds "
          f"(target >= 0.97 on CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
