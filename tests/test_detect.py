"""Detection inference (darkcfg/detect/decode.py, darkcfg/detect/run.py): Darknet's decoding and NMS
against the decode oracle of real Darknet (../shared/darknet/oracle-detect, README part A: fed
Darknet's own head outputs), Darknet's formulas (src/*_layer.c get_*_detections) for the heads
the oracle does not cover, every detector cfg of the corpus, and the --detect command line."""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import build
from builders.boxes import (
    box_diou,
    correct_boxes,
    letterbox_image,
    letterbox_size,
    pairwise_iou,
    resize_image,
)
from darkcfg.detect.decode import (
    Detections,
    decode,
    found_objects,
    head_indices,
    head_predictions,
    nms,
)
from tests.oracle import ORACLE, SHARED

DETECT = SHARED / "oracle-detect"
NETS = ["yolov3-tiny", "yolov4-tiny", "yolov3", "yolov4", "yolov2", "yolov2-tiny", "yolov4-csp"]
NMS_NAMES = {"do_nms_sort": "default", "greedynms": "greedynms", "diounms": "diounms"}


def require_detect_oracle() -> None:
    if not DETECT.is_dir() or not ORACLE.is_dir():
        pytest.skip("../shared/darknet/oracle-detect (and oracle/) are not available")


@functools.cache
def oracle_case(name: str):
    """(net built on meta, {head: Darknet's own output as our tensor layout}, decode.json)."""
    cfg = DETECT / "cfg" / f"{name}.cfg" if name == "yolov4-csp" else ORACLE / "cfg" / f"{name}.cfg"
    folder = DETECT / name if name == "yolov4-csp" else ORACLE / "out-calibrated" / name
    net = build(cfg, device="meta")
    outputs = {}
    for i in head_indices(net):
        flat = torch.from_numpy(np.fromfile(folder / f"layer{i:03d}.f32", "<f4"))
        s = net.shapes[i]
        shape = (1, s.c, s.h, s.w)
        # invert the layer's own Darknet-order flattening (AlexeyAB [region] is HWC)
        where = net.layers[i].darknet_output(torch.arange(flat.numel()).reshape(shape))[0]
        ours = torch.empty_like(flat)
        ours[where] = flat
        outputs[i] = ours.reshape(shape)
    with gzip.open(DETECT / name / "decode.json.gz") as f:
        reference = json.load(f)
    return net, outputs, reference


@functools.cache
def decoded(name: str, t: int) -> Detections:
    net, outputs, reference = oracle_case(name)
    return decode(net, outputs, reference["results"][t]["thresh"])[0]


def dense_probs(entries: list[dict], classes: int) -> np.ndarray:
    probs = np.zeros((len(entries), classes))
    for s, e in enumerate(entries):
        for c, p in e["prob"]:
            probs[s, c] = p
    return probs


CASES = [(name, t) for name in NETS for t in range(3)]


@pytest.mark.parametrize("name,t", CASES)
def test_decode_matches_darknet(name, t):
    require_detect_oracle()
    _, _, reference = oracle_case(name)
    result = reference["results"][t]
    thresh, ref = result["thresh"], result["before_nms"]
    dets = decoded(name, t)
    assert len(dets) == result["nboxes"]
    assert np.abs(dets.boxes.numpy() - np.array([e["bbox"] for e in ref])).max() <= 1e-5
    assert np.abs(dets.objectness.numpy() - np.array([e["objectness"] for e in ref])).max() <= 1e-6
    probs = dense_probs(ref, dets.classes)
    assert np.abs(dets.probs.numpy() - probs).max() <= 1e-6
    ours = dets.pairs()
    theirs = {(s, c) for s, e in enumerate(ref) for c, _ in e["prob"]}
    ours_p = dets.probs.numpy()
    borderline = {(s, c) for s, c in ours ^ theirs
                  if abs(max(ours_p[s, c], probs[s, c]) - thresh) <= 1e-5}
    assert ours ^ theirs == borderline
    # the same boxes, in the same place, as the dense tensors the exporter uses
    net, outputs, _ = oracle_case(name)
    boxes, objectness, scores = head_predictions(net, outputs)
    dense = boxes[0, dets.index]
    assert torch.equal(dense[:, :2], dets.boxes[:, :2])
    # w, h: [yolo]'s native decode takes C's expf (as Darknet), the dense path torch's exp
    assert torch.allclose(dense[:, 2:], dets.boxes[:, 2:], rtol=2.4e-7, atol=0)
    assert [e["layer"] for e in ref] == dets.layer.tolist()


def _similarity(kind: str, beta: float):
    if kind == "default":
        return pairwise_iou
    return lambda a, b: box_diou(a[:, None], b[None], 0.6 if kind == "greedynms" else beta)


@pytest.mark.parametrize("kind", list(NMS_NAMES))
@pytest.mark.parametrize("name,t", CASES)
def test_nms_matches_darknet(name, t, kind):
    require_detect_oracle()
    _, _, reference = oracle_case(name)
    result = reference["results"][t]
    dets = decoded(name, t)
    after = nms(dets, reference["nms_thresh"], NMS_NAMES[kind])
    theirs = {tuple(p) for p in result["nms"][kind]["kept"]}
    ours = after.pairs()
    # the README allows a mismatch only where a similarity is within 1e-5 of the threshold
    similarity = _similarity(NMS_NAMES[kind], dets.beta_nms)
    for s, c in ours ^ theirs:
        rivals = torch.nonzero(dets.probs[:, c] > 0).flatten()
        sims = similarity(dets.boxes[s:s + 1], dets.boxes[rivals])[0]
        assert (sims - reference["nms_thresh"]).abs().min() <= 1e-5, (s, c)
    assert len(ours ^ theirs) <= 2
    assert torch.equal(after.boxes, dets.boxes)  # NMS only zeroes probs
    assert torch.equal(after.objectness, dets.objectness)
    assert after.probs[after.probs != dets.probs].eq(0).all()


@pytest.mark.parametrize("name", NETS)
def test_default_nms_is_what_darknet_detector_test_runs(name):
    require_detect_oracle()
    _, _, reference = oracle_case(name)
    dets = decoded(name, 0)
    kind = reference["darknet_detector_nms"]
    assert (dets.nms_kind, round(dets.beta_nms, 6)) == (
        NMS_NAMES[kind], round(reference["last_layer"]["beta_nms"], 6))
    assert nms(dets).pairs() == {tuple(p) for p in reference["results"][0]["nms"][kind]["kept"]}


# -- heads the oracle does not cover: Darknet's formulas, element by element ----------------------

def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


GAUSSIAN = """
[net]
width=96
height=64
channels=3

[convolutional]
filters={filters}
size=1
activation=linear

[Gaussian_yolo]
mask=1,2
anchors=10,14, 23,27, 37,58
classes=3
num=3
scale_x_y=1.1
yolo_point={point}
"""


