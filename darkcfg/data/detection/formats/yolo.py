"""ultralytics-style YOLO sets: a `data.yaml` naming image folders or list files, and a label
file per image found by ultralytics' rule.

The rules are ultralytics' (`ultralytics/data/utils.py` check_det_dataset and img2label_paths,
`ultralytics/data/base.py` get_img_files):
  * `path` is the root (absolute, else relative to the current directory when it exists there,
    else to the yaml's folder; default: the yaml's folder); `train` and `val` are each a folder,
    a list file or a list of them, relative to the root;
  * a folder contributes every image under it (recursively), a list file its lines (a line
    starting `./` is relative to the list's folder; other relative lines are tried in the current
    directory, then the list's folder); images are sorted by path;
  * the label file of `.../images/.../x.jpg` is `.../labels/.../x.txt` (the last `/images/`
    becomes `/labels/`, the extension `.txt`);
  * `names` is a list or a {id: name} mapping (ids 0..n-1); `nc`, when given, must agree;
    `nc` alone names the classes class_0, class_1, ...
Label lines are Darknet's `class x y w h` and get its checks (E903); a segment line (a class
and x y points) is the box around its points (ultralytics' segments2boxes). Without `val`,
validation falls back to the train images (Darknet's rule for a .data file without valid=).
"""

from __future__ import annotations

import os
import re
import reprlib
from dataclasses import replace
from pathlib import Path

import yaml

from builders.atomic import files_under
from cfgparse import CfgError, Diagnostic
from cfgparse.errors import WARNING, printable
from cfgparse.parser import decode
from cfgparse.yaml_io import load_yaml
from darkcfg.data.datafile import (
    IMAGE_EXTENSIONS,
    MAX_UNNAMED_CLASSES,
    is_image,
    missing_path_hint,
    text_hint,
)
from darkcfg.data.detection.formats.base import DetectionSet, Split
from darkcfg.data.detection.labels import SET_CODE, collect_labels, repeated, same_image

# ultralytics/data/utils.py IMG_FORMATS (the ones PIL reads): what ultralytics takes from a
# folder or a list; darkcfg reads a yolo set by its own one rule (datafile.IMAGE_EXTENSIONS for
# a folder, every line of a list), and `convert --to yolo` re-encodes an image ultralytics
# would pass over
ULTRALYTICS_IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp",
                           "pfm"}
_HINT = ("a data.yaml has path: (root), train: and val: (folders or list files), and names: "
         "(a list, or {0: name, ...})")


def label_path(image: str) -> str:
    """ultralytics' img2label_paths: the last /images/ -> /labels/, the extension -> .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    lead = "" if image.startswith(os.sep) else os.sep  # a relative `images/train/x.jpg` too
    head, sep, tail = (lead + image).rpartition(sa)
    out = (head + sb + tail)[len(lead):] if sep else image
    stem = out.rsplit(".", 1)[0] if "." in os.path.basename(out) else out
    return stem + ".txt"


class _Yaml:
    """The parsed yaml and where each top-level key is, for located errors."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            if text_hint(exc, ""):  # UTF-16: how to save it instead
                raise CfgError(Diagnostic("E901", f"cannot read '{path}': {exc}", str(path),
                                          hint=text_hint(exc, ""))) from None
            decode(exc.object, str(path))  # E104 at the byte's line and column
            raise
        except OSError as exc:
            raise CfgError(Diagnostic("E901", f"cannot read '{path}': {exc}", str(path))) \
                from None
        self.data, node = load_yaml(self.text, str(path), _HINT)
        if not isinstance(self.data, dict):
            raise CfgError(Diagnostic("E901", "a data.yaml is a mapping of keys", str(path),
                                      hint=_HINT))
        self.marks = {}
        self.nodes = {}
        for key, value in node.value:
            self.marks[str(key.value)] = value.start_mark
            self.nodes[str(key.value)] = value

    def error(self, key: str, message: str, hint: str = _HINT) -> CfgError:
        mark = self.marks.get(key)
        if mark is None:
            return CfgError(Diagnostic("E901", message, str(self.path), hint=hint))
        lines = self.text.splitlines()
        source = lines[mark.line] if mark.line < len(lines) else ""
        return CfgError(Diagnostic("E901", message, str(self.path), mark.line + 1,
                                   mark.column + 1, hint=hint, source=source,
                                   span=max(len(source.rstrip()) - mark.column, 1)))


