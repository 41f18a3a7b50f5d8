"""COCO object-detection annotation files (`instances_*.json`).

One JSON is one set: its `images` are both the train and the validation images (a COCO file
names no split; `--valid --data instances_val2017.json` validates on that file's images).
  * an image is found by its `file_name` next to the JSON, else in an `images/` folder beside it,
    else (COCO's own layout, `annotations/instances_val2017.json`) in `../val2017/` or
    `../images/val2017/`;
  * `bbox` is [x, y, width, height] in pixels from the top-left corner; the Darknet box is its
    centre and size divided by the image's `width`/`height` (ultralytics' convert_coco,
    `ultralytics/data/converter.py`); a box may poke out of the image by less than a pixel
    (rounding in the published files) and is then clipped to it;
  * category ids are mapped to contiguous classes 0..n-1 in id order (COCO's 1..90 with gaps
    -> 80 classes), names from `categories`;
  * `iscrowd: 1` objects are not trained (ultralytics skips them) and are not scored: COCOeval
    (pycocotools/cocoeval.py evaluateImg) marks crowd truths `ignore`, so a detection matching
    one is neither a TP nor an FP; they go to the set's `difficult` boxes, which the mAP treats so;
  * two entries of one picture (one `file_name`, two ids) are one image with the objects of
    both, each entry's boxes in its own width/height (W904 says so), known by the first id.
Bad annotations are located errors (E903) at the line:column of the entry in the JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from cfgparse import CfgError, Diagnostic
from cfgparse.errors import WARNING
from darkcfg.data.datafile import missing_path_hint
from darkcfg.data.detection.formats.base import (
    DeclaredSize,
    DetectionSet,
    Split,
    TextLocator,
    box_rows,
    image_size,
    located,
    relative_box,
)
from darkcfg.data.detection.labels import EDGE_CODE, SET_CODE

OUTSIDE_TOLERANCE = 1.0  # pixels a bbox may exceed the image by (then clipped)
_WS = re.compile(r"\s*")
_LONG_NUMBER = re.compile(r"\d{4000,}")


class _Locator:
    """Offsets of the entries of the top-level arrays, found only when an error needs them
    (a second pass over the text with json's raw_decode)."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text
        self._offsets: dict[str, list[int]] | None = None
        self._keys: list[tuple[str, int]] = []  # each top-level key and its offset
        self._lines = TextLocator(text)

    def offsets(self, key: str) -> list[int]:
        if self._offsets is None:
            self._offsets = self._scan()
        return self._offsets.get(key, [])

    def _scan(self) -> dict[str, list[int]]:
        text, decode = self.text, json.JSONDecoder().raw_decode
        out: dict[str, list[int]] = {}
        i = _WS.match(text, 0).end() + 1  # past '{'
        while True:
            i = _WS.match(text, i).end()
            if text[i] == "}":
                return out
            start = i
            key, i = decode(text, i)
            self._keys.append((key, start))
            i = _WS.match(text, i).end() + 1  # past ':'
            i = _WS.match(text, i).end()
            if text[i] == "[" and key in ("images", "annotations", "categories"):
                starts = out[key] = []  # (json keeps a key's last value)
                i += 1
                while True:
                    i = _WS.match(text, i).end()
                    if text[i] == "]":
                        i += 1
                        break
                    starts.append(i)
                    _, i = decode(text, i)
                    i = _WS.match(text, i).end()
                    if text[i] == ",":
                        i += 1
            else:
                _, i = decode(text, i)
            i = _WS.match(text, i).end()
            if text[i] == ",":
                i += 1

    def given_twice(self) -> Diagnostic:
        """E901 at the second copy of the first top-level key given twice, naming the line of
        the first."""
        self.offsets("")
        first: dict[str, int] = {}
        for key, offset in self._keys:
            if key in first:
                line = self.text.count("\n", 0, first[key]) + 1
                return self._lines.located(
                    f"'{key}' is given twice (first on line {line}): json keeps this one and "
                    "drops the first without a word", str(self.path), offset, len(key) + 2,
                    hint="merge the two into one (or delete the one not meant)", code="E901")
            first[key] = offset
        raise AssertionError("no key is given twice")

    def at(self, key: str, index: int, field: str | None, message: str, hint: str = ""
           ) -> Diagnostic:
        starts = self.offsets(key)
        offset = starts[index] if index < len(starts) else 0
        span = 1
        if field is not None:
            end = starts[index + 1] if index + 1 < len(starts) else len(self.text)
            found = self.text.find(f'"{field}"', offset, end)
            if found >= 0:
                offset, span = found, len(field) + 2
        return self._lines.located(message, str(self.path), offset, span, hint=hint)


def _pairs(last: list, pairs: list) -> dict:
    """json's object_pairs_hook: the object, with its pairs kept in `last` (only the last
    object's)."""
    last[:] = [pairs]
    return dict(pairs)


def _is_number(value) -> bool:
    """A JSON value that is a finite number as a float (true is not one, nor an integer of
    400 digits: math.isfinite and float() raise OverflowError for it)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_size(value) -> bool:
    """A JSON width or height that is a size: a finite number > 0."""
    return _is_number(value) and value > 0


def _is_key(value) -> bool:
    """A JSON value that can be an id (a list or an object cannot: Python cannot key by it)."""
    return not isinstance(value, (list, dict))


def _classes_of(categories: list, annotations: list, where: _Locator,
                problems: list[Diagnostic]) -> list:
    """The categories that are classes: all but a grouping one, which other categories name
    as their `supercategory` and no annotation uses (Roboflow's export puts its project's name
    first, id 0, as the parent of every class: an empty class that would shift every class id
    by one and need an extra network output). W904 says which were dropped."""
    used = {a.get("category_id") for a in annotations if isinstance(a, dict)
            and _is_key(a.get("category_id"))}
    parents = {c.get("supercategory") for _, _, c in categories
               if _is_key(c.get("supercategory"))}  # (a list or an object names no category)
    grouping = [(cid, i, c) for cid, i, c in categories if cid not in used
                and _is_key(c.get("name")) and c.get("name") in parents
                and any(o.get("supercategory") == c.get("name") and o is not c
                        for _, _, o in categories)]
    if not grouping or len(grouping) == len(categories):
        return categories
    for cid, i, c in grouping:
        problems.append(replace(where.at(
            "categories", i, "id", f"category {cid} '{c.get('name')}' is the supercategory of "
            "other categories and has no objects: not a class",
            hint="a grouping category (Roboflow's export adds one); the classes are the other "
            f"{len(categories) - len(grouping)} categories"), code=SET_CODE, severity=WARNING))
    return [t for t in categories if t not in grouping]


def read_coco(path: Path) -> DetectionSet:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CfgError(Diagnostic("E901", f"cannot read '{path}': {exc}", str(path))) from None
    top: list = []  # the last object's pairs: the document's own (it closes last)
    try:
        doc = json.loads(text, object_pairs_hook=partial(_pairs, top))
    except json.JSONDecodeError as exc:
        raise CfgError(located(f"invalid JSON: {exc.msg}", str(path), text, exc.pos,
                               code="E901", hint="a COCO annotation file is one JSON object "
                               "with images, annotations and categories")) from None
    except RecursionError:  # lists in lists past Python's recursion limit (no COCO file)
        raise CfgError(located("invalid JSON: nested too deeply", str(path), text, 0,
                               code="E901", hint="a COCO annotation file is one JSON object "
                               "with images, annotations and categories")) from None
    except ValueError as exc:  # an integer past Python's digit limit (4300): no COCO value
        long = _LONG_NUMBER.search(text)
        raise CfgError(located(f"invalid JSON: {exc}".split(";")[0], str(path), text,
                               long.start() if long else 0, code="E901",
                               hint="a COCO value is an id, a size or a pixel coordinate: "
                               "no number has thousands of digits")) from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        raise CfgError(Diagnostic("E901", f"'{path}' is not a COCO annotation file", str(path),
                                  hint="a COCO annotation file has the lists 'images', "
                                  "'annotations' and 'categories'"))
    where = _Locator(path, text)
    if len(top[0]) != len(doc):  # two "annotations" arrays (files merged by hand): json keeps
        raise CfgError(where.given_twice())  # the last without a word, pycocotools too
    problems: list[Diagnostic] = []

    classes: dict[int, int] = {}
    names: list[str] = []
    categories = sorted(((c.get("id"), i, c) for i, c in enumerate(doc["categories"])
                         if isinstance(c, dict) and isinstance(c.get("id"), int)),
                        key=lambda t: t[0])
    if len(categories) != len(doc["categories"]):
        bad = next(i for i, c in enumerate(doc["categories"])
                   if not (isinstance(c, dict) and isinstance(c.get("id"), int)))
        raise CfgError(where.at("categories", bad, "id", "a category needs an integer 'id'"))
    seen: set[int] = set()
    for cid, i, _ in categories:
        if cid in seen:  # two classes under one id: its boxes would go to one of them
            raise CfgError(where.at("categories", i, "id", f"category id {cid} is listed twice",
                                    hint="give every category its own id"))
        seen.add(cid)
    categories = _classes_of(categories, doc["annotations"], where, problems)
    for k, (cid, _, c) in enumerate(categories):
        classes[cid] = k
        names.append(str(c.get("name", cid)))
    if not names:
        raise CfgError(Diagnostic("E901", f"'{path}' has no categories", str(path),
                                  hint="list the classes in 'categories' ({id, name})"))

    folders = [path.parent, path.parent / "images"]
    # COCO's own layout: annotations/instances_val2017.json beside val2017/; the split is
    # after the first '_' or the last (person_keypoints_val2017.json, instances_my_val.json)
    for split in dict.fromkeys([path.stem.split("_", 1)[-1], path.stem.rsplit("_", 1)[-1]]):
        if "_" in path.stem:
            folders += [path.parent.parent / split, path.parent.parent / "images" / split]
    images: list[str] = []
    # per image: (id, the size its boxes are in) of each of its entries, the first first
    entry_ids: list[list[tuple[object, tuple[float, float]]]] = []
    declared: dict[str, DeclaredSize] = {}
    index_of: dict[object, int] = {}  # entry id -> its image (two entries of one picture: one)
    named: dict[str, int] = {}  # image file -> its image
    size_of: dict[object, tuple[float, float]] = {}  # entry id -> the size its boxes are in
    for i, entry in enumerate(doc["images"]):
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "id" not in entry:
            problems.append(where.at("images", i, None, "an image needs 'id' and 'file_name'"))
            continue
        if not _is_key(entry["id"]):
            problems.append(where.at("images", i, "id", f"image id {entry['id']!r} is not a "
                                     "number or a string", hint="COCO image ids are integers"))
            continue
        found = next((str(f / name) for f in folders if (f / name).is_file()), None)
        if found is None:
            problems.append(where.at("images", i, "file_name", f"image '{name}' not found",
                                     hint=missing_path_hint(name, "looked in " + ", ".join(
                                         map(str, folders)))))
            continue
        width, height = entry.get("width"), entry.get("height")
        bad = next((k for k, v in (("width", width), ("height", height))
                    if v is not None and not _is_size(v)), None)
        if bad is not None:  # a size that means nothing: not silently the image's own
            problems.append(where.at("images", i, bad, f"image '{name}' has {bad} "
                                     f"{entry[bad]!r}, not a size in pixels",
                                     hint="width and height are the image's size in pixels "
                                     "(> 0); leave both out to read it from the image"))
            continue
        stated = width is not None and height is not None
        if not stated:
            width, height = image_size(found)
        if entry["id"] in index_of:
            problems.append(where.at("images", i, "id", f"image id {entry['id']!r} is listed "
                                     "twice", hint="give every image its own id"))
            continue
        size_of[entry["id"]] = (float(width), float(height))  # (each entry's boxes in its own)
        if found in named:  # two entries, one picture: one image with the objects of both
            first = named[found]
            problems.append(replace(where.at(
                "images", i, "file_name", f"image '{name}' has a second entry (ids "
                f"{entry_ids[first][0][0]!r} and {entry['id']!r}): their objects are merged",
                hint="trained and scored once, with the objects of every entry of the picture "
                "(detect's detections.json has its boxes under each id)"), code=SET_CODE,
                severity=WARNING))
            index_of[entry["id"]] = first
            entry_ids[first].append((entry["id"], size_of[entry["id"]]))
            continue
        named[found] = len(images)
        if stated:  # `data check` compares it with the image it opens anyway
            declared[found] = DeclaredSize(float(width), float(height), partial(
                where.at, "images", i, "width"))
        index_of[entry["id"]] = len(images)
        images.append(found)
        entry_ids.append([(entry["id"], size_of[entry["id"]])])

    boxes: list[list[list[float]]] = [[] for _ in images]
    crowd: list[list[list[float]]] = [[] for _ in images]
    known_ids = {e.get("id") for e in doc["images"] if isinstance(e, dict) and
                 _is_key(e.get("id"))}
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            problems.append(where.at("annotations", i, None, "an annotation is an object"))
            continue
        image = index_of.get(ann.get("image_id")) if _is_key(ann.get("image_id")) else None
        if image is None:
            if not _is_key(ann.get("image_id")) or ann.get("image_id") not in known_ids:
                # (an image reported already is not reported again at each of its objects)
                problems.append(where.at("annotations", i, "image_id",
                                         f"image_id {ann.get('image_id')!r} is not in 'images'"))
            continue
        cls = classes.get(ann.get("category_id")) if _is_key(ann.get("category_id")) else None
        if cls is None:
            problems.append(where.at(
                "annotations", i, "category_id",
                f"category_id {ann.get('category_id')!r} is not in 'categories'",
                hint=f"the categories' ids are {sorted(classes)[:12]}"))
            continue
        box = ann.get("bbox")
        if box is None or box == []:  # a segmentation-only export: no box to train
            problems.append(where.at(
                "annotations", i, None, "annotation has no bbox" + (
                    " (only a segmentation)" if ann.get("segmentation") else ""),
                hint="a detector trains on bbox [x, y, width, height] in pixels; pycocotools' "
                "mask.toBbox gives it from a segmentation"))
            continue
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            problems.append(where.at("annotations", i, "bbox",
                                     "bbox is not [x, y, width, height] (four finite numbers)"))
            continue
        width, height = size_of[ann["image_id"]]
        x, y, w, h = (float(v) for v in box)
        if w == 0 and h >= 0 or h == 0 and w >= 0:
            # COCO's own train2017 has two (ids 918 and 2206849): left out, as ultralytics'
            # convert_coco and Darknet's loader leave out a box of no size; not a set error
            problems.append(replace(where.at(
                "annotations", i, "bbox", f"bbox {box} has no size: left out",
                hint="a box of width or height 0 marks no object; ultralytics' converter "
                "drops it too"), code=EDGE_CODE, severity=WARNING))
            continue
        if not (w > 0 and h > 0):
            problems.append(where.at("annotations", i, "bbox",
                                     f"bbox {box} has no area (width and height must be > 0)"))
            continue
        t = OUTSIDE_TOLERANCE
        # (within the tolerance but wholly outside, it would clip to a box of negative size)
        if x < -t or y < -t or x + w > width + t or y + h > height + t or x >= width \
                or y >= height or x + w <= 0 or y + h <= 0:
            problems.append(where.at(
                "annotations", i, "bbox",
                f"bbox {box} is outside the image ({width:g}x{height:g})",
                hint="bbox is [x, y, width, height] in pixels from the top-left corner"))
            continue
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, width), min(y + h, height)
        row = [*relative_box(x0, y0, x1, y1, width, height), float(cls)]
        if ann.get("iscrowd", 0) not in (0, 1):  # (True and False are 1 and 0 too)
            problems.append(where.at("annotations", i, "iscrowd", f"iscrowd is "
                                     f"{ann.get('iscrowd')!r}, not 0 or 1"))
            continue
        (crowd if ann.get("iscrowd") else boxes)[image].append(row)

    if not images and not problems:
        raise CfgError(Diagnostic("E901", f"'{path}' lists no images", str(path)))
    split = Split(images, [box_rows(b) for b in boxes],
                  difficult=[box_rows(c) for c in crowd] if any(crowd) else None,
                  declared=declared)
    return DetectionSet(path, "coco", names, split, None, problems=problems,
                        category_ids=[cid for cid, _, _ in categories],
                        image_ids=dict(zip(images, entry_ids, strict=True)))


# -- writing --------------------------------------------------------------------------------------
def coco_document(images: list[tuple[str, tuple[int, int]]], boxes: list[np.ndarray],
                  difficult: list[np.ndarray] | None, names: list[str],
                  category_ids: list[int] | None = None) -> dict:
    """A COCO annotation dict: images [(file_name, (width, height))], boxes per image
    (n, 5) relative [x, y, w, h, class]; difficult objects become iscrowd=1. Category ids are
    `category_ids` in class order (a COCO source's own), else 1..n. A box reaching past the
    image (a Darknet label Darknet clips, W903) is clipped to it: COCO boxes lie inside their
    image. bbox values are the shortest decimals that read back (read_coco) as the same float32
    label, so conversions keep every label bit and integer pixels stay integers."""
    ids = list(category_ids) if category_ids is not None else list(range(1, len(names) + 1))
    empty = np.zeros((0, 5), np.float32)
    rows, where = [], []  # every object of the set, then its (image, iscrowd)
    for i, group in enumerate(boxes):
        hard = difficult[i] if difficult is not None else empty
        for crowd, part in ((0, group), (1, hard)):
            part = np.asarray(part, np.float32).reshape(-1, 5)
            rows.append(part)
            where += [(i, crowd)] * len(part)
    rows = np.concatenate(rows) if rows else empty
    size = np.asarray([images[i][1] for i, _ in where], np.float64).reshape(-1, 2)
    bboxes, areas = _pixel_boxes(rows, size)
    doc_images = [{"id": i, "file_name": name, "width": width, "height": height}
                  for i, (name, (width, height)) in enumerate(images, 1)]
    annotations = [{"id": k, "image_id": i + 1, "category_id": ids[int(c)], "bbox": bbox,
                    "area": area, "iscrowd": crowd}
                   for k, ((i, crowd), c, bbox, area) in enumerate(
                       zip(where, rows[:, 4].tolist(), bboxes, areas, strict=True), 1)]
    return {"images": doc_images, "annotations": annotations,
            "categories": [{"id": cid, "name": n} for cid, n in zip(ids, names, strict=True)]}


def _read_back(bbox: np.ndarray, size: np.ndarray) -> np.ndarray:
    """read_coco's label of pixel boxes (n, 4) [x, y, w, h] in images (n, 2) [width, height]:
    the same float64 operations in the same order, then float32."""
    width, height = size[:, 0], size[:, 1]
    x0, y0 = np.maximum(bbox[:, 0], 0.0), np.maximum(bbox[:, 1], 0.0)
    x1 = np.minimum(bbox[:, 0] + bbox[:, 2], width)
    y1 = np.minimum(bbox[:, 1] + bbox[:, 3], height)
    return np.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
                     (y1 - y0) / height], 1).astype(np.float32)


def _pixel_boxes(rows: np.ndarray, size: np.ndarray) -> tuple[list[list], list]:
    """COCO bboxes [x, y, w, h] and areas of relative rows (n, 5) in images (n, 2), each
    bbox rounded to the fewest decimals (one count for its four values) that read back as the
    same float32 label; integers when none are needed (a label from integer pixels)."""
    r = rows[:, :4].astype(np.float64)
    width, height = size[:, 0], size[:, 1]
    bw, bh = r[:, 2] * width, r[:, 3] * height
    x0, y0 = r[:, 0] * width - bw / 2, r[:, 1] * height - bh / 2
    out = (x0 < 0) | (y0 < 0) | (x0 + bw > width) | (y0 + bh > height)
    x1, y1 = np.minimum(width, x0 + bw), np.minimum(height, y0 + bh)
    cx0, cy0 = np.maximum(0.0, x0), np.maximum(0.0, y0)
    full = np.where(out[:, None], np.stack([cx0, cy0, x1 - cx0, y1 - cy0], 1),
                    np.stack([x0, y0, bw, bh], 1))
    want = _read_back(full, size)
    best, digits = full.copy(), np.full(len(full), -1)
    todo = np.arange(len(full))
    for d in range(10):  # float32 labels need at most ~9 significant digits
        if not len(todo):
            break
        cand = np.round(full[todo], d)  # rint(v * 10^d) / 10^d: the nearest double, short repr
        same = (cand[:, 2] > 0) & (cand[:, 3] > 0) & \
            (_read_back(cand, size[todo]) == want[todo]).all(1)
        best[todo[same]], digits[todo[same]] = cand[same], d
        todo = todo[~same]
    bboxes, areas = [], []
    for bbox, d in zip(best.tolist(), digits.tolist(), strict=True):
        if d == 0:
            bbox = [int(v) for v in bbox]
        bboxes.append(bbox)
        areas.append(bbox[2] * bbox[3] if d < 0 else round(bbox[2] * bbox[3], 2 * d))
    return bboxes, areas