@pytest.mark.parametrize("point", ["center", "left_top", "right_bottom"])
def test_gaussian_yolo_against_the_formulas(point):
    net = build(GAUSSIAN.format(filters=2 * 12, point=point))
    head = head_indices(net)[0]
    assert net.meta[head].type == "Gaussian_yolo"
    torch.manual_seed(0)
    raw = torch.randn(2, 24, 2, 3) * 2  # the head's input: 2 images, 2x3 grid
    out = {head: net.layers[head](raw)}
    thresh = 0.3
    dets = decode(net, out, thresh, input_size=(96, 64))  # a 2x3 grid of a 96x64 input
    anchors = [(23, 27), (37, 58)]
    s = 1.1
    for b in range(2):
        expect = []
        for row in range(2):
            for col in range(3):
                for n, (aw, ah) in enumerate(anchors):
                    z = raw[b, n * 12:(n + 1) * 12, row, col].tolist()
                    obj = sigmoid(z[8])
                    if not obj > thresh:
                        continue
                    x = (col + s * sigmoid(z[0]) - (s - 1) / 2) / 3
                    y = (row + s * sigmoid(z[2]) - (s - 1) / 2) / 2
                    w, h = math.exp(z[4]) * aw / 96, math.exp(z[6]) * ah / 64
                    shift = {"center": 0, "left_top": 1, "right_bottom": -1}[point]
                    x, y = x + shift * w / 2, y + shift * h / 2
                    uc = (sigmoid(z[1]) + sigmoid(z[3]) + sigmoid(z[5]) + sigmoid(z[7])) / 4
                    probs = [obj * sigmoid(z[9 + c]) * (1 - uc) for c in range(3)]
                    expect.append(([x, y, w, h], obj, [p if p > thresh else 0 for p in probs]))
        got = dets[b]
        assert len(got) == len(expect) > 0
        np.testing.assert_allclose(got.boxes.numpy(), [e[0] for e in expect], atol=1e-5)
        np.testing.assert_allclose(got.objectness.numpy(), [e[1] for e in expect], atol=1e-6)
        np.testing.assert_allclose(got.probs.numpy(), [e[2] for e in expect], atol=1e-6)


YOLOV1 = """
[net]
width=32
height=32
channels=3

[connected]
output={output}
activation=linear

[detection]
classes=3
coords=4
num=2
side=3
softmax=1
sqrt={sqrt}
"""


@pytest.mark.parametrize("sqrt", [0, 1])
def test_detection_yolov1_against_the_formulas(sqrt):
    side, n, classes = 3, 2, 3
    net = build(YOLOV1.format(output=side * side * (5 * n + classes), sqrt=sqrt))
    head = head_indices(net)[0]
    torch.manual_seed(1)
    raw = torch.rand(1, side * side * (5 * n + classes))
    y = net.layers[head](raw)[0].tolist()
    thresh = 0.1
    dets = decode(net, {head: net.layers[head](raw)}, thresh)[0]
    cells = side * side
    expect = []
    for i in range(cells):
        row, col = divmod(i, side)
        for k in range(n):
            conf = y[cells * classes + i * n + k]
            b = y[cells * (classes + n) + (i * n + k) * 4:][:4]
            power = 2 if sqrt else 1
            box = [(b[0] + col) / side, (b[1] + row) / side, b[2] ** power, b[3] ** power]
            probs = [conf * y[i * classes + c] for c in range(classes)]
            expect.append((box, conf, [p if p > thresh else 0 for p in probs]))
    assert len(dets) == cells * n  # every box is emitted
    np.testing.assert_allclose(dets.boxes.numpy(), [e[0] for e in expect], atol=1e-6)
    np.testing.assert_allclose(dets.objectness.numpy(), [e[1] for e in expect], atol=1e-6)
    np.testing.assert_allclose(dets.probs.numpy(), [e[2] for e in expect], atol=1e-6)
    assert nms(dets).pairs() <= dets.pairs()
    # no letterbox correction for [detection], as in Darknet
    same = decode(net, {head: net.layers[head](raw)}, thresh, image_size=(64, 32), letter_box=True)
    assert torch.equal(same[0].boxes, dets.boxes)


REGION = """
[net]
width=64
height=64
channels=3

[convolutional]
filters={filters}
size=1
activation=linear

[region]
anchors=1.1,2.2, 3.3,1.4
classes=3
coords=4
num=2
softmax=1
"""


def test_pjreddie_region_layout_and_order():
    """pjreddie's get_region_detections: anchor-major order, x,y activated in the forward,
    objectness = sigma(obj) when it passes thresh (else 0, and no class probs)."""
    net = build(REGION.format(filters=2 * 8), flavor="pjreddie")
    head = head_indices(net)[0]
    torch.manual_seed(2)
    raw = torch.randn(1, 16, 2, 2)
    thresh = 0.5
    dets = decode(net, {head: net.layers[head](raw)}, thresh)[0]
    anchors = [(1.1, 2.2), (3.3, 1.4)]
    expect = []
    for k, (aw, ah) in enumerate(anchors):
        for row in range(2):
            for col in range(2):
                z = raw[0, k * 8:(k + 1) * 8, row, col].tolist()
                scale = sigmoid(z[4])
                e = [math.exp(v) for v in z[5:]]
                cls = [v / sum(e) for v in e]
                box = [(col + sigmoid(z[0])) / 2, (row + sigmoid(z[1])) / 2,
                       math.exp(z[2]) * aw / 2, math.exp(z[3]) * ah / 2]
                obj = scale if scale > thresh else 0
                probs = [scale * c if obj and scale * c > thresh else 0 for c in cls]
                expect.append((box, obj, probs))
    assert len(dets) == 8
    np.testing.assert_allclose(dets.boxes.numpy(), [e[0] for e in expect], atol=1e-6)
    np.testing.assert_allclose(dets.objectness.numpy(), [e[1] for e in expect], atol=1e-6)
    np.testing.assert_allclose(dets.probs.numpy(), [e[2] for e in expect], atol=1e-6)


def test_region_classfix_and_alexeyab_objectness():
    net = build(REGION.format(filters=16) + "classfix=-1\n")
    head = head_indices(net)[0]
    torch.manual_seed(3)
    out = {head: net.layers[head](torch.randn(1, 16, 2, 2) * 3)}
    dets = decode(net, out, 0.0)[0]
    _, objectness, scores = head_predictions(net, out)
    assert torch.equal(dets.objectness, torch.ones(8))
    v = out[head].reshape(1, 2, 8, 2, 2).permute(0, 3, 4, 1, 2).reshape(8, 8)
    low = v[:, 4] < 0.5
    assert low.any() and (~low).any()
    assert scores[0][low].eq(0).all() and scores[0][~low].gt(0).all()


