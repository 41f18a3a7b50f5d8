"""Detector training on a CPU: images/s and validation mAP after a fixed training budget.

    python bench/detect_train.py [--cfg CFG ...] [--size 160] [--budget-min 20] [--threads 2]
                                 [--batch 16] [--lr 0.002] [--set KEY=VALUE ...] [--out DIR]
                                 [--data X.data] [--random 0] [--iterations N] [--burn-in N]
                                 [--subdivisions 1] [--darknet-build opencv|native] [--amp]

`--data X.data` trains on a Darknet-format set (`bench/darknet_set.py` writes the embedded set
as one) instead of the embedded set; `--random 0` sets every [yolo]'s `random` (0: fixed size).
With `--iterations N` the run is Darknet's schedule (burn_in 10% or `--burn-in`, steps at
80%/90%) with no speed probe, and the row also gives the wall time with the validations
included and its img/s against Darknet's 7.1 img/s (issue 22: yolov3-tiny, 160x160, batch 16,
900 iterations and four validations in 2,073 s on the CPU).

For each cfg (default cfg/yolov3-tiny.cfg and cfg/yolov4-tiny.cfg) at SIZE x SIZE on the
embedded detection set: a short probe measures the training speed (at the first multi-scale
period's size, the largest), `max_batches` is set so that training fills the budget (a step's
time taken as proportional to the input's area, summed over the sizes multi-scale will draw),
and the run goes through the runner's own code (`darkcfg.train.session.train`: the cfg's loss,
augmentation and `random=1` multi-scale, Darknet's lr schedule with burn-in and steps at
80%/90%), validating (Darknet's -map: mAP@0.5, COCO mAP@[.5:.95]) four times and at the end.
Validation time is not part of the budget. Prints one row per cfg and a JSON line; the run
folders (metrics.csv, chart.png with the mAP curve, weights) stay under --out.

Overrides the bench applies to the cfg (the rest of [net] and every [yolo] key stay):
width/height = SIZE, batch = --batch with subdivisions = --subdivisions (1), learning_rate =
--lr (0.001), burn_in = 10% of the run (the cfgs' 1000 is meant for 500k-iteration GPU runs),
steps/scales, max_batches.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from darkcfg.model import build_network  # noqa: E402
from darkcfg.train.loop import Schedule  # noqa: E402
from darkcfg.train.session import RunOptions, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CFGS = ("cfg/yolov3-tiny.cfg", "cfg/yolov4-tiny.cfg")
#: the iterations whose avg loss issue 22 lists for Darknet
LOSS_POINTS = (1, 50, 100, 200, 300, 500, 900)


#: Darknet's CPU training rate on issue 22's set (yolov3-tiny random=0, 160x160, batch 16: 900
#: iterations and four mAP validations in 2,073 s)
DARKNET_IMAGES_PER_S = 7.1


def probe_speed(cfg: str, sets: list[str], iterations: int, seed: int, data: str | None = None):
    """Training images/s of the runner's step on the real detection batches (after one warm-up
    iteration), at iteration 0's size (multi-scale starts at its largest), and the training
    set, whose `size_at` gives every later iteration's size."""
    from darkcfg.train.detection import DetectionTask
    from darkcfg.train.loop import Trainer, darknet_init
    from darkcfg.train.tasks import task_for

    net, netcfg, _ = build_network(cfg, sets, "alexeyab", seed)
    darknet_init(net)
    task = task_for(net, netcfg)
    assert isinstance(task, DetectionTask), f"{cfg} is not a detector"
    splits = task.open_data(data, seed)
    trainer = Trainer(net, netcfg, "cpu", task=task)
    batches = task.stream(splits.train, trainer.batch, 1, 0, seed, "cpu", 0).batches(0)
    data = [next(batches) for _ in range(iterations + 1)]
    trainer.step(*data[0])
    started = time.perf_counter()
    for images, truth in data[1:]:
        trainer.step(images, truth)
    return iterations * trainer.batch / (time.perf_counter() - started), splits.train


def iterations_for_budget(budget_s: float, probe: float, batch: int, train_set) -> int:
    """How many iterations fill `budget_s` seconds of training: a step's time taken as
    proportional to the input's area (the probe ran at iteration 0's, the largest), summed over
    the multi-scale sizes the run will draw. Those depend on max_batches (its last 100
    iterations use the largest size), so the count is refined a few times."""
    from darkcfg.data.detection.scales import training_size

    s = train_set.settings
    w0, h0 = train_set.size_at(0)
    per_pixel = 1 / (probe * w0 * h0)  # seconds per image per input pixel
    n = max(int(budget_s * probe / batch), 10)
    for _ in range(6):
        areas = (w * h for w, h in (training_size(i, s.width, s.height, s.random, train_set.seed,
                                                  n, s.resize_step) for i in range(n)))
        total = batch * per_pixel * sum(areas)
        n = max(int(n * budget_s / total), 10)
    return n


