"""`darkcfg weights CFG --weights IN [--save-weights OUT [--cutoff N]] [--input X.npy
--dump-outputs OUT.npz [--all-layers]]`: rewrite Darknet .weights (e.g. the first N layers, as
`darknet partial` does), or write the layers' outputs for an input in Darknet's order."""

from __future__ import annotations

import sys
from dataclasses import dataclass
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
class WeightsOptions:
    model: ModelSpec  # model.weights: the weights to read (required)
    save_weights: str | None = None  # write Darknet .weights (the first model.cutoff layers)
    input: str | None = None  # X.npy, for dump_outputs
    dump_outputs: str | None = None  # OUT.npz: layer outputs in Darknet order
    all_layers: bool = False  # dump every layer, not only the outputs

    def __post_init__(self):
        if not self.model.weights:
            raise usage_error("--save-weights and --dump-outputs need --weights")
        if not (self.save_weights or self.dump_outputs):
            raise usage_error("nothing to do: pass --save-weights OUT or --dump-outputs OUT.npz")
        if self.dump_outputs and not self.input:
            raise usage_error("--dump-outputs needs --input X.npy")
        for flag, given in (("--input", self.input), ("--all-layers", self.all_layers)):
            if given and not self.dump_outputs:  # --save-weights alone went on without them
                raise CfgError(Diagnostic(
                    "E100", f"{flag} is read by --dump-outputs, which is not given", flag,
                    hint=f"add --dump-outputs OUT.npz, or drop {flag}"))


def arg_parser():
    p = command_parser("weights", "Convert Darknet .weights or dump layer outputs.")
    add_model_arguments(p)
    p.add_argument("--save-weights", default=None, metavar="OUT",
                   help="write the (loaded) weights as Darknet .weights")
    p.add_argument("--input", default=None, metavar="X.npy", help="input for --dump-outputs")
    p.add_argument("--dump-outputs", default=None, metavar="OUT.npz",
                   help="write layer outputs in Darknet order")
    p.add_argument("--all-layers", action="store_true", help="--dump-outputs every layer")
    return p


def parse(argv: list[str]) -> WeightsOptions:
    args = arg_parser().parse_args(argv)
    return WeightsOptions(model_spec(args), args.save_weights, args.input, args.dump_outputs,
                          args.all_layers)


def run(opts: WeightsOptions) -> int:
    model = opts.model
    refuse_overwriting_inputs({"--save-weights": opts.save_weights,
                               "--dump-outputs": opts.dump_outputs},
                              {**model_inputs(model), "the --input file": opts.input})
    from builders.atomic import check_writable

    for flag, path in (("--save-weights", opts.save_weights),
                       ("--dump-outputs", opts.dump_outputs)):
        if path:
            check_writable(path, flag)  # before the build and the weights' read
    from darkcfg.model import read_any_weights

    net = model.build()
    loaded = read_any_weights(net, model.weights, model.cutoff, model.partial)
    print(loaded.report, file=sys.stderr)
    if opts.save_weights:
        from builders.weights import save_weights

        # the header's seen is the loaded file's (Darknet's save_weights writes net->seen); the
        # first N layers restart at 0, as `darknet partial` writes them
        seen = loaded.seen if model.cutoff is None else 0
        n = save_weights(net, opts.save_weights, cutoff=model.cutoff, seen=seen)
        print(f"wrote {opts.save_weights} ({n} floats, seen={seen})", file=sys.stderr)
    if opts.dump_outputs:

        from darkcfg.data.base import read_array
        from darkcfg.export.dump import dump_outputs

        x = read_array(opts.input)
        written = dump_outputs(net, x, opts.dump_outputs, opts.all_layers, input_name=opts.input)
        print(f"wrote {opts.dump_outputs} ({len(written)} layers)", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