def test_correct_yolo_boxes_letterbox():
    """§1.3 with image 200x100 in a 64x64 net: new_w=64, new_h=32, 16 px bars top and bottom."""
    assert letterbox_size(200, 100, 64, 64) == (64, 32)
    assert letterbox_size(100, 200, 64, 64) == (32, 64)
    assert letterbox_size(99, 100, 64, 64) == ((99 * 64) // 100, 64)
    boxes = torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.25, 0.3, 0.5, 0.1]])
    got = correct_boxes(boxes, (200, 100), (64, 64), True)
    expect = [[0.5, (0.5 - 16 / 64) * 2, 0.25, 0.5], [0.25, (0.3 - 16 / 64) * 2, 0.5, 0.2]]
    np.testing.assert_allclose(got.numpy(), expect, atol=1e-6)
    assert torch.equal(correct_boxes(boxes, (200, 100), (64, 64), False), boxes)


def test_letterbox_and_resize_images():
    x = torch.rand(1, 3, 50, 100)
    y = letterbox_image(x, 64, 64)
    assert y.shape == (1, 3, 64, 64)
    assert (y[..., :16, :] == 0.5).all() and (y[..., 48:, :] == 0.5).all()
    inner = y[..., 16:48, :]
    # align-corners bilinear: the corners are copied
    assert torch.allclose(inner[..., 0, 0], x[..., 0, 0]) and \
        torch.allclose(inner[..., -1, -1], x[..., -1, -1])
    r = resize_image(torch.arange(3.0).reshape(1, 1, 1, 3), 5, 1)
    assert r.flatten().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_nms_zeroes_only_suppressed_and_skips_zero_objectness():
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1],
                          [0.5, 0.5, 0.4, 0.4]])
    probs = torch.tensor([[0.9, 0.0], [0.8, 0.7], [0.6, 0.0], [0.95, 0.0]])
    dets = Detections(boxes, torch.tensor([1.0, 1.0, 1.0, 0.0]), probs,
                      torch.zeros(4, dtype=torch.long), torch.arange(4))
    for kind in ("default", "greedynms", "diounms", "cornersnms"):
        after = nms(dets, 0.45, kind)
        # box 3 has objectness 0: Darknet partitions it out, it neither suppresses nor is touched
        expect = torch.tensor([[0.9, 0.0], [0.0, 0.7], [0.6, 0.0], [0.95, 0.0]])
        assert torch.equal(after.probs, expect), kind
    with pytest.raises(ValueError, match="nms kind"):
        nms(dets, 0.45, "soft")


def test_diou_similarity_of_the_passing_pairs_only_is_the_full_one():
    from darkcfg.detect.decode import _diou_above

    torch.manual_seed(3)
    boxes = torch.rand(300, 4) * torch.tensor([1.0, 1.0, 0.3, 0.3])
    boxes[50:60] = boxes[50]  # identical boxes
    boxes[60:63] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # points: c = 0 between them
    for thresh, beta in ((0.45, 0.6), (0.3, 1.0), (0.0, 0.6)):
        full = box_diou(boxes[:, None], boxes[None], beta) > thresh
        full.fill_diagonal_(False)
        assert np.array_equal(_diou_above(boxes, thresh, beta), full.numpy()), (thresh, beta)
        assert full.sum() > 0


def test_found_objects_print_order_and_pixels():
    # what draw_detections_v3 prints: rows by left edge (ties in detection order), the best
    # class first (the lowest id among equals), then the other classes above thresh by id
    boxes = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.3, 0.5, 0.2, 0.4], [0.3, 0.2, 0.2, 0.2],
                          [0.1, 0.1, 0.1, 0.1]])
    probs = torch.tensor([[0.0, 0.9, 0.3, 0.0], [0.5, 0.2, 0.7, 0.7], [0.3, 0.0, 0.0, 0.26],
                          [0.1, 0.2, 0.0, 0.25]])  # row 3: nothing above .25
    dets = Detections(boxes, torch.ones(4), probs, torch.zeros(4, dtype=torch.long),
                      torch.arange(4))
    found = found_objects(dets, 0.25, 100, 50, ["a", "b", "c"])
    assert [(f.class_id, f.name) for f in found] == [
        (2, "c"), (0, "a"), (3, ""),  # row 1: 0.7 = 0.7, class 2 first; then 0 and 3
        (0, "a"), (3, ""),  # row 2, same left edge as row 1, after it
        (1, "b"), (2, "c")]  # row 0
    assert [f.score for f in found] == pytest.approx([0.7, 0.5, 0.7, 0.3, 0.26, 0.9, 0.3])
    assert found[0].box == pytest.approx((20.0, 15.0, 40.0, 35.0))
    assert found[-1].box == pytest.approx((50.0, 20.0, 70.0, 30.0))
    assert all(isinstance(v, float) for f in found for v in (f.score, *f.box))
    assert found_objects(dets, 0.95, 100, 50) == []


def test_batch_decode_is_per_image():
    require_detect_oracle()
    net, outputs, reference = oracle_case("yolov4-tiny")
    two = {i: torch.cat([y, y.flip(-1)]) for i, y in outputs.items()}
    dets = decode(net, two, 0.5)
    assert len(dets) == 2
    assert len(dets[0]) == reference["results"][2]["nboxes"]
    assert torch.equal(dets[0].boxes, decoded("yolov4-tiny", 2).boxes)


@pytest.mark.parametrize("cfg", ["yolov4-tiny.cfg", "yolov3-tiny.cfg"])
def test_a_batch_decodes_as_its_images_one_by_one(cfg):
    """Each image's candidates are cut out of the batch's (one gather, then views): the same
    tensors, in the same order, as decoding the image alone, letterbox undone per image size."""
    net = small_build(Path(__file__).resolve().parents[1] / "cfg" / cfg, "alexeyab")
    gen = torch.Generator().manual_seed(1)
    outputs = {}
    for i in head_indices(net):
        s = net.meta[i].input
        outputs[i] = net.layers[i](torch.randn(5, s.c, s.h, s.w, generator=gen) * 2 - 2)
    sizes = [(320, 200), (64, 64), (1, 300), (500, 90), (128, 640)]
    together = decode(net, outputs, 0.25, image_size=sizes, letter_box=True)
    assert 0 < len(together[4]) != len(together[0])  # images differ; the sliver has none
    assert len(together[2]) == 0
    for b, dets in enumerate(together):
        alone = decode(net, {i: y[b:b + 1] for i, y in outputs.items()}, 0.25,
                       image_size=[sizes[b]], letter_box=True)[0]
        for key in ("boxes", "objectness", "probs", "layer", "index"):
            assert torch.equal(getattr(dets, key), getattr(alone, key)), key


# -- every detector cfg of the corpus -----------------------------------------------------------

