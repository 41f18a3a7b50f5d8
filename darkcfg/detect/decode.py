"""Detection inference: Darknet's box decoding (`get_network_boxes`), NMS (`do_nms_sort`,
`greedynms`, `diounms`) and an image -> boxes pipeline (`detect`). DETECTION.md §1-§2.

Each head's forward already applies Darknet's in-layer activation (builders/heads.py); what is
left is the per-head arithmetic of `get_*_detections`. That lives in one `HeadDecoding` per head
class, found through `decoding_for(layer)` (a registry keyed by layer class, or a head's own
`head_decoding` attribute), never through a chain of type tests.

    outputs = net(x, collect=head_indices(net))
    dets = nms(decode(net, outputs, thresh=0.25))         # one Detections per image
    boxes, objectness, scores = head_predictions(net, outputs)   # dense tensors, for export
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from builders.heads import Detection, Region, YoloHead
from builders.layer import Layer

# -- per-head decoding ----------------------------------------------------------------------------


class HeadParts(NamedTuple):
    """One head's candidates in Darknet's order: boxes (N,k,4) relative centre/size, Darknet's
    `objectness` field (N,k) and the class probabilities before thresholding (N,k,C)."""

    boxes: torch.Tensor
    objectness: torch.Tensor
    scores: torch.Tensor


class HeadDecoding:
    """What `get_network_boxes` does for one kind of head. Subclasses give `predictions`; the
    default thresholding is Darknet's `prob = p if p > thresh else 0`, every box kept."""

    #: `correct_yolo_boxes` (letterbox undo) applies to this head's boxes ([detection]: no).
    letterbox: bool = True

    def predictions(self, layer: Layer, y: torch.Tensor, net_w: int, net_h: int) -> HeadParts:
        raise NotImplementedError

    def unsupported(self, layer: Layer) -> tuple[str, str] | None:
        """(the cfg key at fault, why) when this layer's options cannot be decoded; else None."""
        return None

    def keep(self, layer: Layer, parts: HeadParts, thresh: torch.Tensor):
        """Which candidates Darknet emits: (N,k) bool, or None for all of them."""
        return None

    def threshold(self, layer: Layer, objectness: torch.Tensor, scores: torch.Tensor,
                  thresh: torch.Tensor):
        """(objectness, probs) of the emitted candidates (any leading shape)."""
        return objectness, torch.where(scores > thresh, scores, 0.0)

    def nms_kind(self, layer: Layer) -> tuple[str, float]:
        """(nms_kind, beta_nms) as Darknet parses them for this head (unknown -> default)."""
        options = getattr(layer, "train_options", {}) or {}
        kind = str(options.get("nms_kind", "default"))
        if kind not in ("greedynms", "diounms", "cornersnms"):
            kind = "default"
        return kind, float(options.get("beta_nms", 0.0))


