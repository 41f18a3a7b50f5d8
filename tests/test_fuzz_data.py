"""Fuzzing every data file darkcfg reads (test_fuzz.py does the cfgs, test_cli_fuzz.py the
command lines): label files, image lists, `.data` and names files, data.yaml, COCO JSON, VOC
XML, image bytes, `.weights`, state_dicts and training checkpoints, mutated from valid ones and
read through the functions the commands call. The contract (docs/robustness.md): a result or a
located diagnostic (CfgError with known codes, its lines inside the file), never another
exception, never a hang (a deadline per example), no file written by a reader, a network never
half-loaded; then the command line on the shapes the fuzzing found. Derandomized and
database-free; DARKCFG_FUZZ_EXAMPLES=1500 DARKCFG_FUZZ_RANDOM=1 for a longer hunt. Below the
fuzz tests: one plain test per input the fuzzing found (each was a traceback or worse)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cfgparse import CfgError
from cfgparse.errors import CODES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("DARKCFG_FUZZ_EXAMPLES", "60"))
# DARKCFG_FUZZ_RANDOM=1: other examples each run (a hunt), not the suite's fixed ones
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10),
                derandomize=not os.environ.get("DARKCFG_FUZZ_RANDOM"), database=None,
                suppress_health_check=list(HealthCheck))

# -- the contract ----------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: what a reader must leave as it is."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            st_ = os.lstat(os.path.join(folder, name))
            out[os.path.join(folder, name)] = (st_.st_size, st_.st_mtime_ns)
    return out


def line_count(path: str) -> int:
    """The most lines any reader counts in the file ('\\n' only, or every line break)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "replace")
    except OSError:
        return 0
    return max(text.count("\n"), len(text.splitlines()), text.count("\r")) + 1


def check_diagnostics(diagnostics) -> None:
    assert diagnostics
    for d in diagnostics:
        assert d.code in CODES, d
        text = d.format()
        assert text.splitlines()[0].count(f"[{d.code}]") == 1
        # a file's bytes are shown escaped: no NUL, escape or line break of their own
        assert all(c.isprintable() for c in text.replace("\n", "").replace("\t", "")), text
        if d.line:  # located: a line the file has
            assert d.line >= 1 and d.column >= 0, d
            if os.path.isfile(d.path):
                assert d.line <= line_count(d.path), (d, line_count(d.path))


def contract(root: Path, call):
    """call() returns or raises CfgError with sound diagnostics; nothing under root changes;
    no Python warning line (numpy's, torch's) but Pillow's EXIF/TIFF tag ones, which the
    command line filters. Returns what call returned (None after a CfgError)."""
    import warnings

    before = tree(root)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # (as the CLI does)
        try:
            result = call()
        except CfgError as exc:
            check_diagnostics(exc.diagnostics)
            result = None
    assert tree(root) == before, "a reader wrote or removed a file"
    raw = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in seen]
    assert not raw, "Python's own warning lines:\n" + "\n".join(raw)
    return result


def converted(data, root: Path, outs: Path, to: str) -> None:
    """`data convert` of a set that read: the new set in OUT and nothing else written (no
    hidden .partial folder left, no file under root touched), and it reads back."""
    from darkcfg.data.detection.formats import open_set
    from darkcfg.data.detection.formats.convert import convert

    shutil.rmtree(outs, ignore_errors=True)
    outs.mkdir()
    out = outs / "out"
    try:
        contract(root, lambda: convert(data, to, out, link=True))
    finally:
        assert sorted(p.name for p in outs.iterdir()) in ([], ["out"]), list(outs.iterdir())
    if out.exists():
        target = {"darknet": out / "out.data", "yolo": out / "data.yaml",
                  "coco": next(out.glob("*.json"), out)}[to]
        contract(root, lambda: open_set(target, strict=False))


# -- mutations ------------------------------------------------------------------------------------

ODD = ["", " ", "\t", "\x00", "\r", "\r\n", "\ufeff", "\u00a0", "\u2028", "\x85", "²", "١",
       "é", "#", ";", "=", ":", ",", "-", "[", "]", "{", "}", "'", '"', "\\", "/", ".."]
NUMBERS = ["0", "1", "-1", "-0", "0.5", "1e309", "-1e309", "1e39", "1e-46", "nan", "inf",
           "NaN", "1_0", "0x10", "9" * 30, "9" * 5000, "1e0", "2.5", "+3", " 7 "]
TEXT = st.one_of(st.sampled_from(ODD + NUMBERS), st.text(max_size=6))


@st.composite
def mutated_text(draw, text: str, steps: int = 6) -> str:
    """Characters deleted, doubled or inserted, lines deleted, doubled or inserted."""
    for _ in range(draw(st.integers(1, steps))):
        op = draw(st.sampled_from(["del", "dup", "ins", "del_line", "dup_line", "ins_line"]))
        lines = text.split("\n")
        if op.endswith("line"):
            i = draw(st.integers(0, len(lines) - 1))
            if op == "del_line" and len(lines) > 1:
                del lines[i]
            elif op == "dup_line":
                lines.insert(i, lines[i])
            else:
                lines.insert(i, draw(TEXT))
            text = "\n".join(lines)
        elif text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + {"del": "", "dup": text[i:i + 1] * 2,
                               "ins": draw(TEXT) + text[i:i + 1]}[op] + text[i + 1:]
    return text


ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"])


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding, "surrogatepass" if encoding != "latin-1" else "replace")


