"""Pascal VOC folders: `Annotations/<id>.xml`, `JPEGImages/<id>.jpg`, `ImageSets/Main/*.txt`.

Read as Darknet's `scripts/voc_label.py` converts VOC for training:
  * the train images are the ids of `ImageSets/Main/train.txt` (else `trainval.txt`, else every
    annotation; without train.txt less the ids val.txt, and for every annotation test.txt, hold
    out, with a W904 that says so), the validation images those of `val.txt` (none: validation
    falls back to the train images, as a .data file without valid=);
  * the image is `JPEGImages/<filename>` (the annotation's `<filename>`), else `<id>.jpg`, else
    `<id>` with another usual extension (IMAGE_EXTENSIONS; names matched in any case);
  * a box (`bndbox` xmin, ymin, xmax, ymax; VOC pixels count from 1) becomes
    x = ((xmin + xmax) / 2 - 1) / width, y likewise, w = (xmax - xmin) / width, h likewise, with
    width and height from `<size>` (voc_label.py convert; ultralytics' VOC.yaml does the same);
  * class names: `classes.txt` in the VOC folder or in Annotations/ (one a line), else the
    names found, sorted (for VOC itself the 20 names of Darknet's voc.names in its order, which
    is alphabetical); an object of another name is an error with classes.txt (voc_label.py
    skips it);
  * `difficult` objects are not trained (voc_label.py skips them) and not scored: the VOC devkit's
    evaluation (VOCevaldet, and py-faster-rcnn's voc_eval.py) neither counts them as positives nor
    counts a detection of one as a false positive; they go to the set's `difficult` boxes
    (Darknet's `difficult=` list, which `detector map` treats so).
Bad annotations are located errors (E903) at the XML's line:column; malformed XML reports the
parser's position.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from xml.parsers import expat

from cfgparse import CfgError, Diagnostic
from cfgparse.errors import WARNING
from cfgparse.schema import ValueProblem, read_number
from darkcfg.data.datafile import IMAGE_EXTENSIONS, read_text, split_lines
from darkcfg.data.detection.formats.base import (
    DeclaredSize,
    DetectionSet,
    Split,
    box_rows,
    image_size,
)
from darkcfg.data.detection.labels import LABEL_CODE, SET_CODE, raise_problems, repeated

VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
             "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
             "sheep", "sofa", "train", "tvmonitor")


class _Entity(Exception):
    """An XML entity declaration, refused: (name, line, column)."""


class _Annotation:
    """One parsed XML file and the line:column of each element."""

    def __init__(self, path: Path):
        self.path = path
        data = path.read_bytes()
        # XML's line breaks (\r\n, \r, \n), as expat counts lines; str.splitlines also breaks
        # at U+2028, \x85 ...: the wrong source line under the right number after one
        self.lines = re.split(r"\r\n|\r|\n", data.decode("utf-8", "replace"))
        parser = expat.ParserCreate()
        builder = ET.TreeBuilder()
        self.where: dict[ET.Element, tuple[int, int]] = {}

        def start(tag, attrs):
            element = builder.start(tag, attrs)
            self.where[element] = (parser.CurrentLineNumber, parser.CurrentColumnNumber + 1)

        def entity(name, *_):  # stops the parse before any expansion (billion laughs: a few
            # nested declarations expand to gigabytes; expat's own limit depends on its version)
            raise _Entity(name, parser.CurrentLineNumber, parser.CurrentColumnNumber + 1)

        parser.StartElementHandler = start
        parser.EndElementHandler = builder.end
        parser.CharacterDataHandler = builder.data
        parser.EntityDeclHandler = entity
        try:
            parser.Parse(data, True)
        except _Entity as exc:
            name, line, col = exc.args
            raise CfgError(Diagnostic(LABEL_CODE, f"an XML entity declaration ('{name}'): "
                                      "darkcfg reads none (nested ones expand a small file to "
                                      "gigabytes)", str(path), line, col,
                                      source=self._source(line), hint="a VOC annotation has no "
                                      "<!DOCTYPE> of its own entities: delete it")) from None
        except expat.ExpatError as exc:
            source = self._source(exc.lineno)
            raise CfgError(Diagnostic(LABEL_CODE, f"malformed XML: {expat.ErrorString(exc.code)}",
                                      str(path), exc.lineno, exc.offset + 1, source=source,
                                      hint="a VOC annotation is an <annotation> XML "
                                      "document")) from None
        # <?xml encoding="..."?> naming no codec Python has (LookupError), or a multi-byte one
        # (UTF-16: expat's ValueError "multi-byte encodings are not supported")
        except (LookupError, ValueError) as exc:
            raise CfgError(Diagnostic(LABEL_CODE, f"malformed XML: {exc}", str(path), 1, 1,
                                      source=self._source(1), hint="write the annotation as "
                                      "UTF-8 (<?xml version=\"1.0\" encoding=\"utf-8\"?>)")
                           ) from None
        self.root = builder.close()
        if self.root.tag != "annotation":
            raise CfgError(self.error(self.root, f"the document is <{self.root.tag}>, not a VOC "
                                      "<annotation>", hint="a VOC annotation is an <annotation> "
                                      "XML document"))

    def error(self, element: ET.Element | None, message: str, hint: str = "") -> Diagnostic:
        line, col = self.where.get(element, (0, 0)) if element is not None else (0, 0)
        source = self._source(line)
        span = len(element.tag) + 2 if element is not None else 1
        return Diagnostic(LABEL_CODE, message, str(self.path), line, col, hint=hint,
                          source=source, span=span)

    def _source(self, line: int) -> str:
        """The line to show under the message; none for a one-line document too long to read
        (line:column still say where)."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return text if len(text) <= 160 else ""

    def objects(self) -> list[ET.Element]:
        return self.root.findall("object")