def _cells(h: int, w: int, n: int, device, anchor_major: bool = False):
    """col, row (float) of every (cell, anchor) pair, cell-major with the anchor inner (Darknet's
    [yolo]/AlexeyAB [region] order), or anchor-major (pjreddie [region])."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32),
                                indexing="ij")
    if anchor_major:
        return cols.reshape(1, -1).expand(n, -1).reshape(-1), \
            rows.reshape(1, -1).expand(n, -1).reshape(-1)
    return cols.reshape(-1, 1).expand(-1, n).reshape(-1), \
        rows.reshape(-1, 1).expand(-1, n).reshape(-1)


def _per_anchor(values: list[float], h: int, w: int, device, anchor_major: bool = False):
    t = torch.tensor(values, dtype=torch.float32, device=device)
    return t.repeat_interleave(h * w) if anchor_major else t.repeat(h * w)


class YoloDecoding(HeadDecoding):
    """[yolo] (`get_yolo_box`, new_coords 0/1; scale_x_y is already in the forward) and
    [Gaussian_yolo] (`get_gaussian_yolo_box`: means at 0/2/4/6, uncertainties at 1/3/5/7)."""

    def predictions(self, layer, y, net_w, net_h):
        n, entries, classes = layer.n, layer.entries, layer.classes
        box = entries - 1 - classes  # 4, or 8 for [Gaussian_yolo]
        h, w = y.shape[-2], y.shape[-1]
        v = y.reshape(y.shape[0], n, entries, h, w).permute(0, 3, 4, 1, 2)
        v = v.reshape(y.shape[0], h * w * n, entries).float()
        step = box // 4  # entry stride between the four means
        tx, ty, tw, th = (v[..., i * step] for i in range(4))
        col, row = _cells(h, w, n, y.device)
        aw = _per_anchor([layer.anchors[2 * k] for k in layer.mask], h, w, y.device)
        ah = _per_anchor([layer.anchors[2 * k + 1] for k in layer.mask], h, w, y.device)
        bx, by = (col + tx) / w, (row + ty) / h
        if getattr(layer, "new_coords", False):
            bw, bh = tw * tw * 4 * aw / net_w, th * th * 4 * ah / net_h
        else:
            bw, bh = torch.exp(tw) * aw / net_w, torch.exp(th) * ah / net_h
        obj = v[..., box]
        cls = v[..., box + 1:]
        scores = obj[..., None] * cls
        if box == 8:
            point = (getattr(layer, "train_options", {}) or {}).get("yolo_point", "center")
            sign = {"left_top": 1.0, "right_bottom": -1.0}.get(point, 0.0)
            bx, by = bx + sign * bw / 2, by + sign * bh / 2
            uncertainty = (v[..., 1] + v[..., 3] + v[..., 5] + v[..., 7]) / 4
            scores = scores * (1 - uncertainty)[..., None]
        return HeadParts(torch.stack([bx, by, bw, bh], -1), obj, scores)

    def keep(self, layer, parts, thresh):
        return parts.objectness > thresh  # strict; NaN is dropped


class RegionDecoding(HeadDecoding):
    """[region] (YOLOv2). AlexeyAB (`custom_get_region_detections`): cell-major, objectness 1,
    x,y get their logistic here. pjreddie (`get_region_detections`): anchor-major, x,y were
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
        col, row = _cells(h, w, n, y.device, anchor_major=pj)
        aw = _per_anchor(layer.anchors[0:2 * n:2], h, w, y.device, anchor_major=pj)
        ah = _per_anchor(layer.anchors[1:2 * n:2], h, w, y.device, anchor_major=pj)
        tx, ty = (v[..., 0], v[..., 1]) if pj else (torch.sigmoid(v[..., 0]),
                                                     torch.sigmoid(v[..., 1]))
        boxes = torch.stack([(col + tx) / w, (row + ty) / h,
                             torch.exp(v[..., 2]) * aw / w, torch.exp(v[..., 3]) * ah / h], -1)
        scale = torch.ones_like(v[..., k]) if layer.background else v[..., k]
        options = getattr(layer, "train_options", {}) or {}
        if not pj and options.get("classfix", 0) == -1:
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


class DetectionDecoding(HeadDecoding):
    """[detection] (YOLOv1, `get_detection_detections`): cell-major, then box. Boxes are given
    relative (Darknet multiplies them by the caller's w,h whatever `relative` says) and get no
    letterbox correction, as in Darknet."""

    letterbox = False

    def predictions(self, layer, y, net_w, net_h):
        side, n, classes, coords = layer.side, layer.num, layer.classes, layer.coords
        cells = side * side
        y = y.reshape(y.shape[0], -1).float()
        cls = y[:, :cells * classes].reshape(-1, cells, 1, classes)
        conf = y[:, cells * classes:cells * (classes + n)].reshape(-1, cells, n)
        box = y[:, cells * (classes + n):].reshape(-1, cells, n, coords)
        col, row = _cells(side, side, n, y.device)
        col, row = col.reshape(cells, n), row.reshape(cells, n)
        power = 2 if (getattr(layer, "train_options", {}) or {}).get("sqrt") else 1
        boxes = torch.stack([(box[..., 0] + col) / side, (box[..., 1] + row) / side,
                             box[..., 2] ** power, box[..., 3] ** power], -1)
        scores = conf[..., None] * cls
        return HeadParts(boxes.reshape(y.shape[0], cells * n, 4), conf.reshape(y.shape[0], -1),
                         scores.reshape(y.shape[0], cells * n, classes))


