"""Detection sets in the formats people have: data.yaml, COCO JSON, Pascal VOC (and Darknet's
.data), `darkcfg data convert` and `darkcfg data check`.

One tiny set is written by hand in all four formats from the same pixel boxes (VOC's 1-based
corners); every reader must give the same samples. Image sizes are powers of two, so every
relative value is exact in binary and "the same" means bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import build
from cfgparse import CfgError
from darkcfg.cli import main as cli
from darkcfg.data.detection.dataset import Slot, detection_datasets
from darkcfg.data.detection.formats import detect_format, open_set
from darkcfg.data.detection.formats.check import missing_label_files
from darkcfg.data.detection.formats.convert import convert, label_text

NAMES = ["circle", "square", "triangle"]
# per image: (width, height, [(class, xmin, ymin, xmax, ymax, difficult)]) in VOC pixels (1-based)
IMAGES = [
    (64, 32, [(0, 3, 5, 21, 29, 0), (2, 40, 2, 64, 12, 0)]),
    (32, 64, [(1, 1, 1, 32, 64, 0)]),
    (64, 64, []),
    (32, 32, [(0, 5, 9, 13, 17, 0), (1, 17, 3, 30, 31, 0), (2, 2, 20, 8, 30, 0)]),
    (64, 32, [(1, 10, 4, 50, 28, 0), (0, 52, 6, 60, 14, 1)]),  # valid: one difficult object
    (32, 64, [(2, 4, 30, 28, 60, 0)]),
]
TRAIN, VALID = [0, 1, 2, 3], [4, 5]

DETECTOR_CFG = """[net]
batch=2
subdivisions=1
width=64
height=64
channels=3
max_batches=100
jitter=0

[convolutional]
filters=16
size=1
stride=1
activation=linear

[yolo]
mask=0,1
anchors=10,14, 23,27
classes=3
num=2
"""


def darknet_row(w, h, obj):
    """Darknet's scripts/voc_label.py convert of a VOC box (the centre moves by -1 pixel)."""
    c, x0, y0, x1, y1, _ = obj
    return c, ((x0 + x1) / 2 - 1) / w, ((y0 + y1) / 2 - 1) / h, (x1 - x0) / w, (y1 - y0) / h


def picture(i, w, h) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def label_lines(w, h, objects, difficult=False) -> str:
    return "".join("{} {!r} {!r} {!r} {!r}\n".format(*darknet_row(w, h, o)) for o in objects
                   if bool(o[5]) == difficult)


def write_darknet(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    (root / "hard").mkdir()
    for i, (w, h, objects) in enumerate(IMAGES):
        picture(i, w, h).save(root / "img" / f"im{i}.png")
        (root / "img" / f"im{i}.txt").write_text(label_lines(w, h, objects))
    for i in VALID:
        w, h, objects = IMAGES[i]
        picture(i, w, h).save(root / "hard" / f"im{i}.png")
        (root / "hard" / f"im{i}.txt").write_text(label_lines(w, h, objects, difficult=True))
    (root / "train.txt").write_text("".join(f"img/im{i}.png\n" for i in TRAIN))
    (root / "valid.txt").write_text("".join(f"img/im{i}.png\n" for i in VALID))
    (root / "hard.txt").write_text("".join(f"hard/im{i}.png\n" for i in VALID))
    (root / "obj.names").write_text("\n".join(NAMES) + "\n")
    (root / "obj.data").write_text("classes=3\ntrain=train.txt\nvalid=valid.txt\n"
                                   "difficult=hard.txt\nnames=obj.names\n")
    return root / "obj.data"


def write_yolo(root: Path) -> Path:
    for split, ids in (("train", TRAIN), ("val", VALID)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in ids:
            w, h, objects = IMAGES[i]
            picture(i, w, h).save(root / "images" / split / f"im{i}.png")
            (root / "labels" / split / f"im{i}.txt").write_text(label_lines(w, h, objects))
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n"
                                    "names:\n  0: circle\n  1: square\n  2: triangle\n"
                                    .replace("path: .\n", f"path: {root}\n"))
    return root / "data.yaml"


def write_coco(root: Path) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True)
    out = []
    for split, ids in (("train", TRAIN), ("val", VALID)):
        images, annotations = [], []
        for i in ids:
            w, h, objects = IMAGES[i]
            picture(i, w, h).save(root / "images" / f"im{i}.png")
            images.append({"id": 100 + i, "file_name": f"im{i}.png", "width": w, "height": h})
            for c, x0, y0, x1, y1, hard in objects:
                annotations.append({"id": len(annotations) + 7, "image_id": 100 + i,
                                    "category_id": [3, 7, 11][c], "iscrowd": hard,
                                    "bbox": [x0 - 1, y0 - 1, x1 - x0, y1 - y0],
                                    "area": (x1 - x0) * (y1 - y0)})
        categories = [{"id": cid, "name": n} for cid, n in zip([11, 3, 7], ["triangle", *NAMES[:2]],
                                                                strict=True)]
        path = root / f"instances_{split}.json"
        path.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": categories}, indent=1))
        out.append(path)
    return out[0], out[1]


def voc_xml(i, w, h, objects) -> str:
    parts = [f"<annotation>\n  <filename>im{i}.png</filename>\n  <size><width>{w}</width>"
             f"<height>{h}</height><depth>3</depth></size>\n"]
    for c, x0, y0, x1, y1, hard in objects:
        parts.append(f"  <object>\n    <name>{NAMES[c]}</name>\n    <difficult>{hard}</difficult>"
                     f"\n    <bndbox>\n      <xmin>{x0}</xmin>\n      <ymin>{y0}</ymin>\n"
                     f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n"
                     "  </object>\n")
    return "".join(parts) + "</annotation>\n"


def write_voc(root: Path) -> Path:
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for i, (w, h, objects) in enumerate(IMAGES):
        picture(i, w, h).save(root / "JPEGImages" / f"im{i}.png")
        (root / "Annotations" / f"im{i}.xml").write_text(voc_xml(i, w, h, objects))
    (root / "ImageSets/Main/train.txt").write_text("".join(f"im{i}\n" for i in TRAIN))
    (root / "ImageSets/Main/val.txt").write_text("".join(f"im{i}\n" for i in VALID))
    return root


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def samples(split, with_difficult=True):
    """(pixels, boxes, difficult) per image: what a split feeds the network."""
    out = []
    for k, image in enumerate(split.images):
        hard = split.difficult[k] if with_difficult and split.difficult is not None else None
        out.append((pixels(image), split.boxes[k],
                    np.zeros((0, 5), np.float32) if hard is None else hard))
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for (pa, ba, da), (pb, bb, db) in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa, pb)
        assert ba.dtype == bb.dtype == np.float32
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(da, db)


@pytest.fixture
def four(tmp_path):
    return {"darknet": write_darknet(tmp_path / "darknet"), "yolo": write_yolo(tmp_path / "yolo"),
            "coco": write_coco(tmp_path / "coco"), "voc": write_voc(tmp_path / "voc")}


# -- one set, four formats, the same samples ----------------------------------------------------
def test_four_formats_give_the_same_samples(four):
    darknet = open_set(four["darknet"])
    yolo = open_set(four["yolo"])
    coco_train, coco_val = (open_set(p) for p in four["coco"])
    voc = open_set(four["voc"])
    assert [s.format for s in (darknet, yolo, coco_train, voc)] == ["darknet", "yolo", "coco",
                                                                    "voc"]
    for s in (darknet, yolo, coco_train, coco_val, voc):
        assert s.names == NAMES, s.format
    want = samples(darknet.train)
    assert [len(b) for _, b, _ in want] == [2, 1, 0, 3]
    assert_same(samples(yolo.train), want)
    assert_same(samples(coco_train.train), want)
    assert_same(samples(voc.train), want)
    want = samples(darknet.valid)
    assert [len(d) for _, _, d in want] == [1, 0]  # the difficult object: not a truth
    assert_same(samples(coco_val.train), want)  # iscrowd: not scored, as COCOeval
    assert_same(samples(voc.valid), want)  # VOC difficult: not scored, as VOC's eval
    assert_same(samples(yolo.valid), samples(darknet.valid, with_difficult=False))
    # the hand computation of one box (voc_label.py: centre - 1 pixel, divided by the size)
    np.testing.assert_array_equal(darknet.train.boxes[0][0],
                                  np.float32([(3 + 21) / 2 / 64 - 1 / 64, (5 + 29) / 2 / 32
                                              - 1 / 32, 18 / 64, 24 / 32, 0]))


def test_training_and_validation_batches_are_equal_across_formats(four, tmp_path):
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    net = build(str(cfg))
    splits = {k: detection_datasets(net, str(p if k != "coco" else p[0]), seed=3)
              for k, p in four.items()}
    for k in ("darknet", "yolo", "coco", "voc"):
        assert splits[k].names == NAMES
    for slot in (Slot(0, 0), Slot(0, 1), Slot(5, 0)):
        want = splits["darknet"].train[slot]
        for k in ("yolo", "coco", "voc"):
            got = splits[k].train[slot]
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (k, slot)
    val = {k: splits[k].val for k in ("darknet", "voc")}
    for i in range(2):
        a, b = val["darknet"][i], val["voc"][i]
        assert len(a) == len(b) == 4  # image, truth, size, difficult
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_shapes_are_detected(four, tmp_path):
    assert detect_format(four["darknet"]) == "darknet"
    assert detect_format(four["yolo"]) == "yolo"
    assert detect_format(four["yolo"].parent) == "yolo"  # a folder holding data.yaml
    assert detect_format(four["coco"][0]) == "coco"
    assert detect_format(four["voc"]) == "voc"
    (tmp_path / "plain").mkdir()
    with pytest.raises(CfgError) as err:
        detect_format(tmp_path / "plain")
    assert "Annotations/" in err.value.first.hint
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CfgError, match="not a detection data set"):
        detect_format(tmp_path / "x.csv")


