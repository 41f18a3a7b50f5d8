"""Where one detector training iteration's time goes, on the CPU.

    python bench/profile_train.py [--cfg CFG ...] [--size 160 416] [--batch 16] [--iterations 3]
                                  [--threads 2] [--channels-last] [--amp]

For each cfg and size: the data (16 augmented samples of the embedded set: generation,
augmentation, collation; a Darknet-format set adds JPEG decoding), then the phases of
`Trainer.step` timed one by one (the network's forward to the heads' inputs, the heads' loss,
backward, the optimizer update), then torch's profiler over whole steps, its operators grouped
into convolution forward / backward, batch-norm, activations, the loss's tensor work, the
optimizer and the rest. Medians over `--iterations` after one warm-up iteration. Times are
milliseconds per iteration; shares are of the step (data excluded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: operator name fragments -> group (first match wins)
GROUPS = (("convolution_backward", "conv backward"), ("mkldnn_convolution", "conv forward"),
          ("_convolution", "conv forward"), ("conv2d", "conv forward"),
          ("batch_norm", "batch-norm"), ("leaky_relu", "activations"), ("mish", "activations"),
          ("sigmoid", "activations"), ("silu", "activations"), ("softplus", "activations"),
          ("max_pool", "pool/route/upsample"), ("upsample", "pool/route/upsample"),
          ("cat", "pool/route/upsample"), ("sgd", "optimizer"), ("_foreach", "optimizer"),
          # the native kernels' autograd functions (builders/native_kernels.c)
          ("_batchnormact", "batch-norm + activation (native)"),
          ("_nativemaxpool", "pool/route/upsample"))


def group_of(name: str) -> str:
    low = name.lower()
    for fragment, group in GROUPS:
        if fragment in low:
            return group
    return "other (loss tensor work, copies, ...)"


def profile_one(cfg: str, size: int, args) -> dict:
    from darkcfg.data.detection.dataset import Slot
    from darkcfg.model import build_network
    from darkcfg.train.loop import Trainer, darknet_init
    from darkcfg.train.tasks import task_for

    sets = [f"width={size}", f"height={size}", f"batch={args.batch}", "subdivisions=1",
            "yolo.random=0", "burn_in=0", "max_batches=1000"]
    net, netcfg, _ = build_network(cfg, sets, "alexeyab", 0)
    darknet_init(net)
    task = task_for(net, netcfg)
    splits = task.open_data(args.data, 0)
    trainer = Trainer(net, netcfg, "cpu", task=task, amp=bool(args.amp),
                      channels_last=True if args.channels_last else None)
    train = splits.train

    data_ms = []
    batches = []
    for it in range(args.iterations + 1):
        started = time.perf_counter()
        samples = [train[Slot(it, k)] for k in range(trainer.batch)]
        batches.append(task.collate(samples))
        data_ms.append((time.perf_counter() - started) * 1e3)
    phases = {"forward": [], "loss": [], "backward": [], "optimizer": []}
    for it, (images, truth) in enumerate(batches):
        x = trainer.to_device(images)
        t0 = time.perf_counter()
        with trainer.autocast():
            inputs = task.head_inputs(net, x)
        t1 = time.perf_counter()
        total = None
        for i in task.heads:
            part, _ = net.layers[i].loss(inputs[i].float(), truth, seen=16)
            total = part if total is None else total + part
        t2 = time.perf_counter()
        total.backward()
        t3 = time.perf_counter()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if it:  # the first is the warm-up
            for name, (a, b) in (("forward", (t0, t1)), ("loss", (t1, t2)),
                                 ("backward", (t2, t3)), ("optimizer", (t3, t4))):
                phases[name].append((b - a) * 1e3)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for images, truth in batches[1:]:
            trainer.step(images, truth)
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        groups[group_of(event.key)] = groups.get(group_of(event.key), 0.0) + \
            event.self_cpu_time_total / 1e3 / args.iterations
    return {"cfg": Path(cfg).name, "size": size,
            "data_ms": statistics.median(data_ms[1:]),
            "phases_ms": {k: statistics.median(v) for k, v in phases.items()},
            "ops_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", nargs="+", default=[str(ROOT / "cfg" / "yolov3-tiny.cfg"),
                                                str(ROOT / "cfg" / "yolov4-tiny.cfg")])
    p.add_argument("--size", type=int, nargs="+", default=[160, 416])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=None, help="a Darknet .data file (default: embedded)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast (channels-last unless told otherwise): train --amp")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from darkcfg.train.allocator import keep_freed_memory

    keep_freed_memory()  # as `darkcfg train` does on the CPU where memory allows
    for cfg in args.cfg:
        for size in args.size:
            r = profile_one(cfg, size, args)
            step = sum(r["phases_ms"].values())
            print(f"\n{r['cfg']} {size}x{size} batch {args.batch}: step {step:.0f} ms, data "
                  f"{r['data_ms']:.0f} ms ({r['data_ms'] / step:.0%} of the step)")
            for name, ms in r["phases_ms"].items():
                print(f"  phase {name:<11} {ms:8.1f} ms {ms / step:6.1%}")
            total = sum(r["ops_ms"].values())
            for name, ms in r["ops_ms"].items():
                print(f"  ops   {name:<36} {ms:8.1f} ms {ms / total:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
