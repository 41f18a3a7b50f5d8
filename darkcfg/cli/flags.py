"""darkcfg's command line: train, validate, predict, summarise, convert and dump any cfg.

    python runner.py cfg/vgg16.cfg --train [--set KEY=VALUE ...] [--data SRC] [--out DIR]
    python runner.py CFG --summary [--format text|json]
    python runner.py CFG --weights IN.weights --save-weights OUT.weights [--cutoff N]
    python runner.py CFG --weights W --input X.npy --dump-outputs OUT.npz [--all-layers]
    python runner.py CFG --weights W --detect IMG_OR_DIR... [--names F] [--out DIR]
    python runner.py CFG --check [check options]        (= darkcfg check CFG ...)
    python runner.py CFG [--weights W] --export M.onnx|M.pt2 [--opset N] [--dynamic-batch]
                         [--decode [--nms [T]]] [--input-size WxH]
    python runner.py CFG --weights W --export M.onnx --int8 --calibrate SRC [--calib-images N]
                         [--keep-fp32 N|auto]
    python runner.py CFG [--weights W] --emit M.py
    torchrun --standalone --nproc-per-node N runner.py CFG --train ...

Bad input (cfg, overrides, data) prints located diagnostics and exits 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from builders.memory import parse_size
from cfgparse import CfgError


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="darkcfg", description="Build, train and run Darknet .cfg models with PyTorch.",
        epilog="`darkcfg check FILE...` lints cfgs (see `darkcfg check --help`).")
    p.add_argument("cfg", help="the .cfg (or .yaml) model")
    p.add_argument("--flavor", choices=("alexeyab", "pjreddie"), default="alexeyab",
                   help="which Darknet's formulas to follow (default alexeyab)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a [net] key (repeatable), e.g. --set batch=64; "
                        "SECTION.KEY=VALUE sets KEY in every [SECTION], e.g. "
                        "--set convolutional.batch_normalize=1")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data, order (0)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, mps (default: CUDA, else MPS, else CPU)")

    g = p.add_argument_group("training")
    g.add_argument("--train", action="store_true", help="train with the [net] settings")
    g.add_argument("--data", default=None, metavar="SRC",
                   help="FOLDER (ImageFolder), X.data (Darknet), X.csv (regression), digits or "
                   "torchvision:NAME:ROOT; default: the embedded shapes dataset")
    g.add_argument("--classes", type=int, default=None, metavar="N",
                   help="embedded data: only the first N of the network's classes (default all)")
    g.add_argument("--out", default=None, metavar="DIR", help="run folder (runs/<cfg-name>)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from DIR/checkpoint.pt (or CKPT)")
    g.add_argument("--weights", default=None, metavar="W",
                   help="start from Darknet .weights (partial ok) or a torch state_dict")
    g.add_argument("--cutoff", type=int, default=None, metavar="N",
                   help="read/write only the first N layers' weights")
    g.add_argument("--freeze", type=int, default=0, metavar="N",
                   help="do not train layers 0..N-1 (Darknet stopbackward)")
    g.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write <cfg>_<N>.weights every N iterations")
    g.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="checkpoint + <cfg>_last.weights every N iterations (100)")
    g.add_argument("--valid-every", type=int, default=None, metavar="N",
                   help="validate every N iterations (default: 4 times per run; 0: never)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="DataLoader processes (default: sized to the machine)")
    g.add_argument("--batch-per-process", action="store_true",
                   help="under torchrun, [net] batch is per process (default: global)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--max-memory", type=parse_size, default=None, metavar="SIZE",
                   help="refuse to train a network estimated to need more (e.g. 8G; default: "
                   "the device's memory)")
    g.add_argument("--force", action="store_true",
                   help="train even when the memory estimate is over --max-memory")

    g = p.add_argument_group("evaluation")
    g.add_argument("--valid", action="store_true",
                   help="validation metrics: top-1/top-5 (classifiers), mAP and the per-class "
                   "AP table (detectors; --format json for one JSON object)")
    g.add_argument("--map-points", type=int, choices=(0, 11, 101), default=0, metavar="N",
                   help="detectors' AP: 0 all-point (default, Darknet's), 11 (VOC2007), 101")
    g.add_argument("--predict", nargs="+", default=None, metavar="IMAGE",
                   help="classify images (top-k with class names)")
    g.add_argument("--top", type=int, default=5, help="classes shown by --predict (5)")
    g.add_argument("--plot-lr", default=None, metavar="PNG",
                   help="plot the learning-rate schedule over max_batches")

    g = p.add_argument_group("model tools")
    g.add_argument("--summary", action="store_true", help="print the layer table")
    g.add_argument("--format", choices=("text", "json"), default="text")
    g.add_argument("--save-weights", default=None, metavar="OUT",
                   help="write the (loaded) weights as Darknet .weights")
    g.add_argument("--input", default=None, metavar="X.npy", help="input for --dump-outputs")
    g.add_argument("--dump-outputs", default=None, metavar="OUT.npz",
                   help="write layer outputs in Darknet order")
    g.add_argument("--all-layers", action="store_true", help="--dump-outputs every layer")
    g.add_argument("--check", action="store_true", help="lint the cfg (darkcfg check)")

    g = p.add_argument_group("detection (darknet detector test)")
    g.add_argument("--detect", nargs="+", default=None, metavar="IMG_OR_DIR",
                   help="detect objects in images and folders: prints Darknet's -ext_output "
                   "lines, writes OUT/<image>.jpg with the boxes and OUT/detections.json (COCO)")
    g.add_argument("--names", default=None, metavar="F",
                   help="class names, one a line (default: names= of --data F.data)")
    g.add_argument("--thresh", type=float, default=0.25, help="detection threshold (.25)")
    g.add_argument("--nms", type=float, nargs="?", const=0.45, default=None, metavar="T",
                   help="NMS threshold (.45; 0: none); the kind is the last head's nms_kind. "
                   "With --export --decode: put NMS in the graph (IoU > T, default .45)")
    g.add_argument("--letter-box", action="store_true",
                   help="letterbox the images (default: [net] letter_box)")
    g.add_argument("--save-labels", action="store_true",
                   help="also write OUT/<image>.txt: 'class x y w h' per object")
    g.add_argument("--detections", default=None, metavar="OUT.json",
                   help="with --input X.npy: the detections of a raw network input")

    g = p.add_argument_group("export")
    g.add_argument("--export", default=None, metavar="MODEL.onnx|MODEL.pt2",
                   help="write ONNX (checked with onnxruntime) or a torch.export program")
    g.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset (default: the exporter's; 17 and 18 are tested)")
    g.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch size")
    g.add_argument("--decode", action="store_true",
                   help="export the detection heads' decoded boxes, objectness and class scores")
    g.add_argument("--input-size", default=None, metavar="WxH",
                   help="build (and export/emit) the network at this input size")
    g.add_argument("--int8", action="store_true",
                   help="with --export M.onnx: calibrated static INT8 (QDQ, per-channel "
                   "weights); prints fp32 vs INT8 accuracy and latency")
    g.add_argument("--calibrate", default=None, metavar="SRC",
                   help="--int8: calibration and validation data, as --data ('embedded': the "
                   "embedded set)")
    g.add_argument("--calib-images", type=int, default=64, metavar="N",
                   help="--int8: calibrate on N training images (64)")
    g.add_argument("--keep-fp32", default=None, metavar="N|auto",
                   help="--int8: keep the N most sensitive layers in fp32, or 'auto': until "
                   "the metric is within 1 point of fp32")
    g.add_argument("--emit", default=None, metavar="MODEL.py",
                   help="write a self-contained PyTorch module (class Net) for the cfg")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["check"]:
            return check(argv[1:])
        if "--check" in argv:
            return check([a for a in argv if a != "--check"])
        args = arg_parser().parse_args(argv)
        return run(args)
    except CfgError as exc:
        for d in exc.diagnostics:
            print(describe(d), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `darkcfg CFG --summary | head`: the reader left early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from darkcfg.data import DataError
        from darkcfg.train.loop import NonFiniteLoss

        if isinstance(exc, DataError):
            # from a loader worker the message carries the worker's traceback: keep the gist
            text = str(exc).strip().splitlines()
            print(f"error[E901]: {text[-1].split('DataError: ')[-1] if text else exc}",
                  file=sys.stderr)
            return 2
        if isinstance(exc, NonFiniteLoss):
            print(f"error: {exc}; training stopped. The last good checkpoint (if any) is kept; "
                  "lower learning_rate or check the data, then --resume", file=sys.stderr)
            return 1
        raise


def describe(d) -> str:
    """A diagnostic as text; ones about the command line or a whole file have no line:col."""
    if d.line:
        return d.format()
    text = f"{d.path}: {d.severity}[{d.code}]: {d.message}"
    return text + (f"\nhelp: {d.hint}" if d.hint else "")


def check(argv: list[str]) -> int:
    from darkcfg.lint.cli import main as check_main

    return int(check_main(argv) or 0)


def run(args: argparse.Namespace) -> int:
    from darkcfg.train.loop import Schedule
    from darkcfg.train.session import RunOptions

    name = Path(args.cfg).stem
    opts = RunOptions(
        cfg_path=args.cfg, name=name, out=Path(args.out or Path("runs") / name),
        data=args.data, classes=args.classes, seed=args.seed, device=args.device,
        flavor=args.flavor, sets=tuple(args.set), weights=args.weights, cutoff=args.cutoff,
        freeze=args.freeze, resume=args.resume, compile=args.compile,
        amp=False if args.no_amp else None, workers=args.workers,
        batch_per_process=args.batch_per_process, progress=not args.no_progress,
        explicit_out=args.out is not None, max_memory=args.max_memory, force=args.force,
        map_points=args.map_points)
    nms_in_graph = args.nms is not None and bool(args.export)
    if args.nms is None:
        args.nms = 0.45
    did = False
    if args.summary:
        summary(opts, args.format)
        did = True
    if args.plot_lr:
        from darkcfg.model import load_blocks
        from darkcfg.train.outputs import plot_lr

        blocks, _ = load_blocks(args.cfg, args.set)
        from darkcfg.config import NetConfig

        cfg = NetConfig.from_block(blocks[0], seed=args.seed)
        if cfg.max_batches <= 0:
            raise blocks[0].error("E305", "--plot-lr needs max_batches > 0", "max_batches",
                                  hint="pass --set max_batches=N")
        plot_lr(cfg, Path(args.plot_lr), f"{name}: policy={cfg.policy}")
        print(f"wrote {args.plot_lr}", file=sys.stderr)
        did = True
    if args.save_weights or args.dump_outputs:
        convert(opts, args)
        did = True
    if args.detect or args.detections:
        from darkcfg.detect.run import run_detect

        run_detect(opts, args)
        did = True
    if args.export or args.emit:
        export_model(opts, args, nms_in_graph)
        did = True
    trainer = None
    if args.train:
        from darkcfg.train import session

        opts.schedule = Schedule(checkpoint_every=args.checkpoint_every,
                                 save_every=args.save_every,
                                 valid_every=-1 if args.valid_every is None else args.valid_every)
        how, trainer = session.train(opts)
        if how != "done" or os.environ.get("WORLD_SIZE", "1") != "1":
            return 0
        did = True
    if args.valid:
        from darkcfg.train.session import validate

        task, result = validate(opts, trainer)
        if args.format == "json":
            import json

            print(json.dumps(task.as_json(result)))
        else:
            print(task.describe(result))
        did = True
    if args.predict:
        from darkcfg.train.session import predict

        for path, ranked in predict(opts, args.predict, args.top, trainer):
            print(f"{path}: " + ", ".join(f"{100 * p:.2f}% {n}" for n, p in ranked))
        did = True
    if not did:
        print("darkcfg: nothing to do: pass --train, --valid, --predict, --summary, --check, "
              "--plot-lr, --save-weights, --dump-outputs, --detect, --export or --emit "
              "(see --help)", file=sys.stderr)
        return 2
    return 0


def summary(opts, fmt: str) -> None:
    import json

    from builders.summary import summary_json, summary_text
    from darkcfg.model import build_network

    net, _, _ = build_network(opts.cfg_path, list(opts.sets), opts.flavor, opts.seed,
                              device="meta")
    print(json.dumps(summary_json(net), indent=2) if fmt == "json" else summary_text(net))


def convert(opts, args) -> None:
    from darkcfg.model import build_network

    if not args.weights:
        raise usage_error("--save-weights and --dump-outputs need --weights")
    net, _, _ = build_network(opts.cfg_path, list(opts.sets), opts.flavor, opts.seed)
    from darkcfg.model import load_any_weights

    print(load_any_weights(net, args.weights, args.cutoff), file=sys.stderr)
    if args.save_weights:
        from builders.weights import save_weights

        n = save_weights(net, args.save_weights, cutoff=args.cutoff)
        print(f"wrote {args.save_weights} ({n} floats)", file=sys.stderr)
    if args.dump_outputs:
        import numpy as np

        from darkcfg.export.dump import dump_outputs

        if not args.input:
            raise usage_error("--dump-outputs needs --input X.npy")
        try:
            x = np.load(args.input)
        except (OSError, ValueError) as exc:
            from cfgparse import Diagnostic

            raise CfgError(Diagnostic("E901", f"cannot read '{args.input}': {exc}",
                                      args.input, hint="save the input with numpy.save")) from None
        written = dump_outputs(net, x, args.dump_outputs, args.all_layers, input_name=args.input)
        print(f"wrote {args.dump_outputs} ({len(written)} layers)", file=sys.stderr)


def export_model(opts, args, nms_in_graph: bool = False) -> None:
    """--export MODEL.onnx|MODEL.pt2 and --emit MODEL.py (darkcfg.export)."""
    from darkcfg.export.onnx import export, parse_input_size, require_onnx_packages

    onnx_file = bool(args.export) and Path(args.export).suffix.lower() == ".onnx"
    if (args.int8 or nms_in_graph) and not onnx_file:
        raise usage_error("--int8 and --decode --nms write ONNX: pass --export MODEL.onnx")
    if nms_in_graph and not args.decode:
        raise usage_error("--nms in the exported graph needs --decode")
    if args.int8 and (args.decode or nms_in_graph):
        raise usage_error("--int8 quantizes the raw network outputs: drop --decode/--nms")
    if args.int8 and not args.calibrate:
        raise usage_error("--int8 needs --calibrate SRC (a --data source, or 'embedded')")
    if args.int8:
        from darkcfg.export.int8 import parse_keep_fp32

        keep = parse_keep_fp32(args.keep_fp32)  # before the (slow) build
    if onnx_file:
        require_onnx_packages()  # before the (slow) build
    sets = list(opts.sets) + parse_input_size(args.input_size)
    from darkcfg.model import build_network

    net, cfg, _ = build_network(opts.cfg_path, sets, opts.flavor, opts.seed)
    if args.weights:
        from darkcfg.model import load_any_weights

        print(load_any_weights(net, args.weights, args.cutoff), file=sys.stderr)
    if args.emit:
        from darkcfg.export.emit import write_module

        print(write_module(net, args.emit, name=Path(opts.cfg_path).name), file=sys.stderr)
    if args.export and args.int8:
        from darkcfg.export.int8 import Int8Options, export_int8, open_int8_data

        source = None if args.calibrate == "embedded" else args.calibrate
        data = open_int8_data(net, cfg, source, opts.seed, args.calib_images, opts.classes)
        print(export_int8(net, args.export, data,
                          Int8Options(keep_fp32=keep, name=Path(opts.cfg_path).name)))
    elif args.export and nms_in_graph:
        from darkcfg.export.nms import export_image_to_boxes

        print(export_image_to_boxes(net, args.export, thresh=args.thresh, nms=args.nms,
                                    dynamic_batch=args.dynamic_batch,
                                    name=Path(opts.cfg_path).name), file=sys.stderr)
    elif args.export:
        print(export(net, args.export, opset=args.opset, dynamic_batch=args.dynamic_batch,
                     decode=args.decode, name=Path(opts.cfg_path).name), file=sys.stderr)


def usage_error(message: str) -> CfgError:
    from cfgparse import Diagnostic

    return CfgError(Diagnostic("E100", message, "<command line>", hint="see --help"))


if __name__ == "__main__":
    sys.exit(main())