def read_yolo(path: Path, need: str = "all") -> DetectionSet:
    """`need` (NEEDS): the train images are read for "all", and for "valid" without val:."""
    if path.is_dir():
        path = next(p for p in (path / "data.yaml", path / "data.yml") if p.is_file())
    doc = _Yaml(path)
    data = doc.data
    names = _names(doc)
    root = _root(doc)
    read_train = need == "all" or (need == "valid" and not data.get("val"))
    if "train" not in data and read_train:
        raise doc.error("train", f"'{path}' has no 'train' key")
    problems = []

    def split(key: str) -> Split:
        images = _images(doc, key, root, problems)
        labels = [label_path(p) for p in images]
        found, bad = collect_labels(labels, len(names),
                                    f"the {len(names)} names: in {path.name}", ultralytics=True)
        problems.extend(bad)
        return Split.labelled(images, labels, found)

    train = split("train") if read_train else Split([], [])
    valid = split("val") if data.get("val") and need != "names" else None
    if valid is not None and read_train and valid.images == train.images:
        valid = None  # the same images: Darknet's fallback, said once
    return DetectionSet(path, "yolo", names, train, valid, problems=problems,
                        train_read=read_train)


def _names(doc: _Yaml) -> list[str]:
    # read from the nodes: a name as written (YAML 1.1 would make `yes`, `off` or `1e3` a bool
    # or a number, `2024-01-01` a date), each key as written (`0.5` is no class id)
    node = doc.nodes.get("names")
    if isinstance(node, yaml.MappingNode):
        by_id: dict[int, yaml.Node] = {}
        for key, value in node.value:
            text = key.value.strip() if isinstance(key, yaml.ScalarNode) else "?"
            if not (text.isascii() and text.isdigit()):  # ('²' and '١' are digits to Python)
                raise doc.error("names", "names: the keys of a names mapping are class ids "
                                f"0, 1, ..., not '{text}'")
            if by_id.setdefault(int(text), value) is not value:
                raise doc.error("names", f"names: class id {int(text)} is given twice")
        ids = sorted(by_id)
        if ids != list(range(len(ids))):
            raise doc.error("names", f"names: class ids {ids[:5]}... are not 0..{len(ids) - 1}")
        items = [by_id[k] for k in ids]
    elif isinstance(node, yaml.SequenceNode):
        items = node.value
    else:
        nc = _nc(doc)
        if node is None and isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
            if nc > MAX_UNNAMED_CLASSES:
                raise doc.error("nc", f"nc: {nc} without names: more classes than any data "
                                f"set has (at most {MAX_UNNAMED_CLASSES} without names:)",
                                hint="write the number of classes, or name them with names:")
            return [f"class_{i}" for i in range(nc)]  # ultralytics' names for nc: alone
        raise doc.error("names", f"'{doc.path}' needs names: (a list of class names, or "
                        "{0: name, ...})")
    for item in items:  # a nested list or mapping is no class name (a misplaced bracket)
        if not isinstance(item, yaml.ScalarNode) or item.tag.endswith(":null"):
            odd = doc.data["names"]
            odd = odd[items.index(item)] if isinstance(odd, list) else \
                next(v for v in odd.values() if v is None or isinstance(v, (list, dict)))
            raise doc.error("names", f"names: {reprlib.repr(odd)} is not a class name",
                            hint="one name (a string or number) per class")
    names = [item.value for item in items]
    if not names:
        raise doc.error("names", "names: is empty", hint="list one name per class")
    nc = _nc(doc)
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int)):
        raise doc.error("nc", "nc: must be the number of classes, a whole number",
                        hint="drop nc: or make it the number of names")
    if nc is not None and nc != len(names):
        raise doc.error("nc", f"nc: {nc} but names: lists {len(names)} classes",
                        hint="drop nc: or make it the number of names")
    return names


def _nc(doc: _Yaml):
    """nc: as read (ultralytics' YAML 1.1), refused where that is not its decimal digits:
    `1_0` is 10, `010` octal 8, `0x10` 16 and `1:20` 80 to YAML 1.1, text or 10 to YAML 1.2."""
    nc, node = doc.data.get("nc"), doc.nodes.get("nc")
    if isinstance(nc, int) and not isinstance(nc, bool) and isinstance(node, yaml.ScalarNode) \
            and not _DECIMAL.match(node.value):
        raise doc.error("nc", f"nc: {node.value} is not written in decimal digits: YAML 1.1 "
                        f"(ultralytics' reader) reads it as {nc}",
                        hint=f"write the number of classes in decimal digits (nc: {nc} is what "
                        "ultralytics reads)")
    return nc


_DECIMAL = re.compile(r"[+-]?(0|[1-9][0-9]*)\Z")


def _root(doc: _Yaml) -> Path:
    raw = doc.data.get("path")
    here = doc.path.parent
    if raw is None or raw == "":
        return here
    raw = _as_written(raw, doc.nodes["path"])
    root = Path(str(raw)).expanduser()
    try:
        if root.is_absolute() or root.exists():
            return root
        if (here / root).exists():
            return here / root
    except OSError as exc:  # (a name too long for the file system: ENAMETOOLONG)
        text = str(raw)
        shown = text if len(text) <= 80 else f"{text[:60]}... ({len(text)} chars)"
        raise doc.error("path", f"path: '{shown}' cannot be a folder: {exc.strerror}",
                        hint="path: names the folder the train/val lists are under") from None
    raise doc.error("path", f"path: '{raw}' does not exist",
                    hint=f"tried the current directory and {here}")


