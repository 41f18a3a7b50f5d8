"""Detection data (darkcfg/train/detection): .data files, label paths and lines, the embedded set,
augmentation keeping boxes on their pixels, per-sample determinism and multi-scale sizes."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import build
from builders.boxes import letterbox_image
from cfgparse import CfgError
from darkcfg.data.detection.augment import (
    MIXUP,
    MOSAIC,
    DetectionSettings,
    augment,
    hsv_shift,
    mixup,
    mosaic,
    training_sample,
)
from darkcfg.data.detection.dataset import (
    DetectionTrain,
    Slot,
    collate,
    detection_datasets,
    pad_truth,
)
from darkcfg.data.detection.embedded import EmbeddedDetection, class_look
from darkcfg.data.detection.labels import (
    label_path,
    missing_labels,
    open_detection_data,
    parse_labels,
    validate_labels,
)
from darkcfg.data.detection.scales import possible_sizes, training_size

DETECTOR_CFG = """[net]
batch=4
subdivisions=1
width=64
height=64
channels=3
max_batches=100
{net}

[convolutional]
filters=14
size=1
stride=1
activation=linear

[yolo]
mask=0,1
anchors=10,14, 23,27
classes=2
num=2
{yolo}
"""


def detector(tmp_path: Path, net: str = "", yolo: str = ""):
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG.format(net=net, yolo=yolo))
    return build(str(cfg))


# -- label paths (replace_image_to_label) ---------------------------------------------------------
@pytest.mark.parametrize("image, label", [
    ("data/obj/img1.jpg", "data/obj/img1.txt"),
    ("data/obj/images/img1.jpg", "data/obj/images/img1.txt"),  # a plain /images/ stays
    ("/coco/images/train2017/0001.jpg", "/coco/labels/train2017/0001.txt"),
    ("/coco/images/val2014/0001.jpg", "/coco/labels/val2014/0001.txt"),
    ("VOC/VOC2007/JPEGImages/000005.jpg", "VOC/VOC2007/labels/000005.txt"),
    ("C:\\voc\\JPEGImages\\a.JPEG", "C:\\voc\\labels\\a.txt"),
    ("a.PNG", "a.txt"), ("a.bmp", "a.txt"), ("a.tiff", "a.txt"), ("a.jpeg", "a.txt"),
    # not in Darknet's list (it would read the image as its labels): any Pillow extension
    ("a.Jpg", "a.txt"), ("a.tif", "a.txt"), ("a.webp", "a.txt"), ("a.GIF", "a.txt"),
    ("x.jpg.png", "x.jpg.txt"),
    ("shots.jpg/x.jpg", "shots.jpg/x.txt"),  # Darknet checks the *first* '.jpg' only
    ("/JPEGImages/JPEGImages/a.jpg", "/labels/JPEGImages/a.txt"),  # first occurrence only
])
def test_label_path_is_darknets_replace_image_to_label(image, label):
    assert label_path(image) == label


# -- label lines ----------------------------------------------------------------------------------
def test_label_lines_parse_to_darknet_truth_rows():
    boxes, problems = parse_labels("0 0.5 0.5 0.2 0.4\n\n  1 1 1 1 1  \n", "l.txt", 2)
    assert not problems
    assert boxes.dtype == np.float32 and boxes.shape == (2, 5)
    np.testing.assert_allclose(boxes[0], [0.5, 0.5, 0.2, 0.4, 0])
    np.testing.assert_allclose(boxes[1], [1, 1, 1, 1, 1])


@pytest.mark.parametrize("line, message, column", [
    ("91 0.5 0.5 0.1 0.1", "class 91 but classes=80", 1),
    ("-1 0.5 0.5 0.1 0.1", "class -1 but classes=80", 1),
    ("1.0 0.5 0.5 0.1 0.1", "class '1.0' is not an integer", 1),
    ("3 0.5 0.5 0.1", "4 values, expected 5 (class x y w h)", 1),
    ("3 0.5 0.5 0.1 0.1 0.9", "6 values, expected 5 (class x y w h)", 1),
    ("3 0.5 zz 0.1 0.1", "y 'zz' is not a number", 7),
    ("3 0.5 0.5 0.1 nan", "h = nan is not a finite number", 15),
    ("3 inf 0.5 0.1 0.1", "x = inf is not a finite number", 3),
])
def test_bad_label_lines_are_located_errors(line, message, column):
    text = "0 0.5 0.5 0.2 0.2\n\n" + line + "\n"
    boxes, problems = parse_labels(text, "labels/x.txt", 80)
    assert len(boxes) == 1 and len(problems) == 1
    d = problems[0]
    assert (d.path, d.line, d.column, d.code, d.message) == ("labels/x.txt", 3, column, "E903",
                                                             message)
    shown = d.format()
    assert shown.startswith(f"labels/x.txt:3:{column}: error[E903]: {message}")
    assert line in shown and "help:" in shown  # the source line with a caret, and a fix


def test_a_yolo_sets_class_may_be_a_whole_float_as_ultralytics_reads_it():
    """ultralytics reads a label file as float32 numbers, so `1.0` or numpy savetxt's
    `1.000000000000000000e+00` is class 1 in a data.yaml set; `1.5` is no class. A .data set
    keeps Darknet's `%d` (test_bad_label_lines_are_located_errors)."""
    text = "1.0 0.5 0.5 0.2 0.2\n2.000000000000000000e+00 5e-01 5e-01 2e-01 2e-01\n" \
        "1.0 0.1 0.2 0.5 0.2 0.4 0.6\n1.5 0.5 0.5 0.2 0.2\n"
    boxes, problems = parse_labels(text, "labels/x.txt", 3, ultralytics=True)
    assert boxes[:, 4].tolist() == [1, 2, 1]
    assert [(d.line, d.message) for d in problems] == [(4, "class '1.5' is not an integer")]


