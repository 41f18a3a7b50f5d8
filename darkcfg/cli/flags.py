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

An option that none of the steps asked for reads (`--thresh` without --detect) is E100 at it.
Bad input (cfg, overrides, data) prints located diagnostics and exits 2; never a traceback.
See docs/commands.md for each flag line and its subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import replace
from pathlib import Path

from cfgparse import CfgError, Diagnostic
from cfgparse.usage import CommandParser
from darkcfg.cli.common import add_model_arguments, guarded, model_spec, usage_error

#: the flags that ask for each step (the subcommand of the same name), in the order they run
STEPS = {"summary": ("--summary", "--plot-lr"), "weights": ("--save-weights", "--dump-outputs"),
         "detect": ("--detect", "--detections"), "emit": ("--emit",), "export": ("--export",),
         "train": ("--train",), "valid": ("--valid",), "predict": ("--predict",)}


class FlagParser(CommandParser):
    """The flag form's parser: the namespace also holds `given`, the dests of the options the
    command line gave (a value equal to the default is still given: `--top 5` without
    --predict is as unread as `--top 3`)."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        defaults = [(action, action.default) for action in self._actions]
        try:  # again with no defaults: what is left is what the line gave
            for action, _ in defaults:
                action.default = argparse.SUPPRESS
            given, _ = super().parse_known_args(args, None)
        finally:
            for action, default in defaults:
                action.default = default
        parsed.given = frozenset(vars(given))
        return parsed, extras


def arg_parser() -> argparse.ArgumentParser:
    """The flags, from the same argument helpers as the subcommands (one definition each)."""
    from darkcfg.cli.detect import add_detect_arguments
    from darkcfg.cli.export import add_export_arguments, add_input_size
    from darkcfg.cli.train import add_data_arguments, add_map_points, add_schedule_arguments

    p = FlagParser(
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
    g.add_argument("--top", type=int, default=None,
                   help="classes shown by --predict (a .data file's top=, else 5)")
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
            model, args.save_weights, args.input if args.dump_outputs else None,
            args.dump_outputs, args.all_layers)))
    if args.detect or args.detections:
        steps.append(("detect", replace(detect.detect_options(model, args, args.detect),
                                        input=args.input if args.detections else None)))
    if args.emit:
        steps.append(("emit", emit.EmitOptions(model, args.emit, args.input_size, "--emit")))
    if args.export:
        steps.append(("export", export.options_from(model, args.export, args)))
    if args.train:
        steps.append(("train", replace(train.run_options(model, args, schedule=True),
                                       then_valid=bool(args.valid))))
    if args.valid or args.predict:
        run = train.run_options(model, args)
        if args.valid:
            steps.append(("valid", valid.ValidOptions(run, args.format)))
        if args.predict:
            steps.append(("predict", predict.PredictOptions(run, tuple(args.predict),
                                                            args.top)))
    refuse_unread_options(args, [name for name, _ in steps])
    if not steps:
        raise usage_error("nothing to do: pass --train, --valid, --predict, --summary, --check, "
                          "--plot-lr, --save-weights, --dump-outputs, --detect, --export or "
                          "--emit (see --help)", hint="or a subcommand: darkcfg --help")
    return steps


def refuse_unread_options(args: argparse.Namespace, planned: list[str]) -> None:
    """E100 at each option given that no planned step reads (`--thresh 0.3` without --detect
    was silently ignored): a step reads the options of its subcommand (`darkcfg detect --help`).
    With no step at all, the model options (--weights, --set, ...) are left to the "nothing to
    do" error."""
    given = getattr(args, "given", None)
    if given is None:  # a namespace that arg_parser() did not make
        return
    parser = arg_parser()
    readers = steps_reading()
    model = CommandParser()
    add_model_arguments(model)
    problems = []
    for action in parser._actions:
        if action.dest not in given or not action.option_strings:
            continue
        flag = max(action.option_strings, key=len)
        steps = readers.get(flag, [])
        if flag in READ_WITH:  # read by a step only with one of these flags
            steps = [step for step in steps if READ_WITH[flag][step] in given]
            if steps:
                continue
            steps = list(READ_WITH[flag])
        elif any(step in planned for step in steps) or (
                not planned and flag in model._option_string_actions):
            continue
        problems.append(unread_diagnostic(flag, steps, parser))
    if problems:
        raise CfgError(problems)


def steps_reading() -> dict[str, list[str]]:
    """{flag: the steps that read it}: a step reads the flags that ask for it and the options
    of its subcommand (not --out for emit and export: the flag form's file is the value of
    --emit/--export)."""
    readers: dict[str, list[str]] = {}
    for name, flags in STEPS.items():
        sub = importlib.import_module(f"darkcfg.cli.{name}").arg_parser()
        options = set(sub._option_string_actions) | set(flags)
        if name in ("emit", "export"):
            options.discard("--out")
        for flag in options:
            readers.setdefault(flag, []).append(name)
    return readers


#: options a step reads only with another of its flags: {flag: {step: the dest of that flag}}
READ_WITH = {"--input": {"weights": "dump_outputs", "detect": "detections"},
             "--all-layers": {"weights": "dump_outputs"}}

#: how a message names a step for one of its options, where the step's first flag is not the
#: one that reads it (or reads it only with others)
NAMED = {("--thresh", "export"): "--export --decode --nms",
         ("--nms", "export"): "--export --decode",
         **{(flag, "export"): "--export --int8" for flag in ("--calibrate", "--calib-images",
                                                              "--keep-fp32", "--classes")},
         ("--input", "weights"): "--dump-outputs", ("--input", "detect"): "--detections",
         ("--all-layers", "weights"): "--dump-outputs"}


def unread_diagnostic(flag: str, steps: list[str], parser: argparse.ArgumentParser
                      ) -> Diagnostic:
    """E100 at `flag`: which step reads it, with the hint to add it or drop the flag."""
    names = [NAMED.get((flag, step), STEPS[step][0]) for step in steps]
    if not names:  # (every option is some step's; kept for an option added without one)
        return Diagnostic("E100", f"{flag} is read by no step of the flag form", flag,
                          hint=f"drop {flag}")
    if len(names) == len(STEPS) - 1:  # --weights, --cutoff, --partial: all steps but one
        (but,) = [" and ".join(flags) for step, flags in STEPS.items() if step not in steps]
        return Diagnostic("E100", f"{flag} is read by every step but {but}: here nothing "
                          "reads it", flag,
                          hint=f"add the step that uses it ({', '.join(names)}), or drop {flag}")
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    which = "which is not given" if len(names) == 1 else \
        "neither of which is given" if len(names) == 2 else "none of which is given"
    trigger, *rest = names[0].split(" ", 1)
    action = parser._option_string_actions[trigger]
    first = trigger + (f" {action.metavar}" if action.metavar else "") + (
        "..." if action.nargs == "+" else "") + (f" {rest[0]}" if rest else "")
    others = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    return Diagnostic("E100", f"{flag} is read by {listed}, {which}", flag,
                      hint=f"add {first}{others}, or drop {flag}")


def execute(steps: list[tuple[str, object]]) -> int:
    """Run planned steps with the subcommands' own `run`; the network a `train` step trained is
    the one a following `valid`/`predict` step evaluates."""
    predicted = [options.images for name, options in steps if name == "predict"]
    if predicted and len(steps) > 1:  # a typo in --predict's images is said before a training
        from darkcfg.detect.run import checked_images

        checked_images(list(predicted[0]))
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