_DECODINGS: dict[type, HeadDecoding] = {
    YoloHead: YoloDecoding(), Region: RegionDecoding(), Detection: DetectionDecoding()}


def register_decoding(layer_class: type, decoding: HeadDecoding) -> None:
    """Teach `decode` a new head class (plugins)."""
    _DECODINGS[layer_class] = decoding


def decoding_for(layer: Layer) -> HeadDecoding | None:
    """The layer's own `head_decoding`, else the registered one for its class (or a base)."""
    own = getattr(layer, "head_decoding", None)
    if own is not None:
        return own
    for cls in type(layer).__mro__:
        if cls in _DECODINGS:
            return _DECODINGS[cls]
    return None


def head_indices(net) -> list[int]:
    """Indices of the layers Darknet's get_network_boxes reads, in cfg order."""
    return [i for i, layer in enumerate(net.layers) if decoding_for(layer) is not None]


def _net_size(net, index: int, y: torch.Tensor, input_size) -> tuple[int, int]:
    """(net_w, net_h) the head ran at: given, or the cfg's scaled by the grid (a fully
    convolutional net run at another size keeps its stride)."""
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    built = net.shapes[index]
    if y.dim() == 4 and built.w and built.h and (y.shape[-1] != built.w or y.shape[-2] != built.h):
        return net.info.width * y.shape[-1] // built.w, net.info.height * y.shape[-2] // built.h
    return net.info.width, net.info.height


def _heads(net, outputs: dict[int, torch.Tensor], input_size=None):
    heads = head_indices(net)
    if not heads:
        raise ValueError("the network has no detection head ([yolo], [Gaussian_yolo], "
                         "[region] or [detection])")
    missing = [i for i in heads if i not in outputs]
    if missing:
        raise KeyError(f"outputs lack head layer(s) {missing}: run net(x, collect={heads})")
    found = []
    for i in heads:
        layer, decoding = net.layers[i], decoding_for(net.layers[i])
        net_w, net_h = _net_size(net, i, outputs[i], input_size)
        found.append((i, layer, decoding, decoding.predictions(layer, outputs[i], net_w, net_h)))
    return found


def head_predictions(net, outputs: dict[int, torch.Tensor], input_size=None):
    """Every candidate box of every head, in get_network_boxes order, no thresholding:
    (boxes (N,K,4) relative cx,cy,w,h, objectness (N,K), class_scores (N,K,C)), with
    class_scores = Darknet's probs before thresholding (objectness x class probability; [region]
    AlexeyAB: sigma(obj) x softmax, objectness field 1). Trace-friendly: no data-dependent
    control flow. `input_size` = (w, h) of the network input (default: inferred from the grid).
    Heads with a different class count than the first are an error, as Darknet reports."""
    found = _heads(net, outputs, input_size)
    classes = found[0][3].scores.shape[-1]
    for i, _, _, parts in found:
        if parts.scores.shape[-1] != classes:
            raise ValueError(f"head {i} has {parts.scores.shape[-1]} classes, the first head "
                             f"{classes}: Darknet decodes with the first head's count")
    return (torch.cat([p.boxes for *_, p in found], 1),
            torch.cat([p.objectness for *_, p in found], 1),
            torch.cat([p.scores for *_, p in found], 1))


# -- decode ---------------------------------------------------------------------------------------