CORPUS = SHARED / "corpus"
HEADS = ("[yolo]", "[region]", "[Gaussian_yolo]", "[detection]")


def corpus_detectors() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return [f"{p.parent.name}/{p.name}" for p in sorted(CORPUS.glob("*/*.cfg"))
            if any(line.strip() in HEADS for line in p.read_text(errors="replace").splitlines())]


def small_build(path: Path, flavor: str):
    """The cfg at 128x128 (or its own size where a layer needs it), built on meta."""
    from cfgparse import CfgError, parse
    from darkcfg.config import apply_overrides

    blocks = list(parse(path, flavor=flavor))
    for size in (128, None):
        try:
            if size is None:
                return build(blocks, device="meta", flavor=flavor)
            net_block, _ = apply_overrides(blocks[0], [f"width={size}", f"height={size}"])
            return build([net_block, *blocks[1:]], device="meta", flavor=flavor)
        except CfgError:
            if size is None:
                raise
    return None


@pytest.mark.parametrize("cfg", corpus_detectors() or ["(no corpus)"])
def test_every_corpus_detector_decodes(cfg):
    if cfg == "(no corpus)":
        pytest.skip("../shared/darknet/corpus is not available")
    fork = cfg.split("/")[0]
    net = small_build(CORPUS / cfg, "pjreddie" if fork == "pjreddie" else "alexeyab")
    heads = head_indices(net)
    assert heads, "no head found"
    if any(getattr(net.layers[i], "tree", None) is not None or
           getattr(net.layers[i], "tree_error", None) is not None for i in heads):
        pytest.skip("[region] tree= (yolo9000): hierarchical decoding is not implemented")
    gen = torch.Generator().manual_seed(0)
    outputs = {}
    for i in heads:  # the heads hold no parameters: run them for real on their input's shape
        s = net.meta[i].input
        shape = (2, s.c, s.h, s.w) if s.c * s.h * s.w else (2, s.size)
        # shifted down: like a trained net, few cells pass thresh (keeps NMS small and fast)
        outputs[i] = net.layers[i](torch.randn(*shape, generator=gen) * 1.5 - 3)
    boxes, objectness, scores = head_predictions(net, outputs)
    assert boxes.shape[:2] == objectness.shape == scores.shape[:2] and boxes.shape[0] == 2
    assert torch.isfinite(scores).all()
    dets = decode(net, outputs, 0.25, image_size=(320, 200), letter_box=True)
    assert len(dets) == 2
    kept = nms(dets)
    for before, after in zip(dets, kept, strict=True):
        assert after.pairs() <= before.pairs()
        assert torch.equal(after.boxes, before.boxes)


# -- detect() and the command line -------------------------------------------------------------

TINY = """
[net]
width=64
height=64
channels=3
{letter}

[convolutional]
filters=8
size=3
stride=4
pad=1
activation=leaky

[convolutional]
filters=24
size=1
activation=linear

[yolo]
mask=0,1
anchors=10,14, 23,27
classes=7
num=2
nms_kind=greedynms
"""


def tiny_cfg(tmp_path: Path, letter: bool = False) -> Path:
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY.format(letter="letter_box=1" if letter else ""))
    return path


def write_images(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w) in [("000012.jpg", (48, 80)), ("b.png", (64, 64))]:
        arr = (rng.uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / name)
        paths.append(folder / name)
    return paths


def run_cli(*argv: str) -> int:
    import darkcfg.cli.flags as runner

    return runner.main([str(a) for a in argv])


def test_detect_api_returns_pixel_boxes_of_the_original_image(tmp_path):
    from darkcfg.detect.decode import detect, load_image

    torch.manual_seed(0)
    net = build(tiny_cfg(tmp_path, letter=True))
    image = write_images(tmp_path / "imgs")[0]  # 80x48: letterboxed into 64x64
    found = detect(net, [image], thresh=0.3, names=[f"c{i}" for i in range(7)])[0]
    assert found, "random weights give some boxes above 0.3"
    x = letterbox_image(load_image(image)[None], 64, 64)
    outputs = net(x, collect=head_indices(net))
    dets = nms(decode(net, outputs, 0.3, image_size=(80, 48), letter_box=True))[0]
    expect = set()
    for i, c in dets.pairs():
        if dets.probs[i, c] > 0.3:
            bx, by, bw, bh = dets.boxes[i].tolist()
            expect.add((c, round((bx - bw / 2) * 80, 3), round((by + bh / 2) * 48, 3)))
    assert {(f.class_id, round(f.box[0], 3), round(f.box[3], 3)) for f in found} == expect
    assert all(f.name == f"c{f.class_id}" for f in found)
    lefts = [f.box[0] for f in found]
    assert lefts == sorted(lefts)  # Darknet prints by left edge
    # a uint8 tensor and a PIL image give the same as the path; a float tensor the same to
    # float rounding (the bytes are resized by the native kernel, floats by torch)
    from PIL import Image

    from darkcfg.detect.decode import load_pixels

    assert detect(net, load_pixels(image), thresh=0.3) == \
        detect(net, Image.open(image), thresh=0.3) == detect(net, [image], thresh=0.3)
    floats = detect(net, load_image(image), thresh=0.3)[0]
    assert [f.class_id for f in floats] == [f.class_id for f in found]
    assert np.allclose([f.box for f in floats], [f.box for f in found], atol=1e-3)
    assert np.allclose([f.score for f in floats], [f.score for f in found], atol=1e-5)


def test_cli_detect_folder(tmp_path, capsys):
    import re

    cfg = tiny_cfg(tmp_path)
    images = write_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "readme.txt").write_text("not an image")
    (tmp_path / "imgs" / "b.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # b.png's label: no word
    names = tmp_path / "seven.names"
    names.write_text("".join(f"thing{i}\n" for i in range(7)))
    out = tmp_path / "out"
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--names", names, "--out", out,
                   "--save-labels", "--thresh", "0.3", "--no-progress") == 0
    captured = capsys.readouterr()
    assert captured.err.count("not images") == 1 and "skipped 1 file(s)" in captured.err
    assert "readme.txt" in captured.err
    lines = re.findall(r"^(thing\d): (\d+)%\t\(left_x: +-?\d+ +top_y: +-?\d+ +width: +\d+ +"
                       r"height: +\d+\)$", captured.out, re.M)
    assert lines and all(int(p) >= 30 for _, p in lines)
    assert re.search(r"^2 image\(s\), \d+ object\(s\) above thresh 0.3", captured.out, re.M)
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == len(lines)
    # one type in one file: 000012.jpg's number only when every image is named by one
    assert {r["image_id"] for r in results} <= {"000012", "b"}
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        x, y, w, h = r["bbox"]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and r["score"] > 0.3
    from PIL import Image

    for p in images:
        with Image.open(out / f"{p.stem}.jpg") as im:
            assert im.size == Image.open(p).size
        for line in (out / f"{p.stem}.txt").read_text().splitlines():
            c, *box = line.split()
            assert 0 <= int(c) < 7 and len(box) == 4


