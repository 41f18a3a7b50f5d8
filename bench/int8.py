"""Calibrated INT8 (onnxruntime) against darkcfg's fp32 CPU fast path, on trained detectors.

    python bench/int8.py [--cfg CFG ...] [--size 416] [--train-size 160] [--iterations 300]
                         [--weights W ...] [--calib-images 64] [--keep-fp32 0|N|auto]
                         [--repeats 10] [--threads 2] [--out DIR]

For each cfg (default cfg/yolov4-tiny.cfg and cfg/yolov3-tiny.cfg): train it on the embedded
detection set (4 classes) for --iterations at --train-size through the runner's own code
(or take --weights, one per cfg, e.g. from a bench/detect_train.py run folder), then at
--size x --size:
- export fp32 ONNX and calibrated INT8 (darkcfg.export.int8: 64 training images through the
  network's own resize, QDQ, per-channel int8 weights, uint8 activations);
- mAP@0.5 on the validation split of fp32 (onnxruntime) and INT8 (`detector map`'s rules);
- latency at batch 1 and 8 of darkcfg's fp32 fast path (PyTorch, folded batch-norm, oneDNN)
  and of the INT8 model in onnxruntime, in the same process, interleaved, best of --repeats
  (the least disturbed run on a shared machine).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfgparse import CfgError  # noqa: E402
from darkcfg.export.int8 import (  # noqa: E402
    Int8Options,
    export_int8,
    latency,
    open_int8_data,
    parse_keep_fp32,
    runner,
)
from darkcfg.model import build_network, load_any_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4


def train_briefly(cfg: Path, size: int, iterations: int, out: Path, seed: int) -> Path:
    from darkcfg.train.loop import Schedule
    from darkcfg.train.session import RunOptions, train

    name = cfg.stem
    sets = (f"width={size}", f"height={size}", "batch=16", "subdivisions=1",
            "learning_rate=0.002", f"burn_in={max(iterations // 10, 1)}",
            f"max_batches={iterations}",
            f"steps={int(iterations * 0.8)},{int(iterations * 0.9)}", "scales=.1,.1")
    opts = RunOptions(cfg_path=str(cfg), name=name, out=out / name, seed=seed, device="cpu",
                      sets=sets, progress=False, explicit_out=True, classes=CLASSES,
                      schedule=Schedule(valid_every=0, checkpoint_every=iterations))
    train(opts)
    return out / name / f"{name}_final.weights"


def fast_path(net):
    net.eval().use_fast_inference(True)

    def run(x: torch.Tensor):
        with torch.inference_mode():
            return net(x)

    return run


def bench_one(cfg: Path, weights: Path, args) -> dict:
    net, netcfg, _ = build_network(str(cfg), [f"width={args.size}", f"height={args.size}"],
                                   "alexeyab", args.seed)
    load_any_weights(net, str(weights))
    net.eval()
    data = open_int8_data(net, netcfg, None, args.seed, args.calib_images, classes=CLASSES)
    out = Path(args.out) / f"{cfg.stem}.int8.onnx"
    report = export_int8(net, out, data, Int8Options(
        keep_fp32=parse_keep_fp32(args.keep_fp32), batches=(), repeats=1,
        threads=args.threads))
    int8 = runner(out, args.threads)
    fast = fast_path(net)
    rows = {}
    for batch in (1, 8):
        x = data.calibration[:1].expand(batch, -1, -1, -1).contiguous()
        a, b = [], []
        for _ in range(3):  # interleaved: a load spike hits both
            a.append(latency(fast, x, max(args.repeats // 3, 1)))
            b.append(latency(int8, x, max(args.repeats // 3, 1)))
        rows[batch] = (min(a), min(b))
    return {"cfg": cfg.name, "size": args.size, "metric": report.metric,
            "fp32_map50": round(report.fp32, 2), "int8_map50": round(report.int8, 2),
            "map50_lost": round(report.fp32 - report.int8, 2),
            "kept_fp32": [s.layer for s in report.kept_fp32],
            "output_l2_error": round(report.output_error, 4),
            **{f"fast_fp32_ms_b{b}": round(1e3 * f, 2) for b, (f, _) in rows.items()},
            **{f"int8_ms_b{b}": round(1e3 * q, 2) for b, (_, q) in rows.items()},
            **{f"speedup_b{b}": round(f / q, 2) for b, (f, q) in rows.items()},
            "report": str(report)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", nargs="+", default=[str(ROOT / "cfg" / "yolov4-tiny.cfg"),
                                                 str(ROOT / "cfg" / "yolov3-tiny.cfg")])
    p.add_argument("--weights", nargs="*", default=None, help="one per --cfg (skip training)")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--train-size", type=int, default=160)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--keep-fp32", default="0")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-int8")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = []
    for k, cfg in enumerate(map(Path, args.cfg)):
        started = time.perf_counter()
        try:
            weights = Path(args.weights[k]) if args.weights else \
                train_briefly(cfg, args.train_size, args.iterations, Path(args.out), args.seed)
            trained_s = time.perf_counter() - started
            row = bench_one(cfg, weights, args)
        except CfgError as exc:  # e.g. --out already holds a run: say so, no traceback
            print(exc, file=sys.stderr)
            return 2
        row["train_s"] = round(trained_s, 1)
        print(row.pop("report"), flush=True)
        results.append(row)
    print(f"\n{'cfg':16} {'mAP50 fp32':>10} {'INT8':>6} {'lost':>5} | {'fast fp32 b1':>12} "
          f"{'INT8 b1':>8} {'x':>5} | {'fast fp32 b8':>12} {'INT8 b8':>8} {'x':>5}")
    for r in results:
        print(f"{r['cfg']:16} {r['fp32_map50']:10.2f} {r['int8_map50']:6.2f} "
              f"{r['map50_lost']:5.2f} | {r['fast_fp32_ms_b1']:10.2f}ms {r['int8_ms_b1']:6.2f}ms "
              f"{r['speedup_b1']:5.2f} | {r['fast_fp32_ms_b8']:10.2f}ms "
              f"{r['int8_ms_b8']:6.2f}ms {r['speedup_b8']:5.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
