"""Detector training on a CPU: images/s and validation mAP after a fixed training budget.

    python bench/detect_train.py [--cfg CFG ...] [--size 160] [--budget-min 20] [--threads 2]
                                 [--batch 16] [--lr 0.001] [--set KEY=VALUE ...] [--out DIR]
                                 [--data X.data] [--random 0] [--iterations N] [--burn-in N]
                                 [--subdivisions 1] [--darknet-build opencv|native] [--amp]

`--data X.data` trains on a Darknet-format set (`bench/darknet_set.py` writes the embedded set
as one) instead of the embedded set, the way `darknet detector train X.data CFG` does: with the
cfg's own [net] schedule (max_batches, burn_in, steps, learning_rate, batch, subdivisions, size),
flags given on the command line applied over it. `--random 0` sets every [yolo]'s `random` (0:
fixed size). With `--iterations N` other than the cfg's max_batches the run is the bench's
schedule (burn_in 10% or `--burn-in`, steps at 80%/90%). Either way there is no speed probe, and
the row also gives the wall time with the validations included and its img/s against Darknet's
7.1 img/s (issue 22: yolov3-tiny, 160x160, batch 16, 900 iterations and four validations in
2,073 s on the CPU). The first line of each run says which schedule it follows.

For each cfg (default cfg/yolov3-tiny.cfg and cfg/yolov4-tiny.cfg) at SIZE x SIZE on the
embedded detection set: a short probe measures the training speed (at the first multi-scale
period's size, the largest), `max_batches` is set so that training fills the budget (a step's
time taken as proportional to the input's area, summed over the sizes multi-scale will draw),
and the run goes through the runner's own code (`darkcfg.train.session.train`: the cfg's loss,
augmentation and `random=1` multi-scale, Darknet's lr schedule with burn-in and steps at
80%/90%), validating (Darknet's -map: mAP@0.5, COCO mAP@[.5:.95]) four times and at the end.
Validation time is not part of the budget. Prints one row per cfg and a JSON line; the run
folders (metrics.csv, chart.png with the mAP curve, weights) stay under --out.

Overrides the bench applies to the cfg when it does not keep the cfg's schedule (the rest of
[net] and every [yolo] key stay): width/height = SIZE (160), batch = --batch (16) with
subdivisions = --subdivisions (1), learning_rate = --lr (0.001), burn_in = 10% of the run (the
cfgs' 1000 is meant for 500k-iteration GPU runs), steps/scales, max_batches.
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
DEFAULT_CFGS = tuple(str(ROOT / "cfg" / name) for name in ("yolov3-tiny.cfg", "yolov4-tiny.cfg"))
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


def as_written(net, args) -> bool:
    """Whether the run keeps the cfg's own schedule: a `--data` run (Darknet's `detector train
    X.data CFG`) without `--iterations`, or with the cfg's own max_batches."""
    return args.data is not None and args.iterations in (0, net.int("max_batches", 0))


def plan(net, args) -> tuple[list[str], int | None, str]:
    """The [net] overrides of a run, its iterations (None: fill the time budget after a probe)
    and a line saying where the schedule comes from. `net` is the cfg's [net] block. A flag given
    on the command line always applies; an unset one takes the cfg's value when the run keeps the
    cfg's schedule (`as_written`), else the bench's default (160, batch 16, subdivisions 1,
    lr 0.001, burn-in 10%, steps at 80%/90%)."""
    own = as_written(net, args)

    def flag(value, default):
        return value if value is not None or own else default

    size, batch = flag(args.size, 160), flag(args.batch, 16)
    subdivisions, lr = flag(args.subdivisions, 1), flag(args.lr, 0.001)
    sets = [*(f"{k}={v}" for k, v in (("width", size), ("height", size), ("batch", batch),
                                      ("subdivisions", subdivisions), ("learning_rate", lr))
              if v is not None), *args.set]
    if args.random is not None:
        sets.append(f"yolo.random={args.random:g}")
    if own:
        iterations = net.int("max_batches", 0)
        if args.burn_in is not None:
            sets.append(f"burn_in={args.burn_in}")
        keys = ("max_batches", "burn_in", "policy", "steps", "learning_rate", "batch",
                "subdivisions", "width", "height")
        written = ", ".join(f"{k}={net.option(k).raw}" for k in keys if net.has(k))
        return sets, iterations, f"schedule: the cfg's own ({written}), flags given applied"
    iterations = args.iterations or None
    if iterations is None:
        return sets, None, "schedule: the bench's, max_batches from the time budget"
    return (bench_schedule(sets, iterations, args.burn_in), iterations,
            f"schedule: the bench's, {iterations} iterations")