def _as_written(value, node):
    """A path as written: YAML 1.1 reads `0123` as 83, `on` as True, `1_000` as 1000."""
    return node.value if isinstance(node, yaml.ScalarNode) and not isinstance(value, str) and \
        value is not None else value


def _images(doc: _Yaml, key: str, root: Path, problems: list[Diagnostic]) -> list[str]:
    entries, node = doc.data[key], doc.nodes[key]
    entries = [_as_written(e, n) for e, n in zip(entries, node.value, strict=True)] \
        if isinstance(entries, list) else [_as_written(entries, node)]
    listed: list[tuple[str, Path | None, int, str]] = []  # (image, list file, line, text)
    for entry in entries:
        if isinstance(entry, (list, dict)) or entry is None:  # `train: [[a, b]]`, or aliases
            # nesting lists: str() of it was the path (an OSError traceback past 255 bytes)
            what = "empty" if entry is None else "a mapping" if isinstance(entry, dict) else \
                "a list"
            raise doc.error(key, f"{key}: an entry is {what}, not a folder or list file name",
                            hint=f"{key}: is a path, or a list of paths (not nested)")
        raw = str(entry)
        where = root / raw
        if not where.exists() and raw.startswith("../"):
            where = root / raw[3:]  # ultralytics' second try
        if where.is_dir():
            # linked folders too, each once (ultralytics' glob follows links)
            listed += [(str(p), None, 0, "") for p in files_under(where)
                       if is_image(p) and p.is_file()]
        elif where.is_file():
            listed += [(image, where, n, line) for image, n, line in _list_file(doc, key, where)]
        else:
            raise doc.error(key, f"{key}: '{raw}' is neither a folder nor a list file "
                            f"(looked for {where})")
    problems.extend(_repeats(doc, key, listed))
    images = sorted(image for image, *_ in listed)
    if not images:
        raise doc.error(key, f"{key}: no images found", hint="a folder's images end in "
                        + ", ".join(IMAGE_EXTENSIONS) + " (in any case)")
    return images


def _repeats(doc: _Yaml, key: str, listed) -> list[Diagnostic]:
    """W904 for an image `key` names twice: at its list line, else (two folders, or a folder
    and a list, that hold it) at the key."""
    use = "train" if key == "train" else "valid"
    by_list: dict[Path, list] = {}
    for image, list_path, n, line in listed:
        if list_path is not None:
            by_list.setdefault(list_path, []).append((same_image(image), n, line))
    said = [d for d in (repeated(lines, path, use) for path, lines in by_list.items()) if d]
    seen: set[str] = set()
    again = []  # the images found a second time (a third ...)
    for image, *_ in listed:
        key_of = same_image(image)
        if key_of in seen:
            again.append(image)
        seen.add(key_of)
    if not said and again:
        d = doc.error(key, f"{key}: '{printable(again[0])}' is found twice (two of its folders "
                      f"or lists hold it; {len(again)} repeated image(s))",
                      hint=_REPEAT_HINT[use]).diagnostics[0]
        said = [replace(d, code=SET_CODE, severity=WARNING)]
    return said


_REPEAT_HINT = {"train": "training draws an image as often as it is found, as Darknet and "
                "ultralytics do", "valid": "validation scores each image once"}


def _list_file(doc: _Yaml, key: str, list_path: Path) -> list[tuple[str, int, str]]:
    """(image, line number, line) of each line of a list file."""
    try:
        # a BOM (Windows tools) is not part of the first path; lines end at line breaks only
        text = list_path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise doc.error(key, f"cannot read the list '{list_path}': {exc}",
                        hint=text_hint(exc, _HINT)) from None
    lines = [(n, s) for n, s in enumerate(text, 1) if s.strip()]
    parent = str(list_path.parent) + os.sep
    out, missing = [], []
    for n, written in lines:
        line = written.strip()
        image = line.replace("./", parent, 1) if line.startswith("./") else line
        if not os.path.isabs(image) and not os.path.exists(image):
            image = os.path.join(parent, image)
        if os.path.isfile(image):
            out.append((image, n, written))
        else:
            missing.append(image)
    if missing:
        raise doc.error(key, f"{len(missing)} image(s) listed in {list_path} do not exist, "
                        f"e.g. '{printable(missing[0])}'", hint=missing_path_hint(
                            missing[0], "a list line is an image path: './x.jpg' is relative "
                            "to the list's folder"))
    return out
