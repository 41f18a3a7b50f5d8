"""`darkcfg emit CFG [--weights W] --out MODEL.py [--input-size WxH]`: a self-contained PyTorch
module (class Net) for the cfg, torch only."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from darkcfg.cli.common import (
    add_model_arguments,
    command_parser,
    guarded,
    model_inputs,
    model_spec,
    refuse_overwriting_inputs,
)
from darkcfg.cli.export import add_input_size, sized_model

if TYPE_CHECKING:  # (torch comes with them: `--help` stays quick)
    from darkcfg.model import ModelSpec


@dataclass(frozen=True)
class EmitOptions:
    model: ModelSpec
    out: str  # MODEL.py
    input_size: str | None = None  # WxH
    flag: str = "--out"  # the option that named `out` (the flag form's is --emit)


def arg_parser():
    p = command_parser("emit", "Write a self-contained PyTorch module (class Net) for a cfg.")
    add_model_arguments(p)
    p.add_argument("--out", required=True, metavar="MODEL.py", help="the file to write")
    add_input_size(p)
    return p


def parse(argv: list[str]) -> EmitOptions:
    args = arg_parser().parse_args(argv)
    return EmitOptions(model_spec(args), args.out, args.input_size)


def run(opts: EmitOptions) -> int:
    from darkcfg.export.emit import write_module
    from darkcfg.export.onnx import check_output

    refuse_overwriting_inputs({opts.flag: opts.out}, model_inputs(opts.model))
    check_output(opts.out, opts.flag)  # before the build: as export, no folder is created
    net = sized_model(opts.model, opts.input_size)
    print(write_module(net, opts.out, name=Path(opts.model.cfg).name, flag=opts.flag),
          file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