def test_yaml_names_as_list_list_files_and_missing_val(tmp_path):
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        picture(i, 32, 32).save(root / "images" / f"a{i}.png")
    (root / "labels" / "a0.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    (root / "train.txt").write_text("./images/a0.png\n./images/a1.png\n")
    (root / "d.yaml").write_text("train: train.txt\nnames: [x, y]\n")
    data = open_set(root / "d.yaml")
    assert data.names == ["x", "y"] and data.valid is None
    assert [len(b) for b in data.train.boxes] == [1, 0] and data.train.missing == 1


def test_voc_names_are_the_sorted_found_or_classes_txt(tmp_path):
    from darkcfg.data.detection.formats.voc import VOC_NAMES

    root = write_voc(tmp_path / "voc")
    assert open_set(root).names == NAMES  # found, sorted
    assert list(VOC_NAMES) == sorted(VOC_NAMES)  # so a full VOC set gets voc.names' ids
    for i, (w, h, objects) in enumerate(IMAGES):
        (root / "Annotations" / f"im{i}.xml").write_text(
            voc_xml(i, w, h, objects).replace("circle", "dog").replace("square", "cat")
            .replace("triangle", "person"))
    data = open_set(root)
    assert data.names == ["cat", "dog", "person"]
    assert data.train.boxes[0][0, 4] == 1  # im0's first object: a dog
    (root / "Annotations" / "classes.txt").write_text("\n".join(VOC_NAMES) + "\n")
    data = open_set(root)
    assert len(data.names) == 20 and data.train.boxes[0][0, 4] == VOC_NAMES.index("dog")
    (root / "classes.txt").write_text("person\ndog\ncat\n")  # the VOC folder's comes first
    assert open_set(root).names == ["person", "dog", "cat"]


# -- bad input: located errors --------------------------------------------------------------------
def first_error(path) -> str:
    with pytest.raises(CfgError) as err:
        open_set(path)
    return err.value.first.format()


@pytest.mark.parametrize("bbox", ["[NaN, 2, 3, 4]", "[1, Infinity, 3, 4]", "[true, 2, 3, 4]"])
def test_a_coco_bbox_that_is_no_number_is_refused(tmp_path, bbox):
    """json reads NaN and Infinity (and true is an int to Python): every such bbox is E903,
    not a label row of nan that `data convert` would write and training refuse later."""
    train, _ = write_coco(tmp_path / "c")
    doc = json.loads(train.read_text())
    doc["annotations"][0]["bbox"] = "BBOX"
    train.write_text(json.dumps(doc, indent=1).replace('"BBOX"', bbox))
    with pytest.raises(CfgError) as err:
        open_set(train)
    assert err.value.first.code == "E903" and "four finite numbers" in err.value.first.message


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["categories"].append(dict(d["categories"][0], name="again")),
     "category id 11 is listed twice"),
    (lambda d: d["images"].append(dict(d["images"][0])), "is listed twice"),
    (lambda d: d["annotations"][0].update(iscrowd="yes"), "iscrowd is 'yes', not 0 or 1"),
    (lambda d: d["images"][0].update(width="wide"), "has width 'wide', not a size in pixels"),
    (lambda d: d["images"][1].update(height=True), "has height True, not a size in pixels"),
    (lambda d: d["images"][0].update(width=-5), "has width -5, not a size in pixels"),
    # wholly outside, though by less than the pixel a box may poke out by: clipping it to the
    # image gave a row of negative width (an unmatchable truth in the mAP)
    (lambda d: d["annotations"][0].update(bbox=[d["images"][0]["width"] + 0.5, 2, 0.3, 4]),
     "is outside the image"),
    (lambda d: d["annotations"][0].update(bbox=[-0.9, 2, 0.5, 4]), "is outside the image"),
    # a segmentation-only export: said as such, not as a malformed bbox
    (lambda d: d["annotations"][0].pop("bbox") and d["annotations"][0].update(
        segmentation=[[1, 1, 9, 1, 9, 9]]), "annotation has no bbox (only a segmentation)"),
])
def test_coco_ids_and_crowd_flags_that_cannot_mean_one_thing(tmp_path, edit, message):
    train, _ = write_coco(tmp_path / "c")
    doc = json.loads(train.read_text())
    edit(doc)
    train.write_text(json.dumps(doc, indent=1))
    with pytest.raises(CfgError) as err:
        open_set(train)
    assert any(message in d.message for d in err.value.diagnostics), err.value.diagnostics


@pytest.mark.parametrize("old, new, message", [
    ("<difficult>0</difficult>", "<difficult>maybe</difficult>", "<difficult> 'maybe' is not"),
    ("<width>", "<width>-", "is not an image size"),
    ("<annotation>", "<notes>", "not a VOC <annotation>"),
])
def test_voc_values_that_cannot_mean_one_thing(tmp_path, old, new, message):
    root = write_voc(tmp_path / "v")
    xml = root / "Annotations" / "im0.xml"
    text = xml.read_text().replace(old, new, 1)
    xml.write_text(text.replace("</annotation>", "</notes>") if new == "<notes>" else text)
    with pytest.raises(CfgError) as err:
        open_set(root)
    found = [d for d in err.value.diagnostics if message in d.message]
    assert found and found[0].path.endswith("im0.xml") and found[0].line > 0, \
        err.value.diagnostics


def test_coco_errors_are_located(tmp_path):
    train, _ = write_coco(tmp_path / "c")
    doc = json.loads(train.read_text())
    doc["annotations"][1]["bbox"] = [50, 20, 30, 4]  # 80 > 64 wide
    doc["annotations"][2]["category_id"] = 99
    train.write_text(json.dumps(doc, indent=1))
    text = train.read_text().splitlines()
    with pytest.raises(CfgError) as err:
        open_set(train)
    bbox, category = err.value.diagnostics
    assert bbox.code == "E903" and "outside the image (64x32)" in bbox.message
    assert text[bbox.line - 1].strip().startswith('"bbox"') and bbox.column == 4
    assert "category_id 99" in category.message
    assert '"category_id": 99' in text[category.line - 1]
    # a missing image, and the file on one line: the column says where
    doc["annotations"] = doc["annotations"][:1]
    doc["images"][0]["file_name"] = "gone.png"
    train.write_text(json.dumps(doc))
    with pytest.raises(CfgError) as err:
        open_set(train)
    d = err.value.first
    assert d.line == 1 and train.read_text()[d.column - 1:].startswith('"file_name"')
    assert "image 'gone.png' not found" in d.message
    doc["images"][0]["file_name"] = "images\\im0.png"  # a file written on Windows
    train.write_text(json.dumps(doc))
    assert "has Windows backslashes" in first_error(train)
    train.write_text('{"images": [}')
    assert "invalid JSON" in first_error(train) and ":1:13:" in first_error(train)


def test_voc_errors_are_located(tmp_path):
    root = write_voc(tmp_path / "voc")
    xml = root / "Annotations" / "im0.xml"
    xml.write_text(xml.read_text().replace("<xmax>21</xmax>", "<xmax>99</xmax>")
                   .replace("<ymin>2</ymin>", "<ymin>two</ymin>"))
    with pytest.raises(CfgError) as err:
        open_set(root)
    outside, number = err.value.diagnostics
    lines = xml.read_text().splitlines()
    assert outside.path == str(xml) and "<bndbox>" in lines[outside.line - 1]
    assert "not inside the image (64x32)" in outside.message
    assert number.message == "<ymin>: 'two' is not a number in decimal digits: C's atof " \
        "reads 0" and \
        "<ymin>two" in lines[number.line - 1][number.column - 1:]
    xml.write_text("<annotation>\n  <object><name>circle</name>\n</annotation>\n")
    d = CfgError  # malformed XML: the parser's line and column
    with pytest.raises(d) as err:
        open_set(root)
    assert err.value.first.code == "E903" and err.value.first.line == 3
    assert "mismatched tag" in err.value.first.message
    xml.unlink()
    msg = first_error(root)
    assert "ImageSets/Main/train.txt:1:1" in msg and "no annotation" in msg


def test_voc_images_of_another_extension_are_found_by_their_id(tmp_path):
    """Without <filename>, `<id>.jpg` is voc_label.py's guess; exporters also write .JPG, .png."""
    root = write_voc(tmp_path / "voc")
    want = as_samples(open_set(root))
    for i in range(len(IMAGES)):
        xml = root / "Annotations" / f"im{i}.xml"
        xml.write_text(xml.read_text().replace(f"<filename>im{i}.png</filename>", ""))
    (root / "JPEGImages" / "im0.png").rename(root / "JPEGImages" / "im0.PNG")
    data = open_set(root)
    assert data.train.images[0] == str(root / "JPEGImages" / "im0.PNG")
    assert as_samples(data) == want
    (root / "JPEGImages" / "im0.PNG").unlink()
    msg = first_error(root)
    assert "ImageSets/Main/train.txt:1:1" in msg and "no image for id 'im0'" in msg
    assert ("(tried 'im0' + .jpg .jpeg .png .bmp .tif .tiff .webp .ppm .pgm .gif .mpo .pfm in "
            "any case)") in msg  # darkcfg.data.datafile.IMAGE_EXTENSIONS, the one rule


def test_yolo_label_errors_are_darknets(tmp_path):
    path = write_yolo(tmp_path / "y")
    (tmp_path / "y" / "labels" / "train" / "im1.txt").write_text("1 0.5 0.5 0.5 0.5\n"
                                                                 "3 0.5 0.5 0.5 0.5\n")
    msg = first_error(path)
    assert "labels/train/im1.txt:2:1: error[E903]: class 3 but classes=3" in msg
    # the class count is the yaml's names, not a .data file's classes= (there is none)
    assert "help: class ids run from 0 to 2 (the 3 names: in data.yaml)" in msg
    path.write_text("train: images/train\nnames: [a, b\n")
    assert "invalid YAML" in first_error(path)
    path.write_text("train: nowhere\nnames: [a]\n")
    msg = first_error(path)
    assert ":1:8:" in msg and "neither a folder nor a list file" in msg


