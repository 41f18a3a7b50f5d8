"""Cost of the detection-head losses (builders/heads/) relative to the network itself.

    python bench/head_loss.py [--cfg CFG] [--size 416] [--batch 16] [--boxes 20] [--rounds 5]

Times, in the same run and on the same device: (a) one forward + backward of the whole network
at that size (the baseline), (b) the loss of every head on the head inputs of that forward,
forward and backward of the surrogate only. Each figure is the best of `--rounds` rounds, so a
shared machine's background load inflates neither. Prints both and the ratio loss / network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builders.graph import build  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "darknet"


def _truth(batch: int, boxes: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    truth = torch.zeros(batch, boxes + 10, 5)
    xy = torch.rand(batch, boxes, 2, generator=gen) * 0.9 + 0.05
    wh = torch.rand(batch, boxes, 2, generator=gen) * 0.4 + 0.02
    cls = torch.randint(0, classes, (batch, boxes, 1), generator=gen).float()
    truth[:, :boxes] = torch.cat([xy, wh, cls], -1)
    return truth


def _best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cfg", default=str(SHARED / "corpus" / "alexeyab" / "yolov4-tiny.cfg"))
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--boxes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    text = Path(args.cfg).read_text()
    net = build(text).to(args.device).train()
    heads = [i for i, layer in enumerate(net.layers) if layer.loss_target == "boxes"]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, net.info.channels, args.size, args.size, generator=gen)
    x = x.to(args.device)
    truth = _truth(args.batch, args.boxes, net.layers[heads[0]].classes, gen).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def network():
        outs = net(x)
        sum(o.float().mean() for o in outs).backward()
        sync()

    feats = net(x, collect=[i - 1 for i in heads])
    inputs = [feats[i - 1].detach().requires_grad_() for i in heads]

    def losses():
        total = sum(net.layers[i].loss(f, truth, seen=0)[0] for i, f in zip(heads, inputs,
                                                                             strict=True))
        total.backward()
        sync()

    network(), losses()  # warm-up
    t_net, t_loss = 0.0, 0.0
    t_net = _best(network, args.rounds)
    t_loss = _best(losses, args.rounds)
    print(f"{Path(args.cfg).name} {args.size}px batch {args.batch}, {args.boxes} boxes/image, "
          f"{len(heads)} heads, {args.device}, torch threads {torch.get_num_threads()}")
    print(f"network forward+backward: {t_net * 1e3:8.1f} ms")
    print(f"head losses (all heads):  {t_loss * 1e3:8.1f} ms")
    print(f"ratio loss / network:     {t_loss / t_net:8.3f}")


if __name__ == "__main__":
    main()