def test_segment_polygons_are_their_box_in_a_yolo_set_and_an_error_in_darknets():
    """ultralytics' segment labels (`class x1 y1 x2 y2 x3 y3 ...`, coco8-seg, Roboflow's
    instance-segmentation export) train a detector as the box around the points
    (segments2boxes); Darknet reads 5 values a box, so a .data set says what the line is."""
    text = "0 0.1 0.2 0.5 0.2 0.4 0.6\n1 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.5 0.3 0.5 0.7 0.3 0.7\n"
    boxes, problems = parse_labels(text, "labels/x.txt", 2, ultralytics=True)
    assert not problems
    np.testing.assert_allclose(boxes, [[0.3, 0.4, 0.4, 0.4, 0], [0.5, 0.5, 0.2, 0.2, 1],
                                       [0.4, 0.5, 0.2, 0.4, 1]], rtol=1e-6)
    bad = "0 0.1 0.2 0.5 0.2 0.4\n0 0.1 0.2 0.5 zz 0.4 0.6\n5 0.1 0.2 0.5 0.2 0.4 0.6\n" \
        "0 0.1 0.2 1.5 0.2 0.4 0.6\n"
    boxes, problems = parse_labels(bad, "labels/x.txt", 2, ultralytics=True)
    assert [(d.line, d.column, d.code) for d in problems] == [
        (1, 1, "E903"), (2, 15, "E903"), (3, 1, "E903"), (4, 1, "W903")]
    assert "6 values" in problems[0].message and "confidence" in problems[0].hint
    assert "'zz' is not a number" in problems[1].message
    assert problems[2].message == "class 5 but classes=2"
    assert problems[3].message.startswith("the polygon's box: w = ")
    assert len(boxes) == 1  # the box past the edge, clipped as Darknet trains it
    boxes, problems = parse_labels(text, "labels/x.txt", 2)
    assert len(boxes) == 1 and [d.line for d in problems] == [1, 3]
    assert "7 values, expected 5" in problems[0].message and \
        "ultralytics segment polygon" in problems[0].hint


@pytest.mark.parametrize("line, column, said", [
    ("0 0.5 0.5\x00 0.2 0.2", 10, "a NUL byte (\\x00)"),  # Python read 0.5\x00 as a word
    ("\x000 0.5 0.5 0.2 0.2", 1, "a NUL byte (\\x00)"),
    ("1 0.5\x1f0.5 0.2 0.2", 6, "a control character (\\x1f)"),  # str.split() split there
    ("1 0.5\xa00.5 0.2 0.2", 6, "a no-break space (\\xa0)"),  # likewise
    ("\x1b[31m1 0.5 0.5 0.2 0.2", 1, "an escape character (\\x1b)"),
    ("1 0.5 0.5 0.2 0.2\x0b1 0.5 0.5 0.2 0.2", 18, "a vertical tab (\\x0b)"),  # two lines
    ("1 0.5 0.5\u2028 0.2 0.2", 10, "a line separator (\\u2028)"),
])
def test_a_character_that_does_not_print_in_a_label_line_is_a_located_error(line, column,
                                                                          said):
    """A NUL byte (or another character that does not print) in a label line was read as part
    of a number (an error whose message and source line printed the raw byte), as a space
    (\\x1f, a no-break space: a box Darknet's reader never reads, it stops there) or as a line
    break (\\v, \\f, U+2028: every later line number off by one). Now E903 at its column,
    shown escaped, and the lines after it keep their numbers."""
    text = f"0 0.5 0.5 0.2 0.2\n{line}\n5 0.5 0.5 0.1 0.1\n"
    boxes, problems = parse_labels(text, "labels/x.txt", 2)
    assert len(boxes) == 1
    assert [(d.line, d.column, d.code) for d in problems] == [(2, column, "E903"),
                                                               (3, 1, "E903")]
    assert problems[0].message.startswith(f"{said} in a label line")
    shown = problems[0].format()
    assert all(c.isprintable() or c == "\n" for c in shown), repr(shown)
    _, _, row, caret, *_ = shown.split("\n")
    escaped = said[said.index("(") + 1:-1]  # the caret under the escape, four carets wide
    assert caret.index("^") == row.index(escaped) and caret.count("^") == len(escaped)


@pytest.mark.parametrize("word", ["1_0", "\u0661", "\uff11"])
def test_numbers_only_python_reads_are_not_label_numbers(word):
    """int('1_0') is 10 and float('\\u0661') 1.0 in Python; C's strtol/strtod (Darknet) read
    1 and stop, or nothing: an error, not a box Darknet never sees."""
    boxes, problems = parse_labels(f"{word} 0.5 0.5 0.2 0.2\n0 {word} 0.5 0.2 0.2\n",
                                   "l.txt", 20)
    assert len(boxes) == 0 and [(d.line, d.column) for d in problems] == [(1, 1), (2, 3)]


def test_a_list_line_with_a_nul_byte_is_named_escaped(tmp_path):
    """An image list line holding a NUL byte names no file: the error printed it raw."""
    path = make_data_set(tmp_path / "set")
    (tmp_path / "set" / "train.txt").write_text("JPEGImages/0.jpg\x00\nJPEGImages/1.jpg\n")
    with pytest.raises(CfgError) as err:
        open_detection_data(path)
    assert "e.g. 'JPEGImages/0.jpg\\x00'" in str(err.value) and "\x00" not in str(err.value)


def test_validate_labels_checks_every_file_and_counts_missing_ones(tmp_path):
    good, bad, absent = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    good.write_text("\ufeff1 0.5 0.5 0.1 0.1\r\n")  # a BOM and CRLF from Windows tools
    labels = validate_labels([str(good), str(absent), str(absent)], classes=2)
    assert [len(b) for b in labels.boxes] == [1, 0, 0] and labels.missing == 2
    assert labels.first_missing == 1  # the example a warning names
    assert missing_labels(labels.missing, len(labels), "train images") == (
        "2 of 3 train images have no label file (trained as images without objects)")
    assert missing_labels(0, 3, "train images") == ""
    bad.write_text("0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.1 0.1\n0 0.5 0.5 2 0.1\n0 0.5 0.5 nan 1\n")
    with pytest.raises(CfgError) as err:
        validate_labels([str(good), str(bad)], classes=2)
    found = [(d.path, d.line, d.message) for d in err.value.diagnostics]
    assert found == [(str(bad), 2, "class 5 but classes=2"),  # line 3 (w = 2) only warns
                     (str(bad), 4, "w = nan is not a finite number")]


