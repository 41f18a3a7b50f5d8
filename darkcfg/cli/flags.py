"""The flag form of the command line (the design card's `python runner.py CFG --train`), a thin
translation onto the subcommands: the flags are parsed as before, `plan` turns them into the
subcommands' typed options (in the order the modes always ran), and `execute` runs those with
the same functions as `darkcfg train|valid|predict|detect|export|emit|summary|weights|check`.

    python runner.py cfg/vgg16.cfg --train [--set KEY=VALUE ...] [--data SRC] [--out DIR]
    python runner.py CFG --summary [--format text|json]
    python runner.py CFG --weights IN.weights --save-weights OUT.weights [--cutoff N]
    python runner.py CFG --weights W --input X.npy --dump-outputs OUT.npz [--all-layers]
    python runner.py CFG --weights W --detect IMG_OR_DIR... [--names F] [--out DIR]
    python runner.py CFG --weights W --detect VIDEO|URL|CAMERA [--save-labels] [--out DIR]
    python runner.py CFG --check [check options]        (= darkcfg check CFG ...)
    python runner.py CFG [--weights W] --export M.onnx|M.pt2 [--opset N] [--dynamic-batch]
                         [--decode [--nms [T]]] [--input-size WxH]
    python runner.py CFG --weights W --export M.onnx --int8 --calibrate SRC [--calib-images N]
                         [--keep-fp32 N|auto]
    python runner.py CFG [--weights W] --emit M.py
    torchrun --standalone --nproc-per-node N runner.py CFG --train ...

Bad input (cfg, overrides, data) prints located diagnostics and exits 2; never a traceback.
See docs/commands.md for each flag line and its subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from cfgparse.usage import CommandParser
from darkcfg.cli.common import add_model_arguments, guarded, model_spec, usage_error


def arg_parser() -> argparse.ArgumentParser:
    """The flags, from the same argument helpers as the subcommands (one definition each)."""
    from darkcfg.cli.detect import add_detect_arguments
    from darkcfg.cli.export import add_export_arguments, add_input_size
    from darkcfg.cli.train import add_data_arguments, add_map_points, add_schedule_arguments

    p = CommandParser(
        prog="darkcfg", description="Build, train and run Darknet .cfg models with PyTorch. "
        "The subcommands (darkcfg train|valid|predict|detect|export|emit|summary|weights|check "
        "CFG ...) take these same options; this is the flag form.",
        epilog="`darkcfg check FILE...` lints cfgs (see `darkcfg check --help`).")
    add_model_arguments(p)

    g = p.add_argument_group("training")
    g.add_argument("--train", action="store_true", help="train with the [net] settings")
    add_data_arguments(g)
    add_schedule_arguments(g)

    g = p.add_argument_group("evaluation")
    g.add_argument("--valid", action="store_true",
                   help="validation metrics: top-1/top-5 (classifiers), mAP and the per-class "
                   "AP table (detectors; --format json for one JSON object)")
    add_map_points(g)
    g.add_argument("--predict", nargs="+", default=None, metavar="IMG_OR_DIR",
                   help="classify images (top-k with class names)")
    g.add_argument("--top", type=int, default=5, help="classes shown by --predict (5)")
    g.add_argument("--plot-lr", default=None, metavar="PNG",
                   help="plot the learning-rate schedule over max_batches")

    g = p.add_argument_group("model tools")
    g.add_argument("--summary", action="store_true", help="print the layer table")
    g.add_argument("--format", choices=("text", "json"), default="text")
    g.add_argument("--save-weights", default=None, metavar="OUT",
                   help="write the (loaded) weights as Darknet .weights")
    g.add_argument("--input", default=None, metavar="X.npy",
                   help="input for --dump-outputs or --detections")
    g.add_argument("--dump-outputs", default=None, metavar="OUT.npz",
                   help="write layer outputs in Darknet order")
    g.add_argument("--all-layers", action="store_true", help="--dump-outputs every layer")
    g.add_argument("--check", action="store_true", help="lint the cfg (darkcfg check)")

    g = p.add_argument_group("detection (darknet detector test)")
    g.add_argument("--detect", nargs="+", default=None, metavar="IMG_OR_DIR",
                   help="detect objects in images and folders: prints Darknet's -ext_output "
                   "lines, writes OUT/<image>.jpg with the boxes and OUT/detections.json (COCO); "
                   "in videos, rtsp:// or http:// streams and camera indices (0, 1, ...; needs "
                   "the 'video' extra): writes OUT/<name>.mp4 drawn and OUT/<name>.jsonl, a line "
                   "of Darknet -json_port fields per frame")
    add_detect_arguments(g, raw_input=False)

    g = p.add_argument_group("export")
    g.add_argument("--export", default=None, metavar="MODEL.onnx|MODEL.pt2",
                   help="write ONNX (checked with onnxruntime) or a torch.export program")
    add_export_arguments(g)
    add_input_size(g)
    g.add_argument("--emit", default=None, metavar="MODEL.py",
                   help="write a self-contained PyTorch module (class Net) for the cfg")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:
        return check(argv[1:])
    if "--check" in argv:
        return check([a for a in argv if a != "--check"])
    return guarded(lambda: execute(plan(arg_parser().parse_args(argv))))


def check(argv: list[str]) -> int:
    from darkcfg.lint.cli import main as check_main

    return int(check_main(argv) or 0)


def plan(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The subcommands (name, typed options) that the flags ask for, in the order the flag form
    has always run them: summary/--plot-lr, weights, detect, emit, export, train, valid,
    predict. Raises a usage error when they ask for nothing."""
    from darkcfg.cli import detect, emit, export, predict, summary, train, valid, weights

    model = model_spec(args)
    steps: list[tuple[str, object]] = []
    if args.summary or args.plot_lr:
        steps.append(("summary", summary.SummaryOptions(
            model, args.format, table=args.summary,
            plot_lr=Path(args.plot_lr) if args.plot_lr else None)))
    if args.save_weights or args.dump_outputs:
        steps.append(("weights", weights.WeightsOptions(
            model, args.save_weights, args.input, args.dump_outputs, args.all_layers)))
    if args.detect or args.detections:
        steps.append(("detect", detect.detect_options(model, args, args.detect)))
    if args.emit:
        steps.append(("emit", emit.EmitOptions(model, args.emit, args.input_size, "--emit")))
    if args.export:
        steps.append(("export", export.options_from(model, args.export, args)))
    if args.train:
        steps.append(("train", train.run_options(model, args, schedule=True)))
    if args.valid or args.predict:
        run = train.run_options(model, args)
        if args.valid:
            steps.append(("valid", valid.ValidOptions(run, args.format)))
        if args.predict:
            steps.append(("predict", predict.PredictOptions(run, tuple(args.predict),
                                                            args.top)))
    if not steps:
        raise usage_error("nothing to do: pass --train, --valid, --predict, --summary, --check, "
                          "--plot-lr, --save-weights, --dump-outputs, --detect, --export or "
                          "--emit (see --help)", hint="or a subcommand: darkcfg --help")
    return steps


def execute(steps: list[tuple[str, object]]) -> int:
    """Run planned steps with the subcommands' own `run`; the network a `train` step trained is
    the one a following `valid`/`predict` step evaluates."""
    trainer = None
    for name, options in steps:
        command = importlib.import_module(f"darkcfg.cli.{name}")  # = darkcfg.cli.COMMANDS[name]
        if name == "train":
            trainer = command.run(options)
            if trainer is None:  # stopped early (signal) or one of several torchrun processes
                return 0
        elif name in ("valid", "predict"):
            command.run(options, trainer)
        else:
            command.run(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