@dataclass
class Detections:
    """One image's detections in get_network_boxes order (DETECTION.md §1.1).

    boxes (K,4): relative centre x, y and size w, h; objectness (K); probs (K,C): zero where
    Darknet zeroes them (below thresh, or suppressed by `nms`); layer (K): the head each came
    from; index (K): its position among `head_predictions`' K candidates."""

    boxes: torch.Tensor
    objectness: torch.Tensor
    probs: torch.Tensor
    layer: torch.Tensor
    index: torch.Tensor
    nms_kind: str = "default"
    beta_nms: float = 0.6

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def classes(self) -> int:
        return self.probs.shape[1]

    def pairs(self) -> set[tuple[int, int]]:
        """{(detection, class)} whose prob is nonzero."""
        return {(int(i), int(c)) for i, c in torch.nonzero(self.probs).tolist()}

    def to(self, device) -> Detections:
        return replace(self, **{k: getattr(self, k).to(device)
                                for k in ("boxes", "objectness", "probs", "layer", "index")})


def _sizes(image_size, batch: int):
    if image_size is None:
        return [None] * batch
    if len(image_size) == 2 and not isinstance(image_size[0], (tuple, list)):
        return [tuple(image_size)] * batch
    if len(image_size) != batch:
        raise ValueError(f"{len(image_size)} image sizes for {batch} images")
    return [tuple(s) for s in image_size]


