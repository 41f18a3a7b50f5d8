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

from pathlib import Path

from cfgparse import CfgError, Diagnostic
from darkcfg.data.datafile import check_need
from darkcfg.data.detection.formats.base import FORMATS, DetectionSet, Split
from darkcfg.data.detection.formats.coco import read_coco
from darkcfg.data.detection.formats.darknet import read_darknet
from darkcfg.data.detection.formats.voc import read_voc
from darkcfg.data.detection.formats.yolo import read_yolo
from darkcfg.data.detection.labels import raise_problems

READERS = {"darknet": read_darknet, "yolo": read_yolo, "coco": read_coco, "voc": read_voc}


def _sets_inside(folder: Path) -> list[Path]:
    """What in `folder` is a set (for the error when `folder` is none): the usual one level up,
    `VOCdevkit/` for `VOCdevkit/VOC2007`, `coco/` for `coco/annotations/instances_val2017.json`."""
    try:
        entries = sorted(folder.iterdir())
        notes = sorted((folder / "annotations").glob("*.json"))
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and (p / "Annotations").is_dir()] + \
        [p for p in entries if p.is_file() and p.suffix.lower() in (".data", ".yaml", ".yml",
                                                                     ".json")] + notes


def detect_format(path: Path) -> str:
    """The format of `path` from its shape; a located error when it is none of them."""
    path = Path(path)
    if path.is_dir():
        if (path / "Annotations").is_dir():
            return "voc"
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return "yolo"
        inside = _sets_inside(path)
        raise CfgError(Diagnostic(
            "E901", f"'{path}' is a folder but not a detection data set", str(path),
            hint=f"pass a set inside it: {', '.join(map(str, inside[:4]))}"
            f"{' ...' if len(inside) > 4 else ''}" if inside else "a Pascal VOC folder holds "
            "Annotations/, JPEGImages/ and ImageSets/Main/; otherwise pass a .data file, a "
            "data.yaml or a COCO .json"))
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


def open_set(path: str | Path, strict: bool = True, need: str = "all") -> DetectionSet:
    """Read a detection set in any supported format. strict: raise the located errors (bad
    labels, boxes, classes) as one CfgError; else keep them in `.problems` (bad objects left
    out) for `darkcfg data check`. Warnings (W903: label boxes at the image edge, handled as
    Darknet does) stay in `.problems` either way. Missing files and unreadable annotation files
    always raise. `need` (darkcfg.data.datafile.NEEDS): a .data file or data.yaml leaves the
    lists it does not use unread (valid: the train list where there is a validation list); a
    COCO JSON is one file, and a VOC folder's class names come from every annotation."""
    check_need(need)
    path = Path(path).expanduser()
    fmt = detect_format(path)
    data = READERS[fmt](path, need) if fmt in ("darknet", "yolo") else READERS[fmt](path)
    # a label file in two splits (a .data whose valid= is its train list, an id in VOC's
    # train.txt and val.txt) is read twice: each of its problems is said once
    data.problems = list(dict.fromkeys(data.problems))
    # a validation list that names an image twice (said as W904 at the line) scores it once;
    # the train split keeps the repeat, which training draws as often as it is listed
    if data.valid is not None:
        data.valid = data.valid.distinct()
    if strict:
        raise_problems(data.problems)
    return data


__all__ = ["FORMATS", "READERS", "DetectionSet", "Split", "detect_format", "open_set"]
