"""Detection data sets in the formats people have, read into one structure.

`open_set(path)` reads any of
  * a Darknet `.data` file (darkcfg.data.detection.labels; `formats/darknet.py`),
  * an ultralytics `data.yaml` (`formats/yolo.py`),
  * a COCO annotation JSON (`formats/coco.py`),
  * a Pascal VOC folder (`Annotations/`, `JPEGImages/`, `ImageSets/Main/`; `formats/voc.py`),
recognised by their shape (suffix, or the folders a VOC root holds), into a `DetectionSet`: per
split, image paths and boxes `(n, 5) float32 [x, y, w, h, class]` relative to the image (Darknet's
label values), so every format gives the samples the equivalent Darknet `.data` would. Objects
a format marks as "do not score" (VOC `difficult`, COCO `iscrowd`) are left out of the boxes and
kept per validation image in `valid.difficult`, the role of Darknet's `difficult=` list.

Torch-free: `darkcfg data check` and `convert` read sets without building anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cfgparse import CfgError, Diagnostic
from darkcfg.data.detection.labels import LABEL_CODE, raise_problems

FORMATS = ("darknet", "yolo", "coco", "voc")
EMPTY = np.zeros((0, 5), np.float32)


@dataclass
class Split:
    """The images of one split and their objects."""

    images: list[str]  # paths as opened
    boxes: list[np.ndarray]  # per image (n, 5) float32 [x, y, w, h, class], relative
    difficult: list[np.ndarray] | None = None  # per image: objects not scored (None: no list)
    missing: int = 0  # images without a label file (Darknet: no objects)
    label_files: list[str] = field(default_factory=list)  # where the boxes came from, if files

    def __len__(self) -> int:
        return len(self.images)

    @property
    def objects(self) -> int:
        return sum(len(b) for b in self.boxes)

    def missing_warning(self, what: str) -> str:
        if not self.missing:
            return ""
        return (f"warning: {self.missing} of {len(self.images)} {what} have no label file "
                "(trained as images without objects)")


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

    @property
    def classes(self) -> int:
        return len(self.names)

    @property
    def valid_or_train(self) -> Split:
        return self.valid if self.valid is not None else self.train

    def describe(self) -> str:
        v = self.valid
        valid = f"{len(v)} valid" if v is not None else "train list (no valid=)" \
            if self.format == "darknet" else "train images (no validation split)"
        kind = {"darknet": "Darknet detection data", "yolo": "YOLO data.yaml",
                "coco": "COCO annotations", "voc": "Pascal VOC folder"}[self.format]
        return (f"{kind} {self.path}: {self.classes} classes, {len(self.train)} train images "
                f"({self.train.objects} objects), {valid} images")


def detect_format(path: Path) -> str:
    """The format of `path` from its shape; a located error when it is none of them."""
    path = Path(path)
    if path.is_dir():
        if (path / "Annotations").is_dir():
            return "voc"
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return "yolo"
        raise CfgError(Diagnostic(
            "E901", f"'{path}' is a folder but not a detection data set", str(path),
            hint="a Pascal VOC folder holds Annotations/, JPEGImages/ and ImageSets/Main/; "
            "otherwise pass a .data file, a data.yaml or a COCO .json"))
    if not path.exists():
        raise CfgError(Diagnostic("E901", f"'{path}' does not exist", str(path),
                                  hint="--data takes a Darknet .data file, an ultralytics "
                                  "data.yaml, a COCO annotation .json or a Pascal VOC folder"))
    suffix = path.suffix.lower()
    if suffix == ".data":
        return "darknet"
    if suffix in (".yaml", ".yml"):
        return "yolo"
    if suffix == ".json":
        return "coco"
    raise CfgError(Diagnostic(
        "E901", f"'{path}' is not a detection data set", str(path),
        hint="--data takes a Darknet .data file, an ultralytics data.yaml, a COCO annotation "
        ".json or a Pascal VOC folder (Annotations/, JPEGImages/, ImageSets/Main/)"))


def open_set(path: str | Path, strict: bool = True) -> DetectionSet:
    """Read a detection set in any supported format. strict: raise the located problems
    (bad labels, boxes, classes) as one CfgError; else keep them in `.problems` (bad objects
    left out) for `darkcfg data check`. Missing files and unreadable annotation files always
    raise."""
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "darknet":
        from darkcfg.data.detection.formats.darknet import read_darknet as reader
    elif fmt == "yolo":
        from darkcfg.data.detection.formats.yolo import read_yolo as reader
    elif fmt == "coco":
        from darkcfg.data.detection.formats.coco import read_coco as reader
    else:
        from darkcfg.data.detection.formats.voc import read_voc as reader
    data = reader(path)
    if strict:
        raise_problems(data.problems)
    return data


def located(message: str, path: str, text: str, offset: int, span: int = 1,
            hint: str = "", code: str = LABEL_CODE) -> Diagnostic:
    """A diagnostic at character `offset` of a file's `text` (line and column from it; the
    source line shown unless it is too long to read, as in a one-line JSON file)."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    source = text[start:end if end >= 0 else len(text)]
    return Diagnostic(code, message, path, line, offset - start + 1, hint=hint,
                      source=source if len(source) <= 160 else "", span=span)


def relative_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float
                 ) -> tuple[float, float, float, float]:
    """Corner box in pixels -> Darknet's (centre x, centre y, width, height) as fractions."""
    return ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
            (y1 - y0) / height)


def box_rows(rows: Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(-1, 5)


__all__ = ["FORMATS", "DetectionSet", "Split", "detect_format", "open_set"]