# Darknet trains boxes at or past the image edge: partly outside -> clipped by correct_boxes;
# no size, wholly outside or x = y = 0 -> left out (src/data.c correct_boxes,
# fill_truth_detection). darkcfg does the same and says so at the line (W903).
@pytest.mark.parametrize("line, kept, message, column", [
    ("3 0.0 0.5 0.2 0.2", True, "x = 0.0 is outside (0, 1]: trained as Darknet does", 3),
    ("3 0.5 0.5 1.0000001 0.2", True, "w = 1.0000001 is outside (0, 1]", 11),
    ("3 1.05 0.5 0.2 0.2", True, "x = 1.05 is outside (0, 1]", 3),
    ("3 0.5 -0.02 0.2 0.2", True, "y = -0.02 is outside (0, 1]", 7),
    ("3 1.2 0.5 0.1 0.1", False, "the box lies wholly outside the image: left out", 3),
    ("3 0.5 0.5 0 0.1", False, "w = 0: a box of no size, left out", 11),
    ("3 0.5 0.5 0.1 -0.2", False, "h = -0.2: a box of no size, left out", 15),
    ("3 0 0 0.3 0.3", False, "x = y = 0 is Darknet's invalid-box marker: left out", 3),
])
def test_edge_boxes_train_as_darknet_does_with_a_located_warning(line, kept, message, column):
    text = "0 0.5 0.5 0.2 0.2\n\n" + line + "\n"
    boxes, problems = parse_labels(text, "labels/x.txt", 80)
    assert len(boxes) == (2 if kept else 1) and len(problems) == 1
    d = problems[0]
    assert (d.path, d.line, d.column, d.code, d.severity) == ("labels/x.txt", 3, column, "W903",
                                                              "warning")
    assert d.message.startswith(message), d.message
    assert d.format().startswith(f"labels/x.txt:3:{column}: warning[W903]: ")
    if kept:  # the raw values, as Darknet's read_boxes keeps them (the augmentation clips)
        np.testing.assert_allclose(boxes[1, :4], [float(v) for v in line.split()[1:]])


