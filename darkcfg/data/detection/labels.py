"""Darknet detection data on disk: `.data` files, image lists, label paths and YOLO label lines.

Torch-free (numpy only), so the checks run before anything is built.

Paths: `.data` values and list lines resolve as darkcfg.data.datafile says (as Darknet opens
them, relative to the current directory, else next to the file that names them).

Labels. The label file of an image is Darknet's `replace_image_to_label` applied to the image
path as opened (as written in the list when Darknet would find it, else joined to the folder it
was found in, so `JPEGImages/x.jpg` listed in `voc/train.txt` reads `voc/labels/x.txt`): the first
occurrence of each of these folder names is replaced, in this order,
`/images/train2017/`->`/labels/train2017/`, `/images/val2017/`->`/labels/val2017/`,
`/JPEGImages/`->`/labels/`, the same four with backslashes plus `\\images\\train2014\\` and
`\\images\\val2014\\`, then `/images/train2014/`, `/images/val2014/` (AlexeyAB's order; a plain
`/images/` is *not* replaced, so labels live next to the images), and then the extension: when
the first occurrence of one of `.jpg .JPG .jpeg .JPEG .png .PNG .bmp .BMP .ppm .PPM .tiff .TIFF`
ends the path, it becomes `.txt`. Darknet stops there (`x.Jpg`, `x.tif`, `x.webp` keep their
name, and it reads the image as its label file); darkcfg then replaces any extension Pillow
reads, in any case, so the label file is never the image.

A label file holds lines `class x y w h`: an integer class id in [0, classes) and the box centre
and size as fractions of the image. A missing file means an image without objects (counted in
one warning line); a malformed line (not five numbers, NaN or infinity) or a class id out of
range is a located error (`labels/x.txt:3:1: error[E903]: class 91 but classes=80`) found before
training starts. Coordinates at or past the image edge train as Darknet trains them, with a
located warning (W903) each: a box partly outside the image is kept and clipped to it by the
augmentation (src/data.c `correct_boxes`), and a box of no width or height, one wholly outside
the image, or one at x = y = 0 (`correct_boxes`' invalid marker) is left out
(`fill_truth_detection`), so exported sets with rounding artefacts (`0.0`, `1.0000001`) train in
darkcfg as they do in Darknet.
"""

from __future__ import annotations

import array
import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cfgparse import CfgError, Diagnostic
from cfgparse.errors import ERROR, WARNING, printable
from darkcfg.console import warn
from darkcfg.data.datafile import (
    IMAGE_EXTENSIONS,
    MAX_UNNAMED_CLASSES,
    data_diagnostic,
    data_folders,
    data_int,
    found_under,
    missing_path_hint,
    numbered_list,
    read_data_file,
    read_list,
    resolve,
    text_hint,
    tried_folders_hint,
)

LABEL_CODE = "E903"  # a bad label file (cfgparse.errors.CODES)
EDGE_CODE = "W903"  # a box Darknet clips or leaves out
SET_CODE = "W904"  # images without a label file, a stated image size that is not the image's

# replace_image_to_label's folder substitutions, in Darknet's order (each: first occurrence only)
LABEL_FOLDERS = (
    ("/images/train2017/", "/labels/train2017/"),
    ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"),
    ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"),
    ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"),
    ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)
LABEL_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP", ".ppm",
                    ".PPM", ".tiff", ".TIFF")


def darknet_label_path(image: str) -> str:
    """The label file Darknet itself reads for `image` (replace_image_to_label; see the module
    doc): `image` itself when its extension is not in Darknet's table."""
    out = image
    for old, new in LABEL_FOLDERS:
        out = out.replace(old, new, 1)
    out = out.strip()  # Darknet trims the path
    for ext in LABEL_EXTENSIONS:
        at = out.find(ext)  # Darknet: the first occurrence, replaced only if it ends the path
        if at >= 0 and at + len(ext) == len(out):
            out = out[:at] + ".txt"
    return out


def label_path(image: str) -> str:
    """The label file darkcfg reads for `image`: Darknet's, where Darknet's table misses
    `.tif`, `.webp`, `.Jpg`... (and reads the image itself as its label file) any extension
    Pillow reads, in any case, replaced by `.txt`."""
    out = darknet_label_path(image)
    stem, ext = os.path.splitext(out)
    if ext.lower() != ".txt" and ext.lower() in image_extensions():
        out = stem + ".txt"
    return out


