"""Detector speed on a GPU: yolov4-tiny training img/s and inference FPS, next to Darknet's
published GPU figures.

    python bench/gpu_detect.py            # CUDA: yolov4-tiny 416, training batch 64 (~3 min)
    python bench/gpu_detect.py --smoke    # the same code on CPU at tiny size (tests run this)

Training: batches of the embedded detection set (augmented by the runner's own loader, then kept
on the device, so the step is what is timed) through the runner's `Trainer.step` with the
detection task's [yolo] losses, for {fp32/TF32, bf16 AMP} x {NCHW, channels_last} x
{eager, torch.compile}. Inference: the eval network at batch 1 and 8 (fp32/TF32 and bf16
autocast), the forward alone and with decode + NMS (`darkcfg.detect.decode`), frames per second.
Darknet's published yolov4-tiny 416 inference figures (AlexeyAB's README): 371 FPS on a GTX
1080 Ti, 330 on an RTX 2070 (batch 1, FP16 cuDNN, decode and NMS not counted). Nothing here
asserts a timing.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darkcfg.data.detection.dataset import Slot, collate, detection_datasets  # noqa: E402
from darkcfg.detect.decode import decode, head_indices, nms  # noqa: E402
from darkcfg.model import build_network  # noqa: E402
from darkcfg.train.loop import Trainer  # noqa: E402
from darkcfg.train.tasks import task_for  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from gpu import row_plan, timed  # noqa: E402  (bench/gpu.py: the rows; images a second, synced)

CFG = ROOT / "cfg" / "yolov4-tiny.cfg"
DARKNET_FPS = {"GTX 1080 Ti": 371, "RTX 2070": 330}  # yolov4-tiny 416, AlexeyAB's README


def network(size: int, batch: int, seed: int = 0):
    overrides = [f"width={size}", f"height={size}", f"batch={batch}", "subdivisions=1",
                 "burn_in=0", "max_batches=1000", "random=0"]
    return build_network(str(CFG), overrides, "alexeyab", seed)[:2]


def training_batches(net, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of the embedded detection set as the runner's loader makes them."""
    train = detection_datasets(net, None, seed=0, train_size=batch * count).train
    return [collate([train[Slot(i, j)] for j in range(batch)]) for i in range(count)]


def measure_training(args, device: torch.device) -> list[dict]:
    net, cfg = network(args.size, args.batch)
    batches = [(x.to(device), y.to(device)) for x, y in training_batches(net, args.batch, 4)]
    rows = []
    for precision, fmt, mode in row_plan(args.precisions, args.formats, args.compile_modes,
                                         args.quick):
        net, cfg = network(args.size, args.batch)
        trainer = Trainer(net, cfg, device, amp=precision == "bf16",
                          channels_last=fmt == "channels_last", compile=mode == "compile",
                          task=task_for(net, cfg))
        turn = itertools.cycle(batches)

        def step(trainer=trainer, turn=turn):
            x, y = next(turn)
            trainer.step(x, y)

        ips = timed(step, args.steps, args.warmup, args.batch, device)
        rows.append({"precision": precision, "format": fmt, "mode": mode, "img/s": ips})
        print(f"  train {precision:5} {fmt:13} {mode:8} {ips:9.1f} img/s", flush=True)
        del trainer, net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def measure_inference(args, device: torch.device) -> list[dict]:
    """Initial weights pass nearly every box (2535 at 416, the NMS worst case): the objectness
    biases are lowered until at most 40 pass .25 on the first image, as for a trained net on a
    photo (bench/detect.py's `typical` regime)."""
    from detect import calibrate_input  # bench/detect.py

    rows = []
    # fp16 autocast is what `darkcfg detect` runs on CUDA (darkcfg.detect.decode.run_heads)
    precisions = (*args.precisions, "fp16") if device.type == "cuda" else args.precisions
    for batch, precision in itertools.product((1, 8), precisions):
        net, _ = network(args.size, batch)
        x = torch.rand(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        net.eval()
        calibrate_input(net, x[:1], 40)
        net, x = net.to(device), x.to(device)
        heads = head_indices(net)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        amp = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

        def forward(net=net, x=x, heads=heads, amp=amp):
            with torch.inference_mode(), amp:
                return net(x, collect=heads)

        def end_to_end(net=net, forward=forward):
            outputs = {i: y.float() for i, y in forward().items()}
            nms(decode(net, outputs, 0.25))

        fps = timed(forward, args.steps * 2, args.warmup, batch, device)
        full = timed(end_to_end, args.steps * 2, args.warmup, batch, device)
        rows.append({"batch": batch, "precision": precision, "forward": fps, "with NMS": full})
        print(f"  infer batch {batch} {precision:5} forward {fps:9.1f} FPS, with decode + NMS "
              f"{full:9.1f} FPS", flush=True)
    return rows


def report(train: list[dict], infer: list[dict], device: torch.device, size: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"device: {name}   yolov4-tiny {size}x{size}", "",
             f"{'training':9} {'format':13} {'mode':8} {'img/s':>10}"]
    lines += [f"{r['precision']:9} {r['format']:13} {r['mode']:8} {r['img/s']:10.1f}"
              for r in train]
    lines += ["", f"{'inference':9} {'batch':>5} {'forward FPS':>12} {'+ decode/NMS':>13}"]
    lines += [f"{r['precision']:9} {r['batch']:5d} {r['forward']:12.1f} {r['with NMS']:13.1f}"
              for r in infer]
    lines += ["", "Darknet's published yolov4-tiny 416 (batch 1): "
              + ", ".join(f"{fps} FPS on a {gpu}" for gpu, fps in DARKNET_FPS.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="compile only bf16 channels_last (the eager rows all run)")
    p.add_argument("--only", choices=("training", "inference"), help="measure one part only")
    args = p.parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        args.size, args.batch, args.steps, args.warmup = 64, 2, 1, 1
        args.no_compile = True
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU check", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.precisions = ("fp32", "bf16")
    args.formats = ("nchw", "channels_last")
    args.compile_modes = ("eager",) if args.no_compile else ("eager", "compile")
    train = [] if args.only == "inference" else measure_training(args, device)
    infer = [] if args.only == "training" else measure_inference(args, device)
    print()
    print(report(train, infer, device, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
