"""GPU training throughput: darkcfg's VGG-16 next to a tuned hand-written torchvision loop.

    python bench/gpu.py            # one H100/H200: 224x224, batch 128, every mode (< 8 minutes)
    python bench/gpu.py --smoke    # the same code on CPU at tiny size (the test suite runs this)

Rows: {fp32/TF32, bf16 AMP} x {NCHW, channels_last} x {eager, torch.compile}, synthetic data
already on the device, torchvision `vgg16` in a hand-written loop (zero_grad/forward/loss/backward/
step, fused SGD) vs `cfg/vgg16.cfg` through the runner's own `Trainer.step`, both starting from the
same weights. Prints img/s, the ratio darkcfg/torchvision and model FLOP utilisation (VGG-16 =
15.47 GMAC forward at 224x224; training ~ 3x forward; against the device's dense bf16 peak), then
a real-data row: the runner's DataLoader over an ImageFolder of generated JPEGs, alone and feeding
the step, to show whether input is the bottleneck. Timings are never asserted anywhere.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builders.presets import load_torchvision_state_dict  # noqa: E402
from darkcfg.model import build_network  # noqa: E402
from darkcfg.train.loop import Trainer  # noqa: E402

VGG16_GMAC = 15.47  # forward, 224x224, per image
# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets), matched on the device name.
PEAK_BF16 = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
             ("L40S", 362.0), ("A10", 125.0), ("4090", 165.0), ("V100", 125.0)]


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16:
        if key in name:
            return value
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, steps: int, warmup: int, batch: int, device: torch.device) -> float:
    """Images per second of `step()` over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def torchvision_step(model, x, y, bf16: bool, device: torch.device):
    """The tuned hand-written loop: fused SGD, set_to_none, autocast, no host syncs."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4,
                          **({"fused": True} if device.type == "cuda" else {}))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def runner_step(trainer, x, y):
    """The runner's own training step (darkcfg.train.loop.Trainer.step) on in-device data."""
    return lambda: trainer.step(x, y)


def darkcfg_trainer(size: int, batch: int, bf16: bool, channels_last: bool, compile: bool,
                    device: torch.device, state_dict: dict, classes: int):
    overrides = [f"width={size}", f"height={size}", f"batch={batch}", "subdivisions=1",
                 "burn_in=0"]
    net, cfg, _ = build_network(str(ROOT / "cfg" / "vgg16.cfg"), overrides, "alexeyab", seed=0)
    load_torchvision_state_dict(net, state_dict)
    return Trainer(net, cfg, device, amp=bf16, channels_last=channels_last, compile=compile)


def measure_modes(args, device: torch.device) -> list[dict]:
    size, batch = args.size, args.batch
    classes = 1000
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    rows = []
    for precision, fmt, mode in args.rows:
        bf16, cl, comp = precision == "bf16", fmt == "channels_last", mode == "compile"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        memory_format = torch.channels_last if cl else torch.contiguous_format
        xm = x.contiguous(memory_format=memory_format)
        model = torchvision.models.vgg16(weights=None)
        model.load_state_dict(state)
        model = model.to(device, memory_format=memory_format)
        tv = torch.compile(model) if comp else model
        tv_ips = timed(torchvision_step(tv, xm, y, bf16, device), args.steps, args.warmup,
                       batch, device)
        del model, tv
        trainer = darkcfg_trainer(size, batch, bf16, cl, comp, device, state, classes)
        dk_ips = timed(runner_step(trainer, xm, y), args.steps, args.warmup, batch, device)
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append({"precision": precision, "format": fmt, "mode": mode,
                     "torchvision": tv_ips, "darkcfg": dk_ips})
        print("  " + row_line(rows[-1], device, size), flush=True)
    return rows


def row_plan(precisions, formats, compile_modes, quick: bool) -> list[tuple[str, str, str]]:
    """(precision, format, mode) rows, eager ones first so a run cut short still has them;
    --quick compiles only the fastest eager setting (bf16, channels_last)."""
    eager = [(p, f, "eager") for p, f in itertools.product(precisions, formats)]
    if "compile" not in compile_modes:
        return eager
    if quick:
        return eager + [(precisions[-1], formats[-1], "compile")]
    return eager + [(p, f, "compile") for p, f in itertools.product(precisions, formats)]