def image_extensions() -> frozenset[str]:
    """Every file extension (lower case, with the dot) Pillow opens, and the usual ones."""
    global _IMAGE_EXTENSIONS
    if _IMAGE_EXTENSIONS is None:
        try:
            from PIL import Image

            found = {e.lower() for e in Image.registered_extensions()}
        except ImportError:  # pragma: no cover - Pillow is a base dependency
            found = set()
        _IMAGE_EXTENSIONS = frozenset(found | {e.lower() for e in LABEL_EXTENSIONS}
                                      | set(IMAGE_EXTENSIONS))
    return _IMAGE_EXTENSIONS


_IMAGE_EXTENSIONS: frozenset[str] | None = None


# -- .data files ----------------------------------------------------------------------------------
@dataclass
class DetectionData:
    """A Darknet detection `.data` file, resolved."""

    path: Path
    classes: int
    train: list[str]  # image paths (resolved)
    valid: list[str]  # the `valid` list; empty when the file has none
    names: list[str]
    backup: str | None
    train_labels: list[str] = field(default_factory=list)  # label path of each train image
    valid_labels: list[str] = field(default_factory=list)
    valid_is_train: bool = False  # no valid= key: Darknet's map falls back to train
    difficult_labels: list[str] = field(default_factory=list)  # `difficult` list's label paths
    repeats: list[Diagnostic] = field(default_factory=list)  # W904 at a list's repeated image
    train_read: bool = True  # False: a `need` that does not use the train list left it unread


def same_image(path: str) -> str:
    """What two listings of one image file have in common (`img/x.jpg`, `./img/x.jpg` and
    the absolute path are one image; two links to it stay two)."""
    return os.path.normcase(os.path.abspath(path))


_REPEAT_USE = {
    "train": "training draws an image as often as it is listed, as Darknet does: remove the "
             "line unless the image is meant to weigh more",
    "valid": "validation scores each image once (Darknet's detector map would count its "
             "objects and detections twice): remove the line",
    "both": "training draws an image as often as it is listed, as Darknet does; validation, "
            "which reads this list too, scores it once (Darknet's detector map would count its "
            "objects twice): remove the line unless the image is meant to weigh more",
}


def repeated(listed: Sequence[tuple[str, int, str]], where: Path | str, use: str
             ) -> Diagnostic | None:
    """W904 at the first line of a list that names an image listed before (None when none
    does), counting the others. listed: (same_image key or id, line number, line as written)
    in list order; use: 'train', 'valid' or 'both' (what the list is read for)."""
    first: dict[str, int] = {}
    again = []
    for key, n, line in listed:
        if key in first:
            again.append((n, line, first[key]))
        else:
            first[key] = n
    if not again:
        return None
    n, line, m = again[0]
    more = f"; {len(again)} lines of this list repeat an earlier one" if len(again) > 1 else ""
    col = len(line) - len(line.lstrip()) + 1
    return Diagnostic(SET_CODE, f"'{printable(line.strip())}' is listed again (first at line "
                      f"{m}){more}", str(where), n, col, WARNING, hint=_REPEAT_USE[use],
                      source=line, span=max(len(line.strip()), 1))


def _count_names(opts: dict[str, str], folders: Sequence[Path], where: str) -> int:
    """Without classes=: the names file's line count (0: no names file), with a warning."""
    count = len(read_list(resolve(opts["names"], *folders), where, "names", keep_blank=True)) \
        if "names" in opts else 0
    warn(Diagnostic("W904", f"'{where}' has no classes= line: using "
                    + (f"the {count} names of its names file" if count else
                       "Darknet's default, 20"), where, severity=WARNING,
                    hint=f"add classes={count or 20}"))
    return count


