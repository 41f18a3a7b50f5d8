"""[region] (YOLOv2): its layer, builder, typed loss settings, loss and decoding.

Forward: the in-layer activations of src/region_layer.c forward_region_layer (AlexeyAB: logistic
on objectness, softmax over each anchor's classes; pjreddie: logistic on x, y and objectness,
then softmax or logistic on the classes). Loss: AlexeyAB's forward_region_layer in training.
Decode: custom_get_region_detections (AlexeyAB) / get_region_detections (pjreddie). The
section's schema and torch-free rules are in cfgparse (schema.SECTIONS["region"],
rules.HEAD_INPUTS)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cfgparse import Block

from ..boxes import box_iou
from ..dense import load_tree
from ..registry import BuildContext, Shape, register
from .base import (
    DataOptions,
    Deltas,
    DetectionHead,
    HeadDecoding,
    HeadParts,
    LossScales,
    alive_truth,
    anchors_of,
    best_truth,
    cells,
    check_input,
    first_argmax,
    grid,
    grouped_softmax,
    per_anchor,
    pick,
    read_keys,
    work,
)

_FORWARD_KEYS = frozenset({"classes", "num", "anchors", "coords", "softmax", "tree",
                           "background"})
_NOT_HONOURED = {
    "tree": "the hierarchical-softmax (tree) class loss is not implemented: classes train as a "
            "flat softmax",
    "map": "the class remap file of [region] map is not applied by the loss",
}


@dataclass(frozen=True)
class RegionLoss(LossScales):
    """The loss settings of a [region], read once from its block (src/parser.c parse_region)."""

    thresh: float = 0.5
    classfix: int = 0
    rescore: bool = False
    bias_match: bool = False
    max_boxes: int = 200
    focal_loss: bool = False

    @classmethod
    def from_keys(cls, keys: dict) -> RegionLoss:
        return cls(thresh=float(keys["thresh"]), classfix=int(keys["classfix"]),
                   rescore=bool(keys["rescore"]), bias_match=bool(keys["bias_match"]),
                   max_boxes=int(keys["max"]), focal_loss=bool(keys.get("focal_loss", 0)),
                   **LossScales.read(keys))


class RegionDecoding(HeadDecoding):
    """AlexeyAB (src/region_layer.c custom_get_region_detections): cell-major, objectness 1,
    x,y get their logistic here. pjreddie (get_region_detections): anchor-major, x,y were
    activated in the forward, objectness = the scale when it passes thresh, else 0."""

    def unsupported(self, layer):
        if layer.tree is not None or layer.tree_error is not None:
            return "tree", ("decoding a [region] with tree= (yolo9000's hierarchical classes) is "
                            "not supported")
        return None

    def predictions(self, layer, y, net_w, net_h):
        if fault := self.unsupported(layer):
            raise NotImplementedError(fault[1])
        n, entries, k = layer.n, layer.entries, layer.coords
        h, w = y.shape[-2], y.shape[-1]
        pj = layer.pjreddie
        v = y.reshape(y.shape[0], n, entries, h, w)
        v = (v.permute(0, 1, 3, 4, 2) if pj else v.permute(0, 3, 4, 1, 2))
        v = v.reshape(y.shape[0], h * w * n, entries).float()
        col, row = cells(h, w, n, y.device, anchor_major=pj)
        aw = per_anchor(layer.anchors[0:2 * n:2], h, w, y.device, anchor_major=pj)
        ah = per_anchor(layer.anchors[1:2 * n:2], h, w, y.device, anchor_major=pj)
        tx, ty = (v[..., 0], v[..., 1]) if pj else (torch.sigmoid(v[..., 0]),
                                                     torch.sigmoid(v[..., 1]))
        boxes = torch.stack([(col + tx) / w, (row + ty) / h,
                             torch.exp(v[..., 2]) * aw / w, torch.exp(v[..., 3]) * ah / h], -1)
        scale = torch.ones_like(v[..., k]) if layer.background else v[..., k]
        if not pj and layer.settings.classfix == -1:
            scale = torch.where(scale < 0.5, 0.0, scale)
        scores = scale[..., None] * v[..., k + 1:]
        objectness = scale if pj else torch.ones_like(scale)
        return HeadParts(boxes, objectness, scores)

    def threshold(self, layer, objectness, scores, thresh):
        probs = torch.where(scores > thresh, scores, 0.0)
        if not layer.pjreddie:
            return objectness, probs
        objectness = torch.where(objectness > thresh, objectness, 0.0)
        return objectness, torch.where(objectness[..., None] != 0, probs, 0.0)


class Region(DetectionHead):
    """YOLOv2 head. The forward returns (N, C, H, W) with Darknet's in-layer activations;
    `darknet_output` gives the fork's memory order (AlexeyAB: HWC, pjreddie: CHW).

    AlexeyAB: logistic on objectness only, softmax over each anchor's classes (if softmax=1).
    pjreddie: logistic on x, y and objectness (unless background), then softmax over the classes
    (+ background) or, with softmax=0, logistic on them."""

    head_decoding = RegionDecoding()

    def __init__(self, out: Shape, n: int, coords: int, classes: int, softmax: bool,
                 tree: list[int] | None, tree_error, pjreddie: bool, background: bool):
        super().__init__()
        self.out, self.n, self.coords, self.classes = out, n, coords, classes
        self.entries = coords + 1 + classes
        self.softmax, self.tree, self.tree_error = softmax, tree, tree_error
        self.pjreddie, self.background = pjreddie, background

    @property
    def run_error(self):
        return self.tree_error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tree_error is not None:
            raise self.tree_error
        h, w = grid(x, self.out)
        v = x.reshape(x.shape[0], self.n, self.entries, h, w)
        k = self.coords
        if not self.pjreddie:
            cls = v[:, :, k + 1:]
            if self.tree is not None or self.softmax:
                cls = grouped_softmax(cls, self.tree, 2)
            parts = [v[:, :, :k], torch.sigmoid(v[:, :, k:k + 1]), cls]
        else:
            xy, wh = torch.sigmoid(v[:, :, :2]), v[:, :, 2:k]
            obj = v[:, :, k:k + 1] if self.background else torch.sigmoid(v[:, :, k:k + 1])
            cls = v[:, :, k + 1:]
            if self.tree is not None:
                cls = grouped_softmax(cls, self.tree, 2)
            elif self.softmax and self.background:  # softmax spans the objectness slot too
                both = torch.softmax(v[:, :, k:], 2)
                obj, cls = both[:, :, :1], both[:, :, 1:]
            elif self.softmax:
                cls = torch.softmax(cls, 2)
            else:
                cls = torch.sigmoid(cls)
            parts = [xy, wh, obj, cls]
        return torch.cat(parts, 2).reshape(x.shape[0], self.n * self.entries, h, w)

    def darknet_output(self, y: torch.Tensor) -> torch.Tensor:
        if self.pjreddie:
            return y.reshape(y.shape[0], -1)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)  # AlexeyAB's flatten to HWC

    def deltas(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> Deltas:
        return region_deltas(self, x, truth, seen)


@register("region")
def build_region(block: Block, ctx: BuildContext):
    pjreddie = ctx.net.flavor == "pjreddie"
    classes, coords = block.int("classes"), block.int("coords")
    num = block.int("num")
    anchors = anchors_of(block, num)
    if coords < 2:
        raise block.error("E203", f"coords={coords}: a [region] box has at least x and y",
                          "coords")
    check_input(block, ctx.input.c, ctx.previous)
    tree, tree_error = load_tree(block, "tree", classes) if block.has("tree") else (None, None)
    background = block.bool("background") if pjreddie else False
    layer = Region(ctx.input, num, coords, classes, block.bool("softmax"), tree, tree_error,
                   pjreddie, background)
    layer.anchors = anchors
    keys = read_keys(block, ctx.net.flavor, _FORWARD_KEYS, {"max": 30} if pjreddie else None)
    layer.settings = RegionLoss.from_keys(keys)
    layer.data = DataOptions.from_keys(keys)
    found = [(k, why) for k, why in _NOT_HONOURED.items() if block.has(k)]
    if pjreddie:
        found.append((None, "its loss follows AlexeyAB's forward_region_layer; pjreddie's "
                      "[region] loss (other layout and activations) is not reproduced"))
    layer.unhonoured_keys = tuple(found)
    layer.describe = f"{classes} classes"
    layer.filters = ctx.input.c
    return layer, ctx.input


# -- the loss (YOLOv2) ----------------------------------------------------------------------------

def region_deltas(layer: Region, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> Deltas:
    """AlexeyAB's src/region_layer.c forward_region_layer. Its deltas are true negative gradients
    with respect to the raw input (sigma' applied, softmax + cross-entropy on the classes)."""
    cfg = layer.settings
    n, k, classes, entries = layer.n, layer.coords, layer.classes, layer.entries
    batch, _, lh, lw = x.shape
    xd = work(x)
    dt, dev = xd.dtype, x.device
    with torch.no_grad():
        v = xd.reshape(batch, n, entries, lh, lw)
        out = layer.forward(xd).view_as(v)  # sigma on obj, softmax on the classes
        anchors = torch.tensor(layer.anchors[:2 * n], dtype=dt, device=dev).view(n, 2)
        aw, ah = anchors[:, 0].view(1, n, 1, 1), anchors[:, 1].view(1, n, 1, 1)
        col = torch.arange(lw, device=dev, dtype=dt).view(1, 1, 1, lw)
        row = torch.arange(lh, device=dev, dtype=dt).view(1, 1, lh, 1)
        sx, sy = torch.sigmoid(v[:, :, 0]), torch.sigmoid(v[:, :, 1])
        pred = torch.stack([(col + sx) / lw, (row + sy) / lh, torch.exp(v[:, :, 2]) * aw / lw,
                            torch.exp(v[:, :, 3]) * ah / lh], -1)  # (B, n, H, W, 4)
        p_obj = out[:, :, k]
        p_cls = out[:, :, k + 1:]
        obj_grad = p_obj * (1 - p_obj)
        alive, m_used = alive_truth(truth, int(cfg.max_boxes))
        t = truth[:, :m_used].to(dev, dt)
        alive = alive[:, :m_used].to(dev)
        cls_id = t[..., 4].long()
        usable = alive & (cls_id >= 0) & (cls_id < classes)
        delta = torch.zeros_like(v)

        # every slot: no-object objectness, ignored above thresh; classfix
        best_iou, best_t = best_truth(pred, t, usable)
        noobj = cfg.noobject_scale
        class_scale = cfg.class_scale
        avg_cat, class_count = 0.0, 0
        if cfg.classfix == -1:
            delta[:, :, k] = noobj * (best_iou - p_obj) * obj_grad
        else:
            above = best_iou > cfg.thresh
            delta[:, :, k] = torch.where(above, torch.zeros_like(p_obj),
                                         noobj * (0 - p_obj) * obj_grad)
            if cfg.classfix > 0 and bool(above.any()):
                fb, fm, fj, fi = above.nonzero(as_tuple=True)
                fc = cls_id[fb, best_t[fb, fm, fj, fi]]
                scale = class_scale * (p_obj[fb, fm, fj, fi] if cfg.classfix == 2 else 1.0)
                d, cat = _region_class(p_cls[fb, fm, :, fj, fi], fc, scale, cfg.focal_loss)
                delta[fb, fm, k + 1:, fj, fi] = d
                avg_cat, class_count = avg_cat + cat, class_count + len(fb)
        if seen < 12800:  # the prior: every box pulled to its anchor at the cell centre
            delta[:, :, 0] = 0.01 * (0.5 - sx) * sx * (1 - sx)
            delta[:, :, 1] = 0.01 * (0.5 - sy) * sy * (1 - sy)
            delta[:, :, 2] = 0.01 * (0 - v[:, :, 2])
            delta[:, :, 3] = 0.01 * (0 - v[:, :, 3])

        # every truth: its cell, the anchor whose (predicted, or with bias_match the anchor's)
        # shape fits best; a later truth in the same slot overwrites an earlier one
        b_b, b_t = usable.nonzero(as_tuple=True)
        tb = t[b_b, b_t]
        i = (tb[:, 0] * lw).long().clamp(0, lw - 1)
        j = (tb[:, 1] * lh).long().clamp(0, lh - 1)
        if cfg.bias_match:
            shapes = (anchors / torch.tensor([lw, lh], dtype=dt, device=dev))[None].expand(
                len(b_b), n, 2)
        else:
            shapes = pred[b_b, :, j, i, 2:]  # (T, n, 2)
        zeros = torch.zeros_like(shapes)
        fit = box_iou(torch.cat([zeros, shapes], -1),
                      torch.cat([torch.zeros_like(tb[:, None, :2]), tb[:, None, 2:4]], -1))
        best_n = first_argmax(fit)
        ious_t = box_iou(pred[b_b, best_n, j, i], tb[:, :4])
        count = len(b_b)
        slot = ((b_b * n + best_n) * lh + j) * lw + i
        last = pick(slot, b_t, "amax")
        lb, ln, lj, li, lt = b_b[last], best_n[last], j[last], i[last], tb[last]
        cs = cfg.coord_scale
        lsx, lsy = sx[lb, ln, lj, li], sy[lb, ln, lj, li]
        delta[lb, ln, 0, lj, li] = cs * (lt[:, 0] * lw - li - lsx) * lsx * (1 - lsx)
        delta[lb, ln, 1, lj, li] = cs * (lt[:, 1] * lh - lj - lsy) * lsy * (1 - lsy)
        delta[lb, ln, 2, lj, li] = cs * (torch.log(lt[:, 2] * lw / anchors[ln, 0])
                                         - v[lb, ln, 2, lj, li])
        delta[lb, ln, 3, lj, li] = cs * (torch.log(lt[:, 3] * lh / anchors[ln, 1])
                                         - v[lb, ln, 3, lj, li])
        po = p_obj[lb, ln, lj, li]
        target = ious_t[last] if cfg.rescore else torch.ones_like(po)
        delta[lb, ln, k, lj, li] = cfg.object_scale * (target - po) * po * (1 - po)
        d, _ = _region_class(p_cls[lb, ln, :, lj, li], lt[:, 4].long(), class_scale,
                             cfg.focal_loss)
        delta[lb, ln, k + 1:, lj, li] = d
        # statistics of every truth (Darknet prints them per truth, overwritten or not)
        avg_cat += float(p_cls[b_b, best_n, :, j, i].gather(
            1, tb[:, 4].long()[:, None]).double().sum()) if count else 0.0
        class_count += count
        cost = (delta.double() ** 2).sum()
        stats = _region_stats(delta, k, ious_t, p_obj[b_b, best_n, j, i], p_obj, avg_cat,
                              class_count, count, batch, float(cost))
    return Deltas(delta, cost, stats)


def _region_class(p: torch.Tensor, cls: torch.Tensor, scale, focal: bool):
    """delta_region_class (flat): scale·(onehot - out), focal as in [yolo]; and Σ out[class]."""
    onehot = torch.nn.functional.one_hot(cls, p.shape[1]).to(p.dtype)
    scale = torch.as_tensor(scale, dtype=p.dtype, device=p.device)
    scale = scale[:, None] if scale.dim() else scale
    d = scale * (onehot - p)
    if focal:
        pt = p.gather(1, cls[:, None]) + 1e-15
        d = d * (0.5 * -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1))
    return d, float(p.gather(1, cls[:, None]).double().sum()) if len(cls) else 0.0


def _region_stats(delta, k, ious, p_obj_t, p_obj, avg_cat, class_count, count, batch, cost):
    total = float((delta.double() ** 2).sum())
    box = float((delta[:, :, :k].double() ** 2).sum())
    return {
        "avg_iou": float(ious.double().sum()) / count if count else 0.0,
        "count": count,
        "avg_class": avg_cat / class_count if class_count else 0.0,
        "avg_obj": float(p_obj_t.double().sum()) / count if count else 0.0,
        "avg_noobj": float(p_obj.double().mean()),
        "avg_recall": float((ious > 0.5).sum()) / count if count else 0.0,
        "class_loss": (total - box) / batch,
        "iou_loss": box / batch,
        "total_loss": total / batch,
        "cost": cost,
    }