def letterbox_size(image_w: int, image_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """(new_w, new_h) of the image inside a letterboxed net input (integer rule, §1.3)."""
    if np.float32(net_w) / np.float32(image_w) < np.float32(net_h) / np.float32(image_h):
        return net_w, (image_h * net_w) // image_w
    return (image_w * net_h) // image_h, net_h


def correct_boxes(boxes: torch.Tensor, image_size, net_size, letter_box: bool) -> torch.Tensor:
    """Darknet's correct_yolo_boxes with relative=1: undo the letterbox (identity without)."""
    if not letter_box or image_size is None:
        return boxes
    (w, h), (net_w, net_h) = image_size, net_size
    new_w, new_h = letterbox_size(int(w), int(h), int(net_w), int(net_h))
    b = boxes.double()
    x = (b[:, 0] - (net_w - new_w) / 2.0 / net_w) / np.float32(new_w / net_w)
    y = (b[:, 1] - (net_h - new_h) / 2.0 / net_h) / np.float32(new_h / net_h)
    bw = b[:, 2] * np.float32(net_w / new_w)
    bh = b[:, 3] * np.float32(net_h / new_h)
    return torch.stack([x, y, bw, bh], 1).to(boxes.dtype)


def decode(net, outputs: dict[int, torch.Tensor], thresh: float = 0.25, *, image_size=None,
           letter_box: bool = False, input_size=None) -> list[Detections]:
    """Darknet's get_network_boxes for every image of the batch: one `Detections` each.

    `outputs` = {head layer index: tensor} as `net(x, collect=head_indices(net))` returns.
    `image_size` = (w, h) of the original image (or one per image) with `letter_box` applies
    correct_yolo_boxes; boxes stay relative. `input_size` = the net input (w, h) if it is not the
    cfg's (default: inferred from the grids)."""
    found = _heads(net, outputs, input_size)
    t = torch.tensor(thresh, dtype=torch.float32)
    classes = found[0][3].scores.shape[-1]
    batch = found[0][3].boxes.shape[0]
    sizes = _sizes(image_size, batch)
    kind, beta = found[-1][2].nms_kind(found[-1][1])  # the last head's, as detector test
    per_head, start = [], 0
    for i, layer, decoding, parts in found:
        if parts.scores.shape[-1] != classes:
            raise ValueError(f"head {i} has {parts.scores.shape[-1]} classes, the first head "
                             f"{classes}: Darknet decodes with the first head's count")
        t = t.to(parts.boxes.device)
        keep = decoding.keep(layer, parts, t)
        net_size = _net_size(net, i, outputs[i], input_size)
        per_head.append((i, layer, decoding, parts, keep, start, net_size))
        start += parts.boxes.shape[1]
    results = []
    for b in range(batch):
        pieces = []
        for _, layer, decoding, parts, keep, first, net_size in per_head:
            index = torch.arange(first, first + parts.boxes.shape[1], device=parts.boxes.device)
            if keep is not None:  # select first: thresholding only the emitted rows is cheaper
                sel = torch.nonzero(keep[b]).flatten()
                bx, obj, scores, index = (parts.boxes[b, sel], parts.objectness[b, sel],
                                          parts.scores[b, sel], index[sel])
            else:
                bx, obj, scores = parts.boxes[b], parts.objectness[b], parts.scores[b]
            obj, probs = decoding.threshold(layer, obj, scores, t)
            if decoding.letterbox:
                bx = correct_boxes(bx, sizes[b], net_size, letter_box)
            pieces.append((bx, obj, probs, index))
        cat = [torch.cat([p[j] for p in pieces]) for j in range(4)]
        layer_of = torch.cat([torch.full((p[0].shape[0],), i, dtype=torch.long,
                                         device=p[0].device)
                              for (i, *_), p in zip(per_head, pieces, strict=True)])
        results.append(Detections(cat[0], cat[1], cat[2], layer_of, cat[3], kind, beta))
    return results


# -- NMS ------------------------------------------------------------------------------------------

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Darknet's box_iou between every box of a (n,4) and b (m,4), centre/size, float32."""
    al, ar = a[:, None, 0] - a[:, None, 2] / 2, a[:, None, 0] + a[:, None, 2] / 2
    bl, br = b[None, :, 0] - b[None, :, 2] / 2, b[None, :, 0] + b[None, :, 2] / 2
    at, ab = a[:, None, 1] - a[:, None, 3] / 2, a[:, None, 1] + a[:, None, 3] / 2
    bt, bb = b[None, :, 1] - b[None, :, 3] / 2, b[None, :, 1] + b[None, :, 3] / 2
    ow = torch.minimum(ar, br) - torch.maximum(al, bl)
    oh = torch.minimum(ab, bb) - torch.maximum(at, bt)
    inter = torch.where((ow < 0) | (oh < 0), 0.0, ow * oh)
    union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
    iou = inter / union
    return torch.where((inter == 0) | (union == 0), 0.0, iou)


def box_diou(a: torch.Tensor, b: torch.Tensor, beta: float = 0.6) -> torch.Tensor:
    """Darknet's box_diou (beta 0.6) / box_diounms: iou - (d²/c²)^beta, c = the enclosing box's
    diagonal (iou alone when c² = 0)."""
    return _diou_of_pairs(a[:, None], b[None], box_iou(a, b), beta)


def _diou_of_pairs(a: torch.Tensor, b: torch.Tensor, iou: torch.Tensor, beta: float):
    """box_diou of the boxes a and b (..., 4, broadcasting) whose IoU is `iou`."""
    left = torch.minimum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2)
    right = torch.maximum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2)
    top = torch.minimum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2)
    bot = torch.maximum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2)
    c = (right - left) ** 2 + (bot - top) ** 2
    d = (a[..., 0] - b[..., 0]) ** 2 + (a[..., 1] - b[..., 1]) ** 2
    term = torch.pow((d.double() / c.double()), beta).float()
    return torch.where(c == 0, iou, iou - term)


def _diou_above(boxes: torch.Tensor, thresh: float, beta: float) -> np.ndarray:
    """box_diou(boxes, boxes, beta) > thresh as a numpy bool matrix, diagonal False. The distance
    term is >= 0, so only pairs whose IoU alone passes can pass: the term is computed for those
    (few) pairs only."""
    iou = box_iou(boxes, boxes)
    i, j = torch.nonzero(iou > thresh, as_tuple=True)
    passes = _diou_of_pairs(boxes[i], boxes[j], iou[i, j], beta) > thresh
    similar = torch.zeros_like(iou, dtype=torch.bool)
    similar[i[passes], j[passes]] = True
    similar.fill_diagonal_(False)
    return similar.cpu().numpy()