@st.composite
def mutated_bytes(draw, data: bytes, steps: int = 4) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, steps))):
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["flip", "cut", "ins", "set", "head", "extra"]))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del out[i:]
        elif op == "ins":
            out[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "set":
            out[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "head":  # a header field: the first bytes matter most
            out[min(i, 31) % len(out)] = draw(st.integers(0, 255))
        else:
            out += draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


# -- a playground: images and a valid set of each format -----------------------------------------


def save(im: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kw)
    return buffer.getvalue()


RGB = Image.fromarray((np.arange(8 * 10 * 3).reshape(8, 10, 3) * 7 % 256).astype(np.uint8))


def image_seeds() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees
    palette = RGB.convert("P")
    seeds = {
        "jpg": save(RGB, "JPEG"), "png": save(RGB, "PNG"), "bmp": save(RGB, "BMP"),
        "gif": save(palette, "GIF"), "tif": save(RGB, "TIFF"), "webp": save(RGB, "WEBP"),
        "png16": save(Image.fromarray((np.arange(80, dtype=np.uint16) * 800).reshape(8, 10)),
                      "PNG"),
        "cmyk.jpg": save(RGB.convert("CMYK"), "JPEG"),
        "ptrans.png": save(palette, "PNG", transparency=0),
        "exif.jpg": save(RGB, "JPEG", exif=exif.tobytes()),
        "1x1.png": save(Image.new("RGB", (1, 1)), "PNG"),
        "wide.png": save(Image.new("L", (65535, 1)), "PNG"),
        "la.png": save(RGB.convert("LA"), "PNG"),
        "f.tif": save(Image.fromarray(np.full((3, 3), np.nan, np.float32)), "TIFF"),
        "empty.jpg": b"",
        "text.jpg": b"class x y w h\n",
    }
    return seeds


@pytest.fixture(scope="module")
def playground(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzzdata")
    images = root / "images"
    images.mkdir()
    for k in range(3):
        (images / f"im{k}.jpg").write_bytes(save(RGB, "JPEG"))
        (images / f"im{k}.txt").write_text(f"{k % 2} 0.5 0.5 0.25 0.5\n")
    (root / "train.txt").write_text("images/im0.jpg\nimages/im1.jpg\n")
    (root / "valid.txt").write_text("images/im2.jpg\n")
    (root / "obj.names").write_text("cat\ndog\n")
    (root / "a folder").mkdir()
    (root / "case").mkdir()
    return root


def fresh_case(root: Path) -> Path:
    case = root / "case"
    shutil.rmtree(case)
    case.mkdir()
    return case


# -- label files ----------------------------------------------------------------------------------

COORD = st.one_of(st.sampled_from(["0.5", "0.25", "1", "0", "1.0000001", "-0.1", "1e39",
                                    "3.5e38", "1e-46", "1e-40", "nan", "1e309", "0x1p-1"]),
                  st.floats(-2, 2).map(repr))
LABEL_LINE = st.one_of(
    st.tuples(st.sampled_from(["0", "1", "2", "-1", "1.0", "1e0", str(2**63)]), COORD, COORD,
              COORD, COORD).map(" ".join),
    st.lists(st.sampled_from(NUMBERS + ["0", "1", "0.3", "0.9", "80", str(2**31), "-5", "x",
                                        "0.5\x00", "\ufeff0", "０"]),
             min_size=0, max_size=9).map(" ".join),
    mutated_text("0 0.5 0.5 0.25 0.25", 3),
    st.text(max_size=20))


@settings(FUZZ, max_examples=4 * EXAMPLES)  # the cheapest reader, and the most used
@given(lines=st.lists(LABEL_LINE, max_size=6), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       encoding=ENCODINGS, classes=st.sampled_from([1, 2, 80]), ultralytics=st.booleans())
def test_label_files(playground, lines, newline, encoding, classes, ultralytics):
    from darkcfg.data.detection.labels import collect_labels

    case = fresh_case(playground)
    path = case / "x.txt"
    path.write_bytes(encoded(newline.join(lines), encoding))
    labels, problems = contract(playground, lambda: collect_labels(
        [str(path)], classes, ultralytics=ultralytics))
    if problems:
        check_diagnostics(problems)
    boxes = labels.boxes[0]
    assert boxes.dtype == np.float32 and boxes.shape[1:] == (5,)
    # what is kept trains: finite, of some size, a class the network has
    assert np.isfinite(boxes).all() and (boxes[:, 2:4] > 0).all(), boxes
    assert ((boxes[:, 4] >= 0) & (boxes[:, 4] < classes)).all()


# -- .data files, image lists, names files ---------------------------------------------------------

DATA_VALUES = {
    "classes": ["2", "1", "0", "-1", "x", "²", "1_0", "9" * 30, "2.0", ""],
    "train": ["train.txt", "../train.txt", "missing.txt", "a folder", "images/im0.jpg",
              "list.txt", "tr\x00ain.txt", "/dev/null", "", "train.txt,valid.txt"],
    "valid": ["valid.txt", "train.txt", "list.txt", "missing.txt", "a folder"],
    "names": ["obj.names", "names.txt", "missing.names", "a folder", "images/im0.jpg",
              "na\x00mes"],
    "difficult": ["valid.txt", "list.txt", "train.txt"],
    "backup": ["backup/", "/dev/null", "a\x00b"],
    "eval": ["coco", "x"], "top": ["5", "x", "²", "0"],
    "labels": ["obj.names", "names.txt", "missing.list", "a folder", "images/im0.jpg"],
}
LIST_LINES = ["images/im0.jpg", "./images/im1.jpg", "images/im2.jpg", "images/missing.jpg",
              "images", "images\\im0.jpg", " images/im0.jpg ", "images/im0.jpg\x00", "",
              "images/im0.txt", "#images/im0.jpg", "../images/im0.jpg"]


@st.composite
def data_file(draw) -> tuple[str, str, str]:
    keys = draw(st.lists(st.sampled_from(sorted(DATA_VALUES)), max_size=6))
    lines = [f"{k}{draw(st.sampled_from(['=', ' = ', '']))}{draw(st.sampled_from(DATA_VALUES[k]))}"
             for k in keys]
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = draw(mutated_text(text, 3))
    listed = "\n".join(draw(st.lists(st.sampled_from(LIST_LINES), max_size=5)))
    names = "\n".join(draw(st.lists(st.sampled_from(["cat", "dog", "", " ", "\x00", "é"]),
                                    max_size=4)))
    return text, listed, names


@FUZZ
@given(files=data_file(), encoding=ENCODINGS, need=st.sampled_from(["all", "valid", "names"]),
       strict=st.booleans())
def test_darknet_data_files(playground, files, encoding, need, strict):
    from darkcfg.data.detection.formats import open_set

    text, listed, names = files
    case = fresh_case(playground)
    # the data file lies in case/, its lists are found beside it or in the folder above
    (case / "x.data").write_bytes(encoded(text, encoding))
    (case / "list.txt").write_bytes(encoded(listed, encoding))
    (case / "names.txt").write_text(names)
    cwd = os.getcwd()
    os.chdir(playground)
    try:
        got = contract(playground, lambda: open_set(case / "x.data", strict=strict, need=need))
    finally:
        os.chdir(cwd)
    if got is not None:
        assert got.classes >= 1 and len(got.names) == got.classes
        if got.problems:
            check_diagnostics(got.problems)


@FUZZ
@given(files=data_file(), need=st.sampled_from(["all", "valid", "names"]))
def test_classifier_data_files_fuzzed(playground, files, need):
    """The classifier's reader of the same files (labels=, top=; a list line holds a label)."""
    from darkcfg.data.sources import darknet_data

    text, listed, names = files
    case = fresh_case(playground)
    (case / "x.data").write_text(text)
    (case / "list.txt").write_text(listed)
    (case / "names.txt").write_text(names)
    cwd = os.getcwd()
    os.chdir(playground)
    try:
        got = contract(playground, lambda: darknet_data(case / "x.data", 3, need))
    finally:
        os.chdir(cwd)
    if got is not None:
        assert got.names


def test_classifier_data_files(playground):
    """The classifier's reader of a .data file shares datafile.py: a NUL byte, a folder for a
    list, a names file that is no text."""
    from darkcfg.data.sources import darknet_data

    case = fresh_case(playground)
    for text in ["classes=2\ntrain=tr\x00ain.txt\nlabels=obj.names\n",
                 "classes=2\ntrain=../a folder\nlabels=../obj.names\n",
                 "classes=2\ntrain=../train.txt\nlabels=../obj.names\nnames=na\x00mes\n",
                 "classes=2\ntrain=../train.txt\nlabels=../images/im0.jpg\n"]:
        (case / "c.data").write_text(text)
        # (contract checks the diagnostics of the CfgError and returns None for it)
        assert contract(playground, lambda: darknet_data(case / "c.data", 3)) is None, text


# -- data.yaml ------------------------------------------------------------------------------------

YAML_SEED = """path: ..
train: train.txt
val: [valid.txt]
nc: 2
names: ['cat', 'dog']
"""
YAML_VALUES = {
    "path": ["..", ".", "missing", "''", "null", "[a, b]", "{}", '"a\\0b"', "0123", "~"],
    "train": ["train.txt", "images", "[train.txt, images]", "[]", "{a: 1}", "null", "12",
              "missing", "images/im0.jpg", "[[train.txt]]", "!!binary aGk=", "'../train.txt'"],
    "val": ["valid.txt", "null", "''", "[valid.txt, valid.txt]", "images", "missing"],
    "names": ["[cat, dog]", "{0: cat, 1: dog}", "{1: dog}", "{²: a}", "{١: a}", "{0.5: a}",
              "{0: a, 00: b}", "cat", "[]", "{}", "[[a]]", "[null]", "[yes, 1e3, 2024-01-01]",
              "null", "{0: [a]}", "{[0]: a}"],
    "nc": ["2", "1", "0", "-1", "x", "2.0", "true", "null", "[2]", str(2**70)],
}


@st.composite
def data_yaml(draw) -> str:
    keys = ["train", "names"] + draw(st.lists(st.sampled_from(["path", "val", "nc"]),
                                              unique=True))
    return "\n".join(f"{k}: {draw(st.sampled_from(YAML_VALUES[k]))}" for k in keys)


@FUZZ
@given(text=st.one_of(data_yaml(), mutated_text(YAML_SEED, 5)), encoding=ENCODINGS,
       need=st.sampled_from(["all", "valid", "names"]), strict=st.booleans())
def test_data_yaml(playground, text, encoding, need, strict):
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    (case / "data.yaml").write_bytes(encoded(text, encoding))
    got = contract(playground, lambda: open_set(case / "data.yaml", strict=strict, need=need))
    if got is not None:
        assert got.classes >= 1 and len(got.names) == got.classes


# -- COCO JSON ------------------------------------------------------------------------------------

BIG = 10**400


def coco_seed() -> dict:
    return {"images": [{"id": 1, "file_name": "im0.jpg", "width": 10, "height": 8},
                       {"id": 2, "file_name": "im1.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 3],
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 10, 8]}],
            "categories": [{"id": 3, "name": "cat", "supercategory": "animal"},
                           {"id": 5, "name": "dog", "supercategory": "animal"}]}


# "LONG": an integer of 5000 digits, written into the text (json.dumps refuses it)
NUMBER_VALUES = [BIG, "LONG", float("nan"), float("inf"), -1, 0, 2**64, 1e-300, 2.5, True, "3"]
JSON_VALUES = [None, False, 1, 2, 3, 5, -0.0, "", "1", "im0.jpg", "../images/im0.jpg",
               "/etc/passwd", "a\x00b", [], [1, 2], [1, 1, 4, 3, 5], [1, 1, "4", 3], {},
               {"id": 1}, *NUMBER_VALUES]


def _nodes(value, path=()):
    """Every (container, key) of a JSON document, to replace or delete."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield value, k
            yield from _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield value, i
            yield from _nodes(v, (*path, i))


@st.composite
def coco_text(draw) -> str:
    doc = coco_seed()
    for _ in range(draw(st.integers(1, 5))):
        nodes = list(_nodes(doc))
        if not nodes:  # every top-level key deleted: "{}" is the case now
            break
        op = draw(st.sampled_from(["number", "set", "set", "del", "dup"]))
        numbers = [(c, k) for c, k in nodes if type(c[k]) in (int, float)]
        container, key = draw(st.sampled_from(numbers if op == "number" and numbers else nodes))
        if op == "number":
            container[key] = draw(st.sampled_from(NUMBER_VALUES))
        elif op == "set":  # (a copy: later steps change it in place)
            container[key] = copy.deepcopy(draw(st.sampled_from(JSON_VALUES)))
        elif op == "del":
            del container[key]
        elif isinstance(container, list):
            container.append(json.loads(json.dumps(container[key], default=str)))
    text = json.dumps(doc, default=str).replace('"LONG"', "7" * 5000)
    text = text.replace(str(BIG), "1" + "0" * 400)
    if draw(st.integers(0, 4)) == 0:
        text = draw(mutated_text(text, 3))
    return text


TARGETS = st.sampled_from(["darknet", "yolo", "coco"])


@FUZZ
@given(text=coco_text(), to=TARGETS)
def test_coco_json(playground, text, to):
    from darkcfg.data.detection.formats import open_set

    path = coco_case(playground) / "instances_x.json"
    path.write_text(text)
    got = contract(playground, lambda: open_set(path, strict=False))
    if got is not None:
        if got.problems:
            check_diagnostics(got.problems)
        for boxes in got.train.boxes:
            assert np.isfinite(boxes).all()
        converted(got, playground, playground.parent / "outs", to)


def test_coco_seed_reads(playground):
    from darkcfg.data.detection.formats import open_set

    path = coco_case(playground) / "instances_x.json"
    path.write_text(json.dumps(coco_seed()))
    got = open_set(path)
    assert got.names == ["cat", "dog"] and got.train.objects == 2


def coco_case(root: Path) -> Path:
    case = fresh_case(root)
    for k in range(2):  # found beside the JSON
        shutil.copy(root / "images" / f"im{k}.jpg", case / f"im{k}.jpg")
    return case


# -- Pascal VOC -----------------------------------------------------------------------------------

VOC_XML = """<?xml version="1.0"?>
<annotation>
  <filename>im0.jpg</filename>
  <size><width>10</width><height>8</height><depth>3</depth></size>
  <object>
    <name>cat</name>
    <difficult>0</difficult>
    <bndbox><xmin>2</xmin><ymin>2</ymin><xmax>6</xmax><ymax>5</ymax></bndbox>
  </object>
</annotation>
"""
XML_TEXT = ["", " ", "x", "-1", "0", "nan", "inf", "1e400", "1e308", "1_0", "&#0;", "&amp;",
            "&undefined;", "<b/>", "²", "10", "1", "cat", "dog"]
XML_PROLOGUES = [
    '<?xml version="1.0"?>', '<?xml version="1.0" encoding="foo"?>',
    '<?xml version="1.0" encoding="utf-16"?>',
    '<!DOCTYPE annotation [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;">]>',
    '<!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE annotation SYSTEM "http://example.invalid/voc.dtd">']


@st.composite
def voc_xml(draw) -> str:
    import re

    text = draw(st.sampled_from(XML_PROLOGUES)) + VOC_XML.split("?>", 1)[1]
    fields = [m.span(1) for m in re.finditer(r">([^<>\n]+)</", text)]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["text", "drop", "entity", "chars"]))
        if op == "text":
            start, end = draw(st.sampled_from(fields))
            text = text[:start] + draw(st.sampled_from(XML_TEXT)) + text[end:]
            fields = [m.span(1) for m in re.finditer(r">([^<>\n]+)</", text)]
        elif op == "drop":
            tag = draw(st.sampled_from(["size", "width", "bndbox", "xmax", "name", "object",
                                        "filename", "difficult"]))
            text = re.sub(rf"<{tag}>.*?</{tag}>", "", text, count=1, flags=re.S)
            fields = [m.span(1) for m in re.finditer(r">([^<>\n]+)</", text)]
        elif op == "entity":
            text = text.replace("<name>cat", "<name>cat&d;", 1)
        else:
            return draw(mutated_text(text, 4))
    return text


@FUZZ
@given(xml=voc_xml(), ids=st.lists(st.sampled_from(["im0", "im0", "im1", "../x", "a\x00b",
                                                   "", " im0 extra", "\ufeffim0"]),
                                   max_size=3),
       classes=st.sampled_from([None, "cat\ndog\n", "", "\x00"]),
       encoding=st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]), to=TARGETS)
def test_voc_folders(playground, xml, ids, classes, encoding, to):
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (case / sub).mkdir(parents=True)
    shutil.copy(playground / "images" / "im0.jpg", case / "JPEGImages" / "im0.jpg")
    (case / "Annotations" / "im0.xml").write_bytes(encoded(xml, encoding))
    if ids:
        (case / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids))
    if classes is not None:
        (case / "classes.txt").write_text(classes)
    got = contract(playground, lambda: open_set(case, strict=False))
    if got is not None:
        if got.problems:
            check_diagnostics(got.problems)
        assert got.classes >= 1
        converted(got, playground, playground.parent / "outs", to)


# -- image bytes ----------------------------------------------------------------------------------

SEEDS = image_seeds()


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), data=st.data(),
       suffix=st.sampled_from([".jpg", ".png", ".bmp", ".tif", ".webp"]))
def test_image_bytes(playground, seed, data, suffix):
    from darkcfg.data.base import DataError, check_image_headers, read_image
    from darkcfg.data.detection.formats.base import image_size
    from darkcfg.detect.decode import load_pixels

    raw = SEEDS[seed]
    raw = data.draw(mutated_bytes(raw)) if raw and data.draw(st.integers(0, 5)) else raw
    path = fresh_case(playground) / f"x{suffix}"
    path.write_bytes(raw)

    def read(channels):
        try:
            image = read_image(str(path), channels)
        except DataError as exc:  # training's W901: the image is skipped
            assert str(path) in str(exc)
            return None
        assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == channels
        return image

    contract(playground, lambda: check_image_headers([str(path)], "fuzz.data"))
    contract(playground, lambda: image_size(str(path)))
    for channels in (1, 3):
        contract(playground, lambda channels=channels: read(channels))
    try:
        pixels = load_pixels(str(path), 3)  # detect's reader (torchvision for JPEGs)
        assert pixels.shape[0] == 3
    except OSError:  # documented: detect says W901 for it
        pass


# -- .weights and state_dicts ----------------------------------------------------------------------

def tiny_cfg(tiny_classifier) -> str:
    """The shared tiny classifier, one conv, two iterations of batch 4."""
    return tiny_classifier.text(second_conv=False, batch=4, subdivisions=1, max_batches=2,
                                policy="constant", steps=None, scales=None, burn_in=None)


@pytest.fixture(scope="module")
def tiny_net(playground, tiny_classifier):
    from builders import build
    from builders.weights import save_weights

    net = build(tiny_cfg(tiny_classifier))
    net.pristine = {k: v.clone() for k, v in net.state_dict().items()}
    save_weights(net, playground / "tiny.weights")
    other = build(tiny_cfg(tiny_classifier).replace("output=4", "output=5"))
    save_weights(other, playground / "other.weights")
    torch.save(net.state_dict(), playground / "tiny.pt")
    return net


HEADER_INTS = [0, 1, 2, 5, 999, 1000, 1001, 9999, 10000, -1, 2**31 - 1, -2**31]


@FUZZ
@given(data=st.data(), seed=st.sampled_from(["tiny.weights", "other.weights", "tiny.pt"]),
       suffix=st.sampled_from([".weights", ".pt", ".bin"]),
       cutoff=st.sampled_from([None, None, 0, 1, 2, 100]), partial=st.booleans())
def test_weights_files(playground, tiny_net, data, seed, suffix, cutoff, partial):
    from darkcfg.model import read_any_weights

    raw = bytearray((playground / seed).read_bytes())
    if seed.endswith(".weights") and data.draw(st.booleans()):  # the header's fields
        fields = data.draw(st.lists(st.sampled_from(HEADER_INTS), min_size=3, max_size=3))
        raw[:12] = np.array(fields, "<i4").tobytes()
        raw[12:20] = np.array([data.draw(st.sampled_from([0, 1, 2**32, 2**64 - 1]))],
                              "<u8").tobytes()
    raw = data.draw(mutated_bytes(bytes(raw))) if data.draw(st.booleans()) else bytes(raw)
    path = fresh_case(playground) / f"w{suffix}"
    path.write_bytes(raw)
    tiny_net.load_state_dict(tiny_net.pristine)  # (an example before may have loaded NaNs)
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    got = contract(playground, lambda: read_any_weights(tiny_net, path, cutoff, partial))
    if got is None:  # refused: nothing of the network changed
        after = tiny_net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


STATE_VALUES = [None, "x", 5, [], {}, torch.zeros(3), torch.zeros(3, dtype=torch.int64),
                {5: torch.zeros(1)}, {(1, 2): torch.zeros(1)}, {"layers.².w": torch.zeros(1)}]


@FUZZ
@given(key=st.sampled_from([None, "model", "state_dict", "images_seen", 5, (1, 2),
                            "layers.².conv.weight", "layers.0.conv.weight\n"]),
       value=st.sampled_from(STATE_VALUES), wrap=st.sampled_from([None, "model", "state_dict"]),
       cutoff=st.sampled_from([None, 1]), partial=st.booleans())
def test_state_dicts_of_any_shape(playground, tiny_net, key, value, wrap, cutoff, partial):
    from darkcfg.model import read_any_weights

    state = dict(tiny_net.state_dict())
    if key is not None:
        state[key] = value
    if wrap is not None:
        state = {wrap: state, "images_seen": value}
    path = fresh_case(playground) / "s.pt"
    torch.save(state, path)
    contract(playground, lambda: read_any_weights(tiny_net, path, cutoff, partial))


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_bytes(playground) -> bytes:
    from darkcfg.train.checkpoint import rng_states, save_checkpoint

    path = playground / "ck.pt"
    save_checkpoint(path, {"iteration": 3, "rng": [rng_states()], "w": torch.arange(50.0),
                           "format": "darkcfg-checkpoint-1"})
    return path.read_bytes()


class Planted:
    """Unpickled, it would write a file: weights_only must refuse it, never run it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["bytes", "bytes", "object", "pickle"]))
