"""bench/darknet_set.py: the embedded set as Darknet-format files that darkcfg (and Darknet)
read back, with a cfg copy for the set's classes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from builders import build
from darkcfg.data import read_image
from darkcfg.data.detection.embedded import EmbeddedDetection
from darkcfg.data.detection.labels import open_detection_data

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("darknet_set", ROOT / "bench" / "darknet_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_written_set_reads_back_as_the_embedded_one(tmp_path):
    bench = load_bench()
    data = bench.write_set(tmp_path / "set", size=64, classes=3, train=5, valid=2, seed=7,
                           png=True)
    opened = open_detection_data(data)
    assert opened.classes == 3 and len(opened.train) == 5 and len(opened.valid) == 2
    assert opened.names == EmbeddedDetection(1, 3, 3, 64, 64, 7, 0).names
    source = EmbeddedDetection(5, 3, 3, 64, 64, 7, 0)
    for i, path in enumerate(opened.train):
        image, boxes = source[i]
        assert torch.equal(read_image(path, 3), image)  # PNG: lossless
        text = Path(opened.train_labels[i]).read_text()
        # the same file where pjreddie's Darknet looks ("images" -> "labels")
        assert (tmp_path / "set" / "labels" / "train" / f"{i:05d}.txt").read_text() == text
        lines = text.split("\n")[:-1]
        assert len(lines) == len(boxes) >= 1
        for line, box in zip(lines, boxes, strict=True):
            c, *xywh = line.split()
            assert int(c) == int(box[4])
            assert [float(v) for v in xywh] == [round(float(v), 6) for v in box[:4]]


def test_the_cfg_copy_detects_the_sets_classes(tmp_path):
    bench = load_bench()
    path = bench.cfg_for_classes(ROOT / "cfg" / "yolov4-tiny.cfg", 6, tmp_path)
    assert path.name == "yolov4-tiny-6c.cfg"
    net = build(str(path))
    heads = [layer for layer in net.layers if hasattr(layer, "classes")]
    assert len(heads) == 2 and all(h.classes == 6 for h in heads)
    text = path.read_text()
    assert "filters=33" in text and "filters=255" not in text and "classes=80" not in text