def test_cli_unreadable_image_is_a_located_error(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    write_images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "error[E901]" in err and "broken.jpg" in err and "Traceback" not in err
    assert run_cli(cfg, "--detect", tmp_path / "missing.jpg") == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_cfg_without_a_head(tmp_path, capsys):
    cfg = tmp_path / "classify.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\n"
                   "activation=leaky\n\n[avgpool]\n\n[softmax]\n")
    write_images(tmp_path / "imgs")
    assert run_cli(cfg, "--detect", tmp_path / "imgs") == 2
    err = capsys.readouterr().err
    assert "error[E300]" in err and "no detection head" in err and "Traceback" not in err


def test_cli_region_with_a_tree_is_a_located_error(tmp_path, capsys):
    (tmp_path / "h.tree").write_text("".join(f"n{i} -1\n" for i in range(3)))
    cfg = tmp_path / "tree.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\nfilters=8\n"
                   "size=1\nactivation=linear\n\n[region]\nanchors=1,1\nclasses=3\n"
                   "coords=4\nnum=1\ntree=h.tree\n")
    write_images(tmp_path / "imgs")
    assert run_cli(cfg, "--flavor", "pjreddie", "--detect", tmp_path / "imgs") == 2
    err = capsys.readouterr().err
    assert f"{cfg}:16:6: error[E300]" in err and "tree=" in err and "Traceback" not in err


def test_cli_names_that_do_not_match_classes(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    write_images(tmp_path / "imgs")
    names = tmp_path / "nine.names"
    names.write_text("".join(f"n{i}\n" for i in range(9)))
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--names", names) == 2
    err = capsys.readouterr().err
    assert "error[E304]" in err and "9 class names" in err and "classes=7" in err
    assert f"{cfg}:" in err  # located at the head's classes= line
    data = tmp_path / "x.data"
    data.write_text(f"classes=9\nnames={names}\n")
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--data", data) == 2
    assert "9 class names" in capsys.readouterr().err
    # fewer names: the data a larger cfg was trained on (7 classes, 2 in the data): they name
    # classes 0 and 1, the rest are shown by number (it was E304)
    two = tmp_path / "two.names"
    two.write_text("cat\ndog\n")
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--names", two, "--thresh", "0.01",
                   "--out", tmp_path / "out") == 0
    out, err = capsys.readouterr()
    assert "'" + str(two) + "' names 2 classes and [yolo] has classes=7: classes 2..6 are " \
        "shown" in err
    assert f"{cfg}:" in err and "warning[W302]" in err  # located at the head's classes= line
    shown = {li.split(":")[0] for li in out.splitlines() if "%" in li}
    assert shown & {"cat", "dog"} and shown - {"cat", "dog"} <= {str(c) for c in range(2, 7)}


def test_cli_detections_of_a_raw_input(tmp_path, capsys):
    from builders.weights import save_weights

    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    net = build(cfg)
    weights = tmp_path / "tiny.weights"
    save_weights(net, weights)
    x = torch.rand(2, 3, 64, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "dets.json"
    # --device cpu: the library's detections below are the CPU's; on a GPU machine the CLI would
    # pick CUDA, whose TF32 convolutions move a borderline score across thresh
    assert run_cli(cfg, "--weights", weights, "--input", tmp_path / "x.npy", "--detections", out,
                   "--thresh", "0.3", "--device", "cpu") == 0
    entries = json.loads(out.read_text())
    net.eval()
    with torch.no_grad():
        dets = nms(decode(net, net(x, collect=head_indices(net)), 0.3))
    assert len(entries) == sum(len(d.pairs()) for d in dets) > 0
    for e in entries:
        d = dets[e["image"]]
        assert e["score"] == pytest.approx(float(d.probs[e["detection"], e["category_id"]]),
                                           abs=1e-6)
        assert e["bbox"] == pytest.approx(d.boxes[e["detection"]].tolist(), abs=1e-6)


@pytest.mark.slow
def test_head_predictions_exports_with_torch_export(tmp_path):
    """The exporter's contract: no data-dependent control flow, so torch.export captures it."""
    net = build(tiny_cfg(tmp_path)).eval()

    class Boxes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return head_predictions(self.net, self.net(x, collect=head_indices(self.net)))

    x = torch.rand(2, 3, 64, 64)
    exported = torch.export.export(Boxes(), (x,))
    for ours, theirs in zip(exported.module()(x), Boxes()(x), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)
    assert exported.module()(x)[0].shape == (2, 16 * 16 * 2, 4)  # 16x16 grid, 2 anchors


@pytest.mark.parametrize("mode,subsampling,channels", [
    ("RGB", 2, 3), ("RGB", 0, 3), ("L", 0, 1), ("L", 0, 3), ("RGB", 2, 1), ("CMYK", 0, 3)])
def test_jpeg_fast_read_equals_pillow(tmp_path, mode, subsampling, channels):
    """load_image reads JPEGs through torchvision's libjpeg-turbo when the file has the asked
    channels (else Pillow): the pixels must be Pillow's, whichever path ran."""
    from PIL import Image

    from darkcfg.detect.decode import _jpeg_bytes, load_image

    rng = np.random.default_rng(0)
    bands = len(mode)
    arr = rng.integers(0, 256, (37, 53, bands), dtype=np.uint8)
    arr = arr[..., 0] if bands == 1 else arr
    path = tmp_path / "x.jpg"
    Image.fromarray(arr, mode).save(path, quality=90, subsampling=subsampling)
    with Image.open(path) as im:
        ref = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    ref = torch.from_numpy(ref / 255).reshape(37, 53, -1).permute(2, 0, 1)
    assert torch.equal(load_image(path, channels), ref)
    took_fast = _jpeg_bytes(path, channels) is not None
    assert took_fast == ((mode, channels) in (("RGB", 3), ("L", 1)))


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"exif": b"Exif\0\0" + b"x" * 300},
                                     {"mode": "L"}, {"mode": "CMYK"}])
def test_jpeg_frame_header_is_pillows_size_and_bands(tmp_path, options):
    """The fast JPEG path reads the frame header itself (not through Image.open): the size and
    component count Pillow reports, past APPn segments, for baseline and progressive files;
    None for truncated and non-JPEG bytes."""
    from PIL import Image

    from darkcfg.detect.decode import jpeg_frame

    options = dict(options)
    mode = options.pop("mode", "RGB")
    path = tmp_path / "x.jpg"
    Image.new(mode, (53, 37)).save(path, **options)
    data = path.read_bytes()
    with Image.open(path) as im:
        assert jpeg_frame(data) == (im.height, im.width, len(im.getbands()))
    frame_at = max(data.find(bytes([0xFF, m])) for m in (0xC0, 0xC2))
    assert jpeg_frame(data[:frame_at + 5]) is None  # ends inside the frame header
    assert jpeg_frame(data[:2]) is None
    png = tmp_path / "x.png"
    Image.new("RGB", (5, 5)).save(png)
    assert jpeg_frame(png.read_bytes()) is None