def bench_schedule(sets: list[str], iterations: int, burn_in: int | None) -> list[str]:
    """Darknet's steps policy over `iterations`: burn-in 10% (the cfgs' 1000 is meant for
    500k-iteration GPU runs) unless given, steps at 80% and 90%."""
    burn_in = burn_in if burn_in is not None else max(iterations // 10, 1)
    return [*sets, f"max_batches={iterations}", f"burn_in={burn_in}", "policy=steps",
            f"steps={int(iterations * 0.8)},{int(iterations * 0.9)}", "scales=.1,.1"]


def run_one(cfg: str, args) -> dict:
    from cfgparse import CfgError, Diagnostic, parse
    from darkcfg.config import apply_overrides_to_blocks

    name = Path(cfg).stem
    # the [net] the run will have (--set applied), to read its schedule
    net = apply_overrides_to_blocks(list(parse(cfg)), args.set)[0][0]
    sets, iterations, where = plan(net, args)
    if iterations is not None and iterations < 1:
        raise CfgError(Diagnostic("E901", f"{cfg}: [net] max_batches is {iterations}, so the "
                                  "cfg's own schedule trains nothing", "--iterations",
                                  hint="set max_batches in the cfg, or pass --iterations N"))
    probe = None
    if iterations is None:
        probe, train_set = probe_speed(cfg, [*sets, "max_batches=1000"], args.probe, args.seed,
                                       args.data)
        iterations = iterations_for_budget(args.budget_min * 60, probe, args.batch or 16,
                                           train_set)
        sets = bench_schedule(sets, iterations, args.burn_in)
        where += f": {iterations} iterations"
    print(f"{name}: {where}", flush=True)
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
    batch = trainer.global_batch
    train_s = sum(batch / s for s in speeds if s > 0)
    val = [r for r in rows if r.get("val_map50")]
    last = val[-1] if val else {}
    rate = iterations * batch / wall  # validations, checkpoints and loading included
    return {"cfg": cfg, "size": trainer.cfg.width, "batch": batch, "iterations": iterations,
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", nargs="+", default=list(DEFAULT_CFGS))
    p.add_argument("--size", type=int, default=None,
                   help="width = height (160; a --data run keeping the cfg's schedule: the cfg's)")
    p.add_argument("--budget-min", type=float, default=20.0,
                   help="training minutes per cfg (validation not counted; default 20)")
    p.add_argument("--iterations", type=int, default=0,
                   help="a fixed max_batches instead of the time budget (with --data: "
                   "default the cfg's own schedule, as `darknet detector train` runs it)")
    p.add_argument("--batch", type=int, default=None,
                   help="images an update (16; a --data run keeping the cfg's schedule: the "
                   "cfg's)")
    p.add_argument("--subdivisions", type=int, default=None,
                   help="[net] subdivisions (1: one forward of `--batch` images an update; a "
                   "--data run keeping the cfg's schedule: the cfg's)")
    p.add_argument("--darknet-build", choices=("opencv", "native"), default="opencv",
                   help="augment as Darknet built with OpenCV (default) or without it")
    p.add_argument("--data", default=None, metavar="X.data",
                   help="a Darknet .data file (default: the embedded set)")
    p.add_argument("--random", type=float, default=None,
                   help="set every [yolo] random= (0: no multi-scale)")
    p.add_argument("--burn-in", type=int, default=None,
                   help="burn_in iterations (default 10%% of the run, or the cfg's)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning_rate (0.001, the cfgs'; 0.004 diverged at batch 16; a --data "
                   "run keeping the cfg's schedule: the cfg's)")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