def open_detection_data(path: Path, need: str = "all") -> DetectionData:
    """Read a detection `.data` file: its lists, names and backup, and where each image's labels
    are. Raises a located CfgError for a missing key, list or image. `need` (NEEDS): "valid"
    reads the train list only where there is no valid= (Darknet's map scores it then), "names"
    no list; `train_read` says whether it was read."""
    path = Path(path)
    opts = read_data_file(path)
    where = str(path)
    here = path.parent
    folders = data_folders(path)
    read_train = need == "all" or (need == "valid" and "valid" not in opts)
    if "train" not in opts and read_train:
        raise _error(f"'{path}' has no 'train' list", where,
                     hint="add train=path/to/train.txt (one image path per line)")
    # Darknet's default is 20 (src/detector.c option_find_int(options, "classes", 20)); a
    # names file says better how many there are
    if "classes" not in opts:
        classes = _count_names(opts, folders, where) or 20
    else:
        classes = data_int(opts, "classes", where)
    if classes < 1:
        raise _error(f"classes={classes}: a detector needs at least one class", where,
                     key="classes")
    if classes > MAX_UNNAMED_CLASSES and "names" not in opts:
        raise _error(f"classes={classes} without a names file: more classes than any data set "
                     f"has (at most {MAX_UNNAMED_CLASSES} without names=)", where,
                     "write the number of classes, or name them with names=FILE",
                     key="classes")

    repeats: list[Diagnostic] = []
    lists: dict[str, Path] = {}

    def images(key: str) -> tuple[list[str], list[str]]:
        list_path = resolve(opts[key], *folders)
        out, labels = [], []
        missing = []
        listed = []
        for n, line in numbered_list(list_path, where, key):
            raw = line.strip()
            base = found_under(raw, (list_path.parent, *folders))
            image = os.path.join(base, raw) if base else raw
            if not os.path.isfile(image):
                missing.append(raw)
                continue
            out.append(image)
            labels.append(label_path(image))
            listed.append((same_image(image), n, line))
        use = "train" if key == "train" else "both" if lists.get("train") == list_path \
            else "valid"
        lists[key] = list_path
        # one warning a list (valid= naming train's list: one that says both uses); the
        # difficult list is parallel to valid, so it repeats where valid does
        said = repeated(listed, list_path, use) if key != "difficult" else None
        if said is not None:
            repeats[:] = [d for d in repeats if d.path != said.path] + [said]
        if missing:
            raise _error(f"{len(missing)} image(s) listed in {list_path} do not exist, e.g. "
                         f"'{printable(missing[0])}'", where,
                         hint=missing_path_hint(missing[0], tried_folders_hint(
                             list_path.parent, here, folders[1])), key=key)
        if not out:
            raise _error(f"the {key} list '{list_path}' is empty", where,
                         hint="list one image path per line", key=key)
        return out, labels

    train, train_labels = images("train") if read_train else ([], [])
    valid, valid_labels = images("valid") if "valid" in opts and need != "names" else ([], [])
    difficult = images("difficult")[1] if "difficult" in opts and need != "names" else []
    if "names" in opts:
        names = read_list(resolve(opts["names"], *folders), where, "names", keep_blank=True)
        names = [name or str(i) for i, name in enumerate(names)]  # a blank line: its number
        if len(names) < classes:
            raise _error(f"'{path}' says classes={classes} but its names file lists "
                         f"{len(names)} names", where, hint="one class name per line",
                         key="classes")
        names = names[:classes]
    else:
        names = [str(i) for i in range(classes)]
    backup = str(resolve(opts["backup"], here)) if "backup" in opts else None
    return DetectionData(path, classes, train, valid, names, backup, train_labels,
                         valid_labels, valid_is_train="valid" not in opts,
                         difficult_labels=difficult, repeats=repeats, train_read=read_train)


# -- label files ----------------------------------------------------------------------------------
_LINE_HINT = ("a label line is 'class x y w h' (class id, then the box centre and size as "
              "fractions of the image)")


DATA_CLASSES = "the 'classes' of the .data file"


def parse_labels(text: str, path: str, classes: int, classes_from: str = DATA_CLASSES,
                 ultralytics: bool = False) -> tuple[np.ndarray, list[Diagnostic]]:
    """Boxes (n, 5) float32 `[x, y, w, h, class]` of a label file's text, and a diagnostic for
    each bad line (errors: the line is left out) or box at the image edge (warnings W903: kept
    or left out as Darknet does, see the module doc). classes_from: where the class count comes
    from, for the hint of a class id out of range. ultralytics: read a line as ultralytics
    does (a data.yaml set): `class x1 y1 x2 y2 x3 y3 ...` (its segment labels) is the box around
    the points, and a class may be written as a whole float (`1.0`, numpy's savetxt `1e+00`)."""
    boxes: list[list[float]] = []
    problems: list[Diagnostic] = []
    # lines end at a line break only (str.splitlines also breaks at \v, \f, \x1c-\x1e, \x85
    # and U+2028, which would shift every line number after one)
    for n, line in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        odd = _unprintable(line)
        if odd is not None:
            problems.append(_unprintable_problem(line, odd, path, n))
            continue
        found = [(m.start(), m.group()) for m in _WORD.finditer(line)]
        if not found:
            continue
        words = [w for _, w in found]
        box, problem = _parse_line(words, classes, classes_from, ultralytics)
        if box is not None:
            boxes.append(box)
        if problem is None:
            continue
        message, word, hint, severity = problem
        if word is None:
            col, span = found[0][0] + 1, found[-1][0] + len(found[-1][1]) - found[0][0]
        else:
            col, span = found[word][0] + 1, len(words[word])
        problems.append(Diagnostic(LABEL_CODE if severity == ERROR else EDGE_CODE, message,
                                   path, n, col, severity, hint=hint or _LINE_HINT, source=line,
                                   span=max(span, 1)))
    return np.asarray(boxes, np.float32).reshape(-1, 5), problems