# -- .data files ----------------------------------------------------------------------------------
def make_data_set(root: Path, images: int = 3, labels: dict | None = None, valid: bool = True):
    """root/obj.data, root/train.txt (paths relative to root), images under root/JPEGImages."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "labels").mkdir()
    names = []
    for i in range(images):
        Image.new("RGB", (40, 30), (10 * i, 50, 90)).save(root / "JPEGImages" / f"{i}.jpg")
        names.append(f"JPEGImages/{i}.jpg")
        text = (labels or {}).get(i, f"{i % 2} 0.5 0.5 0.25 0.5\n")
        if text is not None:
            (root / "labels" / f"{i}.txt").write_text(text)
    (root / "train.txt").write_text("\n".join(names) + "\n")
    (root / "obj.names").write_text("cat\ndog\n")
    data = "classes = 2\ntrain = train.txt\nnames = obj.names\nbackup = backup/\n"
    if valid:
        data += "valid = train.txt\n"
    (root / "obj.data").write_text(data)
    return root / "obj.data"


def test_data_file_lists_names_and_label_paths(tmp_path):
    path = make_data_set(tmp_path / "set")
    data = open_detection_data(path)
    assert data.classes == 2 and data.names == ["cat", "dog"] and len(data.train) == 3
    assert data.train[0] == str(tmp_path / "set" / "JPEGImages" / "0.jpg")
    assert data.train_labels[0] == str(tmp_path / "set" / "labels" / "0.txt")
    assert data.backup == "backup"  # a folder that does not exist yet: the current directory


def test_data_file_paths_are_relative_to_the_current_directory_first(tmp_path, monkeypatch):
    make_data_set(tmp_path / "set")
    (tmp_path / "cwd.txt").write_text("set/JPEGImages/1.jpg\n")  # relative to tmp_path
    (tmp_path / "cwd.data").write_text("classes=2\ntrain=cwd.txt\n")
    monkeypatch.chdir(tmp_path)
    data = open_detection_data(Path("cwd.data"))
    assert data.train == ["set/JPEGImages/1.jpg"]
    assert data.train_labels == ["set/labels/1.txt"]
    assert data.valid_is_train and data.names == ["0", "1"]


def test_data_file_errors_are_located(tmp_path):
    path = make_data_set(tmp_path / "set")
    (tmp_path / "set" / "train.txt").write_text("JPEGImages/0.jpg\nJPEGImages/nope.jpg\n")
    with pytest.raises(CfgError, match="1 image.* do not exist, e.g. 'JPEGImages/nope.jpg'") \
            as caught:
        open_detection_data(path)
    # each folder tried once (the list and its .data file are one folder here; the help said
    # "relative to the current directory, SET, SET and ROOT")
    assert caught.value.diagnostics[0].hint == ("paths are tried relative to the current "
                                                f"directory, then to {path.parent} and {tmp_path}")
    (tmp_path / "set" / "obj.data").write_text("classes=2\nvalid=train.txt\n")
    with pytest.raises(CfgError, match="has no 'train' list"):
        open_detection_data(path)


def test_detection_datasets_from_a_data_file(tmp_path):
    path = make_data_set(tmp_path / "set", labels={1: None})
    net = detector(tmp_path, net="jitter=0\nflip=0")
    splits = detection_datasets(net, str(path), seed=0)
    assert splits.names == ["cat", "dog"] and not splits.embedded
    # a validation image without labels is not trained, only scored: the warning says so
    assert splits.warnings == [f"warning: 1 of 3 {which} images have no label file ({use} as "
                               "images without objects)"
                               for which, use in (("train", "trained"), ("valid", "scored"))]
    images, truth, sizes = collate([splits.val[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert truth.shape == (3, 200, 5) and sizes.tolist() == [[40, 30]] * 3
    torch.testing.assert_close(truth[0, 0], torch.tensor([0.5, 0.5, 0.25, 0.5, 0.0]))
    assert not truth[1].any()  # the image without a label file has no objects
    assert not truth[0, 1:].any()  # zero rows after the last box


def test_validation_truth_keeps_every_object_of_an_image(tmp_path):
    """validate_detector_map scores every label line: a box on the left edge (x = 0, which ends
    Darknet's *training* truth) and the objects past the head's `max` are truths too."""
    from darkcfg.detect.metrics import ImageBoxes

    edge = "0 0 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"
    many = "".join(f"{i % 2} {0.1 + 0.08 * i:.2f} 0.5 0.05 0.05\n" for i in range(5))
    path = make_data_set(tmp_path / "set", labels={0: edge, 1: many})
    splits = detection_datasets(detector(tmp_path, yolo="max=3"), str(path), seed=0)
    images, truth, sizes = collate([splits.val[i] for i in range(3)])
    assert truth.shape == (3, 5, 5)
    counts = [len(ImageBoxes.from_truth(rows).classes) for rows in truth]
    assert counts == [2, 5, 1]
    assert ImageBoxes.from_truth(truth[0]).classes.tolist() == [0, 1]


def test_detection_datasets_refuse_bad_labels_before_training(tmp_path):
    path = make_data_set(tmp_path / "set", labels={2: "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(CfgError) as err:
        detection_datasets(detector(tmp_path), str(path), seed=0)
    d = err.value.first
    assert d.path.endswith(os.path.join("labels", "2.txt")) and d.line == 2
    assert d.message == "class 7 but classes=2"


# -- the embedded set -----------------------------------------------------------------------------
def test_embedded_set_is_deterministic_with_exact_boxes():
    a, b = EmbeddedDetection(20, 8, 3, 96, 128, 0, 0), EmbeddedDetection(20, 8, 3, 96, 128, 0, 0)
    other, val = EmbeddedDetection(20, 8, 3, 96, 128, 1, 0), EmbeddedDetection(20, 8, 3, 96, 128,
                                                                               0, 1)
    x, boxes = a[3]
    assert x.shape == (3, 96, 128) and x.dtype == torch.uint8
    assert torch.equal(x, b[3][0]) and np.array_equal(boxes, b[3][1])
    assert not torch.equal(x, other[3][0]) and not torch.equal(x, val[3][0])
    counts = []
    for i in range(20):
        img, boxes = a[i]
        counts.append(len(boxes))
        bright = img.max(0)[0].numpy() > 150  # objects; the background stays far darker
        for j, (cx, cy, w, h, cls) in enumerate(boxes):
            assert 0 <= cls < 8 and 0 < w <= 1 and 0 < h <= 1
            x0, x1 = round((cx - w / 2) * 128), round((cx + w / 2) * 128)
            y0, y1 = round((cy - h / 2) * 96), round((cy + h / 2) * 96)
            assert abs((cx - w / 2) * 128 - x0) < 1e-3 and abs((cy + h / 2) * 96 - y1) < 1e-3
            inside = bright[y0:y1, x0:x1]
            # the shape touches all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and \
                inside[:, -1].any()
            others = [o for k, o in enumerate(boxes) if k != j]
            ring = np.zeros_like(bright)
            ring[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
            ring[y0:y1, x0:x1] = False
            for ox, oy, ow, oh, _ in others:  # ignore pixels of overlapping neighbours
                ring[max(int((oy - oh / 2) * 96) - 1, 0):int((oy + oh / 2) * 96) + 2,
                     max(int((ox - ow / 2) * 128) - 1, 0):int((ox + ow / 2) * 128) + 2] = False
            assert not (bright & ring).any()  # and nothing of it lies outside
    assert min(counts) >= 1 and max(counts) <= 4 and np.mean(counts) > 1.5


def test_embedded_classes_look_distinct():
    looks = [class_look(k) for k in range(128)]
    assert len(set(looks)) == 128
    assert len({s for s, _, _ in looks[:8]}) == 8 and len({c for _, c, _ in looks[:8]}) == 8


def test_embedded_default_uses_few_classes_of_a_big_head(tmp_path):
    cfg = tmp_path / "big.cfg"
    cfg.write_text(DETECTOR_CFG.format(net="", yolo="").replace("filters=14", "filters=170")
                   .replace("classes=2", "classes=80"))
    splits = detection_datasets(build(str(cfg)), None, seed=3, train_size=16, val_size=8)
    assert len(splits.names) == 8 and splits.embedded
    assert "8 of the network's 80 classes" in splits.banner() and "seed 3" in splits.banner()
    assert len(detection_datasets(build(str(cfg)), None, 3, classes=20).names) == 20
    with pytest.raises(CfgError, match="--classes 81"):
        detection_datasets(build(str(cfg)), None, 3, classes=81)


# -- augmentation keeps boxes on their pixels -----------------------------------------------------
def rect_image(w: int, h: int, rng: np.random.Generator):
    """A black image with one white rectangle (under a quarter of the image, so the mean colour
    used for padding stays dark) and its box."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    bw, bh = int(rng.integers(w // 8, w // 2)), int(rng.integers(h // 8, h // 2))
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    img[:, y0:y0 + bh, x0:x0 + bw] = 255
    box = np.array([[(x0 + bw / 2) / w, (y0 + bh / 2) / h, bw / w, bh / h, 1]], np.float32)
    return img, box


def assert_boxes_cover_pixels(img: torch.Tensor, boxes: np.ndarray, threshold: int = 100,
                              band: int = 1, only_outside: bool = False):
    """The union of the boxes and the bright pixels differ only in a band of `band` pixels
    along the edges (bilinear resampling; mosaic truncates its edges to whole pixels) and in
    slivers that thin (dropped boxes). `only_outside`: only bright pixels outside every box
    count (boxes may cover more)."""
    h, w = img.shape[-2:]
    bright = img[0] > threshold
    union = torch.zeros(h, w, dtype=torch.bool)
    for cx, cy, bw, bh, _ in boxes:
        x0, x1 = max(round((cx - bw / 2) * w), 0), round((cx + bw / 2) * w)
        y0, y1 = max(round((cy - bh / 2) * h), 0), round((cy + bh / 2) * h)
        union[y0:y1, x0:x1] = True
    wrong = ((bright & ~union) if only_outside else (bright ^ union)).float()[None, None]
    core = -torch.nn.functional.max_pool2d(-wrong, 2 * band + 1, 1, band)  # erode the band
    assert core.sum() == 0, f"{int(wrong.sum())} pixels disagree with the boxes"


GEOMETRY = {
    "jitter": dict(jitter=0.3, flip=False),
    "resize zoom in": dict(jitter=0.0, resize=1.5, flip=False),
    "resize zoom out": dict(jitter=0.0, resize=0.6, flip=False),
    "letter_box": dict(jitter=0.1, letter_box=True, flip=False),
    "flip": dict(jitter=0.2, flip=True),
    "everything": dict(jitter=0.3, resize=1.5, flip=True, hue=0.0),
}


@pytest.mark.parametrize("name", list(GEOMETRY))
def test_geometry_moves_boxes_with_their_pixels(name):
    s = DetectionSettings(64, 48, classes=2, **GEOMETRY[name])
    rng = np.random.default_rng(7)
    kept = 0
    for _ in range(25):
        img, box = rect_image(int(rng.integers(40, 120)), int(rng.integers(40, 120)), rng)
        out = augment(img, box, 64, 48, s, rng)
        assert out.image.shape == (3, 48, 64) and out.image.dtype == torch.uint8
        assert_boxes_cover_pixels(out.image, out.boxes)
        kept += len(out.boxes)
    assert kept >= 15  # most boxes survive the crop


def test_flip_mirrors_the_box():
    s = DetectionSettings(64, 64, classes=2, jitter=0.0, flip=True)
    img, box = rect_image(64, 64, np.random.default_rng(1))
    flips = set()
    for seed in range(8):
        out = augment(img, box, 64, 64, s, np.random.default_rng(seed))
        flips.add(out.flip)
        expect = box[0, 0] if not out.flip else 1 - box[0, 0]
        assert out.boxes[0, 0] == pytest.approx(expect, abs=1e-6)
        assert_boxes_cover_pixels(out.image, out.boxes)
    assert flips == {False, True}


def test_photometric_steps_leave_boxes_alone():
    s = DetectionSettings(64, 64, classes=2, jitter=0.0, flip=False, hue=0.1, saturation=1.5,
                          exposure=1.5, gaussian_noise=3)
    img, box = rect_image(64, 64, np.random.default_rng(2))
    for seed in range(6):
        out = augment(img, box, 64, 64, s, np.random.default_rng(seed))
        np.testing.assert_allclose(out.boxes, box, atol=1e-6)
        assert_boxes_cover_pixels(out.image, out.boxes, threshold=60)


def test_background_blur_keeps_the_objects_sharp():
    s = DetectionSettings(64, 64, classes=2, jitter=0.0, flip=False, blur=1)
    rng = np.random.default_rng(4)
    img, box = rect_image(64, 64, rng)
    img = img // 2 + torch.randint(0, 100, img.shape, generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8)
    kinds = set()
    for seed in range(12):
        out = augment(img, box, 64, 64, s, np.random.default_rng(seed))
        x0, x1 = round((box[0, 0] - box[0, 2] / 2) * 64), round((box[0, 0] + box[0, 2] / 2) * 64)
        y0, y1 = round((box[0, 1] - box[0, 3] / 2) * 64), round((box[0, 1] + box[0, 3] / 2) * 64)
        assert torch.equal(out.image[:, y0 + 1:y1 - 1, x0 + 1:x1 - 1],
                           img[:, y0 + 1:y1 - 1, x0 + 1:x1 - 1])  # the object stays as it was
        kinds.add(torch.equal(out.image, img))
    assert kinds == {True, False}  # blur 0 (none) or 1 (the background), a third each


@pytest.mark.parametrize("bound", [True, False])
def test_mosaic_places_boxes_on_their_pixels(bound):
    s = DetectionSettings(96, 80, classes=2, jitter=0.3, flip=True, mix=MOSAIC,
                          mosaic_bound=bound)
    rng = np.random.default_rng(5)
    pool = [rect_image(int(rng.integers(50, 120)), int(rng.integers(50, 120)), rng)
            for _ in range(8)]
    for _ in range(12):
        parts = [augment(*pool[int(rng.integers(8))], 96, 80, s, rng, corner=q)
                 for q in range(4)]
        cut_x, cut_y = int(rng.integers(19, 77)), int(rng.integers(16, 65))
        img, boxes = mosaic(parts, cut_x, cut_y, s, 96, 80)
        assert img.shape == (3, 80, 96)
        # bound: clipped to its quadrant, exactly the visible part; else clipped to the canvas
        # only, so a box covers its visible part and may reach into the next quadrant
        assert_boxes_cover_pixels(img, boxes, band=2, only_outside=not bound)


def test_mixup_blends_images_and_concatenates_boxes():
    s = DetectionSettings(64, 64, classes=2, jitter=0.2)
    rng = np.random.default_rng(3)
    a = augment(*rect_image(64, 64, rng), 64, 64, s, rng)
    b = augment(*rect_image(64, 64, rng), 64, 64, s, rng)
    img, boxes = mixup(a, b, 200)
    assert np.array_equal(boxes, np.concatenate([a.boxes, b.boxes]))
    torch.testing.assert_close(img.float(), (a.image.float() + b.image.float()).div(2),
                               atol=0.5, rtol=0)
    assert_boxes_cover_pixels(img, boxes)


def test_boxes_are_truncated_to_max_then_filtered():
    s = DetectionSettings(32, 32, classes=2, max_boxes=3, jitter=0.0, flip=False)
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    boxes = np.array([[0.5, 0.5, 0.2, 0.2, c] for c in (0, 1, 5, 0, 1)], np.float32)
    boxes[0, 2] = 0.01  # under one pixel: dropped
    for seed in range(5):
        out = augment(img, boxes, 32, 32, s, np.random.default_rng(seed))
        assert len(out.boxes) <= 3  # truncation first: the dropped ones are not replaced
        assert all(c < 2 for c in out.boxes[:, 4]) and all(out.boxes[:, 2] >= 1 / 32)


def test_hsv_matches_opencv_8bit_semantics():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (200, 3))
    img = torch.from_numpy(pixels.T.reshape(3, 10, 20).astype(np.uint8))
    same = hsv_shift(img, 0.0, 1.0, 1.0)
    assert (same.int() - img.int()).abs().max() <= 4  # 8-bit HSV round trip
    out = hsv_shift(img, 0.05, 1.3, 0.7).reshape(3, -1).T.int().numpy()
    for (r, g, b), got in zip(pixels, out, strict=True):
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        hh = min(max(round(h * 180) % 180 + 179 * 0.05, 0), 255) % 180
        want = colorsys.hsv_to_rgb(hh / 180, min(s * 1.3, 1), v * 0.7)
        assert np.abs(np.array(want) * 255 - got).max() <= 8
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    assert hsv_shift(red, -0.1, 1, 1).flatten().tolist() == [255, 0, 0]  # clips at hue 0
    assert hsv_shift(red, 1 / 3 * 180 / 179, 1, 1).flatten().tolist() == [0, 255, 0]  # +120°