def test_unreadable_jpeg_is_reported_by_path(tmp_path):
    from darkcfg.detect.decode import load_image

    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    with pytest.raises(OSError, match="broken.jpg"):
        load_image(path)


def test_decompression_bomb_limit_still_guards_the_fast_jpeg_path(tmp_path, monkeypatch):
    from PIL import Image

    from darkcfg.detect.decode import load_image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (53, 37), (9, 99, 199)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1961 pixels > 2x the limit
    with pytest.raises(OSError, match="big.jpg"):
        load_image(path)


@pytest.mark.parametrize("fmt, orientation", [("JPEG", 6), ("JPEG", 3), ("JPEG", 5),
                                              ("PNG", 8), ("JPEG", 1), ("TIFF", 6),
                                              ("WEBP", 8)])
def test_exif_orientation_is_applied_like_cv_imread(tmp_path, fmt, orientation):
    """Darknet reads images with cv::imread, which turns them by their EXIF orientation: the
    pixels --detect, training and the set readers see are the upright ones, on every path
    (the JPEG fast path, Pillow, the training reader, the header-only size). Pillow turns a
    TIFF itself and reports its turned size: the header-only size turned it a second time."""
    from PIL import Image, ImageOps

    from darkcfg.data.base import read_image
    from darkcfg.data.detection.formats.base import image_size
    from darkcfg.detect.decode import load_image

    rng = np.random.default_rng(orientation)
    arr = np.kron(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    path = tmp_path / f"x.{fmt.lower()}"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, fmt, exif=exif.tobytes(), **(
        {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}))
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.int16)
    assert want.shape[:2] == ((80, 48) if orientation in (5, 6, 7, 8) else (48, 80))
    got = read_image(str(path), 3).permute(1, 2, 0).numpy().astype(np.int16)
    np.testing.assert_array_equal(got, want)
    shown = (load_image(path, 3) * 255).round().permute(1, 2, 0).numpy().astype(np.int16)
    assert shown.shape == want.shape
    assert np.abs(shown - want).max() <= 1  # libjpeg-turbo vs Pillow's decoder, after the turn
    assert image_size(str(path)) == (want.shape[1], want.shape[0])
    if orientation != 1:  # really turned, not the stored pixels
        stored = arr.astype(np.int16)
        assert stored.shape != want.shape or np.abs(stored - want).mean() > 20


def test_cli_detect_two_images_of_one_name_get_two_ids(tmp_path, capsys):
    """a/x.jpg and b/x.jpg: two drawn files (x.jpg, x_1.jpg) and two COCO image ids."""
    import shutil

    cfg = tiny_cfg(tmp_path)
    first = write_images(tmp_path / "a")[0]
    (tmp_path / "b").mkdir()
    shutil.copy(first, tmp_path / "b" / first.name)
    out = tmp_path / "out"
    assert run_cli(cfg, "--detect", first, tmp_path / "b" / first.name, "--out", out,
                   "--thresh", "0", "--no-progress") == 0
    results = json.loads((out / "detections.json").read_text())
    ids = {r["image_id"] for r in results}
    assert len(ids) == 2 and (out / f"{first.stem}_1.jpg").exists(), ids


def test_a_full_out_folder_names_the_output_not_an_input(tmp_path, capsys, monkeypatch):
    """A drawing that cannot be written (a full disk) was caught by the handler of images that
    do not decode and blamed on the next input ("remove it or convert it")."""
    import errno

    from PIL import Image

    cfg = tiny_cfg(tmp_path)
    write_images(tmp_path / "imgs")
    real = Image.Image.save

    def full(self, fp, format=None, **kwargs):
        if format == "JPEG":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fp, format, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out"
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and str(out) in err and "convert it" not in err
    assert not [p for p in out.iterdir() if p.suffix == ".jpg" or p.name.startswith(".")]


def test_an_earlier_detect_is_never_replaced(tmp_path, capsys, monkeypatch):
    """A second detect into an --out that holds an earlier one's outputs is E901 (it replaced
    them: README's promise); by default it goes to runs/<cfg>/detect2, detect3 ..."""
    cfg = tiny_cfg(tmp_path)
    write_images(tmp_path / "imgs")
    out = tmp_path / "out"
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--out", out, "--thresh", "0.9") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--out", out, "--thresh", "0.1") == 2
    err = capsys.readouterr().err
    assert f"{out}: error[E901]: '{out}' holds the outputs of an earlier detect " \
           "(detections.json)" in err and "help: give another --out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.chdir(tmp_path)
    for folder in ("detect", "detect2", "detect3"):
        assert run_cli(cfg, "--detect", tmp_path / "imgs") == 0
        assert f"-> runs/tiny/{folder}/" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == \
        ["detect", "detect2", "detect3"]


def test_image_ids_are_numbers_only_when_every_image_is_one(tmp_path, capsys):
    """COCO's val2017/000000397133.jpg is image 397133 (Darknet's atoi); a folder mixing
    numbered and named images gets every image_id as its drawn name: one type in one file (a
    mix broke sorting). A number twice: the second file gets a number above all (see below)."""
    from PIL import Image

    cfg = tiny_cfg(tmp_path)
    # COCO 2014's names (Darknet's 5k.txt) are numbered after their last '_' (its
    # get_coco_image_id): they were string ids that pycocotools matched to no image
    cases = {"nums": (["000012.jpg", "7.png"], {12, 7}),
             "twice": (["a/5.png", "b/005.png"], {5, 6}),
             "coco2014": (["COCO_val2014_000000000139.jpg", "COCO_val2014_000000000285.jpg"],
                          {139, 285}),
             "clash": (["COCO_val2014_000000000139.jpg", "139.png"], {139, 140}),
             "named": (["cat_dog.png", "000031.png"], {"cat_dog", "000031"})}
    for folder, (names, expected) in cases.items():
        for name in names:
            (tmp_path / folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / folder / name)
        out = tmp_path / f"out-{folder}"
        assert run_cli(cfg, "--detect", tmp_path / folder, "--out", out, "--thresh", "0.01") == 0
        ids = {r["image_id"] for r in json.loads((out / "detections.json").read_text())}
        assert ids == expected, (folder, ids)


