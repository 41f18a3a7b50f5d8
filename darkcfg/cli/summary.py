"""`darkcfg summary CFG [--format text|json] [--plot-lr LR.png]`: Darknet's layer table (built on
the meta device: nothing is allocated), and the learning rate of every update 1..max_batches."""

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
    require_png,
)

if TYPE_CHECKING:  # (torch comes with them: `--help` stays quick)
    from darkcfg.model import ModelSpec


@dataclass(frozen=True)
class SummaryOptions:
    model: ModelSpec
    format: str = "text"  # text | json
    table: bool = True  # print the layer table (the flag form's --plot-lr alone does not)
    plot_lr: Path | None = None  # also plot the learning-rate schedule here


def arg_parser():
    p = command_parser("summary", "Print the layer table of a cfg (and plot its lr schedule).")
    add_model_arguments(p, weights=False)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--plot-lr", default=None, type=Path, metavar="PNG",
                   help="also plot the learning rate of every update 1..max_batches")
    return p


def parse(argv: list[str]) -> SummaryOptions:
    args = arg_parser().parse_args(argv)
    return SummaryOptions(model_spec(args), args.format, plot_lr=args.plot_lr)


def run(opts: SummaryOptions) -> int:
    refuse_overwriting_inputs({"--plot-lr": opts.plot_lr}, model_inputs(opts.model))
    require_png("--plot-lr", opts.plot_lr)
    if opts.plot_lr is not None:
        from builders.atomic import check_writable

        check_writable(opts.plot_lr, "--plot-lr")  # before the summary's build
    if opts.table:
        import json

        from builders.summary import summary_json, summary_text

        net = opts.model.build(device="meta")
        print(json.dumps(summary_json(net), indent=2) if opts.format == "json"
              else summary_text(net))
    if opts.plot_lr is not None:
        plot_schedule(opts.model, opts.plot_lr)
    return 0


def plot_schedule(model: ModelSpec, path: Path) -> None:
    """[net]'s learning rate for every update (darkcfg.config.lr_at), as a PNG."""
    from darkcfg.config import NetConfig
    from darkcfg.model import load_blocks
    from darkcfg.train.outputs import plot_lr

    blocks, _ = load_blocks(model.cfg, list(model.sets))
    cfg = NetConfig.from_block(blocks[0], seed=model.seed)
    if cfg.max_batches <= 0:
        raise blocks[0].error("E305", "--plot-lr needs max_batches > 0", "max_batches",
                              hint="pass --set max_batches=N")
    plot_lr(cfg, path, f"{model.name}: policy={cfg.policy}")
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