# a word of a label line: what lies between spaces and tabs (Darknet's fscanf also skips \v and
# \f, which are refused below, and nothing else: a no-break space is part of a word)
_WORD = re.compile(r"[^ \t]+")
_NAMED = {"\x00": "NUL byte", "\x0b": "vertical tab", "\x0c": "form feed",
          "\x1b": "escape character", "\x7f": "DEL character", "\ufeff": "byte order mark"}


def _unprintable(line: str) -> int | None:
    """The index of the first character of `line` that does not print (tabs aside), or None."""
    if line.isprintable():
        return None
    return next((i for i, c in enumerate(line) if not c.isprintable() and c != "\t"), None)


def _unprintable_problem(line: str, at: int, path: str, n: int) -> Diagnostic:
    """E903 at a character that has no place in a label line: a NUL byte, a control or format
    character, a no-break space (Darknet's reader stops at it and loses every box after it; a
    vertical tab or form feed it reads as a space)."""
    c = line[at]
    name = _NAMED.get(c) or unicodedata.name(c, "control character").lower()
    escaped = printable(c)
    if c in "\x0b\x0c":
        darknet = "Darknet reads it as a space: write a space (or a line break) instead"
    else:
        darknet = ("Darknet's reader stops at it and loses every box after it: remove it"
                   + (" (UTF-16 text without a BOM holds one after each character: save it as "
                      "UTF-8)" if c == "\x00" else ""))
    article = "an" if name[0] in "aeiou" else "a"
    return Diagnostic(LABEL_CODE, f"{article} {name} ({escaped}) in a label line: a label file is "
                      "plain text", path, n, at + 1, hint=f"{darknet}; {_LINE_HINT}",
                      source=line, span=1)


_EDGE_HINT = ("coordinates are fractions of the image size: centre x, y and width, height in "
              "(0, 1]; fix the label if the box is not meant to reach past the image")


_POLYGON_HINT = ("a segment label line is 'class x1 y1 x2 y2 x3 y3 ...' (three or more points, "
                 "as fractions of the image)")


def _parse_line(words: list[str], classes: int, classes_from: str = DATA_CLASSES,
                ultralytics: bool = False):
    """(box or None, problem or None); problem = (message, index of the word or None, hint,
    severity). An error leaves the line out; a warning says what Darknet does with the box.
    ultralytics: see parse_labels."""
    if ultralytics and len(words) > 6:
        return _polygon_line(words, classes, classes_from)
    if len(words) != 5:
        return None, (f"{len(words)} value{'s' if len(words) != 1 else ''}, expected 5 "
                      "(class x y w h)", None, _count_hint(len(words), ultralytics), ERROR)
    try:
        cls = int(_c_number(words[0]))
    except ValueError:
        cls = _whole(words[0]) if ultralytics else None  # ultralytics reads labels as floats
        if cls is None:
            return None, (f"class '{printable(words[0])}' is not an integer", 0, "", ERROR)
    try:
        x, y, w, h = (float(_c_number(v)) for v in words[1:])
    except ValueError:
        k = next(i for i in range(1, 5) if not _is_float(words[i]))
        return None, (f"{'xywh'[k - 1]} '{printable(words[k])}' is not a number", k, "", ERROR)
    if not 0 <= cls < classes:
        return None, (f"class {cls} but classes={classes}", 0,
                      f"class ids run from 0 to {classes - 1} ({classes_from})",
                      ERROR)
    # as Darknet stores them (fscanf %f: 32-bit floats): 1e39 is inf, 1e-46 is 0 (no size)
    read = (x, y, w, h)
    x, y, w, h = array.array("f", read)
    if not all(map(math.isfinite, (x, y, w, h))):  # math, not numpy: once per label line
        k = next(k for k, v in enumerate((x, y, w, h), 1) if not math.isfinite(v))
        why = "is too large for a 32-bit float (Darknet reads label values as floats)" \
            if math.isfinite(read[k - 1]) else "is not a finite number"
        return None, (f"{'xywh'[k - 1]} = {words[k]} {why}", k, "", ERROR)
    box = [x, y, w, h, float(cls)]
    if w <= 0 or h <= 0:  # fill_truth_detection: w < 1/net_w or h < 1/net_h is dropped
        k = 3 if w <= 0 else 4
        return None, (f"{'xywh'[k - 1]} = {words[k]}: a box of no size, left out (as Darknet "
                      "does)", k, _EDGE_HINT, WARNING)
    if x == 0 and y == 0:  # correct_boxes marks these invalid
        return None, ("x = y = 0 is Darknet's invalid-box marker: left out (as Darknet does)", 1,
                      _EDGE_HINT, WARNING)
    if x + w / 2 <= 0 or x - w / 2 >= 1 or y + h / 2 <= 0 or y - h / 2 >= 1:
        return None, ("the box lies wholly outside the image: left out (as Darknet does)", 1,
                      _EDGE_HINT, WARNING)
    out = [k for k, v in enumerate((x, y, w, h), 1) if not 0 < v <= 1]
    if out:
        k = out[0]
        return box, (f"{'xywh'[k - 1]} = {words[k]} is outside (0, 1]: trained as Darknet "
                     "does (the box clipped to the image)", k, _EDGE_HINT, WARNING)
    return box, None


