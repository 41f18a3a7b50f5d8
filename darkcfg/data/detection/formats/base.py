"""The one in-memory structure every format reads into (see the package doc)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cfgparse import CfgError, Diagnostic
from darkcfg.data.detection.labels import LABEL_CODE, Labels, missing_labels, same_image

FORMATS = ("darknet", "yolo", "coco", "voc")


@dataclass(frozen=True)
class DeclaredSize:
    """An image size an annotation states (COCO `images[].width/height`, VOC `<size>`), which
    its boxes are taken relative to; `where(message, hint)` is a diagnostic located at it."""

    width: float
    height: float
    where: Callable[[str, str], Diagnostic]


@dataclass
class Split:
    """The images of one split and their objects."""

    images: list[str]  # paths as opened
    boxes: list[np.ndarray]  # per image (n, 5) float32 [x, y, w, h, class], relative
    difficult: list[np.ndarray] | None = None  # per image: objects not scored (None: no list)
    missing: int = 0  # images without a label file (Darknet: no objects)
    missing_example: tuple[str, str] | None = None  # (image, its absent label file), the first
    declared: dict[str, DeclaredSize] = field(default_factory=dict)  # image -> stated size
    unlabelled: frozenset[str] = frozenset()  # the images without a label file

    @classmethod
    def labelled(cls, images: list[str], label_paths: Sequence[str], labels: Labels) -> Split:
        """A split of images with a label file each (Darknet's, ultralytics')."""
        k = labels.first_missing
        return cls(images, labels.boxes, missing=labels.missing,
                   missing_example=(images[k], label_paths[k]) if k >= 0 else None,
                   unlabelled=frozenset(images[i] for i in labels.missing_at))

    def distinct(self) -> Split:
        """The split with each image once, at its first place (validation: a list that names
        an image twice must not score it twice); itself when no image repeats."""
        first: dict[str, int] = {}
        for k, image in enumerate(self.images):
            first.setdefault(same_image(image), k)
        if len(first) == len(self.images):
            return self
        keep = sorted(first.values())
        images = [self.images[k] for k in keep]
        return replace(self, images=images, boxes=[self.boxes[k] for k in keep],
                       difficult=None if self.difficult is None else
                       [self.difficult[k] for k in keep],
                       missing=sum(image in self.unlabelled for image in images))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def objects(self) -> int:
        return sum(len(b) for b in self.boxes)

    def missing_warning(self, what: str) -> str:
        """The training warning for images without a label file ('' when none is missing)."""
        message = missing_labels(self.missing, len(self.images), what)
        beside = self.label_beside()
        return f"warning: {message}" + (f"; {beside}" if beside else "") if message else ""

    def label_beside(self) -> str:
        """When the first image without a label file has a .txt beside it (labels kept next to
        the images, where a data.yaml looks under labels/): what to do ('' otherwise)."""
        if self.missing_example is None:
            return ""
        image, label = self.missing_example
        beside = os.path.splitext(image)[0] + ".txt"
        if beside == label or not os.path.isfile(beside):
            return ""
        return (f"'{beside}' lies beside its image but the label is read from '{label}': "
                "move the label files there")


@dataclass
class DetectionSet:
    """A detection data set, whatever its format on disk."""

    path: Path  # what --data named
    format: str  # one of FORMATS
    names: list[str]
    train: Split
    valid: Split | None  # None: no validation split (Darknet's map then uses the train list)
    backup: str | None = None
    problems: list[Diagnostic] = field(default_factory=list)  # located, bad objects left out
    category_ids: list[int] | None = None  # COCO: each class's category id (a COCO out keeps them)
    # COCO: image path -> (image id, the size its boxes are in) of each entry of the picture,
    # the first first (detect's results, scored against the JSON as it is)
    image_ids: dict[str, list[tuple[object, tuple[float, float]]]] | None = None
    train_read: bool = True  # False: open_set's `need` left the train images unread

    @property
    def classes(self) -> int:
        return len(self.names)

    def class_mismatch(self, detected: int) -> Diagnostic | None:
        """Training's rule for the network's class count (its last detection head's
        `classes`): more classes in the data than the network detects is an error; fewer is
        allowed (an 80-class cfg trains on 2-class data, the mAP averages over the data's)."""
        if self.classes <= detected:
            return None
        return Diagnostic("E901", f"'{self.path}' has {self.classes} classes but the network "
                          f"detects {detected}", str(self.path),
                          hint=f"set classes={self.classes} in every [yolo] (and the filters "
                          "before it) or fix the data's class names")

    @property
    def valid_or_train(self) -> Split:
        """The images validation reads, as listed (a list may name one twice)."""
        return self.valid if self.valid is not None else self.train

    @property
    def scored(self) -> Split:
        """The images validation scores: `valid_or_train`, each image once (Darknet's detector
        map scores an image as often as its list names it; darkcfg does not)."""
        return self.valid_or_train.distinct()

    def describe(self) -> str:
        v = self.valid
        valid = f"{len(v)} valid images" if v is not None else \
            "train list (no valid=) images" if self.format == "darknet" else \
            "validation on the train images"
        kind = {"darknet": "Darknet detection data", "yolo": "YOLO data.yaml",
                "coco": "COCO annotations", "voc": "Pascal VOC folder"}[self.format]
        train = f"{len(self.train)} train images ({self.train.objects} objects)" \
            if self.train_read else "train images not read"
        return f"{kind} {self.path}: {self.classes} classes, {train}, {valid}"


SHOWN_LINE = 160  # the longest source line a diagnostic shows (a one-line JSON file: none)


def located(message: str, path: str, text: str, offset: int, span: int = 1,
            hint: str = "", code: str = LABEL_CODE) -> Diagnostic:
    """A diagnostic at character `offset` of a file's `text` (line and column from it; the
    source line shown unless it is too long to read, as in a one-line JSON file)."""
    return TextLocator(text).located(message, path, offset, span, hint, code)


class TextLocator:
    """`located` for many diagnostics in one text: lines are counted on from the offset asked
    last (a reader reports in file order), so N diagnostics read the text about once, not N
    times (20k warnings in a 6 MB COCO file took 48 s, 40k in 12 MB 192 s)."""

    def __init__(self, text: str):
        self.text = text
        self._at = (0, 1, 0)  # an offset, its line, where that line starts

    def located(self, message: str, path: str, offset: int, span: int = 1, hint: str = "",
                code: str = LABEL_CODE) -> Diagnostic:
        text = self.text
        at, line, start = self._at if offset >= self._at[0] else (0, 1, 0)
        breaks = text.count("\n", at, offset)
        if breaks:
            line, start = line + breaks, text.rfind("\n", at, offset) + 1
        self._at = (offset, line, start)
        # the source line only when it is short enough to show: never read a long one whole
        end = text.find("\n", offset, start + SHOWN_LINE + 1)
        end = end if end >= 0 else len(text) if len(text) - start <= SHOWN_LINE else -1
        return Diagnostic(code, message, path, line, offset - start + 1, hint=hint,
                          source=text[start:end] if end >= 0 else "", span=span)


def relative_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float
                 ) -> tuple[float, float, float, float]:
    """Corner box in pixels -> Darknet's (centre x, centre y, width, height) as fractions."""
    return ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
            (y1 - y0) / height)


def box_rows(rows: Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(-1, 5)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file as darkcfg reads it (turned by its EXIF orientation,
    `darkcfg.data.base.upright`), from its header only."""

    from darkcfg.data.base import image_errors, open_image, upright_size

    try:
        with open_image(path) as im:
            return upright_size(im)
    except image_errors() as exc:  # a decompression bomb too (not an OSError)
        raise CfgError(Diagnostic("E901", f"cannot read image '{path}': {exc}", path,
                                  hint="remove it or convert it to JPEG/PNG")) from None