def test_native_hsv_equals_the_torch_reference():
    """builders.native's C loop runs the same float32 steps: the same bytes (ties between
    channels, greys, both hue directions, saturation and exposure both ways, odd sizes)."""
    from colour_trials import colour_trials

    from builders import native
    from darkcfg.data.detection.augment import hsv_constants, hsv_shift_reference

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    for t, img, (dhue, dsat, dexp) in colour_trials(0, 60, 70):
        native_out = native.hsv_shift_u8(img, *hsv_constants(dhue, dsat, dexp))
        assert torch.equal(native_out, hsv_shift_reference(img, dhue, dsat, dexp)), t
        assert torch.equal(hsv_shift(img, dhue, dsat, dexp), native_out)


# -- determinism, batches, multi-scale ------------------------------------------------------------
def embedded_train(seed: int = 0, **settings) -> DetectionTrain:
    s = DetectionSettings(64, 64, classes=3, jitter=0.3, flip=True, hue=0.1, saturation=1.5,
                          exposure=1.5, **settings)
    return DetectionTrain(EmbeddedDetection(50, 3, 3, 64, 64, seed, 0), s, seed)


def test_samples_are_pure_functions_of_seed_iteration_and_slot():
    a, b, c = embedded_train(mix=MOSAIC), embedded_train(mix=MOSAIC), embedded_train(1)
    for key in [Slot(0, 0), Slot(5, 3), Slot(123, 1)]:
        x, t = a[key]
        assert torch.equal(x, b[key][0]) and torch.equal(t, b[key][1])
        assert not torch.equal(x, c[key][0])
    assert not torch.equal(a[Slot(0, 0)][0], a[Slot(0, 1)][0])
    assert not torch.equal(a[Slot(0, 0)][0], a[Slot(1, 0)][0])
    with pytest.raises(TypeError, match="Slot"):
        a[(3, 0)]  # an (index, epoch) key from a plain sampler