def test_checkpoint_files(playground, checkpoint_bytes, data, kind):
    from darkcfg.train.checkpoint import format_problem, load_checkpoint

    case = fresh_case(playground)
    path = case / data.draw(st.sampled_from(["checkpoint.pt", "c.weights", "c"]))
    planted = case / "planted"
    if kind == "bytes":
        path.write_bytes(data.draw(mutated_bytes(checkpoint_bytes)))
    elif kind == "object":
        obj = data.draw(st.sampled_from([[1, 2], "x", None, {"rng": "x"}, torch.zeros(2),
                                         {"format": 5, "rng": [{"torch": 1, "numpy": 2,
                                                                "python": 3}]}]))
        torch.save(obj, path)
    else:
        buffer = io.BytesIO()
        torch.save({"x": Planted(str(planted))}, buffer) if data.draw(st.booleans()) else \
            buffer.write(pickle.dumps(Planted(str(planted))))
        path.write_bytes(buffer.getvalue())
    state = contract(playground, lambda: load_checkpoint(path))
    assert not planted.exists(), "a checkpoint's pickle ran"
    if state is not None:
        assert isinstance(format_problem(state), str)


# the fields of a real run's checkpoint, and what a damaged or hand-edited file may hold there
CHECKPOINT_FIELDS = [("rng", 0, "torch"), ("rng", 0, "numpy"), ("rng", 0, "python"), ("rng",),
                     ("log", "avg_loss"), ("log", "best"), ("log",), ("iteration",),
                     ("images_seen",), ("optimizer", "param_groups"), ("optimizer",),
                     ("scaler",), ("names",), ("world",), ("format",), ("optimizer_params",)]