def test_two_files_of_one_number_get_two_coco_ids(tmp_path, capsys):
    """a/000001.jpg and b/000001.jpg in one list: Darknet's get_coco_image_id gives both 1,
    which COCO scoring merges; darkcfg then gave every image its name as a string id, which a
    COCO annotation file's ids never match. Now the first keeps its number, the other gets one
    above every image's, said once; one file listed twice keeps its one id."""
    import shutil

    cfg = tiny_cfg(tmp_path)
    first = write_images(tmp_path / "src")[0]
    for name in ("a/000001.jpg", "b/000001.jpg", "a/000007.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(first, tmp_path / name)
    listed = tmp_path / "list.txt"
    listed.write_text("a/000001.jpg\nb/000001.jpg\na/000007.jpg\na/000001.jpg\n"
                      "b/000001.jpg\n")
    out = tmp_path / "out"
    assert run_cli(cfg, "--detect", listed, "--out", out, "--thresh", "0", "--no-progress") == 0
    err = capsys.readouterr().err
    assert err.count("have the file number of another image") == 1, err
    assert "'b/000001.jpg' and 'a/000001.jpg' are both 1): detections.json gives them the " \
           "image_id 8 instead" in err.replace(str(tmp_path) + "/", "")
    results = json.loads((out / "detections.json").read_text())
    per_id = {i: sum(r["image_id"] == i for r in results) for i in {r["image_id"] for r in results}}
    boxes = len(results) // 5  # one picture five times: the same boxes each time
    assert per_id == {1: 2 * boxes, 8: 2 * boxes, 7: boxes}, per_id


def test_letterboxed_sliver_image_has_no_boxes_instead_of_a_crash(tmp_path):
    # a 1x300 image letterboxed into 64x64 takes no pixel (new_w = 0): correct_yolo_boxes
    # divided by zero (ZeroDivisionError, a traceback from `detect --letter-box`)
    from darkcfg.detect.decode import detect

    torch.manual_seed(0)
    net = build(tiny_cfg(tmp_path))
    sliver = torch.full((3, 300, 1), 0.4)
    square = torch.rand((3, 40, 40), generator=torch.Generator().manual_seed(0))
    found = detect(net, [sliver, square], thresh=0.3, letter_box=True)
    assert found[0] == []
    assert found[1] == detect(net, [square], thresh=0.3, letter_box=True)[0] != []


def test_a_blank_line_in_a_names_file_keeps_the_next_names_classes(tmp_path, capsys):
    # Darknet's get_labels keeps a blank line's place; dropping it named class 2 'c3', class 3
    # 'c4' ... (every box after the blank line printed under its neighbour's name)
    from darkcfg.detect.run import read_names

    path = tmp_path / "blank.names"
    path.write_bytes(b"\xef\xbb\xbfc0\r\nc1\r\n\r\nc3\r\n \r\nc5\r\nc6\r\n\r\n\r\n")
    names, where, _ = read_names(str(path), None)
    assert names == ["c0", "c1", "", "c3", "", "c5", "c6"] and where == str(path)
    assert "line 3 of" in capsys.readouterr().err
    cfg = tiny_cfg(tmp_path)
    image = write_images(tmp_path / "imgs")[0]
    assert run_cli(cfg, "--detect", image, "--names", path, "--out", tmp_path / "out",
                   "--thresh", "0.3", "--no-progress") == 0
    printed = {line.split(":")[0] for line in capsys.readouterr().out.splitlines()
               if "%\t(" in line}
    assert printed and printed <= {"c0", "c1", "2", "c3", "4", "c5", "c6"}


def test_an_image_that_fails_to_decode_is_left_out_and_the_run_goes_on(tmp_path, capsys):
    """A JPEG cut short after its header passes the up-front check and fails while its batch is
    read. The run stopped there (E901; at first located at the batch's first image), leaving
    the images drawn so far and no detections.json; Darknet's load_image says "Cannot load
    image" and goes on. Now it is a W901 at that image, and every other image is done."""
    import json

    from PIL import Image

    cfg = tiny_cfg(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        arr = (rng.uniform(0, 1, (32, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"a{i}.jpg")
    data = (folder / "a2.jpg").read_bytes()
    (folder / "a2.jpg").write_bytes(data[:len(data) // 2])
    for i in range(4, 10):  # a second batch after the one that holds the bad image
        Image.fromarray((rng.uniform(0, 1, (32, 48, 3)) * 255).astype(np.uint8)).save(
            folder / f"b{i}.jpg")
    out = tmp_path / "o"
    assert run_cli(cfg, "--detect", folder, "--out", out, "--no-progress", "--thresh",
                   "0.01") == 0
    captured = capsys.readouterr()
    assert f"{folder / 'a2.jpg'}: warning[W901]: cannot read image" in captured.err
    assert "left out" in captured.err and "Traceback" not in captured.err
    assert "9 image(s)" in captured.out and "1 image(s) left out" in captured.out
    drawn = sorted(p.name for p in out.glob("*.jpg"))
    assert drawn == sorted(f"{p.stem}.jpg" for p in folder.iterdir() if p.name != "a2.jpg")
    found = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in found} <= {p.stem for p in folder.iterdir()} - {"a2"}
    assert found  # thresh 0.01 on random weights: every image has boxes


def test_detect_takes_the_images_training_takes(tmp_path, capsys):
    """A PNG whose IDAT checksum alone is wrong (its pixels decode: zlib has its own check) is
    read by training, validation and data check; detect's Pillow verify() refused it."""
    from PIL import Image

    from darkcfg.data.base import check_image_headers, read_image

    cfg = tiny_cfg(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.uniform(0, 1, (32, 48, 3)) * 255).astype(np.uint8)).save(
        folder / "crc.png")
    data = bytearray((folder / "crc.png").read_bytes())
    data[data.index(b"IEND") - 8] ^= 0xFF  # the IDAT chunk's CRC, just before IEND's length
    (folder / "crc.png").write_bytes(bytes(data))
    check_image_headers([str(folder / "crc.png")], "list")
    pixels = read_image(str(folder / "crc.png"), 3)
    assert run_cli(cfg, "--detect", folder, "--out", tmp_path / "o", "--no-progress",
                   "--thresh", "0") == 0
    assert (tmp_path / "o" / "crc.jpg").exists() and pixels.shape == (3, 32, 48)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # one training refuses: so does detect
    assert run_cli(cfg, "--detect", folder, "--out", tmp_path / "o2", "--no-progress") == 2
    assert f"{folder / 'bad.png'}: error[E901]: 1 of the 2 images of " in capsys.readouterr().err


def test_an_image_it_may_not_read_says_to_check_permissions(tmp_path, monkeypatch, capsys):
    """An image without read permission is not a broken one: the hint says to check its
    permissions, not to convert it (the tests run as root, whom chmod does not stop: Pillow's
    open is made to refuse as the kernel would)."""
    from PIL import Image

    from cfgparse import CfgError
    from darkcfg.data.base import check_image_headers

    path = tmp_path / "private.png"
    Image.new("RGB", (8, 8)).save(path)
    real_open = Image.open

    def refuse(fp, *args, **kwargs):
        if str(fp) == str(path):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(CfgError) as denied:
        check_image_headers([str(path)], "list")
    assert denied.value.diagnostics[0].hint == "check their permissions"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(CfgError) as mixed:
        check_image_headers([str(path), str(tmp_path / "broken.png")], "list")
    assert "convert them" in mixed.value.diagnostics[0].hint


def test_detect_never_replaces_a_file_in_out_under_a_name_it_writes(tmp_path, capsys):
    # --save-labels wrote OUT/<stem>.txt over whatever was there: here the --names file itself
    # (an input), and a drawn image over a user's own picture of that name
    cfg = tiny_cfg(tmp_path)
    image = write_images(tmp_path / "imgs")[1]  # b.png -> OUT/b.jpg, OUT/b.txt
    out = tmp_path / "out"
    out.mkdir()
    names = out / "b.txt"
    names.write_text("".join(f"thing{i}\n" for i in range(7)))
    assert run_cli(cfg, "--detect", image, "--names", names, "--out", out, "--save-labels",
                   "--no-progress") == 2
    err = capsys.readouterr().err
    assert f"{names}: error[E901]: --out '{out}' already holds 'b.txt'" in err
    assert names.read_text().startswith("thing0\n") and sorted(os.listdir(out)) == ["b.txt"]
    (out / "b.jpg").write_bytes(b"the user's own picture")
    assert run_cli(cfg, "--detect", image, "--out", out, "--no-progress") == 2
    assert "already holds 'b.jpg'" in capsys.readouterr().err
    assert (out / "b.jpg").read_bytes() == b"the user's own picture"
    (out / "b.jpg").unlink()
    assert run_cli(cfg, "--detect", image, "--names", names, "--out", out, "--no-progress") == 0
    assert names.read_text().startswith("thing0\n") and (out / "b.jpg").is_file()


def test_a_linked_folder_inside_a_folder_is_searched(tmp_path):
    # `detect data/` where data/images is a link to the real folder found no image in it
    # (Path.rglob does not follow links): "no images to run", or a silently partial run
    from darkcfg.detect.run import image_paths

    real = tmp_path / "store"
    write_images(real)
    data = tmp_path / "data"
    (data / "more").mkdir(parents=True)
    (data / "images").symlink_to(real, target_is_directory=True)
    (data / "more" / "loop").symlink_to(data, target_is_directory=True)  # visited once
    write_images(data / "more")
    paths, folder = image_paths([str(data)])
    assert folder and [p.relative_to(data).as_posix() for p in paths] == [
        "images/000012.jpg", "images/b.png", "more/000012.jpg", "more/b.png"]


def test_an_interrupted_folder_detect_keeps_the_detections_of_what_it_drew(tmp_path, capsys,
                                                                         monkeypatch):
    """Ctrl-C (or SIGTERM) in the middle of a folder: the images drawn so far stayed, without
    their detections.json; now it is written for them before the exit (130)."""
    import json

    import darkcfg.detect.run as run

    cfg = tiny_cfg(tmp_path)
    paths = write_images(tmp_path / "imgs") + write_images(tmp_path / "imgs" / "more")
    real_save, saved = run.save_jpeg, []

    def save_then_stop(path, rgb):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(path.stem)
        real_save(path, rgb)

    monkeypatch.setattr(run, "save_jpeg", save_then_stop)
    out = tmp_path / "o"
    assert run_cli(cfg, "--detect", tmp_path / "imgs", "--out", out, "--no-progress",
                   "--thresh", "0.2") == 130
    assert len(paths) == 4 and sorted(p.stem for p in out.glob("*.jpg")) == sorted(saved)
    found = json.loads((out / "detections.json").read_text())
    assert found and {str(d["image_id"]) for d in found} <= set(saved)
    assert "3 of 4 image(s) written" in capsys.readouterr().err


def test_a_large_image_reads_without_pillows_warning_line(tmp_path, monkeypatch):
    """An image of 1-2x Pillow's decompression-bomb limit (89M pixels: a large aerial photo) is
    read, but Pillow printed a raw DecompressionBombWarning with its own source line; the limit
    is lowered here so that a small image crosses it."""
    import warnings

    from PIL import Image

    from darkcfg.cli import main

    cfg = tiny_cfg(tmp_path)
    Image.new("RGB", (40, 40), (90, 30, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: over, under 2x
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["detect", str(cfg), str(tmp_path / "big.png"), "--out",
                     str(tmp_path / "o")]) == 0
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert (tmp_path / "o" / "big.jpg").exists()


def test_cli_detect_and_predict_lines_escape_line_breaks_in_file_names(tmp_path, capsys):
    """A file name holding a line break or a tab was printed raw, splitting its result line in
    two: detect's `path: N object(s)` line (and predict's line) writes it as diagnostics do,
    `\\n`, `\\t`, `\\x00`-style escapes, one image a line."""
    import shutil

    from cfgparse.errors import printable

    cfg = tiny_cfg(tmp_path)
    first = write_images(tmp_path / "imgs")[0]
    odd = tmp_path / "odd"
    odd.mkdir()
    names = ["new\nline.jpg", "tab\there.jpg", "esc\x1b[31m.jpg"]
    for name in names:
        shutil.copy(first, odd / name)
    assert run_cli(cfg, "--detect", odd, "--out", tmp_path / "out", "--thresh", "0.99",
                   "--no-progress") == 0
    out = capsys.readouterr().out.splitlines()
    heads = [line for line in out if line.endswith("object(s)")]
    assert heads == [f"{printable(str(odd / n))}: 0 object(s)" for n in sorted(names)]
    assert any("new\\nline.jpg: 0 object(s)" in line for line in heads)
    assert any("tab\\there.jpg: 0 object(s)" in line for line in heads)
    assert not any("\x1b" in line or "\t" in line.split(":")[0] for line in out)
    assert printable("plain name.jpg") == "plain name.jpg"


def test_ext_output_escapes_class_names_that_do_not_print():
    """A names file (or a data.yaml's quoted names) holding an ANSI escape or a tab printed it
    raw into the terminal: the name is escaped as file names are; a plain name is unchanged."""
    from darkcfg.detect.decode import Found
    from darkcfg.detect.run import ext_output

    found = [Found(0, "red\x1b[31m", 0.9, (1.0, 2.0, 11.0, 22.0)),
             Found(1, "dog", 0.5, (0.0, 0.0, 4.0, 4.0)), Found(2, "", 0.5, (0, 0, 1, 1))]
    lines = ext_output(found, 32, 32)
    assert lines[0].startswith("red\\x1b[31m: 90%\t(left_x:") and "\x1b" not in lines[0]
    assert lines[1].startswith("dog: 50%\t") and lines[2].startswith("2: 50%\t")