def test_stream_resumes_byte_identically_and_ranks_differ():
    ds = embedded_train(mix=MIXUP, random=1.0, max_batches=100)
    whole = ds_batches(ds, 0, 4)
    resumed = ds_batches(ds, 2, 2)
    for got, want in zip(resumed, whole[2:], strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    images, truth = whole[0]
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert images.shape == (3, 3, 128, 128)  # period 0: roundl(1.4·64/32 + 1)·32
    assert truth.shape == (3, 200, 5)
    rank1 = next(iter(ds_batches(ds, 0, 1, rank=1)))
    assert not torch.equal(rank1[0], images)


def ds_batches(ds, start: int, count: int, rank: int = 0, workers: int = 0):
    from darkcfg.data.detection.dataset import DetectionStream

    it = DetectionStream(ds, batch=3, world=2, rank=rank, workers=workers).batches(start)
    return [next(it) for _ in range(count)]


def test_a_loader_worker_gives_the_same_batches():
    ds = embedded_train(random=1.0, max_batches=100)
    for (a, ta), (b, tb) in zip(ds_batches(ds, 9, 2), ds_batches(ds, 9, 2, workers=1),
                                strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_training_sample_draws_images_with_replacement():
    s = DetectionSettings(32, 32, classes=2, jitter=0.0, flip=False)
    seen = []
    loader = lambda i: (seen.append(i), (torch.zeros(3, 32, 32, dtype=torch.uint8),  # noqa: E731
                                         np.zeros((0, 5), np.float32)))[1]
    rng = np.random.default_rng(0)
    for _ in range(60):
        training_sample(loader, 5, 32, 32, s, rng)
    assert set(seen) == set(range(5)) and len(seen) == 60


def test_multiscale_sizes_follow_darknet():
    assert possible_sizes(416, 1) == list(range(320, 609, 32))
    assert possible_sizes(160, 1) == [160, 192, 224, 256]  # r < 1 rounds back up to 160
    sizes = [training_size(i, 416, 416, 1.0, 0, 10000) for i in range(2000)]
    assert sizes[0] == (608, 608) and len(set(sizes[:10])) == 1
    for p in range(200):  # constant over each period of 10 iterations
        assert len(set(sizes[10 * p:10 * p + 10])) == 1
    assert {w for w, _ in sizes} == set(range(320, 609, 32))
    assert all(w == h for w, h in sizes)
    assert training_size(9950, 416, 416, 1.0, 0, 10000) == (608, 608)  # the last 100
    assert training_size(55, 416, 320, 0.0, 0, 10000) == (416, 320)  # random=0
    w, h = training_size(10, 416, 320, 1.0, 0, 10000)
    assert w % 32 == 0 and h % 32 == 0
    other = [training_size(i, 416, 416, 1.0, 1, 10000) for i in range(0, 2000, 10)]
    assert other != sizes[::10]  # the seed picks the sizes


def test_settings_come_from_net_and_the_last_head(tmp_path):
    net = detector(tmp_path, net="mosaic=1\nhue=.2\nexposure=0\nresize_step=16",
                   yolo="jitter=.1\nrandom=1\nmax=50\nresize=1.5")
    s = DetectionSettings.from_network(net)
    assert (s.mix, s.hue, s.exposure, s.resize_step) == (MOSAIC, 0.2, 1.0, 16)
    assert (s.jitter, s.random, s.max_boxes, s.resize, s.classes) == (0.1, 1.0, 50, 1.5, 2)
    both = DetectionSettings.from_network(detector(tmp_path, net="mosaic=1\nletter_box=1"))
    assert both.mix == MOSAIC and both.letter_box  # as yolov4-csp.cfg: applied, with a warning
    assert len(both.notes) == 1 and "warning[W305]: letter_box=1 with mosaic=1" in both.notes[0]


def test_pad_truth_and_letterbox_layout():
    t = pad_truth(np.array([[0.5, 0.5, 0.1, 0.2, 1]], np.float32), 4)
    assert t.shape == (4, 5) and t[0].tolist() == pytest.approx([0.5, 0.5, 0.1, 0.2, 1])
    assert not t[1:].any()
    # validation letterboxes with --detect's function (builders.boxes)
    boxed = letterbox_image(torch.full((3, 20, 40), 1.0), 32, 32)
    assert boxed.shape == (3, 32, 32)
    assert boxed[:, :8].eq(0.5).all() and boxed[:, 24:].eq(0.5).all()
    torch.testing.assert_close(boxed[:, 8:24], torch.ones(3, 16, 32))


def test_batches_leave_the_global_random_state_alone():
    ds = embedded_train()
    torch.manual_seed(11)
    want = torch.rand(3)
    torch.manual_seed(11)
    ds_batches(ds, 0, 2)
    assert torch.equal(torch.rand(3), want)  # resume restores the RNG: the loader must not use it


def test_grey_images_take_exposure_only():
    s = DetectionSettings(32, 32, channels=1, classes=2, jitter=0.2, hue=0.1, saturation=1.5,
                          exposure=1.5)
    img, box = rect_image(40, 40, np.random.default_rng(0))
    out = augment(img[:1], box, 32, 32, s, np.random.default_rng(0))
    assert out.image.shape == (1, 32, 32)
    assert_boxes_cover_pixels(out.image, out.boxes)


def test_difficult_list_is_read_parallel_to_valid(tmp_path):
    path = make_data_set(tmp_path / "set")
    (tmp_path / "set" / "hard").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "set" / "hard" / f"{i}.jpg")
    (tmp_path / "set" / "hard" / "1.txt").write_text("1 0.3 0.3 0.1 0.1\n")
    (tmp_path / "set" / "difficult.txt").write_text("".join(f"hard/{i}.jpg\n" for i in range(3)))
    with open(path, "a") as fh:
        fh.write("difficult=difficult.txt\n")
    splits = detection_datasets(detector(tmp_path), str(path), seed=0)
    assert [len(b) for b in splits.difficult] == [0, 1, 0]
    np.testing.assert_allclose(splits.difficult[1], [[0.3, 0.3, 0.1, 0.1, 1]])


def preview_command(argv: list[str]) -> int:
    """`darkcfg data preview ARGV`."""
    from darkcfg.cli import main

    return main(["data", "preview", *argv])


def test_preview_draws_training_samples_with_boxes(tmp_path, capsys):
    main = preview_command

    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG.format(net="", yolo=""))
    out = tmp_path / "p.png"
    assert main([str(cfg), "--count", "3", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (68, 200, 3)  # 3 tiles of 64x64 with 2-pixel padding
    assert (grid == 255).all(-1).sum() > 50  # white box outlines
    assert "embedded detection set" in capsys.readouterr().err
    assert main([str(cfg), "--data", str(tmp_path / "none.data")]) == 2  # located error


def test_preview_refuses_a_non_image_out_and_a_typo_as_diagnostics(tmp_path, capsys,
                                                                   monkeypatch):
    """docs/detection.md's preview command: `--out x.txt` (or the cfg itself) was a Pillow
    traceback after the data was read, and a misspelt option argparse's own message."""
    main = preview_command

    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG.format(net="", yolo=""))
    before = cfg.read_bytes()
    for out in (tmp_path / "p.txt", cfg):
        assert main([str(cfg), "--count", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "error[E100]: --out" in err and "Traceback" not in err
        assert "embedded detection set" not in err  # refused before the data is read
    assert cfg.read_bytes() == before and not (tmp_path / "p.txt").exists()
    for bad in (["--count", "0"], ["--iteration", "-1"]):  # were torch/numpy tracebacks
        assert main([str(cfg), *bad, "--out", str(tmp_path / "p.png")]) == 2
        assert f"error[E100]: {bad[0]} {bad[1]}: must be" in capsys.readouterr().err
    # (train refuses it; preview drew with it)
    assert main([str(cfg), "--seed", "-1", "--out", str(tmp_path / "p.png")]) == 2
    assert "error[E100]: --seed -1 is out of range" in capsys.readouterr().err
    # (drew and held every sample first: 2.5 GB after minutes, still drawing)
    import darkcfg.data.detection.preview as preview

    with monkeypatch.context() as patch:
        patch.setattr(preview, "preview_grid", lambda *a: pytest.fail("drew the samples"))
        assert main([str(cfg), "--count", "100000", "--out", str(tmp_path / "p.png")]) == 2
    assert "error[E100]: --count 100000: a preview draws at most 256" in \
        capsys.readouterr().err and not (tmp_path / "p.png").exists()
    with pytest.raises(SystemExit) as exc:
        main([str(cfg), "--iterration", "3"])
    assert exc.value.code == 2
    assert "error[E100]: darkcfg data preview: unrecognized arguments: --iterration 3\n" \
        "help: did you mean '--iteration'?" in capsys.readouterr().err
    assert main([str(cfg), "--count", "1", "--out", str(tmp_path / "p.jpg")]) == 0
    assert Image.open(tmp_path / "p.jpg").format == "JPEG"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_preview_refuses_an_out_that_is_an_image_of_the_set_or_beside_them(tmp_path, capsys):
    """`--out` naming an image of the --data set wrote the preview over it (a .jpg passes the
    suffix check); one beside the images would join the set a folder scan reads. Both E100,
    nothing written."""
    main = preview_command

    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG.format(net="", yolo=""))
    data = make_data_set(tmp_path / "set")
    image = tmp_path / "set" / "JPEGImages" / "1.jpg"
    before = image.read_bytes()
    link = tmp_path / "link.jpg"
    link.symlink_to(image)
    for out, said in ((image, "is the image"), (link, "is the image"),
                      (image.with_name("new.png"), "a folder of the data set's images")):
        assert main([str(cfg), "--data", str(data), "--count", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error[E100]: --out '{out}' " in err and said in err, err
    assert image.read_bytes() == before and not image.with_name("new.png").exists()
    assert main([str(cfg), "--data", str(data), "--count", "1",
                 "--out", str(tmp_path / "p.png")]) == 0


def test_multiscale_can_be_switched_off(tmp_path):
    net = detector(tmp_path, yolo="random=1")
    on = detection_datasets(net, None, 0, train_size=8, val_size=2)
    off = detection_datasets(net, None, 0, train_size=8, val_size=2, multiscale=False)
    assert on.train.size_at(0) == (128, 128) and off.train.size_at(0) == (64, 64)
    assert {off.train.size_at(i) for i in range(0, 300, 10)} == {(64, 64)}


# -- Darknet built without OpenCV (--darknet-build native) ---------------------------------------
def _darknet_rgb_to_hsv_to_rgb(r, g, b, dhue, dsat, dexp):
    """One pixel through src/image.c rgb_to_hsv, scale S and V, shift and wrap H, hsv_to_rgb,
    constrain (a scalar transcription in float32, for the vectorised distort_image)."""
    f32 = np.float32
    r, g, b = f32(r), f32(g), f32(b)
    mx, mn = max(r, g, b), min(r, g, b)
    delta = f32(mx - mn)
    v = mx
    if mx == 0:
        s = h = f32(0)
    else:
        s = f32(delta / mx)
        if delta == 0:
            h = f32(0)  # Darknet gets 0/0 here; unused, since s == 0
        elif r == mx:
            h = f32((g - b) / delta)
        elif g == mx:
            h = f32(2 + f32((b - r) / delta))
        else:
            h = f32(4 + f32((r - g) / delta))
        if h < 0:
            h = f32(h + 6)
        h = f32(h / 6)
    s, v = f32(s * f32(dsat)), f32(v * f32(dexp))
    h = f32(h + f32(dhue))
    if h > 1:
        h = f32(h - 1)
    if h < 0:
        h = f32(h + 1)
    if s == 0:
        rgb = (v, v, v)
    else:
        h6 = f32(6 * h)
        index = int(np.floor(h6))
        f = f32(h6 - index)
        p, q, t = f32(v * (1 - s)), f32(v * f32(1 - f32(s * f))), \
            f32(v * f32(1 - f32(s * f32(1 - f))))
        rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v)][index] if index < 5 \
            else (v, p, q)
    return [min(max(c, 0.0), 1.0) for c in rgb]


def test_native_build_colour_jitter_is_darknets_distort_image():
    from darkcfg.data.augment import distort_image

    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (3, 9, 11)).astype(np.float32)
    x[:, 0, :3] = [[0.5, 0, 1]] * 3  # greys (s = 0) and black
    x[:, 1, 0], x[:, 1, 1] = [1, 0, 0.01], [0.02, 0.9, 0.9]  # near the hue wrap
    for dhue, dsat, dexp in ((0.1, 1.5, 0.7), (-0.1, 0.67, 1.5), (0.0, 1.0, 1.2), (-0.04, 1, 1)):
        got = distort_image(torch.from_numpy(x.copy()), dhue, dsat, dexp).numpy()
        want = np.array([[_darknet_rgb_to_hsv_to_rgb(*x[:, i, j], dhue, dsat, dexp)
                          for j in range(11)] for i in range(9)]).transpose(2, 0, 1)
        np.testing.assert_allclose(got, want, atol=2e-6)
    red = torch.tensor([0.9, 0.1, 0.12]).view(3, 1, 1)  # hue just below 1: wraps, not clips
    shifted = distort_image(red, 0.05, 1, 1)
    assert shifted[2, 0, 0] < 0.2 and shifted[1, 0, 0] > 0.2  # towards orange, not magenta


def _darknet_resize(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """src/image.c resize_image: two passes, corners aligned (a plain transcription)."""
    c, ih, iw = im.shape
    part = np.zeros((c, ih, w), np.float32)
    ws = np.float32(iw - 1) / np.float32(w - 1)
    hs = np.float32(ih - 1) / np.float32(h - 1)
    for k in range(c):
        for r in range(ih):
            for col in range(w):
                if col == w - 1 or iw == 1:
                    part[k, r, col] = im[k, r, iw - 1]
                else:
                    sx = np.float32(col * ws)
                    ix = int(sx)
                    dx = np.float32(sx - ix)
                    part[k, r, col] = (1 - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
    out = np.zeros((c, h, w), np.float32)
    for k in range(c):
        for r in range(h):
            sy = np.float32(r * hs)
            iy = int(sy)
            dy = np.float32(sy - iy)
            out[k, r] = (1 - dy) * part[k, iy]
            if r != h - 1 and ih != 1:
                out[k, r] += dy * part[k, iy + 1]
    return out


def test_native_build_pixels_are_crop_image_then_resize_image():
    """Outside the source, crop_image repeats the nearest edge pixel (the OpenCV build fills
    the mean colour); then resize_image with corners aligned; then the flip."""
    from darkcfg.data.detection.augment import place_native

    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 256, (3, 12, 16), dtype=np.uint8))
    src = image.numpy().astype(np.float32) / 255
    for pleft, pright, ptop, pbot, flip in ((-3, 2, -2, -4, False), (4, -5, 1, 0, True)):
        got = place_native(image, pleft, pright, ptop, pbot, 20, 14, flip).numpy()
        rows = np.clip(np.arange(12 - ptop - pbot) + ptop, 0, 11)
        cols = np.clip(np.arange(16 - pleft - pright) + pleft, 0, 15)
        want = _darknet_resize(src[:, rows][:, :, cols], 20, 14)
        want = want[:, :, ::-1] if flip else want
        np.testing.assert_allclose(got, want, atol=1e-6)
        if pleft < 0:  # the padded columns repeat column 0 (before resizing)
            cropped = src[:, rows][:, :, cols]
            assert np.array_equal(cropped[:, :, 0], cropped[:, :, -pleft])


def test_native_build_moves_boxes_as_the_opencv_build_and_refuses_mosaic():
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 40, 56),
                                                                dtype=np.uint8))
    boxes = np.array([[0.3, 0.4, 0.2, 0.3, 0], [0.7, 0.6, 0.3, 0.2, 1], [0.05, 0.5, 0.1, 0.9, 1]],
                     np.float32)
    s = DetectionSettings(64, 48, classes=2, jitter=0.3, flip=True, hue=0.1, saturation=1.5,
                          exposure=1.5)
    native = s.for_build("native")
    same_pixels = 0
    for seed in range(20):
        a = augment(image, boxes, 64, 48, s, np.random.default_rng(seed))
        b = augment(image, boxes, 64, 48, native, np.random.default_rng(seed))
        assert (a.pleft, a.pright, a.ptop, a.pbot, a.flip) == (b.pleft, b.pright, b.ptop, b.pbot,
                                                               b.flip)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=2e-6)
        assert b.image.dtype == torch.uint8 and b.image.shape == (3, 48, 64)
        same_pixels += torch.equal(a.image, b.image)
    assert same_pixels == 0  # another pad, resize and colour jitter
    assert "as Darknet built without OpenCV" in native.honoured()
    with pytest.raises(CfgError, match="mosaic needs OpenCV"):
        DetectionSettings(64, 48, mix=MOSAIC).for_build("native")


def test_a_negative_max_is_a_located_error(tmp_path):
    """`max` is how many truth boxes an image keeps (Darknet allocates max·5 floats): below 0 it
    is E203 at the value, not a torch error in a loader worker (which hung the run)."""
    from cfgparse import parse
    from cfgparse.schema import SECTIONS

    assert all(SECTIONS[section]["max"].min == 0 for section in ("yolo", "region", "detection"))
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG.format(net="", yolo="max=-1"))
    with pytest.raises(CfgError) as err:
        build(parse(cfg))
    d = err.value.first
    assert (d.code, d.line, d.column) == ("E203", 21, 5) and "must be >= 0" in d.message
    assert detector(tmp_path, yolo="max=0").layers[-1].data.max_boxes == 0  # Darknet: no truth
