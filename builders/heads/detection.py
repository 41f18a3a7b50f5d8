"""[detection] (YOLOv1): its layer, builder, typed loss settings, loss and decoding.

Forward: the optional per-cell softmax of the class scores (src/detection_layer.c
forward_detection_layer); the confidences and boxes stay raw. Loss: forward_detection_layer in
training. Decode: get_detection_detections. The section's schema and torch-free rules are in
cfgparse (schema.SECTIONS["detection"], rules.HEAD_INPUTS)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cfgparse import Block

from ..boxes import box_iou
from ..dense import flat_input
from ..registry import BuildContext, Shape, register
from .base import (
    DataOptions,
    Deltas,
    DetectionHead,
    HeadDecoding,
    HeadParts,
    LossScales,
    alive_truth,
    cells,
    check_input,
    first_argmax,
    pick,
    read_keys,
    work,
)

_FORWARD_KEYS = frozenset({"classes", "num", "coords", "softmax", "side"})


@dataclass(frozen=True)
class DetectionLoss(LossScales):
    """The loss settings of a [detection], read once from its block
    (src/parser.c parse_detection)."""

    rescore: bool = False
    sqrt: bool = False
    forced: bool = False
    random: bool = False
    max_boxes: int = 200

    @classmethod
    def from_keys(cls, keys: dict) -> DetectionLoss:
        return cls(rescore=bool(keys["rescore"]), sqrt=bool(keys["sqrt"]),
                   forced=bool(keys["forced"]), random=bool(keys["random"]),
                   max_boxes=int(keys["max"]), **LossScales.read(keys))


class DetectionDecoding(HeadDecoding):
    """src/detection_layer.c get_detection_detections: cell-major, then box. Boxes are given
    relative (Darknet multiplies them by the caller's w,h whatever `relative` says) and get no
    letterbox correction, as in Darknet."""

    letterbox = False

    def predictions(self, layer, y, net_w, net_h):
        side, n, classes, coords = layer.side, layer.num, layer.classes, layer.coords
        count = side * side
        y = y.reshape(y.shape[0], -1).float()
        cls = y[:, :count * classes].reshape(-1, count, 1, classes)
        conf = y[:, count * classes:count * (classes + n)].reshape(-1, count, n)
        box = y[:, count * (classes + n):].reshape(-1, count, n, coords)
        col, row = cells(side, side, n, y.device)
        col, row = col.reshape(count, n), row.reshape(count, n)
        power = 2 if layer.settings.sqrt else 1
        boxes = torch.stack([(box[..., 0] + col) / side, (box[..., 1] + row) / side,
                             box[..., 2] ** power, box[..., 3] ** power], -1)
        scores = conf[..., None] * cls
        return HeadParts(boxes.reshape(y.shape[0], count * n, 4), conf.reshape(y.shape[0], -1),
                         scores.reshape(y.shape[0], count * n, classes))


class Detection(DetectionHead):
    """YOLOv1 head on the flat input: side*side*classes class scores (softmax per cell if
    softmax=1), then side*side*num confidences, then the boxes — those stay raw."""

    head_decoding = DetectionDecoding()

    def __init__(self, inputs: int, cells: int, classes: int, softmax: bool):
        super().__init__()
        self.inputs, self.cells, self.classes, self.softmax = inputs, cells, classes, softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(x.shape[0], -1)
        if not self.softmax:
            return y
        split = self.cells * self.classes
        probs = torch.softmax(y[:, :split].reshape(-1, self.cells, self.classes), -1)
        return torch.cat([probs.reshape(y.shape[0], split), y[:, split:]], 1)

    def deltas(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> Deltas:
        return detection_deltas(self, x, truth, seen)


@register("detection")
def build_detection(block: Block, ctx: BuildContext):
    inputs = flat_input(block, ctx)
    classes, coords, num, side = (block.int(k) for k in ("classes", "coords", "num", "side"))
    check_input(block, inputs, ctx.previous)
    layer = Detection(inputs, side * side, classes, block.bool("softmax"))
    layer.side, layer.num, layer.coords = side, num, coords
    keys = read_keys(block, ctx.net.flavor, _FORWARD_KEYS)
    layer.settings = DetectionLoss.from_keys(keys)
    layer.data = DataOptions.from_keys(keys)
    # (`reorg` is parsed but unused by Darknet's forward too)
    layer.describe = f"{side}x{side} {classes} cls"
    return layer, Shape.flat(inputs)


# -- the loss (YOLOv1) ----------------------------------------------------------------------------

def detection_truth(truth: torch.Tensor, side: int, classes: int, max_boxes: int = 200):
    """fill_truth_region: Darknet's per-cell truth grid from box lists. Returns is_obj (N, L),
    class (N, L; -1 = none or out of range), and (x_off, y_off, w, h) (N, L, 4). Only the first
    box per cell is kept (Darknet shuffles the boxes first), boxes under .001 are dropped."""
    batch = truth.shape[0]
    cells = side * side
    alive, m_used = alive_truth(truth, max_boxes)
    t = truth[:, :m_used]
    keep = alive[:, :m_used] & (t[..., 2] >= .001) & (t[..., 3] >= .001)
    b, k = keep.nonzero(as_tuple=True)
    tb = t[b, k]
    col = (tb[:, 0] * side).long().clamp(0, side - 1)
    row = (tb[:, 1] * side).long().clamp(0, side - 1)
    cell = b * cells + row * side + col
    first = pick(cell, k, "amin")
    cell, tb, col, row = cell[first], tb[first], col[first], row[first]
    is_obj = torch.zeros(batch * cells, dtype=torch.bool, device=truth.device)
    cls = torch.full((batch * cells,), -1, dtype=torch.long, device=truth.device)
    box = torch.zeros(batch * cells, 4, dtype=truth.dtype, device=truth.device)
    is_obj[cell] = True
    c = tb[:, 4].long()
    cls[cell] = torch.where((c >= 0) & (c < classes), c, torch.full_like(c, -1))
    box[cell] = torch.stack([tb[:, 0] * side - col, tb[:, 1] * side - row, tb[:, 2], tb[:, 3]], -1)
    return is_obj.view(batch, cells), cls.view(batch, cells), box.view(batch, cells, 4)


def detection_deltas(layer: Detection, x: torch.Tensor, truth: torch.Tensor, seen: int = 0
                     ) -> Deltas:
    """src/detection_layer.c forward_detection_layer: plain deltas on the raw input (after the
    in-layer softmax of the classes, whose Jacobian Darknet's backward skips)."""
    cfg = layer.settings
    side, n, coords, classes = layer.side, layer.num, layer.coords, layer.classes
    cells = side * side
    batch = x.shape[0]
    xd = work(x)
    dt = xd.dtype
    with torch.no_grad():
        out = layer.forward(xd).reshape(batch, -1)
        split, conf_end = cells * classes, cells * (classes + n)
        p_cls = out[:, :split].view(batch, cells, classes)
        conf = out[:, split:conf_end].view(batch, cells, n)
        boxes = out[:, conf_end:].view(batch, cells, n, coords)
        is_obj, cls, tbox = detection_truth(truth.to(x.device, dt), side, classes,
                                            cfg.max_boxes)
        d_cls = torch.zeros_like(p_cls)
        d_conf = cfg.noobject_scale * (0 - conf)
        d_box = torch.zeros_like(boxes)
        onehot = torch.zeros_like(p_cls)
        has_cls = is_obj & (cls >= 0)
        onehot[has_cls] = torch.nn.functional.one_hot(cls[has_cls], classes).to(dt)
        d_cls[is_obj] = cfg.class_scale * (onehot[is_obj] - p_cls[is_obj])

        ob, oc = is_obj.nonzero(as_tuple=True)
        tb = tbox[ob, oc]  # (T, 4): x_off, y_off, w, h
        truth_rel = torch.cat([tb[:, :2] / side, tb[:, 2:]], -1)[:, None]
        pb = boxes[ob, oc][..., :4]  # (T, n, 4)
        pb = torch.cat([pb[..., :2] / side,
                        pb[..., 2:] ** 2 if cfg.sqrt else pb[..., 2:]], -1)
        iou = box_iou(pb, truth_rel)
        rmse = ((pb - truth_rel) ** 2).sum(-1).sqrt()
        by_iou = first_argmax(iou)
        low = torch.where(rmse < 20, rmse, torch.full_like(rmse, math.inf))
        by_rmse = torch.where(torch.isfinite(low.min(-1).values), low.argmin(-1),
                              torch.zeros_like(by_iou))
        best = torch.where((iou > 0).any(-1), by_iou, by_rmse)
        if cfg.forced:
            best = torch.where(tb[:, 2] * tb[:, 3] < .1, torch.ones_like(best),
                               torch.zeros_like(best)).clamp(max=n - 1)
        if cfg.random and seen < 64000:
            best = torch.randint(0, n, best.shape, device=best.device)
        rows = torch.arange(len(ob), device=x.device)
        iou_best = iou[rows, best]
        c_best = conf[ob, oc, best]
        target = iou_best if cfg.rescore else torch.ones_like(c_best)
        d_conf[ob, oc, best] = cfg.object_scale * (target - c_best)
        want = torch.cat([tb[:, :2], tb[:, 2:].sqrt() if cfg.sqrt else tb[:, 2:]], -1)
        d_box[ob, oc, best, :4] = cfg.coord_scale * (want - boxes[ob, oc, best, :4])
        delta = torch.cat([d_cls.reshape(batch, -1), d_conf.reshape(batch, -1),
                           d_box.reshape(batch, -1)], 1)
        count = len(ob)
        cost = (delta.double() ** 2).sum()
        pos_cat = float((p_cls[ob, oc] * onehot[ob, oc]).double().sum())
        stats = {
            "avg_iou": float(iou_best.double().sum()) / count if count else 0.0,
            "count": count,
            "avg_class": pos_cat / count if count else 0.0,
            "avg_allcat": float(p_cls[ob, oc].double().sum()) / (count * classes)
            if count else 0.0,
            "avg_obj": float(c_best.double().sum()) / count if count else 0.0,
            "avg_noobj": float(conf.double().mean()),
            "class_loss": float((delta[:, :conf_end].double() ** 2).sum()) / batch,
            "iou_loss": float((delta[:, conf_end:].double() ** 2).sum()) / batch,
            "total_loss": float(cost) / batch,
            "cost": float(cost),
        }
    return Deltas(delta, cost, stats)