FIELD_VALUES = [None, "x", -1, 2**70, float("nan"), float("inf"), 1.5, [], {}, (1, 2),
                torch.zeros(3, dtype=torch.uint8), torch.zeros(3), [1, 2, 3],
                ("MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0), (3, (1, 2), None)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_classifier) -> Path:
    from darkcfg.cli import main

    root = tmp_path_factory.mktemp("run")
    (root / "tiny.cfg").write_text(tiny_cfg(tiny_classifier))
    with quiet():
        assert main([str(root / "tiny.cfg"), "--train", "--no-progress", "--out",
                     str(root / "run"), "--checkpoint-every", "1", "--valid-every", "0"]) == 0
    return root


def quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


@settings(FUZZ, max_examples=min(EXAMPLES // 2, len(CHECKPOINT_FIELDS) * len(FIELD_VALUES)),
          deadline=None)
@given(field=st.sampled_from(CHECKPOINT_FIELDS), value=st.sampled_from(FIELD_VALUES))
def test_resume_from_damaged_checkpoint_fields(trained_run, field, value):
    """A hand-edited checkpoint (no checksum trailer) through a real `train --resume`: exit 0
    or a located E901, and a refused resume leaves no --out folder behind."""
    from darkcfg.cli import main

    state = torch.load(trained_run / "run" / "checkpoint.pt", weights_only=True)
    holder = state
    for part in field[:-1]:
        holder = holder[part]
    holder[field[-1]] = value
    bad = trained_run / "bad.pt"
    torch.save(state, bad)
    out = trained_run / "again"
    shutil.rmtree(out, ignore_errors=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", str(trained_run / "tiny.cfg"), "--out", str(out), "--no-progress",
                     "--resume", str(bad), "--set", "max_batches=2", "--valid-every", "0"])
    text = err.getvalue()
    assert "Traceback" not in text and code in (0, 2), (field, value, text)
    if code == 2:
        assert "error[E901]" in text and not out.exists(), (field, value, text)


# -- real command lines for the shapes the fuzzing found ------------------------------------------

DETECTOR_CFG = """[net]
width=32
height=32
channels=3
batch=2
subdivisions=1
max_batches=1

[convolutional]
filters=21
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=2
num=3
"""


@pytest.mark.parametrize("files, argv, code", [
    ({"bad.data": "classes=2\ntrain=tr\x00ain.txt\n"}, ["data", "check", "bad.data"], "E104"),
    ({"data.yaml": "train: images\nnames: {²: a}\n"}, ["data", "check", "data.yaml"], "E901"),
    ({"instances_x.json": '{"images": [], "annotations": [], "categories": [{"id": '
                          + "9" * 5000 + "}]}"}, ["data", "check", "instances_x.json"], "E901"),
    ({"voc/Annotations/a.xml": '<?xml version="1.0" encoding="foo"?>\n<annotation/>'},
     ["data", "check", "voc"], "E903"),
    ({"y.cfg": DETECTOR_CFG, "images/im0.txt": "0 0.5 0.5 1e39 0.5\n",
      "obj.data": "classes=2\ntrain=train.txt\n"},
     ["train", "y.cfg", "--data", "obj.data", "--out", "runs/y", "--no-progress"], "E903"),
])
def test_the_command_line_says_a_located_error(playground, files, argv, code):
    """The shapes the fuzzing found, through darkcfg.cli.main: exit 2, one located error, no
    run folder."""
    from darkcfg.cli import main

    case = command_case(playground, files)
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(case)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
    finally:
        os.chdir(cwd)
    text = err.getvalue()
    assert status == 2 and "Traceback" not in text, text
    first = next(line for line in text.splitlines() if "error[" in line)
    assert f"error[{code}]" in first and first.split(": error[")[0].count(":") == 2, first
    assert not (case / "runs").exists()


def command_case(root: Path, files: dict[str, str]) -> Path:
    case = fresh_case(root)
    shutil.copytree(root / "images", case / "images")
    (case / "train.txt").write_text("images/im0.jpg\n")
    for name, text in files.items():
        (case / name).parent.mkdir(parents=True, exist_ok=True)
        (case / name).write_text(text)
    return case


def test_a_real_shell_sees_a_located_error(playground):
    case = command_case(playground, {"bad.data": "classes=2\ntrain=tr\x00ain.txt\n"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "darkcfg", "data", "check", "bad.data"],
                            cwd=case, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("bad.data:2:9: error[E104]: a NUL byte"), result.stderr


# -- the inputs the fuzzing found (each was a traceback) ------------------------------------------


def test_a_nul_byte_in_a_data_line_is_e104_at_it(playground):
    """`train=tr\\0ain.txt` was open()'s ValueError 'embedded null byte'; without classes= the
    same byte in names= was a KeyError 'classes' (the except of the classes= parse caught it)."""
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    for text, line in [("classes=2\ntrain=tr\x00ain.txt\n", 2),
                       ("train=../train.txt\nnames=na\x00mes\n", 2)]:
        (case / "x.data").write_text(text)
        with pytest.raises(CfgError) as exc:
            open_set(case / "x.data")
        d = exc.value.diagnostics[0]
        assert (d.code, d.line, d.column) == ("E104", line, 9), d
        assert "NUL byte" in d.message and "\\x00" in d.format()


def test_a_names_key_that_python_alone_takes_for_a_digit(playground):
    """`names: {²: a}` was int()'s ValueError ('²'.isdigit() is True); `{١: a}` was class 1."""
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    for key in ("²", "١"):
        (case / "data.yaml").write_text(f"train: ../images\nnames: {{0: a, {key}: b}}\n")
        with pytest.raises(CfgError) as exc:
            open_set(case / "data.yaml")
        d = exc.value.diagnostics[0]
        assert d.line == 2 and f"not '{key}'" in d.message, d


@pytest.mark.parametrize("nc, read", [("1_0", 10), ("010", 8), ("0x10", 16), ("1:20", 80)])
@pytest.mark.parametrize("names", ["", "names: [a, b]\n"])
def test_a_data_yaml_nc_not_in_decimal_digits(playground, nc, read, names):
    """`nc: 1_0` read as 10, `nc: 010` as 8 (octal), `nc: 1:20` as 80 (base 60): YAML 1.1's
    readings, which ultralytics shares and YAML 1.2 does not (text, or 10). With names: it
    was "nc: 8 but names: lists 2", alone 8 made-up classes. Now a located E901 saying the
    reading."""
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    (case / "data.yaml").write_text(f"train: ../images\n{names}nc: {nc}\n")
    with pytest.raises(CfgError) as exc:
        open_set(case / "data.yaml")
    d = exc.value.diagnostics[0]
    assert (d.line, d.column) == (3 if names else 2, 5), d
    assert d.message == f"nc: {nc} is not written in decimal digits: YAML 1.1 (ultralytics' " \
        f"reader) reads it as {read}", d


@pytest.mark.parametrize("tag, text, message, hint", [
    ("xmin", "1_0", "<xmin>: '1_0' is not a number in decimal digits: C's atof reads 1, not 10",
     "write 10"),
    ("xmax", "\uff16", "<xmax>: '\uff16' is not a number in decimal digits: C's atof reads 0, "
     "not 6", "write 6"),
    ("ymax", "nan", "C's atof reads nan (not a number)", "write a number in decimal digits"),
    ("ymin", "0x2", "C's atof reads 2 (a hexadecimal number", "write 2"),
    ("width", "1_0", "<width>: '1_0' is not a number in decimal digits: C's atof reads 1, "
     "not 10", "write 10"),
])
def test_voc_numbers_python_alone_reads(playground, tag, text, message, hint):
    """`<xmin>1_0</xmin>` was 10 (Python's float(), as voc_label.py), where a C reader takes 1;
    `<xmax>６</xmax>` 6 where C takes 0; `<ymin>0x2</ymin>` "not a number" though C's atof reads
    2. A VOC number is decimal digits now: E903 at the element, saying both readings."""
    import re

    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    for sub in ("Annotations", "JPEGImages"):
        (case / sub).mkdir()
    shutil.copy(playground / "images" / "im0.jpg", case / "JPEGImages" / "im0.jpg")
    xml = re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{text}</{tag}>", VOC_XML)
    (case / "Annotations" / "im0.xml").write_text(xml, encoding="utf-8")
    got = open_set(case, strict=False)
    (d,) = [d for d in got.problems if d.code == "E903"]
    line = next(n for n, s in enumerate(xml.splitlines(), 1) if f"<{tag}>" in s)
    assert d.line == line and message in d.message and d.hint.startswith(hint), d


def test_a_coco_top_level_key_given_twice(playground):
    """Two "annotations" arrays (two files merged by hand): json keeps the last, so the first
    array's boxes were dropped without a word, and an error about the second array's third
    entry was located in the first (the locator appended both copies' entries). Refused now,
    E901 at the second copy naming the first's line; nothing of the file is read silently."""
    from darkcfg.data.detection.formats import open_set

    case = coco_case(playground)
    doc = coco_seed()
    first = json.dumps(doc["annotations"][:1])
    text = json.dumps(doc, indent=1).replace('"categories"',
                                             f'"annotations": {first},\n "categories"', 1)
    (case / "c.json").write_text(text)
    with pytest.raises(CfgError) as exc:
        open_set(case / "c.json")
    d = exc.value.diagnostics[0]
    at = [n for n, s in enumerate(text.split("\n"), 1) if s.startswith(' "annotations"')]
    assert (d.code, d.line, d.column, d.span) == ("E901", at[1], 2, len('"annotations"')), d
    assert d.message == (f"'annotations' is given twice (first on line {at[0]}): json keeps "
                         "this one and drops the first without a word"), d


def test_voc_entity_declarations_are_refused_before_expansion(playground):
    """A billion-laughs annotation (nested <!ENTITY> declarations) waited for expat's
    amplification limit (0.3 s here after 8 MB of expansion; versions before expat 2.4 have
    none) and one of 3 levels x 90 (2 MB) became a 2 MB class name. An entity declaration
    is refused at its line:column before anything expands (an external one too)."""
    import time

    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    for sub in ("Annotations", "JPEGImages"):
        (case / sub).mkdir()
    shutil.copy(playground / "images" / "im0.jpg", case / "JPEGImages" / "im0.jpg")
    levels = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">\n' for i in range(1, 10))
    for doctype in (f'<!DOCTYPE annotation [\n<!ENTITY l0 "lol">\n{levels}]>',
                    '<!DOCTYPE annotation [\n<!ENTITY l0 SYSTEM "file:///etc/passwd">\n]>'):
        xml = VOC_XML.replace("?>\n", f"?>\n{doctype}\n").replace("<name>cat", "<name>&l9;")
        (case / "Annotations" / "im0.xml").write_text(xml)
        start = time.perf_counter()
        with pytest.raises(CfgError) as exc:
            open_set(case)
        assert time.perf_counter() - start < 5  # (expanded: 10**9 characters, minutes)
        d = exc.value.diagnostics[0]
        assert (d.code, d.line) == ("E903", 3), d
        assert d.message.startswith("an XML entity declaration ('l0')"), d


def test_a_data_yaml_list_nested_in_train(playground):
    """`train: [[a, b]]` (or aliases nesting lists, `train: *a3`): str() of the list was
    taken as a path, an OSError traceback (file name too long) past 255 bytes."""
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    nest = "a0: &a0 [" + ", ".join(["../images"] * 10) + "]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in (1, 2))
    for train, what, line in (("*a2", "a list", 3), ("[../images, {a: b}]", "a mapping", 4),
                              ("[../images, ~]", "empty", 4)):  # (an alias: at its anchor)
        (case / "data.yaml").write_text(f"{nest}train: {train}\nnames: [cat, dog]\n")
        with pytest.raises(CfgError) as exc:
            open_set(case / "data.yaml")
        d = exc.value.diagnostics[0]
        assert (d.line, d.message) == (line, f"train: an entry is {what}, not a folder or list "
                                       "file name"), d


def test_a_coco_integer_of_thousands_of_digits(playground):
    """Python's int limit (4300 digits) made json.loads raise a plain ValueError."""
    from darkcfg.data.detection.formats import open_set

    path = coco_case(playground) / "instances_x.json"
    text = json.dumps(coco_seed(), indent=1).replace('"width": 10', '"width": 1' + "0" * 5000)
    path.write_text(text)
    with pytest.raises(CfgError) as exc:
        open_set(path)
    d = exc.value.diagnostics[0]
    assert d.code == "E901" and "4300" in d.message
    assert d.line == text[:text.index("1" + "0" * 5000)].count("\n") + 1


def test_coco_numbers_too_large_for_a_float(playground):
    """A width or a bbox value of 401 digits was math.isfinite's OverflowError."""
    from darkcfg.data.detection.formats import open_set

    path = coco_case(playground) / "instances_x.json"
    doc = coco_seed()
    doc["images"][0]["width"] = doc["annotations"][1]["bbox"][2] = "BIG"
    path.write_text(json.dumps(doc, indent=1).replace('"BIG"', "1" + "0" * 400))
    got = open_set(path, strict=False)
    messages = sorted(d.message for d in got.problems)
    assert len(messages) == 2 and "bbox is not [x, y, width, height]" in messages[0] and \
        "not a size in pixels" in messages[1], messages
    check_diagnostics(got.problems)


def test_a_voc_annotation_in_an_unknown_encoding(playground):
    """`<?xml encoding="foo"?>` was expat's LookupError; and an annotation that does not parse
    was hidden behind 'no object in the annotations' when it was the only one."""
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    (case / "Annotations").mkdir()
    for xml, message in [('<?xml version="1.0" encoding="foo"?>\n<annotation/>',
                          "unknown encoding: foo"),
                         ("<annotation><name>&x;</name></annotation>", "undefined entity")]:
        (case / "Annotations" / "a.xml").write_text(xml)
        with pytest.raises(CfgError) as exc:
            open_set(case)
        d = exc.value.diagnostics[0]
        assert d.code == "E903" and d.line == 1 and message in d.message, d


@pytest.mark.parametrize("line, code, kept", [
    ("0 0.5 0.5 1e39 0.5", "E903", False),  # inf as a float32: trained as an infinite box
    ("0 0.5 0.5 0.5 3.5e38", "E903", False),
    ("0 0.5 0.5 1e-46 0.3", "W903", False),  # 0 as a float32: a box of no size was kept
    ("0 0.5 0.5 0.25 0.25", None, True),
])
def test_label_values_are_read_as_32_bit_floats(line, code, kept):
    from darkcfg.data.detection.labels import parse_labels

    for ultralytics in (False, True):
        boxes, problems = parse_labels(line, "x.txt", 2, ultralytics=ultralytics)
        assert [d.code for d in problems] == ([code] if code else []), problems
        assert len(boxes) == kept and np.isfinite(boxes).all()


def test_a_polygon_label_past_32_bit_floats():
    from darkcfg.data.detection.labels import parse_labels

    boxes, problems = parse_labels("0 1e39 0.5 1e39 1e39 0.5 0.5", "x.txt", 2, ultralytics=True)
    assert not len(boxes) and [d.code for d in problems] == ["E903"], problems


DAMAGED_RNG_OR_LOG = [
    (("rng", 0, "torch"), torch.zeros(3, dtype=torch.uint8)), (("rng", 0, "torch"), "x"),
    (("rng", 0, "numpy"), (1, 2)),
    (("rng", 0, "numpy"), ("MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0)),
    (("rng", 0, "python"), "x"), (("rng", 0, "python"), (3, (1, 2), None)),
    (("log", "avg_loss"), "x"), (("log", "best"), "x"), (("log", "avg_loss"), float("nan")),
]


@pytest.mark.parametrize("field, value", DAMAGED_RNG_OR_LOG)
def test_a_checkpoint_with_damaged_generator_or_log_states(field, value):
    """Each was a traceback at --resume (torch's RuntimeError, numpy's IndexError, random's
    ValueError, a TypeError at the first logged step) after the run wrote its settings."""
    from darkcfg.train.checkpoint import FORMAT, format_problem, rng_states

    state = {"format": FORMAT, "rng": [rng_states()], "log": {"avg_loss": 1.5, "best": None}}
    assert format_problem(state) == ""
    holder = state
    for part in field[:-1]:
        holder = holder[part]
    holder[field[-1]] = value
    assert "damaged" in format_problem(state)


def test_resume_from_damaged_generator_states_writes_nothing(trained_run):
    """Through the command line: E901 at --resume and no --out folder (the settings.yaml and
    the run's cfg were written before the traceback)."""
    from darkcfg.cli import main

    state = torch.load(trained_run / "run" / "checkpoint.pt", weights_only=True)
    state["rng"][0]["torch"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(state, trained_run / "bad_rng.pt")
    out = trained_run / "again_rng"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", str(trained_run / "tiny.cfg"), "--out", str(out), "--no-progress",
                     "--resume", str(trained_run / "bad_rng.pt"), "--set", "max_batches=4"])
    assert code == 2 and "random generator states ('rng') are missing or damaged" in \
        err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
    assert not out.exists()


def test_a_data_yaml_path_too_long_for_the_file_system(playground):
    """A path: of 5000 characters was OSError 'File name too long' out of Path.exists, one of
    5000 digits (a YAML integer) int()'s ValueError 'Exceeds the limit': tracebacks."""
    from darkcfg.data.detection.formats import open_set

    path = playground / "long_path.yaml"
    for value, said in (("9" * 4999 + "x", "cannot be a folder: File name too long"),
                        ("9" * 5000, "invalid YAML: Exceeds the limit (4300 digits)")):
        path.write_text(f"nc: 2\npath: {value}\ntrain: train.txt\nval: valid.txt\n"
                        "names: ['cat', 'dog']\n")
        with pytest.raises(CfgError) as caught:
            open_set(path, strict=False)
        line = caught.value.first.format()
        assert "long_path.yaml:2:7" in line and said in line and "help:" in line, line


def test_a_voc_annotation_declaring_utf16(tmp_path):
    """<?xml encoding="utf16"?> was expat's ValueError 'multi-byte encodings are not
    supported' (a traceback): a located label error, the image left out."""
    from darkcfg.data.detection.formats import open_set

    root = tmp_path / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "JPEGImages" / "im0.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("im0\n")
    (root / "Annotations" / "im0.xml").write_text(
        '<?xml version="1.0" encoding="utf16"?>\n<annotation><filename>im0.jpg</filename>'
        "</annotation>\n")
    with pytest.raises(CfgError) as caught:
        open_set(root, strict=False)
    said = [d.format() for d in caught.value.diagnostics]
    assert any("im0.xml:1:1" in d and "multi-byte encodings" in d and "help:" in d
               for d in said), said


def test_resume_from_a_checkpoint_that_saw_more_images_than_weights_hold(trained_run):
    """images_seen = 2**70 resumed, trained, and was a traceback at the first .weights save
    (ValueError: seen does not fit the 64-bit header field): E901 at --resume, no --out."""
    from darkcfg.cli import main

    state = torch.load(trained_run / "run" / "checkpoint.pt", weights_only=True)
    for seen, refused in ((2**64, True), (2**64 - 2**20, False)):
        state["images_seen"] = seen
        torch.save(state, trained_run / "many_seen.pt")
        out = trained_run / f"again_seen{int(refused)}"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", str(trained_run / "tiny.cfg"), "--out", str(out),
                         "--no-progress", "--resume", str(trained_run / "many_seen.pt"), "--set",
                         "max_batches=2", "--valid-every", "0"])
        text = err.getvalue()
        assert "Traceback" not in text, text
        if refused:
            assert code == 2 and "error[E901]" in text and f"'images_seen' is {seen}" in text \
                and "help:" in text and not out.exists(), text
        else:
            assert code == 0, text


def test_a_torch_file_with_a_damaged_pickle_protocol_byte(tiny_net, playground):
    """data.pkl's protocol byte changed (2 -> 9): the tensors read, and torch printed a raw
    UserWarning line ("Detected pickle protocol 9 ... please file an issue")."""
    import warnings

    from darkcfg.model import read_any_weights

    raw = bytearray((playground / "tiny.pt").read_bytes())
    at = raw.find(b"\x80\x02", raw.find(b"data.pkl"))
    raw[at + 1] = 9
    path = playground / "protocol9.pt"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_any_weights(tiny_net, path)
    assert all(torch.equal(v, tiny_net.pristine[k]) for k, v in tiny_net.state_dict().items())


@pytest.mark.parametrize("key", [5, (1, 2), "layers.².conv.weight", "new\nline"])
def test_a_state_dict_key_that_is_no_layer_name(tiny_net, playground, key):
    """An int or tuple key was a TypeError in the report (str.join), and an AttributeError
    (int.split) or a ValueError (int('²')) with a cutoff; they are names the network lacks."""
    from darkcfg.model import read_any_weights

    path = fresh_case(playground) / "s.pt"
    torch.save({**tiny_net.state_dict(), key: torch.zeros(2)}, path)
    for cutoff in (None, 1):
        report = read_any_weights(tiny_net, path, cutoff).report
        if cutoff is None:
            assert "holds 1 tensor(s) this network does not have" in report, report
            assert "\n" not in report.split("left out: ")[1], report


@pytest.mark.parametrize("convert, said, hint", [
    (lambda t: t.to(torch.complex64), "complex64 values", "real part"),
    (lambda t: t.to(torch.int8), "int8 values", "quantized export"),
    (lambda t: t > 0, "bool values", "integers where a float weight goes"),
    (lambda t: t.to_sparse(), "sparse float32 values", "to_dense()"),
])
def test_a_state_dict_tensor_that_is_not_real_floats(tiny_net, playground, convert, said, hint):
    """A complex tensor of the right shape loaded its real part with torch's UserWarning; an
    int8 or bool one was cast to the weights without a word (a quantized export's int8 levels
    as float weights); a sparse one was torch's RuntimeError traceback. E901 now, naming the
    tensor, the network unchanged. (float64 and float16 load, rounded, as torch does.)"""
    import warnings

    from darkcfg.model import read_any_weights

    tiny_net.load_state_dict(tiny_net.pristine)
    own = tiny_net.state_dict()
    name = next(k for k, v in own.items() if v.dim() > 1)
    path = fresh_case(playground) / "s.pt"
    torch.save({**own, name: convert(own[name] + 1)}, path)
    before = {k: v.clone() for k, v in own.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "Validating sparse tensor")  # (torch.load's note)
        with pytest.raises(CfgError) as exc:
            read_any_weights(tiny_net, path)
    d = exc.value.diagnostics[0]
    assert d.code == "E901" and f"holds {name} as {said}" in d.message and hint in d.hint, d
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())
    torch.save({k: v.double() if v.is_floating_point() else v for k, v in own.items()}, path)
    assert read_any_weights(tiny_net, path).report.endswith("(a torch state_dict)")


def test_a_class_count_without_names_that_no_set_has(playground):
    """`classes=999...9` (30 digits) without names= named each class, 10**30 strings: the
    fuzzing ran out of memory there; `nc: 2**70` alone in a data.yaml the same. (In a child
    process with its memory bounded: without the check it fails instead of filling memory.)"""
    case = fresh_case(playground)
    # (30 digits are past a C int now, E203: 2**21 still names 2 million classes)
    (case / "x.data").write_text(f"classes={2**21}\ntrain=../train.txt\n")
    (case / "data.yaml").write_text(f"train: ../images\nnc: {2**70}\n")
    (case / "small.yaml").write_text("train: ../images\nnc: 2\n")
    script = ("import resource, sys\nfrom cfgparse import CfgError\n"
              "from darkcfg.data.detection.formats import open_set\n"
              # 512 MiB more than the imports took
              "kb = next(int(line.split()[1]) for line in open('/proc/self/status')"
              " if line.startswith('VmData:'))\n"
              "resource.setrlimit(resource.RLIMIT_DATA, ((kb << 10) + (512 << 20),) * 2)\n"
              "for name in sys.argv[1:]:\n"
              "    try:\n        print(open_set(name).names)\n"
              "    except CfgError as exc:\n        print(exc.diagnostics[0].format())\n")

    result = subprocess.run([sys.executable, "-c", script, "x.data", "data.yaml", "small.yaml"],
                            cwd=case, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "x.data:1:1: error[E901]: classes=" in out and "without a names file" in out, out
    assert "data.yaml:2:5: error[E901]: nc: " in out and "without names:" in out, out
    assert "['class_0', 'class_1']" in out, out


def test_a_coco_supercategory_that_is_a_list(playground):
    """`"supercategory": []` was a TypeError (unhashable list) looking for a grouping category."""
    from darkcfg.data.detection.formats import open_set

    path = coco_case(playground) / "instances_x.json"
    doc = coco_seed()
    doc["categories"][0]["supercategory"] = []
    path.write_text(json.dumps(doc))
    assert open_set(path).names == ["cat", "dog"]


def test_a_diagnostic_shows_a_files_control_characters_escaped(playground):
    """A VOC id list with a BOM on its second line put the raw U+FEFF into the message (and an
    escape character there would drive the terminal); messages and hints are shown escaped as
    paths and source lines are, their own line breaks kept."""
    from cfgparse import Diagnostic
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (case / sub).mkdir(parents=True)
    (case / "Annotations" / "im0.xml").write_text(VOC_XML)
    shutil.copy(playground / "images" / "im0.jpg", case / "JPEGImages" / "im0.jpg")
    (case / "ImageSets" / "Main" / "train.txt").write_text("im0\n\ufeffim0\n")
    got = open_set(case, strict=False)
    text = next(d for d in got.problems if d.code == "E903").format()
    assert "for id '\\ufeffim0'" in text and "\ufeff" not in text, text
    d = Diagnostic("E901", "two lines\n  x\x1b[2J.jpg: bad", "p", hint="h\x00")
    assert d.format() == "p: error[E901]: two lines\n  x\\x1b[2J.jpg: bad\nhelp: h\\x00"


@pytest.mark.parametrize("odd", ["\x0c", "\u2028", "\x85", "\x1c"])
def test_a_voc_id_list_shows_the_line_it_numbers(playground, odd):
    """A form feed or U+2028 in ImageSets/Main/train.txt: the ids were numbered by line
    breaks, the source line under a message taken from str.splitlines (which also breaks
    there), so 'no annotation for id im9' at line 2 showed the text after the form feed.
    Both read lines as datafile.split_lines does now; so do an annotation's lines (expat's
    line breaks)."""
    from darkcfg.data.detection.formats import open_set

    case = fresh_case(playground)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (case / sub).mkdir(parents=True)
    shutil.copy(playground / "images" / "im0.jpg", case / "JPEGImages" / "im0.jpg")
    in_xml = odd if odd in "\u2028\x85" else "\u2028"  # (XML holds no control character)
    xml = VOC_XML.replace("<filename>", f"<!-- a{in_xml}b --><filename>").replace(
        "<difficult>0", "<difficult>2")
    (case / "Annotations" / "im0.xml").write_text(xml, encoding="utf-8")
    (case / "ImageSets" / "Main" / "train.txt").write_text(f"im0 {odd} x\r\nim9\r\n",
                                                           encoding="utf-8")
    got = open_set(case, strict=False)
    listed = next(d for d in got.problems if "im9" in d.message)
    assert (listed.line, listed.source) == (2, "im9"), listed
    hard = next(d for d in got.problems if "<difficult>" in d.message)
    assert hard.source.strip() == "<difficult>2</difficult>", hard


def test_a_classifier_top_in_non_ascii_digits(playground):
    """`top=²` in a classifier's .data: '²'.isdigit() is true, int('²') was a ValueError."""
    from darkcfg.data.sources import darknet_data

    case = fresh_case(playground)
    (case / "c.data").write_text("classes=2\ntrain=../train.txt\nlabels=../obj.names\ntop=²\n")
    with pytest.raises(CfgError) as exc:
        darknet_data(case / "c.data", 3)
    d = exc.value.diagnostics[0]
    assert (d.line, d.message) == (4, "'top=²' is not an integer in decimal digits: Darknet's "
                                   "atoi reads 0")


@pytest.mark.parametrize("value, message, hint", [
    ("1_0", "'classes=1_0' is not an integer in decimal digits: Darknet's atoi reads 1, not 10",
     "write classes=10"),
    ("\u0661\u0660", "Darknet's atoi reads 0, not 10", "write classes=10"),
    ("\uff12", "Darknet's atoi reads 0, not 2", "write classes=2"),
    ("1e1", "Darknet's atoi reads 1, not 10", "write classes=10"),
    ("2abc", "Darknet's atoi reads 2", "write classes=2"),
])
@pytest.mark.parametrize("task", ["detector", "classifier"])
def test_data_file_integers_python_alone_reads(playground, value, message, hint, task):
    """`classes=1_0` in a .data file trained 10 classes (Python's int()), where Darknet's
    option_find_int (atoi) reads 1; `classes=١٠` likewise 10 where atoi reads 0. A .data
    integer is decimal digits now (datafile.data_int): E901 at the line, saying both."""
    from darkcfg.data.detection.labels import open_detection_data
    from darkcfg.data.sources import darknet_data

    case = fresh_case(playground)
    data = case / "o.data"
    data.write_text(f"train=../train.txt\nclasses={value}\nnames=../obj.names\n"
                    "labels=../obj.names\n", encoding="utf-8")
    with pytest.raises(CfgError) as exc:
        open_detection_data(data) if task == "detector" else darknet_data(data, 3)
    d = exc.value.diagnostics[0]
    assert (d.code, d.line) == ("E901", 2) and message in d.message and d.hint == hint, d


def test_data_file_odd_spaces_are_e109(playground):
    """`classes=\u00a010` (a no-break space pasted from a web page): the reader removed it
    with every other space and read 10; Darknet keeps it (its strip() removes ASCII spaces
    only) and atoi reads 0. E109 at the character, as in a cfg."""
    from darkcfg.data.detection.labels import open_detection_data

    case = fresh_case(playground)
    (case / "o.data").write_text("train=../train.txt\nclasses=\u00a010\n", encoding="utf-8")
    with pytest.raises(CfgError) as exc:
        open_detection_data(case / "o.data")
    d = exc.value.diagnostics[0]
    assert (d.code, d.line, d.column) == ("E109", 2, 9) and "U+00A0" in d.message
    # a U+2028 was a line break to str.splitlines (classes=2 read from the same line as
    # train=); Darknet's fgetl breaks at \n only, so it is part of the train= path
    (case / "o.data").write_text("train=../train.txt\u2028classes=2\n", encoding="utf-8")
    with pytest.raises(CfgError) as exc:
        open_detection_data(case / "o.data")
    d = exc.value.diagnostics[0]
    assert (d.code, d.line, d.column) == ("E109", 1, 19) and "U+2028" in d.message
    # a zero-width non-joiner (Persian names) is no space: split() keeps it, as Darknet does
    (case / "o.data").write_text("train=../train.txt\nclasses=2\nnames=n\u200cx.txt\n",
                                 encoding="utf-8")
    (case / "n\u200cx.txt").write_text("cat\ndog\n")
    assert open_detection_data(case / "o.data").names == ["cat", "dog"]


@pytest.mark.parametrize("argv, said", [
    (["--seed", "1_0"], "'1_0' is not an integer in decimal digits: Darknet's atoi reads 1, "
     "not 10; write 10"),
    (["--seed", "\u0661"], "Darknet's atoi reads 0, not 1; write 1"),
    (["--thresh", "0.2_5"], "Darknet's atof reads 0.2, not 0.25; write 0.25"),
    (["--thresh", "nan"], "Darknet's atof reads nan (not a number)"),
])
def test_command_line_numbers_python_alone_reads(argv, said, capsys):
    """`type=int` / `type=float` flags took `--seed 1_0` as 10, `--seed ١` as 1 and `--thresh
    0.2_5` as 0.25 (Python's int()/float()); Darknet's own flags are atoi/atof. The command
    parser maps both types to decimal digits now (E100); a 64-bit seed still reads."""
    from cfgparse.usage import CommandParser

    parser = CommandParser(prog="darkcfg x")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--thresh", type=float)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert said in capsys.readouterr().err
    assert parser.parse_args(["--seed", str(2**63), "--thresh=-.5e-1"]).seed == 2**63


@pytest.mark.parametrize("parse", ["size", "input-size", "keep-fp32"])
def test_command_line_numbers_in_non_ascii_digits(parse):
    """The same digits in `--size ²x²` (data check, anchors), `--input-size ²x²` (export) and
    `--keep-fp32 ²` (INT8 export): ValueError tracebacks; now their usage errors."""
    from darkcfg.cli.common import parse_wxh
    from darkcfg.export.int8 import parse_keep_fp32
    from darkcfg.export.onnx import parse_input_size

    call = {"size": lambda: parse_wxh("--size", "²x²"),
            "input-size": lambda: parse_input_size("²x²"),
            "keep-fp32": lambda: parse_keep_fp32("²")}[parse]
    with pytest.raises(CfgError) as exc:
        call()
    assert "²" in exc.value.diagnostics[0].message