def _greedy(similar: np.ndarray, rows: np.ndarray, suppresses: np.ndarray | None = None
            ) -> np.ndarray:
    """Greedy suppression: visit `rows` (indices into the symmetric `similar`, diagonal False)
    in descending score order; a row not yet removed removes all it is similar to. An earlier
    survivor is never hit (it would have removed the later row first), so no triangle is needed.
    Returns the mask of `rows` that survive."""
    removed = np.zeros(similar.shape[0], dtype=bool)
    if suppresses is None:
        suppresses = similar.any(1)
    for r in rows[suppresses[rows]]:  # rows that suppress nothing need no visit
        if not removed[r]:
            removed |= similar[r]
    return ~removed[rows]


def _suppressed_default(boxes, probs, active, thresh):
    """do_nms_sort with torchvision's kernel: one batched_nms over the (detection, class) pairs;
    float64 boxes so its per-class coordinate offsets cost no precision."""
    from torchvision.ops import batched_nms

    det, cls = torch.nonzero((probs > 0) & active[:, None], as_tuple=True)
    b = boxes[det]
    half = b[:, 2:] / 2
    xyxy = torch.cat([b[:, :2] - half, b[:, :2] + half], 1).double()
    kept = batched_nms(xyxy, probs[det, cls].double(), cls, thresh)
    out = torch.zeros_like(probs, dtype=torch.bool)
    out[det, cls] = True
    out[det[kept], cls[kept]] = False
    return out


def _suppressed_diou(boxes, probs, active, thresh, beta):
    """diounms_sort: the same per-class greedy loop with a DIoU test (Darknet's, not in
    torchvision). The similarity matrix is computed once over the boxes any class uses (when it
    fits) and each class walks its rows in its own order."""
    out = torch.zeros_like(probs, dtype=torch.bool)
    positive = (probs > 0) & active[:, None]
    used = torch.nonzero(positive.any(1)).flatten()

    def similar_of(index):
        return _diou_above(boxes[index], thresh, beta)

    shared = similar_of(used) if used.numel() <= 4096 else None  # 4096² bools = 16 MiB
    shared_suppresses = shared.any(1) if shared is not None else None
    local = torch.full((probs.shape[0],), -1, dtype=torch.long, device=probs.device)
    local[used] = torch.arange(used.numel(), device=probs.device)
    for k in torch.nonzero(positive.any(0)).flatten().tolist():
        members = torch.nonzero(positive[:, k]).flatten()
        order = members[torch.sort(probs[members, k], descending=True, stable=True).indices]
        if shared is not None:
            survivors = _greedy(shared, local[order].cpu().numpy(), shared_suppresses)
        else:
            survivors = _greedy(similar_of(order), np.arange(order.numel()))
        out[order[~torch.from_numpy(survivors).to(order.device)], k] = True
    return out


def nms(dets, thresh: float = 0.45, kind: str | None = None, beta: float | None = None):
    """Darknet's NMS on one `Detections` (or a list): per class, greedy in descending prob order,
    the suppressed detections' prob for that class set to 0; boxes, objectness and the order stay
    (Darknet also permutes its array; the kept (detection, class) pairs are the same).

    kind: "default" (do_nms_sort, IoU > thresh), "greedynms" (DIoU with exponent 0.6),
    "diounms" (IoU - (d²/c²)^beta), "cornersnms" (IoU); default: the last head's nms_kind and
    beta_nms, as `darknet detector test`. Detections with objectness 0 take no part."""
    if isinstance(dets, (list, tuple)):
        return [nms(d, thresh, kind, beta) for d in dets]
    kind = dets.nms_kind if kind is None else kind
    beta = dets.beta_nms if beta is None else beta
    if kind not in NMS_KINDS:
        raise ValueError(f"nms kind must be one of {', '.join(NMS_KINDS)}, not {kind!r}")
    if len(dets) == 0:
        return replace(dets)
    active = dets.objectness != 0
    boxes, probs = dets.boxes.float(), dets.probs
    if kind in ("default", "cornersnms"):
        suppressed = _suppressed_default(boxes, probs, active, thresh)
    else:
        suppressed = _suppressed_diou(boxes, probs, active, thresh,
                                      0.6 if kind == "greedynms" else beta)
    return replace(dets, probs=probs.masked_fill(suppressed, 0.0))