def test_a_label_file_in_two_splits_is_reported_once(tmp_path):
    """valid= naming the train list (the usual Darknet set-up) reads every label file twice:
    each error and warning is said once, and the W903 count is of boxes, not of readings."""
    path = write_darknet(tmp_path / "d")
    path.write_text("classes=3\ntrain=train.txt\nvalid=train.txt\nnames=obj.names\n")
    first = tmp_path / "d" / "img" / f"im{TRAIN[0]}.txt"
    first.write_text("7 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 1.5\n")
    data = open_set(path, strict=False)
    found = [(d.code, d.line) for d in data.problems if d.path == str(first)]
    assert found == [("E903", 1), ("W903", 2)]
    with pytest.raises(CfgError) as err:
        open_set(path)
    assert len(err.value.diagnostics) == 1


# -- convert --------------------------------------------------------------------------------------
def as_samples(data):
    """Order-free comparison: (pixels bytes, boxes bytes, difficult) per image, sorted."""
    def key(split):
        return sorted((pixels(p).tobytes(), b.tobytes()) for p, b in
                      zip(split.images, split.boxes, strict=True))
    return key(data.train), key(data.valid) if data.valid is not None else None, data.names


def test_convert_round_trip_darknet_coco_yolo_darknet(tmp_path):
    src = write_darknet(tmp_path / "src")
    src.write_text("classes=3\ntrain=train.txt\nnames=obj.names\n")  # one split
    rng = np.random.default_rng(0)
    for i in TRAIN:  # values that are not dyadic: the writers keep every float32 bit
        w, h, objects = IMAGES[i]
        rows = [[c, *rng.uniform(0.2, 0.8, 2), *rng.uniform(0.01, 0.3, 2)]
                for c, *_ in objects]
        (tmp_path / "src" / "img" / f"im{i}.txt").write_text(
            "".join("{} {:.9f} {:.9f} {:.9f} {:.9f}\n".format(*r) for r in rows))
    original = open_set(src)
    assert cli(["data", "convert", str(src), "--to", "coco", str(tmp_path / "coco")]) == 0
    coco = open_set(tmp_path / "coco" / "instances_train.json")
    assert cli(["data", "convert", str(tmp_path / "coco" / "instances_train.json"), "--to",
                "yolo", str(tmp_path / "yolo")]) == 0
    yolo = open_set(tmp_path / "yolo" / "data.yaml")
    assert cli(["data", "convert", str(tmp_path / "yolo" / "data.yaml"), "--to", "darknet",
                str(tmp_path / "back")]) == 0
    back = open_set(tmp_path / "back" / "obj.data")
    assert as_samples(original) == as_samples(coco) == as_samples(yolo) == as_samples(back)
    assert back.valid is None and (tmp_path / "back" / "obj.data").read_text().startswith(
        "classes=3\ntrain=train.txt\nnames=")


def test_convert_keeps_splits_and_difficult(four, tmp_path):
    for to in ("darknet", "coco", "yolo"):
        convert(open_set(four["voc"]), to, tmp_path / "out" / to)
    voc = open_set(four["voc"])
    darknet = open_set(tmp_path / "out" / "darknet" / "obj.data")
    assert as_samples(darknet) == as_samples(voc)
    assert_same(samples(darknet.valid), samples(voc.valid))  # difficult= list written
    coco_val = open_set(tmp_path / "out" / "coco" / "instances_val.json")
    assert_same(samples(coco_val.train), samples(voc.valid))  # iscrowd: 1
    assert as_samples(open_set(tmp_path / "out" / "yolo" / "data.yaml")) == as_samples(voc)