def _count_hint(count: int, ultralytics: bool) -> str:
    """The hint for a label line of `count` values, when the count says what it is ('': the
    usual one)."""
    if count == 6:  # ultralytics' predictions saved with save_conf: class x y w h conf
        return ("a sixth value is no part of a label (a confidence, as saved predictions have): "
                "drop it; " + _LINE_HINT)
    if count > 6 and not ultralytics:  # ultralytics' segment labels in a Darknet .data set
        return ("a line of a class and x y pairs is an ultralytics segment polygon, which "
                "Darknet does not read: give the set as its data.yaml (darkcfg reads a polygon "
                "as its box) or `darkcfg data convert` it from there")
    return ""


def _polygon_line(words: list[str], classes: int, classes_from: str):
    """ultralytics' segments2boxes: a class and x y pairs -> the box around the points, then
    the checks of a box line (a problem with one of its values is said of the whole line)."""
    if len(words) % 2 == 0:
        return None, (f"{len(words)} values: a class and x y pairs is an odd count", None,
                      _POLYGON_HINT, ERROR)
    k = next((k for k in range(1, len(words)) if not _is_float(words[k])), None)
    if k is not None:
        return None, (f"'{printable(words[k])}' is not a number", k, _POLYGON_HINT, ERROR)
    points = [float(_c_number(v)) for v in words[1:]]
    if not all(map(math.isfinite, points)):
        k = next(k for k, v in enumerate(points, 1) if not math.isfinite(v))
        return None, (f"{words[k]} is not a finite number", k, _POLYGON_HINT, ERROR)
    xs, ys = points[0::2], points[1::2]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    box, problem = _parse_line([words[0], repr((x0 + x1) / 2), repr((y0 + y1) / 2),
                                repr(x1 - x0), repr(y1 - y0)], classes, classes_from, True)
    if problem is not None and problem[1]:  # a value of the box: not a word of the line
        problem = (f"the polygon's box: {problem[0]}", None, *problem[2:])
    return box, problem


def _whole(word: str) -> int | None:
    """The class id a float word is (`1.0`, `1e+00`), or None (not a number, not whole)."""
    if not _is_float(word):
        return None
    value = float(word)
    return int(value) if math.isfinite(value) and value == int(value) else None


def _c_number(word: str) -> str:
    """`word` when C's strtod/strtol could read it whole, for int() and float(); ValueError for
    what Python alone reads as a number: `1_000`, Arabic-Indic or full-width digits (Darknet
    would read the digits before them, or nothing)."""
    if not word.isascii() or "_" in word:
        raise ValueError(word)
    return word


def _is_float(s: str) -> bool:
    try:
        float(_c_number(s))
    except ValueError:
        return False
    return True


def missing_labels(missing: int, total: int, what: str) -> str:
    """The message for `missing` of `total` images without a label file ('' when none is
    missing): the one text of the training warning and of `darkcfg data check`. `what` names the
    images ("train images", "valid images"); a validation split's images are only scored."""
    if not missing:
        return ""
    use = "scored" if what.startswith("valid") else "trained"
    return f"{missing} of {total} {what} have no label file ({use} as images without objects)"


