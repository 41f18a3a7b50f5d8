"""`darkcfg data`: detection data sets in the formats people have.

    darkcfg data convert SRC --to darknet|yolo|coco OUT [--link]
    darkcfg data check SRC [--cfg CFG] [--size WxH] [--plot PNG]
    darkcfg data preview CFG [--data SRC] [--classes K] [--set KEY=VALUE] [--seed N]
                             [--iteration I] [--count N] [--out PNG]

SRC is anything `--data` takes for a detector: a Darknet .data file, an ultralytics data.yaml,
a COCO annotation .json or a Pascal VOC folder (darkcfg.data.detection.formats).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cfgparse import CfgError, Diagnostic
from cfgparse.usage import CommandParser
from darkcfg.bundled import resolve_model_cfg
from darkcfg.cli.common import (
    parse_wxh,
    refuse_overwriting_inputs,
    refuse_plot_over_images,
    require_png,
)
from darkcfg.console import warn


def arg_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="darkcfg data",
                                description="Convert and check detection data sets.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="write SRC as a Darknet, YOLO or COCO set in OUT")
    c.add_argument("src", help=".data, data.yaml, COCO .json or VOC folder")
    c.add_argument("--to", required=True, choices=("darknet", "yolo", "coco"))
    c.add_argument("out", help="a new (or empty) folder")
    c.add_argument("--link", action="store_true",
                   help="hard-link the images instead of copying them (same file system)")
    k = sub.add_parser("check", help="check a set: label errors, unreadable images, "
                       "class and box-size histograms, boxes under one output cell")
    k.add_argument("src", help=".data, data.yaml, COCO .json or VOC folder")
    k.add_argument("--cfg", default=None, help="measure boxes at this detector's size and strides")
    k.add_argument("--size", default=None, metavar="WxH",
                   help="network size (default: the cfg's, else 416x416; strides: the cfg's "
                   "heads', else 8, 16, 32)")
    k.add_argument("--plot", default="data_check.png", metavar="PNG",
                   help="where to write the histograms (data_check.png)")
    v = sub.add_parser("preview", help="draw training samples with their truth boxes, as "
                       "`darkcfg train CFG` with the same options gets them")
    v.add_argument("cfg", help="a detector cfg (its size and augmentation keys)")
    v.add_argument("--data", default=None, metavar="SRC",
                   help="as train's --data (default: the embedded detection set)")
    v.add_argument("--classes", type=int, default=None, metavar="K",
                   help="the embedded set's first K classes (as train's --classes)")
    v.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="override a cfg value, as train's --set (repeatable)")
    v.add_argument("--seed", type=int, default=0, metavar="N", help="as train's --seed (0)")
    v.add_argument("--iteration", type=int, default=0, metavar="I",
                   help="the first iteration drawn (0); 8 samples an iteration")
    v.add_argument("--count", type=int, default=16, metavar="N",
                   help="how many samples (16; at most 256)")
    v.add_argument("--out", default="preview.png", metavar="PNG",
                   help="where to write the picture (.png or .jpg; preview.png)")
    return p


def main(argv: list[str]) -> int:
    """Errors reach darkcfg.cli's one handler (located diagnostics, exit 2)."""
    args = arg_parser().parse_args(argv)
    if args.command == "convert":
        return convert(args.src, args.to, Path(args.out), args.link)
    if args.command == "preview":
        from darkcfg.model import check_seed

        return preview(resolve_model_cfg(args.cfg), args.data, args.classes, args.sets,
                       check_seed(args.seed), args.iteration, args.count, args.out)
    return check(args.src, resolve_model_cfg(args.cfg), args.size, Path(args.plot))


def convert(src: str, to: str, out: Path, link: bool) -> int:
    from darkcfg.data.detection.formats import open_set
    from darkcfg.data.detection.formats.convert import check_new_folder
    from darkcfg.data.detection.formats.convert import convert as write
    from darkcfg.data.detection.labels import set_warnings

    check_new_folder(out)  # before the source set, however large, is read
    data = open_set(src)
    for warning in set_warnings(data.problems):
        warn(warning)
    written = write(data, to, out, link)
    valid = f", {len(data.valid)} valid" if data.valid is not None else ""
    print(f"read {data.describe()}")
    print(f"wrote {to} set {written[0]} ({len(data.train)} train{valid} images, "
          f"{data.classes} classes)")
    return 0


