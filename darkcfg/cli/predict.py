"""`darkcfg predict CFG --weights W IMG_OR_DIR... [--top K]`: an image classifier's top-K classes
with their names (Darknet's `classifier predict`)."""

from __future__ import annotations

from dataclasses import dataclass

from darkcfg.cli.common import add_model_arguments, command_parser, guarded, model_spec, usage_error
from darkcfg.cli.train import add_data_arguments, run_options


@dataclass(frozen=True)
class PredictOptions:
    run: object  # darkcfg.train.session.RunOptions
    images: tuple[str, ...]
    top: int | None = None  # None: the .data file's top=, else 5

    def __post_init__(self):
        if self.top is not None and self.top < 1:
            raise usage_error(f"--top {self.top}: show at least 1 class")
        if not self.images:
            raise usage_error("no images to classify", hint="give image files or folders")


def arg_parser():
    p = command_parser("predict", "Classify images: the top classes with their names.")
    add_model_arguments(p)
    add_data_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMG_OR_DIR")
    p.add_argument("--top", type=int, default=None,
                   help="classes shown (a .data file's top=, else 5)")
    return p


def parse(argv: list[str]) -> PredictOptions:
    args = arg_parser().parse_intermixed_args(argv)
    return PredictOptions(run_options(model_spec(args), args), tuple(args.images), args.top)


def run(opts: PredictOptions, trainer=None) -> int:
    from cfgparse.errors import printable
    from darkcfg.train.session import predict

    # a file name holding a line break must not split its line (escaped as diagnostics do)
    for path, ranked in predict(opts.run, list(opts.images), opts.top, trainer):
        print(f"{printable(str(path))}: " + ", ".join(f"{100 * p:.2f}% {printable(n)}"
                                                   for n, p in ranked))
    return 0


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
