"""`darkcfg export CFG [--weights W] --out MODEL.onnx|MODEL.pt2 [--opset N] [--dynamic-batch]
[--decode] [--input-size WxH]`: ONNX (checked with onnxruntime) or a torch.export program."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from darkcfg.cli.common import add_model_arguments, command_parser, guarded, model_spec
from darkcfg.model import ModelSpec


@dataclass(frozen=True)
class ExportOptions:
    model: ModelSpec
    out: str  # MODEL.onnx or MODEL.pt2: the suffix says which
    opset: int | None = None
    dynamic_batch: bool = False
    decode: bool = False  # the detection heads' decoded boxes, objectness and class scores
    input_size: str | None = None  # WxH: build (and export) the network at this input size


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
    return p


def add_export_arguments(p) -> None:
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset (default: the exporter's; 17 and 18 are tested)")
    p.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch size")
    p.add_argument("--decode", action="store_true",
                   help="export the detection heads' decoded boxes, objectness and class scores")


def parse(argv: list[str]) -> ExportOptions:
    args = arg_parser().parse_args(argv)
    return ExportOptions(model_spec(args), args.out, args.opset, args.dynamic_batch,
                         args.decode, args.input_size)


def sized_model(model: ModelSpec, input_size: str | None):
    """The network at --input-size with its weights (the report line goes to stderr)."""
    from darkcfg.export.onnx import parse_input_size

    net, report = model.with_weights(parse_input_size(input_size))
    if report:
        print(report, file=sys.stderr)
    return net


def run(opts: ExportOptions) -> int:
    from darkcfg.export.onnx import export, parse_input_size, require_onnx_packages

    if Path(opts.out).suffix.lower() == ".onnx":
        require_onnx_packages()  # before the (slow) build
    parse_input_size(opts.input_size)  # a bad size fails before the build too
    net = sized_model(opts.model, opts.input_size)
    print(export(net, opts.out, opset=opts.opset, dynamic_batch=opts.dynamic_batch,
                 decode=opts.decode, name=Path(opts.model.cfg).name), file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