def test_convert_never_writes_over_anything(four, tmp_path, capsys):
    target = four["voc"]  # the input folder itself
    before = sorted(p.stat().st_mtime_ns for p in target.rglob("*"))
    assert cli(["data", "convert", str(target), "--to", "darknet", str(target)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert sorted(p.stat().st_mtime_ns for p in target.rglob("*")) == before


def test_convert_refuses_its_out_before_reading_the_source(four, tmp_path, monkeypatch, capsys):
    """An OUT that is taken is E901 at once, not after the source set (a COCO file of 100k
    images, read in minutes) was read and checked."""
    import darkcfg.data.detection.formats as formats

    def never(*args, **kwargs):
        raise AssertionError("the source set was read")

    monkeypatch.setattr(formats, "open_set", never)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    assert cli(["data", "convert", str(four["voc"]), "--to", "coco", str(taken)]) == 2
    assert f"{taken}: error[E901]: '{taken}' exists and is not an empty folder" in \
        capsys.readouterr().err


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_an_interrupted_convert_leaves_nothing_in_the_way(four, tmp_path, monkeypatch, failure):
    """A convert stopped midway (Ctrl-C, a full disk) leaves neither OUT nor a hidden partial
    folder: the set is written beside OUT and renamed to it once complete, so the next try
    starts clean and succeeds."""
    from darkcfg.data.detection.formats import convert as module

    done = []
    real = module._Writer.image

    def image(self, source, folder):
        if len(done) == 3:
            raise failure
        done.append(source)
        return real(self, source, folder)

    monkeypatch.setattr(module._Writer, "image", image)
    parent = tmp_path / "sets"
    with pytest.raises(failure if isinstance(failure, type) else type(failure)):
        convert(open_set(four["voc"]), "darknet", parent / "out")
    assert list(parent.iterdir()) == [], list(parent.iterdir())
    monkeypatch.setattr(module._Writer, "image", real)
    written = convert(open_set(four["voc"]), "darknet", parent / "out")
    assert written[0] == parent / "out" / "obj.data" and all(p.exists() for p in written)
    assert [p.name for p in parent.iterdir()] == ["out"]
    assert as_samples(open_set(written[0])) == as_samples(open_set(four["voc"]))


def test_two_converts_to_one_out_keep_the_first_set(four, tmp_path, monkeypatch):
    """Two converts started into one OUT both passed the "empty folder" check; the one that
    finished second said `.out.x8k2q1zz.partial: error[E901]: Directory not empty: ...
    (and 'out')`, naming a hidden folder that was gone. Now its error is OUT's: the first set
    stays whole and nothing else is left."""
    from darkcfg.data.detection.formats import convert as module

    parent = tmp_path / "sets"
    real = module._Writer.darknet

    def first_finishes_meanwhile(self, data):
        written = real(self, data)
        monkeypatch.setattr(module._Writer, "darknet", real)
        convert(open_set(four["voc"]), "darknet", parent / "out")  # the other convert
        return written

    monkeypatch.setattr(module._Writer, "darknet", first_finishes_meanwhile)
    with pytest.raises(CfgError) as err:
        convert(open_set(four["voc"]), "darknet", parent / "out")
    assert err.value.first.path == str(parent / "out")
    assert "another convert wrote it while this one ran" in err.value.first.message
    assert [p.name for p in parent.iterdir()] == ["out"]
    assert as_samples(open_set(parent / "out" / "obj.data")) == as_samples(open_set(four["voc"]))


def test_a_killed_converts_partial_folder_is_removed_by_the_next(four, tmp_path):
    """SIGKILL leaves no cleanup: the next convert to the same OUT removes the hidden partial
    folder nobody holds, and leaves alone one a live convert holds (its flock)."""
    import fcntl
    import os

    parent = tmp_path / "sets"
    abandoned = parent / ".out.k1ll3d.partial"
    (abandoned / "images").mkdir(parents=True)
    (abandoned / "images" / "a.jpg").write_bytes(b"half")
    live = parent / ".out.l1ve.partial"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        convert(open_set(four["voc"]), "darknet", parent / "out")
    finally:
        os.close(fd)
    assert sorted(p.name for p in parent.iterdir()) == [".out.l1ve.partial", "out"]


def test_convert_to_coco_writes_integer_pixels_as_integers_and_keeps_category_ids(tmp_path):
    """The shortest decimal that reads back as the same float32 label: a label made from
    integer pixels gives its integers back (not 63.000004291534424), and a COCO source keeps
    its category ids (3, 7, 11; not 1, 2, 3)."""
    train, _ = write_coco(tmp_path / "coco")
    convert(open_set(train), "coco", tmp_path / "again")
    before = json.loads(train.read_text())
    after = json.loads((tmp_path / "again" / "instances_train.json").read_text())
    assert sorted((c["id"], c["name"]) for c in after["categories"]) == sorted(
        (c["id"], c["name"]) for c in before["categories"])
    assert [(a["category_id"], a["bbox"], a["area"]) for a in after["annotations"]] == [
        (a["category_id"], a["bbox"], a["area"]) for a in before["annotations"]
        if not a["iscrowd"]]
    assert all(type(v) is int for a in after["annotations"] for v in a["bbox"])

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    picture(0, 160, 160).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text(label_text(np.float32([[81 / 160, 128.5 / 160,
                                                                   36 / 160, 27 / 160, 1]])))
    (root / "data.yaml").write_text("train: images\nnames: [a, b]\n")
    convert(open_set(root / "data.yaml"), "coco", tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "instances_train.json").read_text())
    assert [a["bbox"] for a in doc["annotations"]] == [[63, 115, 36, 27]]
    assert doc["annotations"][0]["area"] == 36 * 27
    assert as_samples(open_set(tmp_path / "out" / "instances_train.json")) == \
        as_samples(open_set(root / "data.yaml"))


def test_convert_gives_each_image_its_own_label_file_under_a_name_darknet_reads(tmp_path):
    """Images of one stem (`a.jpg`, `a.png`, `A.bmp`) shared one label file in the converted
    set (the last one's boxes won); a name with a line break split its list line in two; and
    `.webp`/`.tif`/`.Jpg`, which Darknet's label rule misses, kept their names, so real Darknet
    read the image as its label file; a `.gif` was copied into a yolo folder, which lists no
    `.gif`. Every target now reads back the same pixels and boxes."""
    from darkcfg.data.base import read_image
    from darkcfg.data.detection.labels import darknet_label_path

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # a sideways-stored photo: re-encoding must keep it upright
    names = {"a.jpg": {"quality": 95}, "a.png": {}, "A.bmp": {}, "new\nline.png": {},
             "x.webp": {"lossless": True, "exif": exif.tobytes()}, "y.Jpg": {"format": "JPEG"},
             "z.tif": {}, "g.gif": {}}
    images, annotations = [], []
    for i, (name, options) in enumerate(names.items()):
        picture(i, 32, 24).save(root / "images" / name, **options)
        w, h = (24, 32) if name == "x.webp" else (32, 24)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                            "bbox": [i, i + 1, 8 + i, 6], "area": (8 + i) * 6})
    (root / "instances_train.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}]}))
    source = open_set(root / "instances_train.json")

    def read(data):
        return sorted((read_image(p, 3).numpy().tobytes(), b.tobytes())
                      for p, b in zip(data.train.images, data.train.boxes, strict=True))

    for to, main in (("darknet", "obj.data"), ("yolo", "data.yaml")):
        convert(source, to, tmp_path / to)
        back = open_set(tmp_path / to / main)
        assert read(back) == read(source), to
        assert len(back.train.images) == len(names)
    darknet = (tmp_path / "darknet" / "train.txt").read_text().splitlines()
    labels = [darknet_label_path(line) for line in darknet]
    assert len(darknet) == len(names) and all(x.endswith(".txt") for x in labels)
    assert len({x.casefold() for x in labels}) == len(names)


def test_set_text_files_with_a_bom_read_and_utf16_ones_say_so(tmp_path, capsys):
    """Windows tools write a BOM (it hid the first VOC class and id, and a data.yaml list's
    first image) or UTF-16 (PowerShell's `>`: a VOC ImageSets file was a traceback)."""
    voc = write_voc(tmp_path / "v")
    (voc / "classes.txt").write_text("\ufeff" + "\n".join(NAMES) + "\n")
    ids = voc / "ImageSets" / "Main" / "train.txt"
    ids.write_text("\ufeff" + ids.read_text())
    assert as_samples(open_set(voc)) == as_samples(open_set(write_voc(tmp_path / "plain")))

    yolo = write_yolo(tmp_path / "y")
    (tmp_path / "y" / "list.txt").write_text("\ufeff./images/train/im0.png\n")
    yolo.write_text(yolo.read_text().replace("train: images/train", "train: list.txt"))
    assert open_set(yolo).train.images == [str(tmp_path / "y" / "images/train/im0.png")]

    utf16 = "the file is UTF-16 text"
    ids.write_bytes(ids.read_text(encoding="utf-8-sig").encode("utf-16"))
    label = tmp_path / "d" / "img" / "im0.txt"
    data = write_darknet(tmp_path / "d")
    label.write_bytes(label.read_text().encode("utf-16"))
    for source, said in ((voc, f"{ids}: error[E901]: cannot read"),
                         (data, f"{label}: error[E903]: cannot read label file")):
        assert cli(["data", "check", str(source), "--plot", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err
        assert said in err and utf16 in err and "Traceback" not in err


def test_a_yaml_folder_follows_linked_folders_once(tmp_path):
    """images/train/extra -> elsewhere (ultralytics' glob follows it) and a link loop: the
    linked images and their labels are read, each image once (Path.rglob skipped them)."""
    yolo = write_yolo(tmp_path / "y")
    extra = tmp_path / "extra"
    extra.mkdir()
    picture(9, 32, 32).save(extra / "im9.png")
    train = tmp_path / "y" / "images" / "train"
    (train / "extra").symlink_to(extra)
    (train / "loop").symlink_to(train)
    (tmp_path / "y" / "labels" / "train" / "extra").mkdir()
    (tmp_path / "y" / "labels" / "train" / "extra" / "im9.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    data = open_set(yolo)
    assert data.train.images == sorted([str(train / f"im{i}.png") for i in TRAIN]
                                       + [str(train / "extra" / "im9.png")])
    assert data.train.missing == 0  # its label file found too


@pytest.mark.parametrize("to", ["darknet", "yolo", "coco"])
def test_convert_refuses_the_images_training_refuses(four, tmp_path, capsys, to):
    """An image that does not read: `--to coco` was a traceback (a decompression bomb) or an
    error naming the hidden copy; the other targets copied it silently into a set that then
    does not train. Now every target refuses it as training does, before writing anything."""
    bad = four["yolo"].parent / "images" / "train" / "im1.png"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    assert cli(["data", "convert", str(four["yolo"]), "--to", to, str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: error[E901]: 1 of the 6 images of " in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []


def test_a_decompression_bomb_measured_for_its_size_is_a_located_error(tmp_path, monkeypatch):
    """A COCO image without width/height (or VOC without <size>) is measured from its file: a
    decompression bomb there was Pillow's traceback (it is no OSError)."""
    train, _ = write_coco(tmp_path / "c")
    doc = json.loads(train.read_text())
    del doc["images"][0]["width"]
    train.write_text(json.dumps(doc))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x32 is over twice the limit
    with pytest.raises(CfgError, match="im0.png.*exceeds limit"):
        open_set(train)


def test_a_list_written_on_windows_says_its_backslashes_are_the_problem(tmp_path, capsys):
    """`img\\im0.png` in a train list made on Windows: the image is there, the separator is
    not one here."""
    data = write_darknet(tmp_path / "d")
    (tmp_path / "d" / "train.txt").write_text("img\\im0.png\r\nimg\\im1.png\r\n")
    yolo = write_yolo(tmp_path / "y")
    (tmp_path / "y" / "list.txt").write_text(".\\images\\train\\im0.png\n")
    yolo.write_text(yolo.read_text().replace("train: images/train", "train: list.txt"))
    for source in (data, yolo):
        assert cli(["data", "check", str(source), "--plot", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err
        assert "do not exist" in err and "has Windows backslashes" in err, err


def test_label_text_is_the_shortest_float32_decimal():
    boxes = np.float32([[0.1, 0.5, 1 / 3, 1.0, 2]])
    assert label_text(boxes) == "2 0.1 0.5 0.33333334 1\n"


# -- check ----------------------------------------------------------------------------------------
def test_check_reports_problems_histograms_and_small_boxes(four, tmp_path, capsys):
    (four["voc"] / "JPEGImages" / "im3.png").write_bytes(b"not a picture")
    xml = four["voc"] / "Annotations" / "im1.xml"
    xml.write_text(xml.read_text().replace("<name>square</name>", "<name>hexagon</name>")
                   .replace("</annotation>", "").replace("<size>", "<size>\n") + "</annotation>")
    (four["voc"] / "classes.txt").write_text("\n".join(NAMES) + "\n")
    png = tmp_path / "out" / "hist.png"
    code = cli(["data", "check", str(four["voc"]), "--size", "64x64", "--plot", str(png)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "im1.xml:" in err and "class 'hexagon' is not one of the 3 names" in err
    assert "images: 5 read, 1 unreadable" in out
    bad = four["voc"] / "JPEGImages" / "im3.png"
    assert f"{bad}: error[E901]: cannot read image '{bad}': UnidentifiedImageError" in err
    lines = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    # train: im0 circle+triangle, im3 (unreadable but labelled) circle+square+triangle
    assert lines["0 circle"][-2:] == ["2", "0"] and lines["1 square"][-2:] == ["1", "1"]
    # boxes under one cell at 64x64, stride 8: im3's circle (8x8 px of 32x32 -> 16x16) no;
    # im4's difficult one is not a box; train boxes are all > 8 px
    assert "stride  8 (8x8 cells): train 0 of 5" in out
    assert Image.open(png).size[0] > 500


# -- --valid on every format ---------------------------------------------------------------------
def test_valid_json_is_the_same_on_every_format(four, tmp_path, capsys):
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    results = {}
    for k, src in (("darknet", four["darknet"]), ("yolo", four["yolo"]),
                   ("coco", four["coco"][1]), ("voc", four["voc"])):
        assert cli([str(cfg), "--valid", "--data", str(src), "--format", "json", "--seed", "1",
                    "--device", "cpu"]) == 0, k
        results[k] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = results["darknet"]
    assert "map50" in json.dumps(want)
    for k in ("yolo", "coco", "voc"):
        assert results[k].keys() == want.keys(), k
    # the same images, truths and objects not to score: the same numbers
    assert results["coco"] == results["voc"] == want
    # yolo has no list of objects not to score: the same truths (the difficult object is not
    # one), only a detection of it counts as a false positive there
    truths = [(c["name"], c["truths"]) for c in want["per_class_detail"]]
    assert [(c["name"], c["truths"]) for c in results["yolo"]["per_class_detail"]] == truths
    assert results["yolo"]["tp"] == want["tp"] and results["yolo"]["fn"] == want["fn"]


def test_difficult_objects_reach_the_map(four, tmp_path):
    from darkcfg.data.detection.dataset import collate
    from darkcfg.data.sampling import eval_loader
    from darkcfg.detect.metrics import network_detections

    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    net = build(str(cfg))
    splits = detection_datasets(net, str(four["voc"]), seed=0)
    loader = eval_loader(splits.val, 2, torch.device("cpu"), 0, collate=collate)
    _, truths = network_detections(net, loader, "cpu", classes=3)
    assert [len(t.boxes) for t in truths] == [1, 1]
    assert [len(t.difficult) for t in truths] == [1, 0]
    w, h = 64, 32  # image 4's difficult circle (52, 6)-(60, 14)
    np.testing.assert_allclose(truths[0].difficult[0].tolist(),
                               [(56 - 1) / w, (10 - 1) / h, 8 / w, 8 / h, 0])


def test_detect_takes_class_names_from_any_format(four):
    from darkcfg.detect.run import read_names

    for src in (four["yolo"], four["coco"][0], four["voc"], four["darknet"]):
        names, _, _ = read_names(None, str(src))
        assert names == NAMES, src


def test_objects_not_to_score_leave_both_maps():
    """A confident detection of a difficult (crowd) object: a false positive without the
    list, ignored with it, in Darknet's mAP and in COCOeval's."""
    from darkcfg.detect.metrics import ImageBoxes, evaluate

    pytest.importorskip("pycocotools")
    a, b = [0.25, 0.25, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]
    detections = [ImageBoxes.of([b, a], [0, 0], scores=[0.9, 0.8], size=(100, 100))]
    plain = evaluate(detections, [ImageBoxes.of([a], [0], size=(100, 100))], ["x"])
    marked = evaluate(detections, [ImageBoxes.of([a], [0], difficult=[[*b, 0]],
                                                 size=(100, 100))], ["x"])
    assert plain.map50 == pytest.approx(0.5) and marked.map50 == pytest.approx(1.0)
    assert plain.map50_95 < 0.9 and marked.map50_95 == pytest.approx(1.0)


def test_coco_images_next_to_the_json(tmp_path):
    train, _ = write_coco(tmp_path / "c")
    (tmp_path / "c" / "images").rename(tmp_path / "c" / "pictures")
    for f in (tmp_path / "c" / "pictures").iterdir():
        f.rename(tmp_path / "c" / f.name)
    data = open_set(train)
    assert [Path(p).parent for p in data.train.images] == [tmp_path / "c"] * 4


def test_coco_images_in_cocos_own_layout(tmp_path):
    train, _ = write_coco(tmp_path / "coco" / "annotations")
    (tmp_path / "coco" / "annotations" / "images").rename(tmp_path / "coco" / "train")
    data = open_set(train)
    assert [Path(p).parent for p in data.train.images] == [tmp_path / "coco" / "train"] * 4


def test_convert_link_hard_links_the_images(four, tmp_path):
    """--link: the images are hard links to the source files (same inode), the set the same."""
    out = tmp_path / "linked"
    assert cli(["data", "convert", str(four["voc"]), "--to", "yolo", str(out), "--link"]) == 0
    linked = open_set(out / "data.yaml")
    assert as_samples(linked) == as_samples(open_set(four["voc"]))
    sources = {Path(p).stat().st_ino for split in (linked.train, linked.valid) if split
               for p in split.images}
    originals = {p.stat().st_ino for p in four["voc"].rglob("*.jpg")} | \
        {p.stat().st_ino for p in four["voc"].rglob("*.png")}
    assert sources and sources <= originals


# -- labels at the image edge (W903): trained as Darknet trains them ------------------------------
def test_edge_labels_train_as_darknet_check_warns_and_convert_clips(tmp_path, capsys):
    """An exported set with rounding artefacts and boxes past the edge: Darknet trains it
    (correct_boxes clips, fill_truth_detection drops the empty ones), so darkcfg does too, with
    one warning naming the lines; `data check` lists them and passes; COCO output is clipped."""
    root = tmp_path / "edge"
    data = write_darknet(root)
    label = root / "img" / "im0.txt"
    label.write_text(label.read_text()
                     + "1 0.0 0.5 0.25 0.5\n"  # centre on the left edge: half of it inside
                     + "2 0.5 0.5 1.0000001 0.25\n"  # a rounding artefact
                     + "0 1.3 0.5 0.2 0.2\n")  # wholly outside: left out
    (root / "train.txt").write_text("img/im0.png\n")  # every sample is im0
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG.replace("num=2", "num=2\njitter=0"))  # no crop: boxes stay
    splits = detection_datasets(build(str(cfg)), str(data), seed=3)
    warning = next(w for w in splits.warnings if "W903" in w)
    assert "3 label box(es)" in warning and f"{label}:5:3: x = 1.3" not in warning
    assert f"{label}:3:3: x = 0.0 is outside (0, 1]" in warning
    assert f"{label}:5:3: the box lies wholly outside the image" in warning
    raw = open_set(data).train.boxes[0]
    assert len(raw) == 4  # two boxes of im0 plus the two kept edge boxes
    np.testing.assert_allclose(raw[2, :4], [0.0, 0.5, 0.25, 0.5])
    # what the network is trained on: the boxes clipped to the image, as correct_boxes does
    flips = set()
    for iteration in range(8):
        image, truth = splits.train[Slot(iteration, 0)][:2]
        rows = truth[truth[:, 2] > 0]
        assert len(rows) == 4, rows
        edge = rows[rows[:, 4] == 1][0]  # x 0 +- 0.125 -> [0, 0.125] (or flipped)
        flips.add(bool(edge[0] > 0.5))
        torch.testing.assert_close(edge[2:4], torch.tensor([0.125, 0.5]))
        assert torch.isclose(edge[0], torch.tensor(0.9375 if edge[0] > 0.5 else 0.0625))
        wide = rows[(rows[:, 4] == 2) & (rows[:, 1] == 0.5)][0]
        assert wide[2] == 1.0  # 1.0000001 clipped to the image
    assert flips == {True, False}

    png = tmp_path / "check.png"
    assert cli(["data", "check", str(data), "--size", "64x64", "--plot", str(png)]) == 0
    out, err = capsys.readouterr()
    assert "labels: 0 error(s), 3 warning(s)" in out
    assert f"{label}:3:3: warning[W903]: x = 0.0 is outside (0, 1]" in err

    out_dir = tmp_path / "coco"
    assert cli(["data", "convert", str(data), "--to", "coco", str(out_dir)]) == 0
    assert "W903" in capsys.readouterr().err
    doc = json.loads((out_dir / "instances_train.json").read_text())
    for ann in doc["annotations"]:
        image = next(i for i in doc["images"] if i["id"] == ann["image_id"])
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= image["width"] + 1e-9
        assert y + h <= image["height"] + 1e-9
    assert len(open_set(out_dir / "instances_train.json").train.boxes[0]) == 4  # reads back


def test_yaml_names_must_be_names(tmp_path):
    data = write_yolo(tmp_path / "y")
    text = data.read_text()
    data.write_text(text.replace("names:\n  0: circle\n  1: square\n  2: triangle\n",
                                 "names: [circle, [square], triangle]\n"))
    with pytest.raises(CfgError) as err:
        open_set(data)
    assert "['square'] is not a class name" in err.value.first.message


def test_detect_with_a_coco_json_writes_its_ids(four, tmp_path):
    """detect --data instances.json: detections.json carries that JSON's image ids (by file
    name) and category ids (3, 7, 11 here, not the class index), so COCO's own tools score it
    against the JSON as it is."""
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    train_json = four["coco"][0]
    images = [str(train_json.parent / "images" / f"im{i}.png") for i in TRAIN]
    out = tmp_path / "out"
    assert cli(["detect", str(cfg), *images, "--data", str(train_json), "--thresh", "0.01",
                "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} <= {100 + i for i in TRAIN}
    assert {r["category_id"] for r in results} <= {3, 7, 11}
    coco = pytest.importorskip("pycocotools.coco")
    truth = coco.COCO(str(train_json))
    assert len(truth.loadRes(str(out / "detections.json")).getAnnIds()) == len(results)


def test_detect_with_a_coco_json_keeps_two_pictures_of_one_name_apart(tmp_path, capsys):
    """A COCO JSON of a/000001.png (id 11) and b/000001.png (id 22): its ids were looked up by
    file name alone, so both pictures' boxes went under 22 and COCO scoring merged them."""
    from PIL import Image

    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    for i, folder in ((11, "a"), (22, "b")):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (48, 40), (30 * i % 255, 90, 40)).save(tmp_path / folder / "000001.png")
        doc["images"].append({"id": i, "file_name": f"{folder}/000001.png", "width": 48,
                              "height": 40})
        doc["annotations"].append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                                   "bbox": [5, 5, 20, 20], "area": 400})
    truth = tmp_path / "instances.json"
    truth.write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert cli(["detect", str(cfg), str(tmp_path / "a"), str(tmp_path / "b"), "--data",
                str(truth), "--thresh", "0", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "detections.json").read_text())
    per_id = {i: sum(r["image_id"] == i for r in results) for i in (11, 22)}
    assert per_id[11] and per_id[22] and sum(per_id.values()) == len(results), per_id
    assert "file number" not in capsys.readouterr().err  # the JSON's ids, not the numbers


def test_detect_with_a_data_yaml_reads_its_names_only(four, tmp_path):
    """detect --data data.yaml read both splits' images and labels for the class names: a
    copied model folder without the training set was an error. Now it reads the names."""
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    yolo = four["yolo"]
    image = tmp_path / "one.png"
    shutil.copy(next((yolo.parent / "images" / "val").iterdir()), image)
    shutil.rmtree(yolo.parent / "images")
    shutil.rmtree(yolo.parent / "labels")
    out = tmp_path / "out"
    assert cli(["detect", str(cfg), str(image), "--data", str(yolo), "--thresh", "0.01",
                "--out", str(out), "--no-progress"]) == 0


def test_detect_writes_a_coco_pictures_boxes_under_each_of_its_ids(four, tmp_path):
    """A picture with two COCO entries (merged in training and valid) had its detections
    under the first id only: COCOeval on that JSON counted the second entry's objects as
    missed. Now they are under each id, in the pixels of each entry's stated size."""
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    train_json = four["coco"][0]
    doc = json.loads(train_json.read_text())
    first = doc["images"][0]
    doc["images"].append(dict(first, id=999, width=2 * first["width"],
                              height=2 * first["height"]))
    moved = doc["annotations"][1]
    moved.update(image_id=999, bbox=[2 * v for v in moved["bbox"]], area=4 * moved["area"])
    train_json.write_text(json.dumps(doc))
    image = train_json.parent / "images" / first["file_name"]
    out = tmp_path / "out"
    assert cli(["detect", str(cfg), str(image), "--data", str(train_json), "--thresh", "0.01",
                "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "detections.json").read_text())
    by_id = {i: [r for r in results if r["image_id"] == i] for i in (first["id"], 999)}
    assert by_id[first["id"]] and len(by_id[999]) == len(by_id[first["id"]]) == \
        len(results) // 2
    for one, two in zip(by_id[first["id"]], by_id[999], strict=True):
        assert (one["category_id"], one["score"]) == (two["category_id"], two["score"])
        assert two["bbox"] == pytest.approx([2 * v for v in one["bbox"]], abs=2e-3)
    coco = pytest.importorskip("pycocotools.coco")
    truth = coco.COCO(str(train_json))
    assert len(truth.loadRes(str(out / "detections.json")).getAnnIds()) == len(results)


BOMB = ("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10)))


@pytest.mark.parametrize("text, where, message", [
    # a billion laughs: 10**9 values from 400 bytes; read as one, it ran out of memory
    (BOMB + "train: images/train\nnames: *a9\n", "7:5",
     "expand to 21,111,111 characters through YAML"),
    ("train: images/train\nnames: &n [a, *n]\n", "2:8", "contain themselves"),
    # 10**5 nested lists: a RecursionError traceback
    ("train: " + "[" * 100_000 + "]" * 100_000 + "\nnames: [a]\n", "1:", "nesting depth"),
    # YAML keeps the last of two keys without a word
    ("train: images/train\nnames: [a, b]\nnames: [c]\n", "3:1", "key 'names' is given twice"),
    ("train: images/train\nnames: {0: a, 0: b}\n", "2:15", "key '0' is given twice"),
    ("train: images/train\nnames: {0.5: a}\n", "2:8", "class ids 0, 1, ..., not '0.5'"),  # KeyError
    ("train: images/train\nnames: [a]\nnc: true\n", "3:5", "nc: must be the number"),
    ("train: images/train\nnames: [a]\nnc: [1]\n", "3:5", "nc: must be the number"),
    ("train: images/train\x00\nnames: [a]\n", "1:20", "unacceptable character #x0000"),
    ("train: !!python/object/apply:os.system ['echo hi']\nnames: [a]\n", "1:8",
     "could not determine a constructor"),
])
def test_hostile_data_yaml_is_one_located_error(tmp_path, text, where, message):
    data = write_yolo(tmp_path / "y")
    data.write_text(text)
    error = first_error(data)
    assert error.startswith(f"{data}:{where}") and "error[E901]" in error and message in error


def test_data_yaml_names_are_read_as_written(tmp_path):
    """YAML 1.1 reads `yes`, `off`, `1e3` as a bool or a number: the class was named 'yes'."""
    data = write_yolo(tmp_path / "y")
    data.write_text(data.read_text().replace(
        "names:\n  0: circle\n  1: square\n  2: triangle\n", "names: [yes, off, 1.50]\n"))
    assert open_set(data).names == ["yes", "off", "1.50"]
    data.write_text(data.read_text().replace("names: [yes, off, 1.50]\n",
                                             "names: {'2': on, 0: null_, 1: ~x}\n"))
    assert open_set(data).names == ["null_", "~x", "on"]


def test_a_data_yaml_that_is_not_utf8_is_located(tmp_path):
    data = write_yolo(tmp_path / "y")
    data.write_bytes(b"train: images/train\nnames: [caf\xe9]\n")  # Latin-1
    assert first_error(data).startswith(f"{data}:2:12: error[E104]: invalid UTF-8 byte 0xe9")


def test_a_coco_json_nested_too_deeply_is_an_error(tmp_path):
    """json.loads raises RecursionError (a traceback) on 10**5 nested lists."""
    path = tmp_path / "deep.json"
    path.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert first_error(path).startswith(f"{path}:1:1: error[E901]: invalid JSON: nested too")


def test_data_yaml_paths_are_read_as_written(tmp_path):
    """YAML 1.1 reads the folder name `0123` as the number 83 and `on` as True: the folders
    looked for were '83' and 'True'."""
    data = write_yolo(tmp_path / "y")
    root = data.parent
    for old, new in (("train", "0123"), ("val", "on")):
        (root / "images" / old).rename(root / "images" / new)
        (root / "labels" / old).rename(root / "labels" / new)
    data.write_text(f"path: {root / 'images'}\ntrain: 0123\nval: [on]\nnames: [a, b, c]\n")
    read = open_set(data)
    assert len(read.train.images) == len(TRAIN) and len(read.valid.images) == len(VALID)


# -- an image listed twice ------------------------------------------------------------------------
def test_an_image_listed_twice_trains_twice_is_scored_once_and_checked(tmp_path, capsys):
    """A list that names an image twice: training reads both (Darknet draws from its list with
    replacement: a repeat weighs the image double, which some users mean), validation read both
    too and scored the image twice (Darknet's detector map counts its objects and detections
    twice: the mAP moves by it). Now each validation image is scored once (its difficult boxes
    kept parallel), and W904 says so at the repeated line, in check, train and convert."""
    data = write_darknet(tmp_path / "set")
    root = data.parent
    (root / "train.txt").write_text("img/im0.png\nimg/im1.png\nimg/im2.png\nimg/im3.png\n"
                                    "./img/im0.png\n")
    (root / "valid.txt").write_text("img/im4.png\nimg/im5.png\nimg/im4.png\n")
    (root / "hard.txt").write_text("hard/im4.png\nhard/im5.png\nhard/im4.png\n")
    found = open_set(data)
    assert len(found.train) == 5 and len(found.valid) == 2
    assert [len(h) for h in found.valid.difficult] == [1, 0]
    said = [(d.path, d.line, d.column, d.code, d.severity) for d in found.problems]
    assert said == [(str(root / "train.txt"), 5, 1, "W904", "warning"),
                    (str(root / "valid.txt"), 3, 1, "W904", "warning")]
    assert "'./img/im0.png' is listed again (first at line 1)" in found.problems[0].message
    assert "scores each image once" in found.problems[1].hint
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    splits = detection_datasets(build(str(cfg)), str(data), seed=3)
    assert len(splits.train) == 5 and len(splits.val) == 2 and len(splits.difficult) == 2
    assert sum("warning[W904]" in w and "listed again" in w for w in splits.warnings) == 2
    assert cli(["data", "check", str(data), "--plot", str(tmp_path / "c.png")]) == 0
    err = capsys.readouterr().err
    assert f"{root / 'valid.txt'}:3:1: warning[W904]: 'img/im4.png' is listed again" in err
    # no valid=: validation reads the train list, each image once
    (root / "obj.data").write_text("classes=3\ntrain=train.txt\nnames=obj.names\n")
    splits = detection_datasets(build(str(cfg)), str(data), seed=3)
    assert len(splits.train) == 5 and len(splits.val) == 4


def test_a_voc_or_yolo_list_that_names_an_image_twice_is_said_at_its_line(four):
    voc, yolo = four["voc"], four["yolo"]
    (voc / "ImageSets/Main/val.txt").write_text("im4\nim5\n  im4\n")
    found = open_set(voc)
    assert len(found.valid) == 2
    assert [(d.path, d.line, d.column, d.code) for d in found.problems] == [
        (str(voc / "ImageSets/Main/val.txt"), 3, 3, "W904")]
    root = yolo.parent
    (root / "train.txt").write_text("images/train/im0.png\nimages/train/im1.png\n"
                                    "images/train/im0.png\n")
    yolo.write_text(yolo.read_text().replace("train: images/train", "train: train.txt")
                    .replace("val: images/val", "val: [images/val, images/val]"))
    found = open_set(yolo)
    assert (len(found.train), len(found.valid)) == (3, 2)
    assert [(Path(d.path).name, d.line, d.code) for d in found.problems] == [
        ("train.txt", 3, "W904"), ("data.yaml", 3, "W904")]


def test_the_objects_of_a_coco_pictures_two_entries_are_merged(four, tmp_path):
    """Two entries of one picture (two ids, one file_name) were two images, each with only its
    own entry's objects: training drew it once per entry with half its objects, validation
    scored it once with only the first entry's, and convert wrote the first entry's alone. Now
    it is one image with the objects of both (each entry's boxes in its own stated size),
    trained, scored and converted so; W904 says they were merged."""
    train, _ = four["coco"]
    whole = open_set(train)
    doc = json.loads(train.read_text())
    # the second entry states the picture at twice its size: its boxes are in those pixels
    doc["images"].append(dict(doc["images"][0], id=999, width=128, height=64))
    moved = doc["annotations"][1]  # im0's second object goes to the second entry
    assert moved["image_id"] == 100
    moved.update(image_id=999, bbox=[2 * v for v in moved["bbox"]], area=4 * moved["area"])
    train.write_text(json.dumps(doc, indent=1))
    found = open_set(train)
    assert found.train.images == whole.train.images and len(found.train.boxes[0]) == 2
    for got, want in zip(found.train.boxes, whole.train.boxes, strict=True):
        assert np.array_equal(got, want)
    assert [(d.code, d.severity) for d in found.problems] == [("W904", "warning")]
    assert "has a second entry (ids 100 and 999): their objects are merged" in \
        found.problems[0].message
    assert found.problems[0].line > 1  # at the second entry's file_name
    assert [i for i, _ in found.image_ids[found.train.images[0]]] == [100, 999]
    assert len(found.scored.images) == 4 and len(found.scored.boxes[0]) == 2  # validation
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR_CFG)
    splits = detection_datasets(build(str(cfg)), str(train), seed=3)
    assert len(splits.train) == 4 and len(splits.val) == 4
    out = convert(found, "coco", tmp_path / "to-coco")[0]
    written = json.loads(out.read_text())
    assert [i["file_name"] for i in written["images"]] == [
        "im0.png", "im1.png", "im2.png", "im3.png"]
    assert sum(a["image_id"] == 1 for a in written["annotations"]) == 2
    convert(found, "darknet", tmp_path / "to-darknet")
    assert len((tmp_path / "to-darknet" / "images" / "im0.txt").read_text().splitlines()) == 2
    assert (tmp_path / "to-darknet" / "train.txt").read_text().count("im0.png") == 1


def test_a_coco_id_that_is_a_list_or_an_object_is_located(four):
    """An image id, image_id or category_id that is a JSON list or object crashed the reader
    with a TypeError traceback (unhashable); each is a located E903 now."""
    train, _ = four["coco"]
    doc = json.loads(train.read_text())
    doc["images"][1]["id"] = [101]
    doc["annotations"][0]["image_id"] = {"id": 100}
    doc["annotations"][1]["category_id"] = [3]
    train.write_text(json.dumps(doc, indent=1))
    found = open_set(train, strict=False)
    said = [(d.code, d.message) for d in found.problems]
    assert ("E903", "image id [101] is not a number or a string") in said
    assert ("E903", "image_id {'id': 100} is not in 'images'") in said
    assert ("E903", "category_id [3] is not in 'categories'") in said
    assert all(d.line > 1 for d in found.problems)
    with pytest.raises(CfgError):
        open_set(train)


def test_a_voc_folder_without_train_txt_trains_on_what_val_txt_holds_out(four, capsys):
    """ImageSets/Main with val.txt and no train.txt trained on every annotation, the val
    images too, without a word. Now: every annotation (or trainval.txt's ids) less those
    val.txt (and, from every annotation, test.txt) list, with a W904 that says so; nothing
    left to train on is E901; trainval.txt alone is VOC's usual training list (no word)."""
    voc = four["voc"]
    main = voc / "ImageSets" / "Main"
    (main / "train.txt").unlink()
    found = open_set(voc)
    assert [Path(p).stem for p in found.train.images] == ["im0", "im1", "im2", "im3"]
    assert [Path(p).stem for p in found.valid.images] == ["im4", "im5"]
    [d] = found.problems
    assert (d.path, d.code, d.severity) == (str(main), "W904", "warning")
    assert d.message == ("ImageSets/Main has val.txt but no train.txt: training on 4 of the 6 "
                         "annotations in Annotations/, those val.txt does not list")
    (main / "trainval.txt").write_text("im0\nim1\nim4\nim5\n")
    found = open_set(voc)
    assert [Path(p).stem for p in found.train.images] == ["im0", "im1"]
    assert "training on 2 of trainval.txt's 4 ids, those val.txt does not list" in \
        found.problems[0].message
    (main / "val.txt").unlink()
    found = open_set(voc)
    assert len(found.train) == 4 and found.valid is None and not found.problems
    (main / "trainval.txt").unlink()
    (main / "val.txt").write_text("im0\nim1\nim2\n")
    (main / "test.txt").write_text("im3\nim4\nim5\n")
    with pytest.raises(CfgError) as err:
        open_set(voc)
    assert "nothing to train on" in str(err.value) and err.value.code == "E901"
    assert cli(["data", "check", str(voc)]) == 2
    assert "error[E901]: ImageSets/Main has val.txt and test.txt but no train.txt" in \
        capsys.readouterr().err


# -- which files are images -----------------------------------------------------------------------
def test_one_image_extension_rule_for_every_folder_and_every_list(four, tmp_path, capsys):
    """`.gif` was read from a .data list but passed over (silently) in a data.yaml folder, a
    data.yaml list file (a line dropped), a VOC id's lookup and a classifier's class folders,
    and with a warning by `detect DIR`; `.ppm`/`.pgm` likewise in data.yaml folders. Now one
    rule (darkcfg.data.datafile.is_image): a folder's images are IMAGE_EXTENSIONS in any case,
    everywhere; a listed file is read whatever its extension."""
    from darkcfg.data.datafile import IMAGE_EXTENSIONS, is_image
    from darkcfg.data.sources import image_folder
    from darkcfg.detect.run import image_paths

    assert {".gif", ".ppm", ".pgm", ".jpg", ".png", ".webp", ".tif"} <= set(IMAGE_EXTENSIONS)
    assert is_image("a/b.GIF") and is_image("x.Jpg") and not is_image("x.txt")
    # a data.yaml folder and list file
    yolo = four["yolo"]
    train = yolo.parent / "images" / "train"
    Image.open(train / "im0.png").save(train / "g.GIF")
    Image.open(train / "im1.png").save(train / "p.ppm")
    (train / "notes.txt").write_text("not an image")
    found = open_set(yolo)
    assert sorted(Path(p).name for p in found.train.images) == [
        "g.GIF", "im0.png", "im1.png", "im2.png", "im3.png", "p.ppm"]
    (yolo.parent / "t.txt").write_text("images/train/g.GIF\nimages/train/im1.png\n")
    yolo.write_text(yolo.read_text().replace("train: images/train", "train: t.txt"))
    assert [Path(p).name for p in open_set(yolo).train.images] == ["g.GIF", "im1.png"]
    # detect on a folder: the same images, the text file skipped with its warning
    paths, _ = image_paths([str(train)])
    assert sorted(p.name for p in paths) == [
        "g.GIF", "im0.png", "im1.png", "im2.png", "im3.png", "p.ppm"]
    assert "skipped 1 file(s)" in capsys.readouterr().err
    # a VOC id whose <filename> names no file: JPEGImages/<id>.gif
    voc = four["voc"]
    Image.open(voc / "JPEGImages" / "im0.png").save(voc / "JPEGImages" / "im0.gif")
    (voc / "JPEGImages" / "im0.png").unlink()
    xml = voc / "Annotations" / "im0.xml"
    xml.write_text(xml.read_text().replace("<filename>im0.png</filename>", ""))
    assert Path(open_set(voc).train.images[0]).name == "im0.gif"
    # a classifier's class folders
    for name in ("cat", "dog"):
        (tmp_path / "cls" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "cls" / name / "a.gif")
        Image.new("RGB", (8, 8)).save(tmp_path / "cls" / name / "b.jpg")
    splits = image_folder(tmp_path / "cls", 3, 0)
    assert len(splits.train) + len(splits.val or []) == 4


# -- the data sets people have ---------------------------------------------------------------------
def test_a_coco_box_of_no_size_is_left_out_with_a_warning(tmp_path):
    """COCO's own instances_train2017.json holds two boxes of height 0 (ids 918, 2206849): the
    official set must train, as ultralytics' converter and Darknet's loader leave such a box
    out. A negative size stays an error (a broken annotation)."""
    train, _ = write_coco(tmp_path / "c")
    doc = json.loads(train.read_text())
    objects = sum(len(b) for b in open_set(train).train.boxes)
    doc["annotations"][0]["bbox"] = [296.65 / 10, 3.5, 1.03, 0.0]
    train.write_text(json.dumps(doc, indent=1))
    data = open_set(train)
    assert sum(len(b) for b in data.train.boxes) == objects - 1
    (warning,) = data.problems
    assert warning.code == "W903" and warning.severity == "warning" and \
        "has no size: left out" in warning.message
    assert train.read_text().splitlines()[warning.line - 1].strip().startswith('"bbox"')
    doc["annotations"][0]["bbox"] = [3, 3, -2, 0]
    train.write_text(json.dumps(doc, indent=1))
    assert "has no area" in first_error(train)


def test_a_yolo_segment_set_trains_its_polygons_boxes(tmp_path):
    """A data.yaml of segment labels (coco8-seg's layout) reads each polygon as its box, as
    ultralytics' detection training does; `convert --to darknet` writes the boxes."""
    path = write_yolo(tmp_path / "y")
    (tmp_path / "y" / "labels" / "train" / "im1.txt").write_text(
        "1 0.25 0.25 0.75 0.25 0.75 0.5 0.25 0.5\n")
    data = open_set(path)
    np.testing.assert_allclose(data.train.boxes[1], [[0.5, 0.375, 0.5, 0.25, 1]])
    out = tmp_path / "dn"
    assert cli(["data", "convert", str(path), "--to", "darknet", str(out)]) == 0
    np.testing.assert_allclose(open_set(out / "obj.data").train.boxes[1], data.train.boxes[1])


def test_a_roboflow_grouping_category_is_no_class(tmp_path):
    """Roboflow's COCO export lists its project (id 0, no objects) as the supercategory of
    every class: it is dropped with W904, so the classes are the real ones, in id order. A
    category of no objects that groups none (a COCO subset's) stays a class."""
    train, _ = write_coco(tmp_path / "c")
    doc = json.loads(train.read_text())
    want = open_set(train)
    for c in doc["categories"]:
        c["supercategory"] = "shapes"
    doc["categories"].insert(1, {"id": 0, "name": "shapes", "supercategory": "none"})
    train.write_text(json.dumps(doc, indent=1))
    data = open_set(train)
    assert data.names == want.names
    assert as_samples(data) == as_samples(want)
    (warning,) = data.problems
    assert warning.code == "W904" and "category 0 'shapes' is the supercategory" in \
        warning.message
    assert '"id": 0' in train.read_text().splitlines()[warning.line - 1]
    out = tmp_path / "back"
    assert cli(["data", "convert", str(train), "--to", "coco", str(out)]) == 0
    ids = [c["id"] for c in json.loads((out / "instances_train.json").read_text())["categories"]]
    assert ids == [3, 7, 11]
    doc["categories"][1]["name"] = "unused"
    train.write_text(json.dumps(doc, indent=1))
    assert open_set(train).names == ["unused", *want.names] and not open_set(train).problems


def test_a_folder_above_a_set_names_the_sets_in_it(tmp_path):
    """`--data VOCdevkit` (for VOCdevkit/VOC2007), `--data coco` (for coco/annotations/x.json)
    or a yolo folder whose yaml is not data.yaml (ultralytics names it coco8.yaml): the error
    says which set to pass."""
    write_voc(tmp_path / "VOCdevkit" / "VOC2007")
    write_coco(tmp_path / "coco" / "annotations")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "coco8.yaml").write_text("train: images\nnames: [a]\n")
    said = {name: first_error(tmp_path / name) for name in ("VOCdevkit", "coco", "y")}
    assert said["VOCdevkit"].endswith(f"help: pass a set inside it: {tmp_path}/VOCdevkit/VOC2007")
    assert f"{tmp_path}/coco/annotations/instances_train.json, {tmp_path}/coco/annotations/" \
        "instances_val.json" in said["coco"]
    assert f"pass a set inside it: {tmp_path}/y/coco8.yaml" in said["y"]
    (tmp_path / "empty").mkdir()
    assert "a Pascal VOC folder holds" in first_error(tmp_path / "empty")


def test_coco_keypoint_files_find_cocos_image_folder(tmp_path):
    """person_keypoints_val2017.json (its person boxes train a detector) lies beside
    instances_val2017.json: its images are in coco/val2017/ too."""
    train, _ = write_coco(tmp_path / "coco" / "annotations")
    train = train.rename(train.with_name("person_keypoints_train2017.json"))
    (tmp_path / "coco" / "annotations" / "images").rename(tmp_path / "coco" / "train2017")
    data = open_set(train)
    assert [Path(p).parent for p in data.train.images] == [tmp_path / "coco" / "train2017"] * 4


def test_darknets_own_layout_reads_from_any_directory(tmp_path, monkeypatch):
    """AlexeyAB's README layout, run from the darknet folder: data/obj.data names
    data/train.txt, which lists data/obj/x.jpg. Read from elsewhere, each path is also tried
    under the folder above the .data file (datafile.data_folders)."""
    root = tmp_path / "darknet"
    (root / "data" / "obj").mkdir(parents=True)
    for i in range(2):
        picture(i, 16, 16).save(root / "data" / "obj" / f"{i}.jpg")
        (root / "data" / "obj" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data" / "train.txt").write_text("data/obj/0.jpg\ndata/obj/1.jpg\n")
    (root / "data" / "obj.names").write_text("widget\n")
    (root / "data" / "obj.data").write_text("classes = 1\ntrain = data/train.txt\n"
                                            "names = data/obj.names\n")
    monkeypatch.chdir(tmp_path)
    data = open_set(Path("darknet/data/obj.data"))
    assert data.names == ["widget"]
    assert [Path(p).resolve() for p in data.train.images] == \
        [root / "data" / "obj" / f"{i}.jpg" for i in range(2)]


def test_a_cvat_yolo_export_unpacked_elsewhere_says_to_name_its_folder_data(tmp_path):
    """CVAT's "YOLO 1.1" zip (obj.data, train.txt, obj_train_data/) writes every path as
    data/...: unpacked into export/, the error says to rename it data/, after which it reads
    from any directory (the folder above the .data file is tried)."""
    root = tmp_path / "export"
    (root / "obj_train_data").mkdir(parents=True)
    picture(0, 16, 16).save(root / "obj_train_data" / "0.jpg")
    (root / "obj_train_data" / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "train.txt").write_text("data/obj_train_data/0.jpg\n")
    (root / "obj.names").write_text("widget\n")
    (root / "obj.data").write_text("classes = 1\ntrain = data/train.txt\n"
                                   "names = data/obj.names\nbackup = backup/\n")
    msg = first_error(root / "obj.data")
    assert "obj.data:2:1: error[E901]: cannot read the train file 'data/train.txt'" in msg
    assert f"help: '{root}/train.txt' exists" in msg and \
        "rename the folder 'export' to 'data'" in msg
    root.rename(tmp_path / "data")
    assert open_set(tmp_path / "data" / "obj.data").names == ["widget"]


def test_labels_beside_the_images_of_a_yaml_set_are_pointed_at(tmp_path):
    """A data.yaml set whose .txt files lie beside the images (Roboflow's "YOLO Darknet"
    export, a labelImg folder) has none where ultralytics' rule looks: check's error and
    training's warning name the file beside the image and where it must go."""
    path = write_yolo(tmp_path / "y")
    for label in (tmp_path / "y" / "labels" / "train").iterdir():
        label.rename(tmp_path / "y" / "images" / "train" / label.name)
    data = open_set(path)
    said = f"'{tmp_path}/y/images/train/im0.txt' lies beside its image but the label is read " \
        f"from '{tmp_path}/y/labels/train/im0.txt': move the label files there"
    assert data.train.missing_warning("train images").endswith("; " + said)
    (error,) = [d for d in missing_label_files(data) if d.severity == "error"]
    assert error.hint == said
    assert data.valid.label_beside() == ""  # its labels are where the rule looks


def test_a_yaml_with_nc_and_no_names_names_its_classes_as_ultralytics(tmp_path):
    path = write_yolo(tmp_path / "y")
    text = path.read_text()
    path.write_text(text[:text.index("names:")] + "nc: 3\n")
    assert open_set(path).names == ["class_0", "class_1", "class_2"]
    path.write_text(text[:text.index("names:")] + "nc: 0\n")
    assert "needs names:" in first_error(path)


class _Scanned(str):
    """A text that counts the characters its searches cover."""

    scanned = 0

    def _cover(self, start, end):
        end = len(self) if end is None else min(end, len(self))
        type(self).scanned += max(end - start, 0)

    def count(self, sub, start=0, end=None):
        self._cover(start, end)
        return super().count(sub, start, end)

    def find(self, sub, start=0, end=None):
        self._cover(start, end)
        return super().find(sub, start, end)

    def rfind(self, sub, start=0, end=None):
        self._cover(start, end)
        return super().rfind(sub, start, end)


def test_diagnostics_of_a_long_annotation_file_read_it_about_once():
    # each COCO problem counted the lines from the top of the file: 20k warnings in a 6 MB
    # one-line JSON took 48 s, twice the warnings four times as long
    from darkcfg.data.detection.formats.base import TextLocator, located

    plain = "".join(f'{{"id": {i}, "bbox": [1, 2, 0, 4]}},\n' if i % 3 else
                    f'{{"id": {i}, "file_name": "{"x" * 200}.jpg"}}, ' for i in range(3000))
    text = _Scanned(plain)
    offsets = [plain.index(f'"id": {i},') for i in range(0, 3000, 2)]
    locator = TextLocator(text)
    found = [locator.located("m", "a.json", at) for at in offsets]
    assert _Scanned.scanned < 3 * len(plain)
    # the same place and source line as one diagnostic on its own, also asked out of order
    for at, d in [*zip(offsets, found, strict=True)][::97]:
        alone = located("m", "a.json", plain, at)
        assert (d.line, d.column, d.source) == (alone.line, alone.column, alone.source)
        line = plain.count("\n", 0, at) + 1
        start = plain.rfind("\n", 0, at) + 1
        end = plain.find("\n", at)
        assert (d.line, d.column) == (line, at - start + 1)
        assert d.source == (plain[start:end] if end - start <= 160 else "")
        again = locator.located("m", "a.json", at)
        assert (again.line, again.column, again.source) == (d.line, d.column, d.source)
    assert any(d.source for d in found) and not all(d.source for d in found)


def test_convert_names_many_images_of_one_name_without_retrying_every_suffix(tmp_path):
    # frame_0001.jpg of each of 1000 clips: the k-th tried x, x_1, ... x_k (quadratic)
    from darkcfg.data.detection.formats.convert import _Writer

    class Counted(set):
        asked = 0

        def __contains__(self, key):
            type(self).asked += 1
            return super().__contains__(key)

    first = tmp_path / "src" / "0" / "x.jpg"
    first.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(first)
    sources = [first]
    for k in range(1, 400):
        path = tmp_path / "src" / str(k) / ("X.jpg" if k % 2 else "x.jpg")
        path.parent.mkdir()
        path.hardlink_to(first)
        sources.append(path)
    (tmp_path / "out").mkdir()
    writer = _Writer(tmp_path / "out", link=True)
    writer.taken = Counted()
    names = [writer.image(str(s), "images") for s in sources]
    assert Counted.asked < 3 * len(sources)
    stems = [Path(n).stem for n in names]
    assert stems[:4] == ["x", "X_1", "x_2", "X_3"] and len({s.casefold() for s in stems}) == 400
    # a name already taken by another image is passed over, not written twice
    other = tmp_path / "src" / "x_400.jpg"
    other.hardlink_to(first)
    assert writer.image(str(other), "images") == "images/x_400.jpg"
    late = tmp_path / "src" / "late" / "x.jpg"
    late.parent.mkdir()
    late.hardlink_to(first)
    assert writer.image(str(late), "images") == "images/x_401.jpg"


def test_convert_makes_each_file_durable_once(four, tmp_path, monkeypatch):
    """Each label file and image copy was fsynced, then its folder: two fsyncs a file (7 ms on
    the project's disk, 90% of a convert). Now each file's bytes are synced once before its
    rename and each folder once, before the set is renamed into place (and its parent after)."""
    import os
    import stat

    synced = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file",
                       os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "sets" / "out"
    written = convert(open_set(four["voc"]), "darknet", out)
    assert written and all(p.exists() for p in written)
    files = [p for p in out.rglob("*") if p.is_file()]
    folders = [p for p in out.rglob("*") if p.is_dir()]
    dirs = [p for kind, p in synced if kind == "dir"]
    assert len([1 for kind, _ in synced if kind == "file"]) == len(files) > 6
    assert len(dirs) == len(set(dirs)) == len(folders) + 2, dirs  # + the set's, its parent
    assert dirs[-1] == str(out.parent)