def read_voc(root: Path) -> DetectionSet:
    root = Path(root)
    annotations, images_dir = root / "Annotations", root / "JPEGImages"
    main = root / "ImageSets" / "Main"
    problems: list[Diagnostic] = []
    parsed: dict[str, _Annotation] = {}

    malformed: set[str] = set()

    def annotation(image_id: str) -> _Annotation | None:
        if image_id not in parsed:
            path = annotations / f"{image_id}.xml"
            parsed[image_id] = None
            if path.is_file():
                try:
                    parsed[image_id] = _Annotation(path)
                except CfgError as exc:  # reported with the others; the image is left out
                    problems.extend(exc.diagnostics)
                    malformed.add(image_id)
        return parsed[image_id]

    def ids(name: str, said: bool = True) -> list[tuple[str, Path, int]] | None:
        """(id, list file, line) of each line of ImageSets/Main/`name`; None: no such file.
        said: a repeated id is W904 at its line."""
        path = main / name
        if not path.is_file():
            return None
        lines = split_lines(read_text(path))  # (the rule of _listed's source line)
        found = [(line.split()[0], path, n, line) for n, line in enumerate(lines, 1)
                 if line.split()]
        again = repeated([(i, n, line) for i, _, n, line in found], path,
                         "valid" if name == "val.txt" else "train") if said else None
        problems.extend([again] if again is not None else [])
        return [(i, p, n) for i, p, n, _ in found]

    valid_ids = ids("val.txt")
    train_ids = _train_ids(root, ids, valid_ids, problems)
    for image_id, _, _ in train_ids + (valid_ids or []):
        annotation(image_id)
    names = _names(root, parsed, problems)
    classes = {n: i for i, n in enumerate(names)}
    folder = _Folder(images_dir)

    def split(entries) -> Split:
        images, boxes, hard = [], [], []
        stated = {}
        for image_id, listed_in, line in entries:
            ann = parsed[image_id]
            if image_id in malformed:
                continue
            if ann is None:
                problems.append(_listed(listed_in, line, f"no annotation "
                                        f"'Annotations/{image_id}.xml' for id '{image_id}'"))
                continue
            image, tried = _image(ann, folder, image_id)
            if image is None:
                problems.append(_listed(listed_in, line, f"no image for id '{image_id}' in "
                                        f"{images_dir} (tried {tried})") if line else
                                ann.error(ann.root, f"no image for '{image_id}' in {images_dir} "
                                          f"(tried {tried})"))
                continue
            rows, difficult, declared = _boxes(ann, image, classes, problems)
            if declared is not None:
                stated[image] = declared
            images.append(image)
            boxes.append(box_rows(rows))
            hard.append(box_rows(difficult))
        return Split(images, boxes, difficult=hard if any(len(h) for h in hard) else None,
                     declared=stated)

    train = split(train_ids)
    valid = split(valid_ids) if valid_ids else None
    return DetectionSet(root, "voc", names, train, valid, problems=problems)