def make_jpegs(folder: Path, count: int, size: int, classes: int = 4) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", count), ("val", max(classes, count // 8))):
        for i in range(n):
            label = i % classes
            d = folder / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(d / f"{i:05d}.jpg", quality=90)


def measure_real_data(args, device: torch.device) -> dict:
    """The runner's own data path (ImageFolder -> augment -> DataLoader) alone and with the
    step, at the same size and batch."""
    from darkcfg.data import default_workers, make_stream
    from darkcfg.train.tasks import ClassifyTask

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_jpegs(folder, args.jpegs, int(args.size * 1.15))
        overrides = [f"width={args.size}", f"height={args.size}", f"batch={args.batch}",
                     "subdivisions=1", "burn_in=0"]
        net, cfg, _ = build_network(str(ROOT / "cfg" / "vgg16.cfg"), overrides, "alexeyab", 0)
        task = ClassifyTask(1000, (3, args.size, args.size))
        splits = task.open_data(str(folder), seed=0)
        train, _ = task.prepare(splits, cfg, seed=0)
        workers = default_workers(device, 1, busy=True)
        stream = make_stream(train, args.batch, 1, 0, 0, device, workers)
        batches = stream.batches(0)
        next(batches)
        n = args.steps + args.warmup
        start = time.perf_counter()
        for _ in range(n):
            next(batches)
        loader_ips = n * args.batch / (time.perf_counter() - start)
        trainer = Trainer(net, cfg, device)  # the runner's defaults for this device

        def step():
            images, targets = next(batches)
            trainer.step(images, targets % 1000)

        step_ips = timed(step, args.steps, args.warmup, args.batch, device)
        return {"workers": workers, "loader": loader_ips, "loader+step": step_ips}


def nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(nvidia-smi unavailable: {exc})"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def row_line(r: dict, device: torch.device, size: int) -> str:
    peak = peak_tflops(device_name(device)) if device.type == "cuda" else None
    train_gflop = 3 * 2 * VGG16_GMAC * (size / 224) ** 2  # per image
    ratio = r["darkcfg"] / r["torchvision"]
    tflops = r["darkcfg"] * train_gflop / 1e3
    mfu = f"{100 * tflops / peak:7.1f}%" if peak else "     n/a"
    return (f"{r['precision']:9} {r['format']:13} {r['mode']:8} "
            f"{r['torchvision']:10.1f}/s {r['darkcfg']:8.1f}/s {ratio:6.3f} {mfu}")


def report(rows: list[dict], real: dict, device: torch.device, size: int) -> str:
    name = device_name(device)
    peak = peak_tflops(name) if device.type == "cuda" else None
    lines = [f"device: {name}   bf16 dense peak: {peak or 'unknown'} TFLOP/s   "
             f"image {size}x{size}", "",
             f"{'precision':9} {'format':13} {'mode':8} {'torchvision':>12} {'darkcfg':>10} "
             f"{'ratio':>6} {'MFU(dk)':>8}"]
    lines += [row_line(r, device, size) for r in rows]
    lines += ["", f"real data (ImageFolder of JPEGs, {real['workers']} loader workers): "
                  f"loader alone {real['loader']:.1f} img/s, loader + step "
                  f"{real['loader+step']:.1f} img/s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--jpegs", type=int, default=1024)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="compile only bf16 channels_last (the eager rows all run)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    args.precisions = ["fp32", "bf16"]
    args.formats = ["nchw", "channels_last"]
    args.compile_modes = ["eager"] if args.no_compile else ["eager", "compile"]
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup, args.jpegs = 32, 2, 1, 1, 8
        args.precisions, args.compile_modes = ["fp32"], ["eager"]
        args.formats = ["channels_last"]  # the less trivial path; one row keeps the test short
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.rows = row_plan(args.precisions, args.formats, args.compile_modes, args.quick)
    print(f"bench/gpu.py on {device} (smoke={args.smoke})", flush=True)
    rows = measure_modes(args, device)
    real = measure_real_data(args, device)
    print()
    print(report(rows, real, device, args.size))
    if device.type == "cuda":
        print()
        print(nvidia_smi())
    return 0


if __name__ == "__main__":
    sys.exit(main())
