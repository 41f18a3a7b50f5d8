"""`darkcfg detect CFG [--weights W] IMG_OR_DIR... [--names F | --data F.data] [--out DIR]`:
what `darknet detector test -ext_output` does, plus drawn images, COCO JSON and label files; and
`--input X.npy --detections OUT.json` for a raw network input (darkcfg.detect.run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from darkcfg.cli.common import (
    add_model_arguments,
    add_run_arguments,
    command_parser,
    guarded,
    model_inputs,
    model_spec,
    refuse_overwriting_inputs,
)

if TYPE_CHECKING:  # (torch comes with them: `--help` stays quick)
    from darkcfg.detect.run import DetectOptions


def arg_parser():
    p = command_parser("detect", "Detect objects in images, folders, videos, streams and "
                       "cameras.")
    add_model_arguments(p)
    add_detect_arguments(p)
    p.add_argument("targets", nargs="*", metavar="IMG_OR_DIR",
                   help="images and folders: prints Darknet's -ext_output lines, writes "
                   "OUT/<image>.jpg with the boxes and OUT/detections.json (COCO); videos "
                   "(.mp4 ...), stream URLs and camera indices (0): OUT/<name>.mp4 and "
                   ".jsonl (the video extra)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder "
                   "(runs/<cfg-name>/detect)")
    p.add_argument("--data", default=None, metavar="SRC",
                   help="a data set whose class names to print (X.data names=, data.yaml, "
                   "COCO .json, VOC folder)")
    add_run_arguments(p, "detect", "whose inference is estimated to need")
    return p


def add_detect_arguments(p, raw_input: bool = True) -> None:
    """The detection options the flag form shares (its --detect, --out, --data, and --input
    when not `raw_input`, are its own)."""
    p.add_argument("--names", default=None, metavar="F",
                   help="class names, one a line (default: names= of --data F.data)")
    p.add_argument("--thresh", type=float, default=0.25, help="detection threshold (.25)")
    p.add_argument("--nms", type=float, nargs="?", const=0.45, default=None, metavar="T",
                   help="NMS threshold (.45; 0: none); the kind is the last head's nms_kind "
                   "(flag form with --export --decode: NMS in the exported graph)")
    p.add_argument("--letter-box", action="store_true",
                   help="letterbox the images (default: [net] letter_box)")
    p.add_argument("--save-labels", action="store_true",
                   help="also write OUT/<image>.txt: 'class x y w h' per object")
    if raw_input:
        p.add_argument("--input", default=None, metavar="X.npy",
                       help="with --detections: a raw network input (N, C, H, W)")
    p.add_argument("--detections", default=None, metavar="OUT.json",
                   help="with --input X.npy: write its detections")


def detect_options(model, args, targets) -> DetectOptions:
    from darkcfg.detect.run import DetectOptions

    return DetectOptions(model, tuple(targets or ()), args.names, args.data, args.out,
                         args.thresh, 0.45 if args.nms is None else args.nms,
                         args.letter_box, args.save_labels, args.input,
                         args.detections, progress=not args.no_progress,
                         max_memory=getattr(args, "max_memory", None),
                         force=getattr(args, "force", False))


def parse(argv: list[str]) -> DetectOptions:
    args = arg_parser().parse_intermixed_args(argv)
    return detect_options(model_spec(args), args, args.targets)


def run(opts: DetectOptions) -> int:
    refuse_overwriting_inputs({"--detections": opts.detections},
                              {**model_inputs(opts.model), "the --input file": opts.input,
                               "the --names file": opts.names, "the --data file": opts.data})
    from darkcfg.detect.run import run_detect

    run_detect(opts)
    return 0


def main(argv: list[str]) -> int:
    return guarded(lambda: run(parse(argv)))