def _train_ids(root: Path, ids, valid_ids, problems: list[Diagnostic]):
    """The training ids: train.txt's, else trainval.txt's, else every annotation's. Without
    train.txt an id val.txt holds out is not trained on (trainval.txt is train.txt and val.txt
    together), nor, from every annotation, one of test.txt; a W904 says what was used."""
    annotations, main = root / "Annotations", root / "ImageSets" / "Main"
    train_ids = ids("train.txt")
    if train_ids:
        return train_ids
    trainval = ids("trainval.txt")
    if trainval and not valid_ids:
        return trainval  # VOC's trainval, validated on the train images (or --valid on test)
    if trainval:
        pool, source, held_by = trainval, f"trainval.txt's {len(trainval)} ids", ["val.txt"]
    else:
        pool = [(p.stem, annotations / p.name, 0) for p in sorted(annotations.glob("*.xml"))]
        source = f"the {len(pool)} annotations in Annotations/"
        held_by = [n for n in ("val.txt", "test.txt") if (main / n).is_file()]
    if not pool:
        raise CfgError(Diagnostic("E901", f"'{root}' has no annotations", str(root),
                                  hint="put <id>.xml files in Annotations/ and their ids in "
                                  "ImageSets/Main/train.txt and val.txt"))
    held = {i for name in held_by for i, _, _ in ids(name, said=False) or ()}
    kept = [entry for entry in pool if entry[0] not in held]
    found = [n for n in ("trainval.txt", "val.txt", "test.txt") if (main / n).is_file()]
    has = f"ImageSets/Main has {' and '.join(found)} but no train.txt" if found else \
        "no ImageSets/Main/train.txt"
    unlisted = f", those {' and '.join(held_by)} {'do' if len(held_by) > 1 else 'does'} " \
        "not list" if held_by else ""
    if not kept:
        raise CfgError(Diagnostic("E901", f"{has}, and {' and '.join(held_by)} list all of "
                                  f"{source}: nothing to train on", str(main),
                                  hint="list the training ids in ImageSets/Main/train.txt"))
    trained = f"{len(kept)} of {source}{unlisted}" if held_by else \
        f"all {source.removeprefix('the ')}"
    problems.append(Diagnostic(SET_CODE, f"{has}: training on {trained}", str(main),
                               severity=WARNING,
                               hint="list the training ids in ImageSets/Main/train.txt"))
    return kept


def _listed(path: Path, line: int, message: str) -> Diagnostic:
    # the line `ids` numbered (str.splitlines also breaks at a form feed, U+2028 ...)
    source = split_lines(read_text(path))[line - 1].rstrip("\r") if line else ""
    return Diagnostic(LABEL_CODE, message, str(path), line, 1 if line else 0, source=source,
                      span=max(len(source.strip()), 1),
                      hint="each id of ImageSets/Main/*.txt needs Annotations/<id>.xml and its "
                      "image in JPEGImages/")


def _names(root: Path, parsed: dict[str, _Annotation | None], problems) -> list[str]:
    listed = next((p for p in (root / "classes.txt", root / "Annotations" / "classes.txt")
                   if p.is_file()), None)
    if listed is not None:
        names = [s.strip() for s in split_lines(read_text(listed)) if s.strip()]
        if not names:
            raise CfgError(Diagnostic("E901", f"'{listed}' is empty", str(listed),
                                      hint="one class name per line"))
        return names
    found = set()
    for ann in parsed.values():
        for obj in ann.objects() if ann is not None else ():
            found.add((obj.findtext("name") or "").strip())
    found.discard("")
    if not found:
        raise_problems(problems)  # annotations that do not parse: what to fix first
        raise CfgError(Diagnostic("E901", f"no object in the annotations of '{root}'", str(root),
                                  hint="or list the class names in classes.txt"))
    return sorted(found)  # all 20 VOC classes: VOC_NAMES, voc.names' order (alphabetical)




class _Folder:
    """JPEGImages/: its file names by lower case, listed once and only when an exact name is
    not there."""

    def __init__(self, path: Path):
        self.path = path
        self._names: dict[str, str] | None = None

    def find(self, name: str) -> str | None:
        if (self.path / name).is_file():
            return str(self.path / name)
        if self._names is None:
            self._names = {}
            if self.path.is_dir():
                for p in sorted(self.path.iterdir()):
                    self._names.setdefault(p.name.lower(), p.name)
        found = self._names.get(name.lower())
        return str(self.path / found) if found and (self.path / found).is_file() else None