def check(src: str, cfg: str | None, size: str | None, plot: Path) -> int:
    from darkcfg.data.detection.formats.check import check_set

    refuse_overwriting_inputs({"--plot": plot}, {"the data set file": src, "the cfg": cfg})
    require_png("--plot", plot)
    at = parse_wxh("--size", size) if size is not None else None  # before the build
    net_size, strides, origin = (416, 416), (8, 16, 32), "strides 8, 16, 32"
    classes = None
    if cfg is not None:
        net_size, strides, classes = network_geometry(cfg)
        origin = f"{Path(cfg).name}: strides {', '.join(map(str, strides))}"
    if at is not None:  # the cfg's strides at another size (a fully convolutional net)
        net_size = at
    report = check_set(src, net_size, strides, origin, classes)
    refuse_plot_over_images("--plot", plot, (image for _, split in report.splits()
                                            for image in split.images))
    for d in report.problems + report.unreadable_errors():
        print(d.format(), file=sys.stderr)
    print(report.table())
    report.plot(plot)
    print(f"wrote {plot}")
    return 0 if report.ok else 2


def network_geometry(cfg: str) -> tuple[tuple[int, int], tuple[int, ...], int]:
    """(net width, height), the detection heads' strides and the classes training checks the
    data against (DetectionSettings': the last head's) of a detector cfg."""
    from darkcfg.data.detection.augment import DetectionSettings
    from darkcfg.detect.decode import head_indices
    from darkcfg.model import build_network

    net, _, _ = build_network(cfg, [], "alexeyab", 0, device="meta")
    heads = head_indices(net)
    if not heads:
        raise CfgError(Diagnostic("E300", f"'{cfg}' has no detection head", cfg,
                                  hint="--cfg takes a detector ([yolo], [region], ...)"))
    w, h = net.info.width, net.info.height
    return ((w, h), tuple(sorted({w // net.shapes[i].w for i in heads if net.shapes[i].w})),
            DetectionSettings.from_network(net).classes)


def preview(cfg: str, data: str | None, classes: int | None, sets: list[str], seed: int,
            iteration: int, count: int, out: str) -> int:
    """Write a grid of `count` training samples from `iteration` on, boxes drawn."""
    from darkcfg.data.detection.preview import IMAGE_SUFFIXES, MAX_COUNT

    if Path(out).suffix.lower() not in IMAGE_SUFFIXES:  # before the data is read
        raise CfgError(Diagnostic("E100", f"--out '{out}': the preview is an image (.png or "
                                  ".jpg)", "<command line>",
                                  hint=f"e.g. --out {Path(out).stem or 'preview'}.png"))
    for flag, value, least in (("--count", count, 1), ("--iteration", iteration, 0)):
        if value < least:
            raise CfgError(Diagnostic("E100", f"{flag} {value}: must be {least} or more",
                                      "<command line>", hint=f"e.g. {flag} {least + 7}"))
    if count > MAX_COUNT:
        raise CfgError(Diagnostic("E100", f"--count {count}: a preview draws at most "
                                  f"{MAX_COUNT} samples", "<command line>",
                                  hint="--iteration I starts the picture at a later iteration "
                                  "(8 samples each)"))
    from builders import build
    from darkcfg.data.base import write_image
    from darkcfg.data.detection.dataset import detection_datasets
    from darkcfg.data.detection.preview import preview_grid, refuse_out_in_set, set_images
    from darkcfg.model import load_blocks

    blocks, _ = load_blocks(cfg, sets)
    splits = detection_datasets(build(blocks, device="meta"), data, seed, classes)
    print(splits.banner(), file=sys.stderr)
    for line in splits.warnings:
        warn(line)
    refuse_out_in_set(out, set_images(splits))
    write_image(out, preview_grid(splits, count, iteration))
    print(out)
    return 0
