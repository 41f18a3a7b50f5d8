"""A picture of what a detector trains on: augmented training samples with their truth boxes
(`darkcfg data preview`, darkcfg.cli.data).

Draws `count` samples of iteration `iteration` (and the following ones, a batch of 8 each) as
the training loop gets them, boxes and class names drawn with torchvision's
`draw_bounding_boxes`: a quick look at a data set's labels and at what the cfg's augmentation
keys do.
"""

from __future__ import annotations

import os

import torch

#: what --out may be: an image Pillow writes (a .cfg, .data or label file given by mistake is
#: refused before it could be written over)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: the most samples a preview draws: 32 rows of 8 (all of them are held, as tiles and then as
#: the picture: --count 100000 grew past 2.5 GB for minutes before it could fail)
MAX_COUNT = 256


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