def read_rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def run_one(cfg: str, args) -> dict:
    name = Path(cfg).stem
    base = [f"width={args.size}", f"height={args.size}", f"batch={args.batch}",
            f"subdivisions={args.subdivisions}", f"learning_rate={args.lr}", *args.set]
    if args.random is not None:
        base.append(f"yolo.random={args.random:g}")
    if args.iterations:
        probe, iterations = None, args.iterations
    else:
        probe, train_set = probe_speed(cfg, [*base, "max_batches=1000"], args.probe, args.seed,
                                       args.data)
        iterations = iterations_for_budget(args.budget_min * 60, probe, args.batch, train_set)
    burn_in = args.burn_in if args.burn_in is not None else max(iterations // 10, 1)
    sets = [*base, f"max_batches={iterations}", f"burn_in={burn_in}",
            "policy=steps", f"steps={int(iterations * 0.8)},{int(iterations * 0.9)}",
            "scales=.1,.1"]
    out = Path(args.out) / name
    opts = RunOptions(cfg_path=cfg, name=name, out=out, seed=args.seed, device="cpu",
                      data=args.data,
                      sets=tuple(sets), progress=not args.no_progress, explicit_out=True,
                      workers=args.workers, amp=True if args.amp else None,
                      darknet_build=args.darknet_build,
                      schedule=Schedule(valid_every=max(-(-iterations // 4), 1),
                                        checkpoint_every=max(iterations // 4, 1)))
    started = time.perf_counter()
    how, trainer = train(opts)
    wall = time.perf_counter() - started
    rows = read_rows(out)
    speeds = [float(r["images_per_s"]) for r in rows[1:]] or [0.0]
    train_s = sum(args.batch / s for s in speeds if s > 0)
    val = [r for r in rows if r.get("val_map50")]
    last = val[-1] if val else {}
    rate = iterations * args.batch / wall  # validations, checkpoints and loading included
    return {"cfg": cfg, "size": args.size, "batch": args.batch, "iterations": iterations,
            "data": args.data or "embedded",
            "stopped": how, "probe_images_per_s": probe and round(probe, 2),
            "wall_s": round(wall, 1), "wall_images_per_s": round(rate, 2),
            "vs_darknet": round(rate / DARKNET_IMAGES_PER_S, 2),
            "avg_loss_curve": [(int(r["iteration"]), round(float(r["avg_loss"]), 3))
                               for r in rows if int(r["iteration"]) in LOSS_POINTS
                               or int(r["iteration"]) == iterations],
            "images_per_s": round(statistics.median(speeds), 2),
            "train_min": round(train_s / 60, 2), "wall_min": round(wall / 60, 2),
            "map50": float(last.get("val_map50", "nan")),
            "map50_95": float(last.get("val_map50_95", "nan")),
            "map50_curve": [(int(r["iteration"]), round(float(r["val_map50"]), 4)) for r in val],
            "amp": bool(args.amp), "threads": torch.get_num_threads(), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", nargs="+", default=list(DEFAULT_CFGS))
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--budget-min", type=float, default=20.0,
                   help="training minutes per cfg (validation not counted; default 20)")
    p.add_argument("--iterations", type=int, default=0,
                   help="a fixed max_batches instead of the time budget")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--subdivisions", type=int, default=1,
                   help="[net] subdivisions (1: one forward of `--batch` images an update)")
    p.add_argument("--darknet-build", choices=("opencv", "native"), default="opencv",
                   help="augment as Darknet built with OpenCV (default) or without it")
    p.add_argument("--data", default=None, metavar="X.data",
                   help="a Darknet .data file (default: the embedded set)")
    p.add_argument("--random", type=float, default=None,
                   help="set every [yolo] random= (0: no multi-scale)")
    p.add_argument("--burn-in", type=int, default=None,
                   help="burn_in iterations (default 10%% of the run)")
    p.add_argument("--lr", type=float, default=0.001,
                   help="learning_rate (0.001, the cfgs'; 0.004 diverged at batch 16)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more [net] overrides")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast + channels-last on the CPU (the runner's --amp)")
    p.add_argument("--probe", type=int, default=3, help="probe iterations (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-detect"),
                   help="a folder per cfg is made here; one that holds a run is refused")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from cfgparse import CfgError

    try:
        results = [run_one(cfg, args) for cfg in args.cfg]
    except CfgError as exc:  # e.g. --out already holds a run: say so, no traceback
        print(exc, file=sys.stderr)
        return 2
    print(f"{'cfg':<22} {'size':>4} {'iters':>6} {'train min':>9} {'img/s':>7} "
          f"{'wall s':>7} {'wall img/s':>10} {'/Darknet':>8} {'mAP@0.5':>8} {'mAP@.5:.95':>10}")
    for r in results:
        print(f"{Path(r['cfg']).name:<22} {r['size']:>4} {r['iterations']:>6} "
              f"{r['train_min']:>9.1f} {r['images_per_s']:>7.1f} {r['wall_s']:>7.0f} "
              f"{r['wall_images_per_s']:>10.1f} {r['vs_darknet']:>7.2f}x {r['map50']:>8.3f} "
              f"{r['map50_95']:>10.3f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
