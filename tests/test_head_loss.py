"""Detection-head losses (builders/head_loss.py) against real Darknet's training deltas
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


@pytest.mark.parametrize("case", YOLO_CASES or ["(no oracle)"])
def test_gradient_is_minus_darknet_delta_over_batch(case):
    folder, index, net = _oracle_case(case)
    truth, seen = _truth(folder), index["net_seen_before_forward"]
    for head in index["layers"]:
        x, delta = _head_input(folder, head)
        layer = net.layers[head["idx"]]
        loss = layer.loss(x, truth, seen=seen)
        loss.backward()
        ours = -x.grad.double().numpy() * x.shape[0]  # gradient = -delta / N
        scale = np.abs(delta).max()
        err = np.abs(ours - delta).max() / scale
        assert err <= 1e-4, f"{case} layer {head['idx']}: max error {err:.2e} of max |delta|"
        # the exactly-zero pattern matches too (entries below 1e-6 excepted, README part B)
        differ = ((ours == 0) != (delta == 0)) & (np.maximum(abs(ours), abs(delta)) > 1e-6)
        assert not differ.any(), f"{case} layer {head['idx']}: {differ.sum()} zero mismatches"
        stats = layer.loss_stats
        assert stats["cost"] == pytest.approx(head["cost"], rel=1e-4)
        # the value is Darknet's cost per image (the mean over images of the batch)
        assert float(loss.detach()) == pytest.approx(head["cost"] / x.shape[0], rel=1e-4)
        printed = head["printed"]
        assert stats["count"] == printed["count"]
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
    head.loss(x, torch.zeros(2, 4, 5)).backward()
    g = x.grad.view(2, 3, 7, 8, 8)
    assert torch.isfinite(g).all()
    assert not g[:, :, [0, 1, 2, 3, 5, 6]].any()
    obj = torch.sigmoid(x.detach().view(2, 3, 7, 8, 8)[:, :, 4])
    torch.testing.assert_close(g[:, :, 4], obj / 2)  # delta = 0 - sigma, gradient = -delta/N
    assert head.loss_stats["count"] == 0


@pytest.mark.parametrize("keys", ["", "iou_loss=ciou\niou_normalizer=0.07\nmax_delta=5",
                                  "iou_loss=diou", "iou_loss=iou", "iou_loss=giou",
                                  "new_coords=1\nscale_x_y=2\niou_loss=ciou"])
def test_gradient_is_finite_even_for_extreme_inputs(keys):
    _, head = _yolo_head(keys)
    x = (torch.randn(2, 21, 8, 8) * 30).requires_grad_()
    head.loss(x, TRUTH).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_images_of_a_batch_are_independent():
    _, head = _yolo_head("iou_loss=ciou\niou_thresh=0.213")
    x = torch.randn(2, 21, 8, 8, requires_grad=True)
    head.loss(x, TRUTH).backward()
    both = x.grad.clone()
    for b in (0, 1):
        xb = x.detach()[b:b + 1].clone().requires_grad_()
        head.loss(xb, TRUTH[b:b + 1]).backward()
        torch.testing.assert_close(both[b], xb.grad[0] / 2)  # /N: N=2 then 1


def test_truth_list_ends_at_the_first_zero_x_and_respects_max():
    _, head = _yolo_head("max=1")
    x = torch.randn(1, 21, 8, 8)
    after_zero = torch.tensor([[[0.3, 0.4, 0.2, 0.3, 1.0], [0, 0, 0, 0, 0],
                                [0.7, 0.6, 0.4, 0.3, 0.0]]])
    head.loss(x, after_zero)
    assert head.loss_stats["count"] == 1
    head.loss(x, TRUTH[:1])  # two boxes, but max=1 reads only the first
    assert head.loss_stats["count"] == 1


def test_loss_runs_at_another_grid_size_and_on_the_input_device():
    _, head = _yolo_head()
    x = torch.randn(2, 21, 12, 12, dtype=torch.float64, requires_grad=True)  # multi-scale 96 px
    head.loss(x, TRUTH).backward()
    assert x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()
    assert head.loss_stats["count"] == 3


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
    assert weighted.loss_cfg["class_multipliers"] == [1.0, 4.0]
    x = torch.randn(1, 21, 8, 8)
    truth = TRUTH[:1, :1]  # one box of class 1 (multiplier 4)
    plain.loss(x, truth)
    weighted.loss(x, truth)
    d0, d1 = plain.last_delta, weighted.last_delta
    hit = d0[0, :, 6].nonzero()[0]
    m, j, i = hit.tolist()
    assert d1[0, m, 6, j, i] == pytest.approx(float(d0[0, m, 6, j, i]) * 4 * 0.5)  # cm·cls_norm
    assert d1[0, m, 4, j, i] == pytest.approx(float(d0[0, m, 4, j, i]) * 4)  # cm on obj


def test_bad_counters_per_class_is_a_located_error():
    from cfgparse import CfgError
    with pytest.raises(CfgError, match="counters_per_class"):
        _yolo_head("counters_per_class=1,2,3")
