"""`darkcfg export CFG [--weights W] --out MODEL.onnx|MODEL.pt2 [--opset N] [--dynamic-batch]
[--decode [--nms [T]] [--thresh P]] [--input-size WxH]`: ONNX (checked with onnxruntime) or a
torch.export program; `--int8 --calibrate SRC [--calib-images N] [--keep-fp32 N|auto]`: a
calibrated INT8 ONNX model and what it costs (darkcfg.export.int8)."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cfgparse import CfgError, Diagnostic
from darkcfg.cli.common import (
    add_model_arguments,
    command_parser,
    guarded,
    model_inputs,
    model_spec,
    refuse_overwriting_inputs,
    usage_error,
)

if TYPE_CHECKING:  # (torch comes with them: `--help` stays quick)
    from darkcfg.model import ModelSpec


@dataclass(frozen=True)
class ExportOptions:
    model: ModelSpec
    out: str  # MODEL.onnx or MODEL.pt2: the suffix says which
    opset: int | None = None
    dynamic_batch: bool = False
    decode: bool = False  # the detection heads' decoded boxes, objectness and class scores
    input_size: str | None = None  # WxH: build (and export) the network at this input size
    nms: float | None = None  # with decode: NMS in the graph at this IoU threshold
    # with nms: Darknet's detection threshold, a graph constant (None: not given, DEFAULT_THRESH)
    thresh: float | None = None
    int8: bool = False  # calibrated static INT8 (darkcfg.export.int8)
    calibrate: str | None = None  # INT8 data: a --data source, or "embedded"
    calib_images: int | None = None  # None: not given, DEFAULT_CALIB_IMAGES
    keep_fp32: str | None = None  # N or "auto"
    classes: int | None = None  # embedded data: only the first N classes
    flag: str = "--out"  # the option that named `out` (the flag form's is --export)


DEFAULT_THRESH = 0.25
DEFAULT_CALIB_IMAGES = 64


def add_input_size(p) -> None:
    p.add_argument("--input-size", default=None, metavar="WxH",
                   help="build the network at this input size (sets [net] width and height)")


def arg_parser():
    p = command_parser("export", "Write ONNX (checked with onnxruntime) or a torch.export "
                       "program.")
    add_model_arguments(p)
    p.add_argument("--out", required=True, metavar="MODEL.onnx|MODEL.pt2",
                   help="the file to write; its suffix picks the format")
    add_export_arguments(p)
    add_input_size(p)
    p.add_argument("--nms", type=float, nargs="?", const=0.45, default=None, metavar="T",
                   help="with --decode: the cfg's NMS in the graph (IoU or Darknet's DIoU "
                   "kinds, > T, default .45): the model returns boxes, scores, classes, "
                   "batch_index")
    p.add_argument("--thresh", type=float, default=None,
                   help="with --decode --nms: the detection threshold (.25)")
    p.add_argument("--classes", type=int, default=None, metavar="N",
                   help="--int8 on the embedded data: only its first N classes")
    return p


def add_export_arguments(p) -> None:
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset (default: the exporter's; 17 and 18 are tested); also "
                   "with --decode --nms and --int8; not for .pt2")
    p.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch size")
    p.add_argument("--decode", action="store_true",
                   help="export the detection heads' decoded boxes, objectness and class scores")
    p.add_argument("--int8", action="store_true",
                   help="ONNX only: calibrated static INT8 (QDQ, per-channel weights); prints "
                   "fp32 vs INT8 accuracy and latency")
    p.add_argument("--calibrate", default=None, metavar="SRC",
                   help="--int8: calibration and validation data, as --data ('embedded': the "
                   "embedded set)")
    p.add_argument("--calib-images", type=int, default=None, metavar="N",
                   help="--int8: calibrate on N training images (64)")
    p.add_argument("--keep-fp32", default=None, metavar="N|auto",
                   help="--int8: keep the N most sensitive layers in fp32, or 'auto': until the "
                   "metric is within 1 point of fp32")


def parse(argv: list[str]) -> ExportOptions:
    args = arg_parser().parse_args(argv)
    return options_from(model_spec(args), args.out, args)


def options_from(model: ModelSpec, out: str, args) -> ExportOptions:
    """ExportOptions from parsed arguments (this command's, or the flag form's)."""
    thresh, classes, flag = args.thresh, getattr(args, "classes", None), "--out"
    if getattr(args, "export", None) is not None:
        # the flag form: --thresh is also --detect's (its default .25 is not a choice made for
        # the export) and --classes also the training's; they are the export's only when it
        # is the one step that reads them
        flag = "--export"
        detects = bool(args.detect or args.detections)
        given = getattr(args, "given", None)  # the flag form's parser says what was typed
        typed = "thresh" in given if given is not None else thresh != DEFAULT_THRESH
        if args.nms is None and (detects or not typed):
            thresh = None
        if not args.int8 and (args.train or args.valid or args.predict):
            classes = None
    return ExportOptions(model, out, args.opset, args.dynamic_batch, args.decode,
                         args.input_size, args.nms, thresh, args.int8, args.calibrate,
                         args.calib_images, args.keep_fp32, classes, flag)


def sized_model(model: ModelSpec, input_size: str | None):
    """The network at --input-size with its weights (the report line goes to stderr). Export
    and emit run one image through it on the CPU: a size whose feature maps cannot fit is
    refused from the shapes first (E401, `build_network`'s guard), not by the allocator."""
    from darkcfg.export.onnx import parse_input_size
    from darkcfg.model import load_any_weights

    sets = parse_input_size(input_size)
    net = model.build(sets)
    report = load_any_weights(net, model.weights, model.cutoff, model.partial) \
        if model.weights else ""
    if report:
        print(report, file=sys.stderr)
    return net


def check_options(opts: ExportOptions) -> None:
    """Usage errors before the (slow) build: no option is silently left unused."""
    onnx_file = Path(opts.out).suffix.lower() == ".onnx"
    if opts.opset is not None and Path(opts.out).suffix.lower() == ".pt2":
        raise usage_error(f"--opset applies to ONNX files only, not '{opts.out}'",
                          hint="drop --opset, or write a .onnx file")
    if (opts.int8 or opts.nms is not None) and not onnx_file:
        raise usage_error("--int8 and --decode --nms write ONNX: name the file MODEL.onnx")
    if opts.nms is not None and not opts.decode:
        raise usage_error("--nms in the exported graph needs --decode")
    if opts.thresh is not None and opts.nms is None:
        raise usage_error(f"--thresh {opts.thresh:g} is the NMS graph's detection threshold: "
                          "it needs --decode --nms", hint="add --decode --nms, or drop --thresh")
    for name, value, example in (("thresh", opts.thresh, ".25"), ("nms", opts.nms, ".45")):
        if value is not None and not 0 <= value <= 1:  # NaN fails too
            raise usage_error(f"--{name} {value:g}: a threshold lies in [0, 1]",
                              hint=f"e.g. --{name} {example}")
    if opts.nms == 0:
        raise usage_error("--nms 0 would keep every box: an NMS graph needs an IoU threshold "
                          "in (0, 1]", hint="e.g. --nms .45, or export --decode without --nms")
    if not opts.int8:
        given = [name for name, value in (("--calibrate", opts.calibrate),
                                          ("--calib-images", opts.calib_images),
                                          ("--keep-fp32", opts.keep_fp32),
                                          ("--classes", opts.classes)) if value is not None]
        if given:
            raise usage_error(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --int8",
                              hint="add --int8, or drop " + ", ".join(given))
    if opts.int8 and (opts.decode or opts.nms is not None):
        raise usage_error("--int8 quantizes the raw network outputs: drop --decode/--nms")
    if opts.int8 and not opts.calibrate:
        raise usage_error("--int8 needs --calibrate SRC (a --data source, or 'embedded')")
    if opts.int8:
        from darkcfg.export.int8 import parse_keep_fp32

        parse_keep_fp32(opts.keep_fp32)
        if opts.calib_images is not None and opts.calib_images < 1:
            raise usage_error(f"--calib-images must be >= 1, not {opts.calib_images}",
                              hint=f"e.g. --calib-images {DEFAULT_CALIB_IMAGES} (the default)")
        if opts.classes is not None and opts.classes < 1:  # as RunOptions refuses it
            from darkcfg.model import option_error

            raise option_error("--classes", f"--classes {opts.classes}: need at least 1",
                               "use --classes 1 or more (or leave it out)")
        if opts.classes is not None and opts.calibrate != "embedded":
            raise usage_error(f"--classes {opts.classes} is for --calibrate embedded: other data "
                              "brings its own classes", hint="drop --classes")


def run(opts: ExportOptions) -> int:
    from darkcfg.export.onnx import (
        check_output,
        export,
        export_format,
        parse_input_size,
        require_onnx_packages,
    )

    check_options(opts)
    refuse_overwriting_inputs({opts.flag: opts.out}, {**model_inputs(opts.model),
                                                      "the --calibrate data": opts.calibrate})
    export_format(opts.out)  # a suffix it cannot write, before the build
    check_output(opts.out, opts.flag)  # before the build, the calibration, the export
    if Path(opts.out).suffix.lower() == ".onnx":
        require_onnx_packages(int8=opts.int8)  # before the (slow) build
        if opts.opset is not None:
            import onnx

            top = onnx.defs.onnx_opset_version()
            # per-channel QDQ (DequantizeLinear's axis) and the NMS nodes (Squeeze's axes
            # input) need 13
            low = 13 if opts.int8 or opts.nms is not None else 7
            why = " (--int8's per-channel weights need 13)" if opts.int8 else \
                " (the --decode --nms graph needs 13)" if opts.nms is not None else ""
            if not low <= opts.opset <= top:
                raise usage_error(f"--opset {opts.opset}: this onnx writes opsets {low} to "
                                  f"{top}{why}",
                                  hint="e.g. --opset 17, or leave it out (the exporter's)")
    if opts.calibrate not in (None, "embedded", "digits") and ":" not in opts.calibrate \
            and not Path(opts.calibrate).expanduser().exists():
        # the data loaders would name --data; a path that is not there is refused here
        raise CfgError(Diagnostic("E901", f"'{opts.calibrate}' does not exist", "--calibrate",
                                  hint="--calibrate takes what --data does (a .data file, an "
                                  "image folder...) or 'embedded'"))
    parse_input_size(opts.input_size)  # a bad size fails before the build too
    net = sized_model(opts.model, opts.input_size)
    name = Path(opts.model.cfg).name
    if opts.decode or opts.int8:
        from darkcfg.detect.decode import check_decodable_heads

        # what --decode exports and --int8 scores (mAP) is the heads' decoding
        heads = check_decodable_heads(net, "--decode and --int8 decode [yolo], [Gaussian_yolo], "
                                      "flat [region] and [detection] heads")
        if opts.decode and not heads:
            raise usage_error(f"--decode: '{opts.model.cfg}' has no detection head to decode",
                              hint="--decode is for [yolo], [Gaussian_yolo], [region] and "
                              "[detection] networks; export a classifier without it")
    if opts.int8:
        from darkcfg.config import NetConfig
        from darkcfg.export.int8 import Int8Options, export_int8, open_int8_data, parse_keep_fp32

        cfg = NetConfig.from_block(net.net_block, seed=opts.model.seed)
        source = None if opts.calibrate == "embedded" else opts.calibrate
        count = DEFAULT_CALIB_IMAGES if opts.calib_images is None else opts.calib_images
        with as_calibrate():
            data = open_int8_data(net, cfg, source, opts.model.seed, count, opts.classes)
        print(export_int8(net, opts.out, data,
                          Int8Options(keep_fp32=parse_keep_fp32(opts.keep_fp32), name=name,
                                      opset=opts.opset, flag=opts.flag)))
    elif opts.nms is not None:
        from darkcfg.export.nms import export_image_to_boxes

        thresh = DEFAULT_THRESH if opts.thresh is None else opts.thresh
        print(export_image_to_boxes(net, opts.out, thresh=thresh, nms=opts.nms,
                                    dynamic_batch=opts.dynamic_batch, name=name,
                                    opset=opts.opset, flag=opts.flag), file=sys.stderr)
    else:
        print(export(net, opts.out, opset=opts.opset, dynamic_batch=opts.dynamic_batch,
                     decode=opts.decode, name=name, flag=opts.flag), file=sys.stderr)
    return 0


@contextlib.contextmanager
def as_calibrate():
    """The data loaders name the option they serve, --data; here that is --calibrate."""
    try:
        yield
    except CfgError as exc:
        raise CfgError([replace(d, path="--calibrate" if d.path == "--data" else d.path,
                                message=d.message.replace("--data", "--calibrate"),
                                hint=d.hint.replace("--data", "--calibrate"))
                        for d in exc.diagnostics]) from None


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