@dataclass
class Labels:
    """The boxes of every image of a list, read once before training."""

    boxes: list[np.ndarray]  # per image: (n, 5) float32 [x, y, w, h, class]
    missing: int  # images without a label file (no objects)
    first_missing: int = -1  # index of the first image without one (-1: none), for an example
    missing_at: frozenset[int] = frozenset()  # the indices of the images without one

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def objects(self) -> int:
        return sum(len(b) for b in self.boxes)


def validate_labels(label_paths: Sequence[str], classes: int, max_errors: int = 20) -> Labels:
    """Read and check every label file before training. Raises CfgError with the first
    `max_errors` located problems (and a count of the rest); a missing file is no objects."""
    labels, problems = collect_labels(label_paths, classes)
    raise_problems(problems, max_errors)
    return labels


def collect_labels(label_paths: Sequence[str], classes: int, classes_from: str = DATA_CLASSES,
                   ultralytics: bool = False) -> tuple[Labels, list[Diagnostic]]:
    """Every label file's boxes (bad lines left out) and a located diagnostic for each problem
    (`darkcfg data check` shows them all; `validate_labels` raises them). classes_from and
    ultralytics: see parse_labels."""
    boxes: list[np.ndarray] = []
    missing, first_missing = 0, -1
    missing_at: set[int] = set()
    problems: list[Diagnostic] = []
    empty = np.zeros((0, 5), np.float32)
    for k, path in enumerate(label_paths):
        try:
            with open(path, encoding="utf-8-sig") as fh:  # a BOM from Windows tools is no error
                text = fh.read()
        except FileNotFoundError:
            missing += 1
            missing_at.add(k)
            first_missing = k if first_missing < 0 else first_missing
            boxes.append(empty)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Diagnostic(LABEL_CODE, f"cannot read label file: {exc}", path,
                                       hint=text_hint(exc, "a label file is plain text")))
            boxes.append(empty)
            continue
        found, bad = parse_labels(text, path, classes, classes_from, ultralytics)
        boxes.append(found)
        problems += bad
    return Labels(boxes, missing, first_missing, frozenset(missing_at)), problems


def raise_problems(problems: Sequence[Diagnostic], max_errors: int = 20) -> None:
    """Raise CfgError with the first `max_errors` errors among `problems` (warnings are not
    raised: see `edge_warning`), the last one's hint counting the rest; nothing when there is
    none."""
    problems = [d for d in problems if d.severity == ERROR]
    if not problems:
        return
    shown = list(problems[:max_errors])
    more = len(problems) - len(shown)
    if more:
        last = shown[-1]
        shown[-1] = Diagnostic(last.code, last.message, last.path, last.line, last.column,
                               hint=f"{last.hint} ({more} more problems not shown)",
                               source=last.source, span=last.span)
    raise CfgError(shown)


def edge_warning(problems: Sequence[Diagnostic], shown: int = 3) -> str:
    """The warning lines for the W903 boxes among `problems` ('' when none): a count, then the
    first `shown` located."""
    edges = [d for d in problems if d.code == EDGE_CODE]
    if not edges:
        return ""
    lines = [f"warning[{EDGE_CODE}]: {len(edges)} label box(es) at or past the image edge or of "
             "no size, trained as Darknet trains them (partly outside: clipped to the image; "
             "no size or wholly outside: left out); `darkcfg data check` lists them all"]
    lines += [f"  {d.path}:{d.line}:{d.column}: {d.message}" for d in edges[:shown]]
    if len(edges) > shown:
        lines.append(f"  ... and {len(edges) - shown} more")
    return "\n".join(lines)


def set_warnings(problems: Sequence[Diagnostic]) -> list[str]:
    """What training and `data convert` print of a set's warnings: the W903 edge boxes as one
    count (`edge_warning`), each other warning (W904: a repeated image, a split that is not
    there) in full."""
    edges = edge_warning(problems)
    return ([edges] if edges else []) + [d.format() for d in problems
                                         if d.severity == WARNING and d.code != EDGE_CODE]


def _error(message: str, where: str, hint: str = "", code: str = "E901",
           key: str | None = None) -> CfgError:
    """A .data file's error, at the line of `key` when given."""
    return CfgError(data_diagnostic(code, message, where, key, hint))
