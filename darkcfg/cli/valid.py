"""`darkcfg valid CFG --weights W [--data SRC] [--format text|json] [--map-points 0|11|101]`:
validation metrics, top-1/top-5 for classifiers, mAP and the per-class AP table for detectors
(Darknet's `detector map`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from darkcfg.cli.common import add_model_arguments, command_parser, guarded, model_spec
from darkcfg.cli.train import add_data_arguments, add_map_points, run_options


@dataclass(frozen=True)
class ValidOptions:
    run: object  # darkcfg.train.session.RunOptions
    format: str = "text"  # text | json (one JSON object)


def arg_parser():
    p = command_parser("valid", "Validation metrics of a cfg and its weights.")
    add_model_arguments(p)
    add_data_arguments(p)
    add_map_points(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    return p


def parse(argv: list[str]) -> ValidOptions:
    args = arg_parser().parse_args(argv)
    return ValidOptions(run_options(model_spec(args), args), args.format)


def run(opts: ValidOptions, trainer=None) -> int:
    """`trainer`: validate the network just trained (the flag form's --train --valid)."""
    from darkcfg.train.session import validate

    task, result = validate(opts.run, trainer)
    print(json.dumps(task.as_json(result)) if opts.format == "json" else task.describe(result))
    return 0


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