# -- images -> boxes ------------------------------------------------------------------------------


class Found(NamedTuple):
    """One detected object: class id, class name ("" if unknown), score, and the box (left, top,
    right, bottom) in pixels of the original image (not clipped)."""

    class_id: int
    name: str
    score: float
    box: tuple[float, float, float, float]


def resize_image(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Darknet's resize_image on (N,C,H,W) floats: bilinear, align-corners, no antialias."""
    if x.shape[-1] == w and x.shape[-2] == h:
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


def letterbox_image(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Darknet's letterbox_image: keep the aspect ratio (integer rule), paste centred (integer
    offset) on a 0.5 grey canvas."""
    new_w, new_h = letterbox_size(x.shape[-1], x.shape[-2], w, h)
    canvas = x.new_full((*x.shape[:-2], h, w), 0.5)
    top, left = (h - new_h) // 2, (w - new_w) // 2
    canvas[..., top:top + new_h, left:left + new_w] = resize_image(x, new_w, new_h)
    return canvas


def load_image(image, channels: int = 3) -> torch.Tensor:
    """A path, PIL image or tensor as a (C,H,W) float tensor in [0,1] (uint8 tensors are /255).
    Raises OSError (with the path) for an unreadable file."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        from darkcfg.data.base import eight_bit, image_errors

        try:
            with Image.open(image) as im:
                image = eight_bit(im).convert("L" if channels == 1 else "RGB")
                image.load()
        except image_errors() as exc:
            raise OSError(f"cannot read image '{image}': {exc}") from None
    if not isinstance(image, torch.Tensor):
        from darkcfg.data.base import eight_bit

        image = eight_bit(image)
        if channels == 1:
            image = image.convert("L")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        arr = np.asarray(image, dtype=np.uint8)
        image = torch.from_numpy(arr.copy())
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    if image.dim() != 3:
        raise ValueError(f"an image tensor is (C, H, W), not {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255
    image = image.float()
    if image.shape[0] != channels:
        image = image.repeat((channels + image.shape[0] - 1) // image.shape[0], 1, 1)[:channels]
    return image


def c_round(v: float) -> float:
    """C's round(): halves away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def found_objects(dets: Detections, thresh: float, image_w: float, image_h: float,
                  names: Sequence[str] = ()) -> list[Found]:
    """What `detector test` prints (draw_detections_v3): detections with a class prob > thresh,
    by left edge (ties in detection order); for each, the best class first (the lowest id among
    equals), then the other classes > thresh in id order."""
    probs = dets.probs.float().cpu().numpy()
    single = dets.boxes.float().cpu().numpy()
    boxes = single.astype(np.float64)  # pixel corners in double, as Python floats would be
    above = probs > thresh
    rows = np.flatnonzero(above.any(1))
    left = single[rows, 0] - single[rows, 2] / np.float32(2)  # the sort key in float32
    rows = rows[np.argsort(left, kind="stable")]
    best = np.where(above[rows], probs[rows], -1.0).argmax(1)
    # every (row, class) pair above thresh, row by row in print order, the best class first
    at, cls = np.nonzero(above[rows])
    order = np.lexsort((cls, cls != best[at], at))
    at, cls = at[order], cls[order]
    det = rows[at]
    x, y, w, h = boxes[det].T
    label = [names[c] if c < len(names) else "" for c in range(probs.shape[1])]
    with _collector_paused():
        corners = zip(((x - w / 2) * image_w).tolist(), ((y - h / 2) * image_h).tolist(),
                      ((x + w / 2) * image_w).tolist(), ((y + h / 2) * image_h).tolist(),
                      strict=True)
        return [Found(c, label[c], score, box) for c, score, box in
                zip(cls.tolist(), probs[det, cls].astype(np.float64).tolist(), corners,
                    strict=True)]


@contextlib.contextmanager
def _collector_paused():
    """Builds tens of thousands of small objects without the cyclic collector running midway
    (at a low thresh it took 3/4 of the time: 0.27 s of 0.35 s for 39k objects)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def net_letter_box(net) -> bool:
    return bool(net.net_block.get("letter_box", 0))


def _device_of(net) -> torch.device:
    param = next(iter(net.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def detect_batches(net, images: Sequence, thresh: float = 0.25, nms: float = 0.45,
                   letter_box: bool | None = None, *, names: Sequence[str] = (),
                   batch_size: int = 8, nms_kind: str | None = None):
    """`detect`, one batch at a time: yields (images (each (C,H,W) in [0,1]), their
    Detections (after NMS, boxes relative to the original image), their `Found` lists)."""
    letter = net_letter_box(net) if letter_box is None else bool(letter_box)
    net.eval()
    device = _device_of(net)
    heads = head_indices(net)
    if not heads:
        raise ValueError("the network has no detection head ([yolo], [Gaussian_yolo], "
                         "[region] or [detection])")
    w, h, c = net.info.width, net.info.height, net.info.channels
    fit = letterbox_image if letter else resize_image
    for start in range(0, len(images), batch_size):
        chunk = [load_image(im, c) for im in images[start:start + batch_size]]
        sizes = [(im.shape[-1], im.shape[-2]) for im in chunk]
        x = torch.cat([fit(im[None].to(device), w, h) for im in chunk])
        dets = detections_for_input(net, x, thresh, image_size=sizes, letter_box=letter,
                                    nms_thresh=nms, nms_kind=nms_kind, heads=heads)
        yield chunk, dets, [found_objects(d, thresh, iw, ih, names)
                            for d, (iw, ih) in zip(dets, sizes, strict=True)]


def detect(net, images, thresh: float = 0.25, nms: float = 0.45, letter_box: bool | None = None,
           *, names: Sequence[str] = (), batch_size: int = 8,
           nms_kind: str | None = None) -> list[list[Found]]:
    """Images (paths, PIL images or (C,H,W) tensors; one or a list) -> per image a list of
    `Found` (class id, name, score, box (left, top, right, bottom) in original pixels), as
    `darknet detector test`: RGB in [0,1], resize_image or letterbox_image (`letter_box`,
    default [net] letter_box), get_network_boxes at `thresh`, the last head's NMS at `nms`
    (0: none), the objects in the order Darknet prints them. Batched, on the net's device, under
    autocast on CUDA. The net is put in eval mode."""
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)) and \
            not (isinstance(images, torch.Tensor) and images.dim() == 4):
        images = [images]
    results: list[list[Found]] = []
    for _, _, found in detect_batches(net, list(images), thresh, nms, letter_box, names=names,
                                      batch_size=batch_size, nms_kind=nms_kind):
        results += found
    return results


def run_heads(net, x: torch.Tensor, heads: list[int] | None = None) -> dict[int, torch.Tensor]:
    """The head outputs for input x, under autocast on CUDA (decoded in float32 after)."""
    heads = head_indices(net) if heads is None else heads
    autocast = torch.autocast("cuda", dtype=torch.float16) if x.device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        outs = net(x, collect=heads)
    return {i: y.float() for i, y in outs.items()}


def detections_for_input(net, x: torch.Tensor, thresh: float = 0.25, *, image_size=None,
                         letter_box: bool = False, nms_thresh: float = 0.45,
                         nms_kind: str | None = None, heads=None) -> list[Detections]:
    """forward + decode + nms on a prepared network input (N,C,H,W)."""
    outputs = run_heads(net, x, heads)
    dets = decode(net, outputs, thresh, image_size=image_size, letter_box=letter_box,
                  input_size=(x.shape[-1], x.shape[-2]) if x.dim() == 4 else None)
    return nms(dets, nms_thresh, nms_kind) if nms_thresh else dets
