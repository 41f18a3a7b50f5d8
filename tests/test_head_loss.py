"""Detection-head losses (builders/heads/) against real Darknet's training deltas
(../shared/darknet/oracle-detect/train, README part B), plus properties of the losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from builders.graph import build
from tests.oracle import SHARED

TRAIN = SHARED / "oracle-detect" / "train"
CASES = sorted(p.name for p in TRAIN.iterdir()) if TRAIN.is_dir() else []
YOLO_CASES = [c for c in CASES if ".region" not in c]


def _truth(case_dir) -> torch.Tensor:
    """(2, M, 5) [x, y, w, h, class], zero rows after the last box (Darknet's layout)."""
    images = []
    for k in (0, 1):
        rows = []
        for line in (case_dir / f"truth_{k}.txt").read_text().split("\n"):
            if line.strip():
                c, x, y, w, h = map(float, line.split())
                rows.append([x, y, w, h, c])
        images.append(rows)
    truth = torch.zeros(2, max(map(len, images)) + 3, 5)
    for b, rows in enumerate(images):
        truth[b, :len(rows)] = torch.tensor(rows)
    return truth


def _oracle_case(case: str):
    if not TRAIN.is_dir():
        pytest.skip("../shared/darknet/oracle-detect/train is not available")
    folder = TRAIN / case
    index = json.loads((folder / "index.json").read_text())
    net = build(folder / "train.cfg", device="meta")  # the heads need no weights
    return folder, index, net


def _head_input(folder, layer) -> tuple[torch.Tensor, np.ndarray]:
    shape = layer["shape"]
    x = np.fromfile(folder / layer["input_file"], "<f4").reshape(shape)
    delta = np.fromfile(folder / layer["delta_file"], "<f4").reshape(shape)
    return torch.from_numpy(x.copy()).requires_grad_(), delta


@pytest.mark.parametrize("case", CASES or ["(no oracle)"])
def test_gradient_is_minus_darknet_delta_over_batch(case):
    folder, index, net = _oracle_case(case)
    truth, seen = _truth(folder), index["net_seen_before_forward"]
    for head in index["layers"]:
        x, delta = _head_input(folder, head)
        layer = net.layers[head["idx"]]
        loss, stats = layer.loss(x, truth, seen=seen)
        loss.backward()
        ours = -x.grad.double().numpy() * x.shape[0]  # gradient = -delta / N
        scale = np.abs(delta).max()
        err = np.abs(ours - delta).max() / scale
        assert err <= 1e-4, f"{case} layer {head['idx']}: max error {err:.2e} of max |delta|"
        # the README's elementwise target holds too
        assert (np.abs(ours - delta) <= 1e-5 + 1e-4 * np.abs(delta)).all()
        # the exactly-zero pattern matches too (entries below 1e-6 excepted, README part B)
        differ = ((ours == 0) != (delta == 0)) & (np.maximum(abs(ours), abs(delta)) > 1e-6)
        assert not differ.any(), f"{case} layer {head['idx']}: {differ.sum()} zero mismatches"
        assert stats["cost"] == pytest.approx(head["cost"], rel=1e-4)
        # the value is Darknet's cost per image (the mean over images of the batch)
        assert float(loss.detach()) == pytest.approx(head["cost"] / x.shape[0], rel=1e-4)
        printed = head["printed"]
        assert stats["count"] == printed["count"]
        assert {"avg_iou", "count", "class_loss", "iou_loss", "total_loss", "cost", "avg_obj",
                "avg_noobj", "avg_class"} <= set(stats)
        if head["type"] == "yolo":
            for key in ("avg_iou", "class_loss", "iou_loss", "total_loss"):
                assert stats[key] == pytest.approx(printed[key], rel=1e-4, abs=1e-4), key
        else:
            for key in ("avg_iou", "avg_class", "avg_obj", "avg_noobj", "avg_recall"):
                assert stats[key] == pytest.approx(printed[key], rel=1e-4, abs=1e-6), key


# -- properties ------------------------------------------------------------------------------------

YOLO = """[net]
width=64
height=64
channels=3
[convolutional]
filters=21
size=1
stride=8
activation=linear
[yolo]
mask=0,1,2
anchors=8,8, 16,24, 40,32
num=3
classes=2
{keys}
"""


def _yolo_head(keys: str = ""):
    net = build(YOLO.format(keys=keys))
    return net, net.layers[-1]


TRUTH = torch.tensor([[[0.3, 0.4, 0.2, 0.3, 1.0], [0.7, 0.6, 0.4, 0.3, 0.0], [0, 0, 0, 0, 0]],
                      [[0.5, 0.5, 0.6, 0.5, 1.0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]])


@pytest.mark.parametrize("keys", ["", "iou_loss=ciou\niou_normalizer=0.07\nscale_x_y=1.05",
                                  "iou_loss=giou\niou_thresh=0.2\nfocal_loss=1",
                                  "objectness_smooth=1\nlabel_smooth_eps=0.1\nmax_delta=1"])
def test_no_truth_only_objectness_gets_a_gradient(keys):
    _, head = _yolo_head(keys)
    x = torch.randn(2, 21, 8, 8, requires_grad=True)
    loss, stats = head.loss(x, torch.zeros(2, 4, 5))
    loss.backward()
    g = x.grad.view(2, 3, 7, 8, 8)
    assert torch.isfinite(g).all()
    assert not g[:, :, [0, 1, 2, 3, 5, 6]].any()
    obj = torch.sigmoid(x.detach().view(2, 3, 7, 8, 8)[:, :, 4])
    torch.testing.assert_close(g[:, :, 4], obj / 2)  # delta = 0 - sigma, gradient = -delta/N
    assert stats["count"] == 0


@pytest.mark.parametrize("keys", ["", "iou_loss=ciou\niou_normalizer=0.07\nmax_delta=5",
                                  "iou_loss=diou", "iou_loss=iou", "iou_loss=giou",
                                  "new_coords=1\nscale_x_y=2\niou_loss=ciou"])
def test_gradient_is_finite_even_for_extreme_inputs(keys):
    _, head = _yolo_head(keys)
    x = (torch.randn(2, 21, 8, 8) * 30).requires_grad_()
    head.loss(x, TRUTH)[0].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_images_of_a_batch_are_independent():
    _, head = _yolo_head("iou_loss=ciou\niou_thresh=0.213")
    x = torch.randn(2, 21, 8, 8, requires_grad=True)
    head.loss(x, TRUTH)[0].backward()
    both = x.grad.clone()
    for b in (0, 1):
        xb = x.detach()[b:b + 1].clone().requires_grad_()
        head.loss(xb, TRUTH[b:b + 1])[0].backward()
        torch.testing.assert_close(both[b], xb.grad[0] / 2)  # /N: N=2 then 1


def test_truth_list_ends_at_the_first_zero_x_and_respects_max():
    _, head = _yolo_head("max=1")
    x = torch.randn(1, 21, 8, 8)
    after_zero = torch.tensor([[[0.3, 0.4, 0.2, 0.3, 1.0], [0, 0, 0, 0, 0],
                                [0.7, 0.6, 0.4, 0.3, 0.0]]])
    assert head.loss(x, after_zero)[1]["count"] == 1
    # two boxes, but max=1 reads only the first
    assert head.loss(x, TRUTH[:1])[1]["count"] == 1


def test_loss_runs_at_another_grid_size_and_on_the_input_device():
    _, head = _yolo_head()
    x = torch.randn(2, 21, 12, 12, dtype=torch.float64, requires_grad=True)  # multi-scale 96 px
    assert head.out.w == 8  # built at 64 px
    loss, stats = head.loss(x, TRUTH)
    loss.backward()
    assert x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()
    assert stats["count"] == 3


def test_unhonoured_keys_are_located_warnings():
    net, _ = _yolo_head("map=data/coco9k.map\ntrack_history_size=20\ndelta_normalizer=1.0")
    found = [(w.code, w.line) for w in net.warnings if w.code == "W310"]
    lines = YOLO.format(keys="map=data/coco9k.map\ntrack_history_size=20").split("\n")
    assert found == [("W310", lines.index("map=data/coco9k.map") + 1),
                     ("W310", lines.index("track_history_size=20") + 1)]
    assert "read, not honoured" in str(net.warnings[0])


def test_counters_per_class_scale_the_true_class():
    _, plain = _yolo_head()
    _, weighted = _yolo_head("counters_per_class=100, 25\ncls_normalizer=0.5")
    assert weighted.settings.class_multipliers == (1.0, 4.0)
    x = torch.randn(1, 21, 8, 8)
    truth = TRUTH[:1, :1]  # one box of class 1 (multiplier 4)
    d0, d1 = plain.deltas(x, truth).delta, weighted.deltas(x, truth).delta
    hit = d0[0, :, 6].nonzero()[0]
    m, j, i = hit.tolist()
    assert d1[0, m, 6, j, i] == pytest.approx(float(d0[0, m, 6, j, i]) * 4 * 0.5)  # cm·cls_norm
    assert d1[0, m, 4, j, i] == pytest.approx(float(d0[0, m, 4, j, i]) * 4)  # cm on obj


def test_bad_counters_per_class_is_a_located_error():
    from cfgparse import CfgError
    with pytest.raises(CfgError, match="counters_per_class"):
        _yolo_head("counters_per_class=1,2,3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_oracle_case_on_cuda():
    folder, index, net = _oracle_case("yolov4.cfg")
    truth = _truth(folder).cuda()
    for head in index["layers"]:
        x, delta = _head_input(folder, head)
        x = x.detach().cuda().requires_grad_()
        net.layers[head["idx"]].loss(x, truth, seen=index["net_seen_before_forward"])[0].backward()
        ours = -x.grad.double().cpu().numpy() * x.shape[0]
        assert np.abs(ours - delta).max() / np.abs(delta).max() <= 1e-4


# -- [Gaussian_yolo], [region], [detection] without an oracle: Darknet's formulas --------------

GAUSSIAN = """[net]
width=64
height=64
channels=3
[convolutional]
filters=24
size=1
stride=8
activation=linear
[Gaussian_yolo]
mask=0,1
anchors=8,8, 24,24
num=2
classes=3
{keys}
"""


def test_gaussian_yolo_mse_deltas_follow_the_gaussian_formula():
    net = build(GAUSSIAN.format(keys="iou_normalizer=0.5\nuc_normalizer=0.8\nignore_thresh=2"))
    head = net.layers[-1]
    x = torch.randn(1, 24, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    truth = torch.tensor([[[0.40, 0.55, 0.3, 0.35, 2.0]]])  # best anchor 1 (24x24 px)
    delta, _, stats = head.deltas(x, truth)
    d = delta[0, 1, :, 4, 3]  # cell i=int(.4*8)=3, j=int(.55*8)=4
    out = head(x).view(1, 2, 12, 8, 8)[0, 1, :, 4, 3]
    raw = x.view(1, 2, 12, 8, 8)[0, 1, :, 4, 3]
    scale = 2 - 0.3 * 0.35
    targets = [0.40 * 8 - 3, 0.55 * 8 - 4, np.log(0.3 * 64 / 24), np.log(0.35 * 64 / 24)]
    for e, t in zip((0, 2, 4, 6), targets, strict=True):
        mu = float(raw[e] if e in (4, 6) else out[e])
        u = float(out[e + 1])
        diff = t - mu
        # abs: the head subtracts in float32, so a small diff keeps ~1e-7 / |diff| of its digits
        assert float(d[e]) == pytest.approx(0.5 * scale * 0.5 * diff / u ** 2, rel=1e-4,
                                            abs=1e-6)
        expected_u = 0.5 * scale * 0.8 * (diff ** 2 / u ** 3 - 1 / (u + 0.3))
        assert float(d[e + 1]) == pytest.approx(expected_u, rel=1e-4, abs=1e-6)
    assert float(d[8]) == pytest.approx(1 - float(out[8]), rel=1e-5)  # objectness
    torch.testing.assert_close(d[9:], torch.tensor([0.0, 0.0, 1.0]) - out[9:])
    assert stats["count"] == 1


@pytest.mark.parametrize("keys", ["iou_loss=ciou\nmax_delta=2", "objectness_smooth=1",
                                  "yolo_point=left_top\niou_loss=giou",
                                  "yolo_point=right_bottom\niou_thresh=0.2"])
def test_gaussian_yolo_variants_give_finite_gradients(keys):
    head = build(GAUSSIAN.format(keys=keys)).layers[-1]
    x = torch.randn(2, 24, 8, 8, requires_grad=True)
    loss, stats = head.loss(x, TRUTH)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert stats["count"] >= 1


REGION = """[net]
width=64
height=64
channels=3
[convolutional]
filters=18
size=1
activation=linear
[region]
anchors=1,1, 3,2
num=2
classes=4
coords=4
softmax=1
{keys}
"""


def test_region_prior_term_only_before_12800_images():
    head = build(REGION.format(keys="")).layers[-1]
    x = torch.randn(1, 18, 4, 4, requires_grad=True)
    early = head.deltas(x, torch.zeros(1, 2, 5), seen=64).delta
    late = head.deltas(x, torch.zeros(1, 2, 5), seen=12800).delta
    raw = x.detach().view(1, 2, 9, 4, 4)
    sx = torch.sigmoid(raw[:, :, 0])
    torch.testing.assert_close(early[:, :, 0], 0.01 * (0.5 - sx) * sx * (1 - sx))
    torch.testing.assert_close(early[:, :, 2], -0.01 * raw[:, :, 2])
    assert not late[:, :, :4].any() and not late[:, :, 5:].any()
    p = torch.sigmoid(raw[:, :, 4])
    torch.testing.assert_close(late[:, :, 4], -p * p * (1 - p))  # noobject_scale·(0-p)·σ'


def test_region_assigned_truth_gets_scaled_deltas():
    keys = "coord_scale=2\nobject_scale=5\nclass_scale=3\nbias_match=1\nrescore=0"
    head = build(REGION.format(keys=keys)).layers[-1]
    x = torch.randn(1, 18, 4, 4)
    delta = head.deltas(x, torch.tensor([[[0.6, 0.3, 0.7, 0.5, 2.0]]]), seen=20000).delta
    d = delta[0, 1, :, 1, 2]  # bias_match: anchor 1 (3x2 cells) fits .7x.5 best
    raw = x.view(1, 2, 9, 4, 4)[0, 1, :, 1, 2]
    s = torch.sigmoid(raw[0])
    # abs: 0.4 - s cancels in float32 when s is near 0.4 (the head and this line round apart)
    assert float(d[0]) == pytest.approx(float(2 * (0.6 * 4 - 2 - s) * s * (1 - s)), rel=1e-5,
                                        abs=1e-7)
    assert float(d[2]) == pytest.approx(float(2 * (np.log(0.7 * 4 / 3) - raw[2])), rel=1e-5)
    p = torch.sigmoid(raw[4])
    assert float(d[4]) == pytest.approx(float(5 * (1 - p) * p * (1 - p)), rel=1e-5)
    probs = torch.softmax(raw[5:], 0)
    torch.testing.assert_close(d[5:], 3 * (torch.tensor([0.0, 0, 1, 0]) - probs))


DETECTION = """[net]
width=16
height=16
channels=3
[connected]
output=52
activation=linear
[detection]
classes=3
coords=4
num=2
side=2
softmax=1
sqrt=1
coord_scale=5
object_scale=2
noobject_scale=0.5
class_scale=1
"""


def test_detection_loss_follows_yolov1():
    head = build(DETECTION).layers[-1]
    x = torch.rand(1, 52)
    truth = torch.tensor([[[0.7, 0.2, 0.4, 0.3, 1.0], [0.72, 0.22, 0.1, 0.1, 2.0]]])
    # both boxes fall in cell (row 0, col 1): only the first counts
    delta, _, stats = head.deltas(x, truth)
    d = delta[0]
    out = head(x)[0]
    cell = 1
    probs = out[cell * 3:cell * 3 + 3]
    torch.testing.assert_close(d[cell * 3:cell * 3 + 3], torch.tensor([0.0, 1, 0]) - probs)
    assert not d[:3].any() and not d[6:12].any()  # cells without truth: no class delta
    conf = out[12:20].view(4, 2)
    boxes = out[20:].view(4, 2, 4)
    t = torch.tensor([0.7 * 2 - 1, 0.2 * 2 - 0, 0.4, 0.3])
    t_rel = torch.tensor([t[0] / 2, t[1] / 2, 0.4, 0.3])
    pred = torch.cat([boxes[cell, :, :2] / 2, boxes[cell, :, 2:] ** 2], -1)
    from builders.boxes import box_iou
    ious = box_iou(pred, t_rel[None])
    rmse = ((pred - t_rel) ** 2).sum(-1).sqrt()
    best = int(ious.argmax()) if (ious > 0).any() else int(rmse.argmin())
    dc = d[12:20].view(4, 2)
    assert float(dc[cell, best]) == pytest.approx(2 * (1 - float(conf[cell, best])), rel=1e-5)
    assert float(dc[cell, 1 - best]) == pytest.approx(-0.5 * float(conf[cell, 1 - best]))
    db = d[20:].view(4, 2, 4)
    want = torch.tensor([t[0], t[1], 0.4 ** 0.5, 0.3 ** 0.5])
    torch.testing.assert_close(db[cell, best], 5 * (want - boxes[cell, best]))
    assert not db[cell, 1 - best].any()
    assert stats["count"] == 1


def test_half_precision_input_is_computed_in_float32():
    _, head = _yolo_head("iou_loss=ciou")
    x = torch.randn(2, 21, 8, 8)
    head.loss(x.requires_grad_(), TRUTH)[0].backward()
    xh = x.detach().bfloat16().requires_grad_()
    loss, _ = head.loss(xh, TRUTH)
    loss.backward()
    assert loss.dtype == torch.float32 and xh.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xh.grad.float(), x.grad, atol=0.02, rtol=0.05)


def test_pjreddie_region_loss_is_reported_at_the_section():
    net = build(REGION.format(keys=""), flavor="pjreddie")
    (w,) = [w for w in net.warnings if w.code == "W310"]
    assert w.line == REGION.split("\n").index("[region]") + 1
    assert "AlexeyAB" in w.message


def test_pjreddie_yolo_loss_has_unit_normalizers_and_no_class_condition():
    net = build(YOLO.format(keys=""), flavor="pjreddie")
    head = net.layers[-1]
    assert head.settings.iou_norm == 1.0 and head.settings.pjreddie
    x = torch.randn(2, 21, 8, 8, requires_grad=True)
    loss, stats = head.loss(x, TRUTH)
    loss.backward()
    assert torch.isfinite(x.grad).all() and stats["count"] == 3
