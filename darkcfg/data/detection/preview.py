"""A picture of what a detector trains on: augmented training samples with their truth boxes.

    python -m darkcfg.data.detection.preview CFG [--data X.data] [--set KEY=VALUE ...] [--seed N]
                                         [--iteration I] [--count 16] [--out preview.png]

Draws `count` samples of iteration `iteration` (and the following ones, a batch of 8 each) as
the training loop gets them, boxes and class names drawn with torchvision's
`draw_bounding_boxes`: a quick look at a .data set's labels and at what the cfg's augmentation
keys do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from darkcfg.console import warn

#: the module docstring's first line, which `python -OO` strips (--help was an AttributeError)
DESCRIPTION = "A picture of what a detector trains on: augmented training samples with their " \
    "truth boxes."

#: what --out may be: an image Pillow writes (a .cfg, .data or label file given by mistake is
#: refused before it could be written over)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def preview_grid(splits, count: int = 16, iteration: int = 0, per_row: int = 8
                 ) -> torch.Tensor:
    """uint8 (3, H, W) grid of `count` training samples with their boxes, each sample resized
    to the cfg size (multi-scale sizes differ)."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes, make_grid

    from builders.boxes import cxcywh_to_xyxy
    from darkcfg.data.detection.dataset import Slot

    s = splits.settings
    tiles = []
    for k in range(count):
        image, truth = splits.train[Slot(iteration + k // 8, k % 8)]
        rows = truth[truth[:, 2] > 0]
        h, w = image.shape[-2:]
        xyxy = cxcywh_to_xyxy(rows[:, :4]) * torch.tensor([w, h, w, h], dtype=rows.dtype)
        names = [splits.names[int(c)] if int(c) < len(splits.names) else str(int(c))
                 for c in rows[:, 4]]
        rgb = image if image.shape[0] == 3 else image[:1].expand(3, -1, -1)
        tile = draw_bounding_boxes(rgb, xyxy, labels=names, colors="white")
        tiles.append(F.resize(tile, [s.height, s.width], antialias=True))
    return make_grid(tiles, nrow=per_row, padding=2)


def set_images(splits) -> list[str]:
    """The image files of a data set on disk (train and validation; none for the embedded
    set)."""
    found: list[str] = []
    for split in (splits.train, splits.val):
        source = getattr(split, "source", None)
        found += [str(p) for p in getattr(source, "paths", ())]
    return found


def refuse_out_in_set(out: str, images: list[str]) -> None:
    """E100 when --out is an image of the data set (the preview would replace it) or lies in a
    folder of its images (a picture written there joins the set: a data.yaml folder, a VOC
    JPEGImages/ or `--detect DIR` would take it as one more image). Links followed."""
    from cfgparse import CfgError, Diagnostic

    target = os.path.realpath(out)
    real = {image: os.path.realpath(image) for image in images}
    same = next((image for image in images if real[image] == target), None)
    beside = next((image for image in images
                   if os.path.dirname(real[image]) == os.path.dirname(target)), None)
    if same is None and beside is None:
        return
    what = f"is the image '{same}' of the data set: the preview would replace it" \
        if same is not None else f"is in '{os.path.dirname(beside) or '.'}', a folder of the " \
        "data set's images: a picture written there joins the set"
    raise CfgError(Diagnostic("E100", f"--out '{out}' {what}", "<command line>",
                              hint="write the preview outside the data set's folders, e.g. "
                              "--out preview.png"))


def main(argv: list[str] | None = None) -> int:
    from builders import build
    from cfgparse import CfgError, Diagnostic
    from cfgparse.usage import CommandParser
    from darkcfg.data.base import write_image
    from darkcfg.data.detection.dataset import detection_datasets
    from darkcfg.model import load_blocks

    # usage errors as one E100 diagnostic, as every darkcfg command line
    ap = CommandParser(prog="python -m darkcfg.data.detection.preview",
                       description=DESCRIPTION)
    ap.add_argument("cfg")
    ap.add_argument("--data", default=None)
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iteration", type=int, default=0)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--out", default="preview.png")
    args = ap.parse_args(argv)
    try:
        if Path(args.out).suffix.lower() not in IMAGE_SUFFIXES:
            raise CfgError(Diagnostic("E100", f"--out '{args.out}': the preview is an image "
                                      "(.png or .jpg)", "<command line>",
                                      hint=f"e.g. --out {Path(args.out).stem or 'preview'}.png"))
        for flag, value, least in (("--count", args.count, 1), ("--iteration", args.iteration, 0)):
            if value < least:
                raise CfgError(Diagnostic("E100", f"{flag} {value}: must be {least} or more",
                                          "<command line>", hint=f"e.g. {flag} {least + 7}"))
        blocks, _ = load_blocks(args.cfg, args.sets)
        splits = detection_datasets(build(blocks, device="meta"), args.data, args.seed,
                                    args.classes)
        print(splits.banner(), file=sys.stderr)
        for line in splits.warnings:
            warn(line)
        refuse_out_in_set(args.out, set_images(splits))
        write_image(args.out, preview_grid(splits, args.count, args.iteration))
    except CfgError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