def _image(ann: _Annotation, folder: _Folder, image_id: str) -> tuple[str | None, str]:
    """The image of an annotation, or None and the names tried (for the error)."""
    name = (ann.root.findtext("filename") or "").strip()
    # `<id>` + the one rule's extensions, in its order and in any case, when `<filename>` names
    # no file: exporters write `.JPG`, `.png`... where voc_label.py assumes `.jpg`
    candidates = ([name] if name else []) + [image_id + e for e in IMAGE_EXTENSIONS]
    for candidate in candidates:
        found = folder.find(candidate)
        if found is not None:
            return found, ""
    tried = (f"<filename> '{name}', then " if name else "") + \
        f"'{image_id}' + {' '.join(IMAGE_EXTENSIONS)} in any case"
    return None, tried


def _number(ann: _Annotation, parent: ET.Element, tag: str, problems) -> float | None:
    element = parent.find(tag)
    if element is None:
        problems.append(ann.error(parent, f"<{parent.tag}> has no <{tag}>"))
        return None
    try:
        return _decimal(element)
    except ValueProblem as exc:
        problems.append(ann.error(element, f"<{tag}>: {exc}", exc.hint))
        return None


def _decimal(element: ET.Element) -> float:
    """An element's number: decimal digits, a sign, a point, an exponent (voc_label.py's
    float() also reads `1_0` as 10, `１０`, `nan` and `inf`; C's atof 1, 0, NaN, inf)."""
    return read_number((element.text or "").strip(" \t\r\n"), reader="C's")  # XML's spaces


def _boxes(ann: _Annotation, image: str, classes: dict[str, int], problems):
    size = ann.root.find("size")
    width = height = None
    if size is not None:
        width, height = (_size(ann, size, tag, problems) for tag in ("width", "height"))
    declared = None
    if not width or not height:  # none, or 0 (some exporters write it): the image knows
        width, height = (float(v) for v in image_size(image))
    else:  # `data check` compares it with the image it opens anyway
        declared = DeclaredSize(width, height, partial(ann.error, size))
    rows, difficult = [], []
    for obj in ann.objects():
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if name not in classes:
            problems.append(ann.error(name_el if name_el is not None else obj,
                                      f"class '{name}' is not one of the {len(classes)} names",
                                      hint="add it to classes.txt (or fix the name)"))
            continue
        box = obj.find("bndbox")
        if box is None:
            problems.append(ann.error(obj, "<object> has no <bndbox>"))
            continue
        values = [_number(ann, box, t, problems) for t in ("xmin", "ymin", "xmax", "ymax")]
        if any(v is None for v in values):
            continue
        xmin, ymin, xmax, ymax = values
        if not (0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height):
            problems.append(ann.error(box, f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) is not "
                                      f"inside the image ({width:g}x{height:g})",
                                      hint="xmin < xmax <= width and ymin < ymax <= height"))
            continue
        row = [((xmin + xmax) / 2 - 1) / width, ((ymin + ymax) / 2 - 1) / height,
               (xmax - xmin) / width, (ymax - ymin) / height, float(classes[name])]
        if not all(0 < v <= 1 for v in row[:4]):  # Darknet's label rule (voc_label.py's -1)
            problems.append(ann.error(box, f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) gives "
                                      f"the Darknet label {row[:4]} outside (0, 1]",
                                      hint="VOC pixels count from 1"))
            continue
        hard = (obj.findtext("difficult") or "0").strip()
        if hard not in ("", "0", "1"):
            problems.append(ann.error(obj.find("difficult"), f"<difficult> '{hard}' is not 0 or "
                                      "1"))
            continue
        (difficult if hard == "1" else rows).append(row)
    return rows, difficult, declared


def _size(ann: _Annotation, size: ET.Element, tag: str, problems) -> float | None:
    """<size>'s <width> or <height>: a number >= 0 (0 or none: read from the image), or a
    located problem."""
    element = size.find(tag)
    text = (element.text or "").strip() if element is not None else ""
    if not text:
        return None
    try:
        value = _decimal(element)
    except ValueProblem as exc:
        problems.append(ann.error(element, f"<{tag}>: {exc}", exc.hint))
        return None
    if value < 0:
        problems.append(ann.error(element, f"<{tag}> '{text}' is not an image size",
                                  hint="the image's size in pixels, or leave it out"))
        return None
    return value
