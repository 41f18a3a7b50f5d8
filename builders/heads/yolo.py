"""[yolo] (YOLOv3/v4): its layer, builder, typed loss settings, loss and decoding.

Forward: Darknet's in-layer activation (src/yolo_layer.c forward_yolo_layer: logistic on x, y,
objectness and classes unless new_coords, then scale_x_y on x, y). Loss: forward_yolo_layer in
training (delta_yolo_box, delta_yolo_class, the ignore/truth thresholds, iou_thresh extras).
Decode: get_yolo_detections / get_yolo_box. The section's schema and torch-free rules are in
cfgparse (schema.SECTIONS["yolo"], rules.HEAD_INPUTS)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cfgparse import Block

from .. import native
from ..boxes import box_giou, box_iou, box_iou_kind, dx_box_iou
from ..registry import BuildContext, Shape, register
from .base import (
    NMS_KINDS,
    DataOptions,
    Deltas,
    DetectionHead,
    HeadDecoding,
    HeadParts,
    alive_truth,
    anchors_of,
    best_truth,
    cells,
    check_input,
    finite,
    first_argmax,
    grid,
    mask_of,
    pick,
    read_keys,
    transform_runs,
    work,
)

_IOU_KINDS = ("mse", "giou", "diou", "ciou")  # any other iou_loss string means plain "iou"
# Keys the builder reads itself (the forward's), not kept as settings.
_FORWARD_KEYS = frozenset({"classes", "num", "mask", "anchors", "scale_x_y", "new_coords"})
# Keys Darknet reads but that play no part in the loss, or that we do not implement.
_NOT_HONOURED = {
    "map": "the class remap file of [yolo] map is not applied by the loss",
    "embedding_layer": "tracking embeddings are not trained",
    **dict.fromkeys(("track_history_size", "sim_thresh", "dets_for_track", "dets_for_show",
                     "track_ciou_norm"), "tracking is not implemented"),
    "delta_normalizer": "Darknet's CPU build ignores it (only its GPU backward scales the delta); "
                        "darkcfg follows the CPU build",
}


@dataclass(frozen=True)
class YoloLoss:
    """The loss settings of a [yolo] / [Gaussian_yolo], read once from its block
    (src/parser.c parse_yolo / parse_gaussian_yolo, with Darknet's defaults)."""

    kind: str = "mse"  # iou_loss: mse, iou, giou, diou, ciou
    iou_norm: float = 0.75
    obj_norm: float = 1.0
    cls_norm: float = 1.0
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    iou_thresh_kind: str = "iou"
    max_delta: float | None = None
    focal: bool = False
    smooth_eps: float = 0.0
    objectness_smooth: bool = False
    show_details: bool = True
    max_boxes: int = 200
    class_multipliers: tuple[float, ...] | None = None  # counters_per_class
    uc_norm: float = 1.0  # [Gaussian_yolo] uc_normalizer
    yolo_point: str = "center"  # [Gaussian_yolo]
    pjreddie: bool = False  # pjreddie's forward_yolo_layer (no normalizers, last truth wins)

    @classmethod
    def from_keys(cls, block: Block, keys: dict, classes: int, pjreddie: bool) -> YoloLoss:
        kind = str(keys.get("iou_loss", "mse"))
        max_delta = None if keys.get("max_delta") is None else float(keys["max_delta"])
        return cls(
            kind=kind if kind in _IOU_KINDS else "iou",
            # pjreddie reads no normalizers: they are all 1
            iou_norm=1.0 if pjreddie else float(keys["iou_normalizer"]),
            obj_norm=1.0 if pjreddie else float(keys["obj_normalizer"]),
            cls_norm=1.0 if pjreddie else float(keys["cls_normalizer"]),
            ignore_thresh=float(keys["ignore_thresh"]), truth_thresh=float(keys["truth_thresh"]),
            iou_thresh=float(keys.get("iou_thresh", 1.0)),
            iou_thresh_kind=str(keys.get("iou_thresh_kind", "iou")),
            max_delta=max_delta,
            focal=bool(keys.get("focal_loss", 0)),
            smooth_eps=float(keys.get("label_smooth_eps", 0)),
            objectness_smooth=bool(keys.get("objectness_smooth", 0)),
            # Darknet's default is 1 (the schema's 0 only matters when the key is written)
            show_details=bool(keys["show_details"]) if block.has("show_details") else True,
            max_boxes=int(keys["max"]),
            class_multipliers=_class_multipliers(block, keys, classes, max_delta),
            uc_norm=float(keys.get("uc_normalizer", 1.0)),
            yolo_point=str(keys.get("yolo_point", "center")),
            pjreddie=pjreddie,
        )


def _class_multipliers(block: Block, keys: dict, classes: int, max_delta: float | None):
    """counters_per_class -> per-class multipliers max/count, capped at max_delta
    (src/yolo_layer.c make_yolo_layer / parse_yolo)."""
    if not keys.get("counters_per_class"):
        return None
    try:
        counts = [int(float(v)) for v in str(keys["counters_per_class"]).split(",") if v.strip()]
    except ValueError:
        counts = []
    if len(counts) != classes:
        raise block.error("E304", f"counters_per_class must list {classes} numbers (one per "
                          f"class), not {keys['counters_per_class']!r}", "counters_per_class",
                          hint="give one count per class")
    counts = [max(c, 1) for c in counts]
    top = max(counts)
    return tuple(min(top / c, max_delta if max_delta is not None else math.inf) for c in counts)


class YoloDecoding(HeadDecoding):
    """src/yolo_layer.c get_yolo_detections / get_yolo_box (new_coords 0/1; scale_x_y is
    already in the forward); [Gaussian_yolo] adds its uncertainty (GaussianYoloDecoding)."""

    native_decode = True  # builders.native.yolo_emitted computes `emitted` (not `finish`)

    def predictions(self, layer, y, net_w, net_h):
        n, entries = layer.n, layer.entries
        h, w = y.shape[-2], y.shape[-1]
        v = y.reshape(y.shape[0], n, entries, h, w).permute(0, 3, 4, 1, 2)
        v = v.reshape(y.shape[0], h * w * n, entries).float()
        cell = torch.stack(cells(h, w, n, y.device), -1)
        anchor = torch.arange(n, device=y.device).repeat(h * w)
        return self._decoded(layer, v, cell, layer.mask_anchors.to(y.device)[anchor], h, w,
                             net_w, net_h)

    def emitted(self, layer, y, thresh, net_w, net_h):
        """Only the cells whose objectness passes are decoded (a few of thousands), from a view
        of the head output: no copy of it. The same arithmetic as `predictions`."""
        n, entries = layer.n, layer.entries
        h, w = y.shape[-2], y.shape[-1]
        box = entries - 1 - layer.classes
        if self.native_decode and y.dim() == 4 and y.shape[1] == n * entries:
            # one pass in C: ~25 small torch ops cost more than their work here
            got = native.yolo_emitted(y, n, entries, box, box // 4, layer.mask_anchors,
                                      float(net_w), float(net_h), bool(layer.new_coords),
                                      float(thresh))
            if got is not None:
                image, index, boxes, obj, scores = got
                return image, index, HeadParts(boxes, obj, scores), h * w * n
        v = y.reshape(y.shape[0], n, entries, h, w)
        # (image, row, col, anchor) in get_network_boxes order: cell-major, the anchor inner
        image, r, c, a = torch.nonzero(v[:, :, box].permute(0, 2, 3, 1) > thresh,
                                       as_tuple=True)
        rows = v[image, a, :, r, c].float()  # (K, entries)
        cell = torch.stack([c, r], -1).float()
        return image, (r * w + c) * n + a, \
            self._decoded(layer, rows, cell, layer.mask_anchors.to(y.device)[a], h, w, net_w,
                          net_h), h * w * n

    def _decoded(self, layer, v, cell, sizes, h, w, net_w, net_h) -> HeadParts:
        """get_yolo_box and the class scores of candidate rows v (..., entries) in cells
        (..., 2) = (col, row) with anchor sizes (..., 2)."""
        box = layer.entries - 1 - layer.classes  # 4, or 8 for [Gaussian_yolo]
        step = box // 4  # entry stride between the four means
        xy, twh = v[..., 0:2 * step:step], v[..., 2 * step:4 * step:step]
        xy = (cell + xy) / torch.tensor([w, h], dtype=torch.float32, device=v.device)
        net = torch.tensor([net_w, net_h], dtype=torch.float32, device=v.device)
        wh = (twh * twh * 4 if layer.new_coords else torch.exp(twh)) * sizes / net
        obj = v[..., box]
        scores = obj[..., None] * v[..., box + 1:]
        return self.finish(layer, v, torch.cat([xy, wh], -1), obj, scores)

    def finish(self, layer, v, boxes, obj, scores) -> HeadParts:
        return HeadParts(boxes, obj, scores)

    def keep(self, layer, parts, thresh):
        return parts.objectness > thresh  # strict; NaN is dropped


class YoloHead(DetectionHead):
    """Layout [anchor][entry][h][w]: logistic on the listed entries, then x,y -> x*s - (s-1)/2."""

    head_decoding = YoloDecoding()
    gaussian = False
    box_entries = 4
    # the fast path's channels-last maps come in as they are: the eager path's one copy into
    # NCHW is the only one (Network.forward would make another before it)
    channels_last_ok = True

    def __init__(self, out: Shape, n: int, entries: int, logistic: set[int], scaled: set[int],
                 scale_x_y: float):
        super().__init__()
        self.out, self.n, self.entries = out, n, entries
        self.scale_x_y = scale_x_y
        self.runs = transform_runs(entries, logistic, scaled if scale_x_y != 1 else set())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = grid(x, self.out)
        s = self.scale_x_y
        if native.eager_inference(x):
            # inference: one NCHW copy (the fast path hands channels-last maps), then the runs
            # in place: 2-2.5x faster than slicing, new tensors and a concatenation
            y = torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x)
            v = y.view(x.shape[0], self.n, self.entries, h, w)
            for start, stop, logistic, scaled in self.runs:
                p = v[:, :, start:stop]
                if logistic:
                    p.sigmoid_()
                if scaled:
                    p.mul_(s).sub_(0.5 * (s - 1))
            return y.view(x.shape[0], self.n * self.entries, h, w)
        v = x.reshape(x.shape[0], self.n, self.entries, h, w)
        parts = []
        for start, stop, logistic, scaled in self.runs:
            p = v[:, :, start:stop]
            if logistic:
                p = torch.sigmoid(p)
            if scaled:
                p = p * s - 0.5 * (s - 1)
            parts.append(p)
        return torch.cat(parts, 2).reshape(x.shape[0], self.n * self.entries, h, w)

    @staticmethod
    def activations(entries: int, new_coords: bool) -> tuple[set[int], set[int]]:
        """(entries given the logistic, entries scale_x_y scales)."""
        return (set() if new_coords else {0, 1} | set(range(4, entries))), {0, 1}

    def deltas(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> Deltas:
        return yolo_deltas(self, x, truth, seen)

    def box_deltas(self, pbox, tbox, raw, outa, i, j, lw, lh, net_w, net_h, a_aw, a_ah, cm):
        """delta_yolo_box of every assignment (A, 4), and the IoU Darknet reports for it."""
        return (_yolo_box_delta(self.settings, self, pbox, tbox, raw, outa, i, j, lw, lh, net_w,
                                net_h, a_aw, a_ah, cm), box_iou(pbox, tbox))

    def cost_stats(self, dl, obj_e, ious, gious, outa, tcls, p_obj, count, batch):
        """(the printed statistics, l.cost) from the slot-major delta `dl`."""
        stats, cost = _yolo_cost(dl, self.settings, obj_e, ious, gious, count, batch)
        # what Darknet's commented-out line would print (Obj, No Obj, class prob)
        stats["avg_obj"] = float(outa[:, obj_e].double().mean()) if count else 0.0
        stats["avg_noobj"] = float(p_obj.double().mean())
        stats["avg_class"] = float(outa[torch.arange(count, device=outa.device),
                                        obj_e + 1 + tcls].double().mean()) if count else 0.0
        return stats, cost


def build_yolo_head(block: Block, ctx: BuildContext, head_class: type[YoloHead]):
    """The builder of [yolo] and of the heads that extend it ([Gaussian_yolo])."""
    pjreddie = ctx.net.flavor == "pjreddie" and not head_class.gaussian
    classes = block.int("classes")
    num = block.int("num")
    anchors = anchors_of(block, num)
    mask = mask_of(block, num)
    entries = head_class.box_entries + 1 + classes
    check_input(block, ctx.input.c, ctx.previous)
    scale_x_y = 1.0 if pjreddie else block.float("scale_x_y")
    new_coords = False if (pjreddie or head_class.gaussian) else block.bool("new_coords")
    logistic, scaled = head_class.activations(entries, new_coords)
    layer = head_class(ctx.input, len(mask), entries, logistic, scaled, scale_x_y)
    layer.classes, layer.mask, layer.anchors, layer.num = classes, mask, anchors, num
    # (len(mask), 2) anchor sizes the decoding indexes: made once (a tensor from Python lists
    # costs more than decoding a few boxes); a CPU constant, not a buffer (not in checkpoints,
    # not on the meta device of a meta build), moved where the head's output is
    layer.mask_anchors = torch.tensor([anchors[2 * k: 2 * k + 2] for k in mask],
                                      dtype=torch.float32, device="cpu")
    layer.new_coords = new_coords
    keys = read_keys(block, "pjreddie" if pjreddie else "alexeyab", _FORWARD_KEYS,
                     {"max": 90} if pjreddie else None)
    layer.settings = YoloLoss.from_keys(block, keys, classes, pjreddie)
    layer.data = DataOptions.from_keys(keys)
    kind = str(keys.get("nms_kind", "default"))
    layer.nms_kind = kind if kind in NMS_KINDS else "default"
    layer.beta_nms = float(keys.get("beta_nms", 0.0))
    embedding = keys.get("embedding_layer")
    layer.embedding_layer = None if embedding is None else \
        ctx.resolve(block, "embedding_layer", embedding)
    layer.net_size = (ctx.net.width, ctx.net.height)
    layer.unhonoured_keys = tuple(
        (k, why) for k, why in _NOT_HONOURED.items()
        if block.has(k) and not (k == "delta_normalizer" and keys.get(k, 1.0) == 1.0))
    layer.describe = f"{classes} classes"
    layer.filters = ctx.input.c
    layer.pjreddie = pjreddie
    return layer, ctx.input


@register("yolo")
def build_yolo(block: Block, ctx: BuildContext):
    return build_yolo_head(block, ctx, YoloHead)


# -- the loss -------------------------------------------------------------------------------------

def yolo_deltas(layer: YoloHead, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> Deltas:
    """src/yolo_layer.c forward_yolo_layer in training (and src/gaussian_yolo_layer.c
    forward_gaussian_yolo_layer, whose differences are the head's `box_deltas` / `cost_stats`
    and the `gaussian` branches here)."""
    cfg = layer.settings
    gaussian = layer.gaussian
    box_n = 8 if gaussian else 4
    n, entries, classes = layer.n, layer.entries, layer.classes
    batch, _, lh, lw = x.shape
    net_w, net_h = _net_size(layer, lw, lh)
    xd = work(x)
    dt, dev = xd.dtype, x.device
    smooth = cfg.objectness_smooth
    with torch.no_grad():
        v = xd.reshape(batch, n, entries, lh, lw)
        out = layer.forward(xd).view_as(v)  # the layer output Darknet's deltas use
        mask = torch.tensor(layer.mask, device=dev)
        anchors = torch.tensor(layer.anchors, dtype=dt, device=dev).view(-1, 2)
        aw = anchors[mask, 0].view(1, n, 1, 1)
        ah = anchors[mask, 1].view(1, n, 1, 1)
        pred = torch.stack(_yolo_box(layer, out, v, gaussian, aw, ah, lw, lh, net_w, net_h,
                                     cfg.yolo_point), -1)  # (B, n, H, W, 4)
        obj_e = box_n
        p_obj = out[:, :, obj_e]
        p_obj = torch.where(torch.isfinite(p_obj), p_obj, torch.zeros_like(p_obj))
        p_cls = out[:, :, obj_e + 1:]
        alive, m_used = alive_truth(truth, cfg.max_boxes)
        t = truth[:, :m_used].to(dev, dt)
        alive = alive[:, :m_used].to(dev)
        cls_id = t[..., 4].long()
        usable = alive & (cls_id >= 0) & (cls_id < classes)
        cm_all = (torch.tensor(cfg.class_multipliers, dtype=dt, device=dev)
                  if cfg.class_multipliers else None)
        # deltas are built slot-major (B, n, H, W, entries): one row per (image, anchor, cell)
        dl = torch.zeros(batch, n, lh, lw, entries, dtype=dt, device=dev)
        flat = dl.view(-1, entries)
        out_flat = out.permute(0, 1, 3, 4, 2).reshape(-1, entries)
        on = cfg.obj_norm

        # Phase A: every prediction against every truth
        best_iou, best_t = best_truth(pred, t, usable)
        if cfg.pjreddie:  # pjreddie's ignore test has no class condition
            best_match, match_t = best_iou, best_t
        else:  # only predictions with any class > 0.25 count (compare_yolo_class)
            any_cls = (p_cls > 0.25).any(2)
            best_match = torch.where(any_cls, best_iou, torch.zeros_like(best_iou))
            match_t = best_t
        d_obj = on * (0 - p_obj)
        ignore = best_match > cfg.ignore_thresh
        if smooth and gaussian:
            d_obj = torch.where(ignore, on * (best_match ** 2 - p_obj), d_obj)
        elif smooth:
            d_obj = torch.where(ignore, torch.maximum(d_obj, on * (best_match - p_obj)), d_obj)
        else:
            d_obj = torch.where(ignore, torch.zeros_like(d_obj), d_obj)
        hit = (best_iou > cfg.truth_thresh) & (m_used > 0)
        if smooth:
            d_obj = torch.where(hit, on * (best_iou ** 2 - p_obj), d_obj)
        else:
            d_obj = torch.where(hit, on * (1 - p_obj), d_obj)
        a_b, a_m, a_j, a_i = hit.nonzero(as_tuple=True)
        a_t = best_t[a_b, a_m, a_j, a_i]

        # Phase B: every truth at its cell, its best anchor (of all num) and iou_thresh extras
        b_b, b_t, b_m = _yolo_matches(layer, t, usable, anchors, net_w, net_h, cfg)
        b_i, b_j = _truth_cell(t[b_b, b_t], lw, lh, cfg.yolo_point if gaussian else "center")

        # every assignment (image, slot, truth) in Darknet's order: key -1 = Phase A
        # truth_thresh, 2t = Phase B truth t (its own class write), see _class_deltas
        all_b, all_m = torch.cat([a_b, b_b]), torch.cat([a_m, b_m])
        all_j, all_i = torch.cat([a_j, b_j]), torch.cat([a_i, b_i])
        all_t = torch.cat([a_t, b_t])
        key = torch.cat([torch.full_like(a_t, -2), 2 * b_t])
        phase_b = key >= 0
        slot = ((all_b * n + all_m) * lh + all_j) * lw + all_i
        tbox = t[all_b, all_t, :4]
        tcls = cls_id[all_b, all_t]
        cm = cm_all[tcls] if cm_all is not None else torch.ones_like(tbox[:, 0])
        pbox = pred[all_b, all_m, all_j, all_i]
        raw = v[all_b, all_m, :, all_j, all_i]  # (A, entries)
        outa = out[all_b, all_m, :, all_j, all_i]
        a_aw, a_ah = aw.view(-1)[all_m], ah.view(-1)[all_m]

        # box deltas accumulate (+=) over every assignment of a slot
        dbox, stat_iou = layer.box_deltas(pbox, tbox, raw, outa, all_i, all_j, lw, lh, net_w,
                                          net_h, a_aw, a_ah, cm)
        stat_giou = box_giou(pbox, tbox)
        if cfg.pjreddie:  # pjreddie's delta_yolo_box assigns: the last truth wins
            last = pick(slot, key, "amax")
            flat[slot[last], :box_n] = dbox[last].to(dt)
        else:
            flat[:, :box_n].index_add_(0, slot, dbox.to(dt))

        # objectness of Phase B slots: the last truth's value ([yolo] with objectness_smooth:
        # only where it is still exactly 0, i.e. the first truth's)
        dl[..., obj_e] = d_obj
        p_obj_flat = p_obj.reshape(-1)
        if bool(phase_b.any()):
            sb, cmb, kb = slot[phase_b], cm[phase_b], key[phase_b]
            if smooth and not gaussian:
                first = pick(sb, kb, "amin")
                s_first = sb[first]
                zero = flat[s_first, obj_e] == 0
                vals = cmb[first] * on * (1 - p_obj_flat[s_first])
                flat[s_first[zero], obj_e] = vals[zero]
            else:
                last = pick(sb, kb, "amax")
                flat[sb[last], obj_e] = cmb[last] * on * (1 - p_obj_flat[sb[last]])

        # class deltas
        c_slot, c_cls, c_key, c_cm = slot, tcls, key, cm
        over = None
        if smooth and len(a_t):  # truth_thresh slots: the true class targets iou²
            sa = slot[~phase_b]
            over = (sa, tcls[~phase_b], key[~phase_b] + 1, cm[~phase_b],
                    best_iou.reshape(-1)[sa] ** 2)
        if gaussian and smooth:  # ignored slots also get class deltas (class of the match)
            g_b, g_m, g_j, g_i = ignore.nonzero(as_tuple=True)
            g_t = match_t[g_b, g_m, g_j, g_i]
            g_slot = ((g_b * n + g_m) * lh + g_j) * lw + g_i
            g_cls = cls_id[g_b, g_t]
            g_cm = cm_all[g_cls] if cm_all is not None else torch.ones_like(g_slot, dtype=dt)
            c_slot, c_cls = torch.cat([g_slot, c_slot]), torch.cat([g_cls, c_cls])
            c_key = torch.cat([torch.full_like(g_slot, -4), c_key])
            c_cm = torch.cat([g_cm, c_cm])
        _class_deltas(flat[:, obj_e + 1:], out_flat[:, obj_e + 1:], c_slot, c_cls, c_key, c_cm,
                      over, cfg,
                      focal=cfg.focal and not gaussian, cls_norm=cfg.cls_norm,
                      multipliers=cm_all is not None)

        # Phase C: average a slot's box delta over its positive classes ([yolo]: only with
        # iou_thresh < 1 and a nonzero objectness delta; [Gaussian_yolo]: always)
        if (gaussian or cfg.iou_thresh < 1) and len(slot):  # (other slots have no classes)
            us = torch.unique(c_slot)
            rows = flat[us]
            k = (rows[:, obj_e + 1:] > 0).sum(1, keepdim=True).to(dt)
            divide = k > 0
            if not gaussian:
                divide &= rows[:, obj_e:obj_e + 1] != 0
            flat[us, :box_n] = rows[:, :box_n] / torch.where(divide, k, torch.ones_like(k))

        count = int(phase_b.sum())
        delta = dl.permute(0, 1, 4, 2, 3)  # Darknet's layout (a view)
        stats, cost = layer.cost_stats(dl, obj_e, stat_iou[phase_b], stat_giou[phase_b],
                                       outa[phase_b], tcls[phase_b], p_obj, count, batch)
    return Deltas(delta, cost, stats)


def _class_deltas(cls_view, pc_view, slot, cls, key, cm, over, cfg, focal, cls_norm,
                  multipliers):
    """delta_yolo_class over all assignments in Darknet's order (`key`), on the slot-major
    (slots, classes) delta and output views: a slot's first assignment writes every class
    (smoothed labels, or focal); each later one (multi-label) only its own class, to
    (y_true - p)·cm; `over` = (slot, class, key, cm, target): extra writes cm·(target - p)
    (objectness_smooth at truth_thresh slots). Per entry the last write (largest key) wins."""
    if not len(slot):
        return
    classes = cls_view.shape[1]
    dt = cls_view.dtype
    first = pick(slot, key, "amin")
    sf, cf = slot[first], cls[first]
    pf = pc_view[sf]
    eps = cfg.smooth_eps
    onehot = torch.nn.functional.one_hot(cf, classes).to(dt)
    if focal:
        pt = pf.gather(1, cf[:, None]) + 1e-15
        grad = -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1)
        full = (onehot - pf) * (0.5 * grad)
    else:
        y = onehot * (1 - eps) + 0.5 * eps if eps else onehot
        full = y - pf
        if multipliers:
            full = full * (1 + onehot * (cm[first][:, None] * cls_norm - 1))
    cls_view[sf] = full
    # single-class writes: later assignments, then the objectness_smooth overrides
    later = torch.ones_like(slot, dtype=torch.bool)
    later[first] = False
    y_true = (1 - eps) + 0.5 * eps if eps else 1.0
    w_slot, w_cls, w_key = slot[later], cls[later], key[later]
    w_val = (y_true - pc_view[w_slot, w_cls]) * cm[later]
    if over is not None:
        o_slot, o_cls, o_key, o_cm, o_target = over
        w_slot, w_cls = torch.cat([w_slot, o_slot]), torch.cat([w_cls, o_cls])
        w_key = torch.cat([w_key, o_key])
        w_val = torch.cat([w_val, o_cm * (o_target - pc_view[o_slot, o_cls])])
    if len(w_slot):
        last = pick(w_slot * classes + w_cls, w_key, "amax")
        cls_view[w_slot[last], w_cls[last]] = w_val[last].to(dt)


def _net_size(layer, lw: int, lh: int) -> tuple[int, int]:
    """The current network input size: the built one, scaled like the grid (multi-scale)."""
    net_w, net_h = layer.net_size
    if lw != layer.out.w or lh != layer.out.h:
        net_w = round(net_w * lw / layer.out.w)
        net_h = round(net_h * lh / layer.out.h)
    return net_w, net_h


def _yolo_box(layer, out, v, gaussian, aw, ah, lw, lh, net_w, net_h, point):
    """get_yolo_box / get_gaussian_yolo_box for every slot: (bx, by, bw, bh), relative."""
    ix, iy, iw, ih = (0, 2, 4, 6) if gaussian else (0, 1, 2, 3)
    col = torch.arange(lw, device=v.device, dtype=v.dtype).view(1, 1, 1, lw)
    row = torch.arange(lh, device=v.device, dtype=v.dtype).view(1, 1, lh, 1)
    bx = (col + out[:, :, ix]) / lw
    by = (row + out[:, :, iy]) / lh
    if layer.new_coords:
        bw = out[:, :, iw] * out[:, :, iw] * 4 * aw / net_w
        bh = out[:, :, ih] * out[:, :, ih] * 4 * ah / net_h
    else:
        bw = torch.exp(v[:, :, iw]) * aw / net_w
        bh = torch.exp(v[:, :, ih]) * ah / net_h
    if point in ("left_top", "right_bottom"):  # [Gaussian_yolo] yolo_point
        sign = 1 if point == "left_top" else -1
        bx, by = bx + sign * bw / 2, by + sign * bh / 2
    return bx, by, bw, bh


def _truth_cell(tb: torch.Tensor, lw: int, lh: int, point: str):
    """The cell (i, j) a truth is assigned to: its centre's, or a corner's (yolo_point)."""
    x, y = tb[:, 0], tb[:, 1]
    if point in ("left_top", "right_bottom"):
        sign = -1 if point == "left_top" else 1
        x, y = x + sign * tb[:, 2] / 2, y + sign * tb[:, 3] / 2
    i = (x * lw).clamp(0, lw - 1).long()
    j = (y * lh).clamp(0, lh - 1).long()
    return i, j




def _yolo_matches(layer, t, usable, anchors, net_w, net_h, cfg):
    """(image, truth, mask slot) of every Phase B assignment."""
    if not t.shape[1]:
        e = torch.zeros(0, dtype=torch.long, device=t.device)
        return e, e, e
    zeros = torch.zeros_like(t[..., 0])
    tshape = torch.stack([zeros, zeros, t[..., 2], t[..., 3]], -1)  # (B, M, 4)
    ashape = torch.stack([torch.zeros_like(anchors[:, 0]), torch.zeros_like(anchors[:, 0]),
                          anchors[:, 0] / net_w, anchors[:, 1] / net_h], -1)  # (num, 4)
    iou = box_iou(ashape[None, None], tshape[:, :, None])  # (B, M, num)
    best_n = first_argmax(iou)
    mask = torch.tensor(layer.mask, device=t.device)
    is_best = (best_n[..., None] == mask) & usable[..., None]  # (B, M, n)
    chosen = is_best
    if cfg.iou_thresh < 1:
        kind_iou = box_iou_kind(ashape[None, None][..., mask, :], tshape[:, :, None],
                                cfg.iou_thresh_kind)
        extra = usable[..., None] & ~is_best & (best_n[..., None] != mask) & \
            (kind_iou > cfg.iou_thresh)
        chosen = is_best | extra
    return chosen.nonzero(as_tuple=True)




def _yolo_box_delta(cfg, layer, pbox, tbox, raw, outa, i, j, lw, lh, net_w, net_h, a_aw, a_ah,
                    cm):
    """delta_yolo_box per assignment: (A, 4)."""
    norm = cfg.iou_norm * cm
    if cfg.kind == "mse":
        scale = (2 - tbox[:, 2] * tbox[:, 3]) * norm
        tx = tbox[:, 0] * lw - i
        ty = tbox[:, 1] * lh - j
        if layer.new_coords:
            tw = torch.sqrt(tbox[:, 2] * net_w / (4 * a_aw))
            th = torch.sqrt(tbox[:, 3] * net_h / (4 * a_ah))
        else:
            tw = torch.log(tbox[:, 2] * net_w / a_aw)
            th = torch.log(tbox[:, 3] * net_h / a_ah)
        return torch.stack([scale * (tx - outa[:, 0]), scale * (ty - outa[:, 1]),
                            scale * (tw - raw[:, 2]), scale * (th - raw[:, 3])], -1)
    p = pbox.clone()
    p[:, 2] = torch.where(p[:, 2] == 0, torch.ones_like(p[:, 2]), p[:, 2])
    p[:, 3] = torch.where(p[:, 3] == 0, torch.ones_like(p[:, 3]), p[:, 3])
    g = dx_box_iou(p, tbox, cfg.kind)
    if not layer.new_coords:
        g = torch.stack([g[:, 0], g[:, 1], g[:, 2] * torch.exp(raw[:, 2]),
                         g[:, 3] * torch.exp(raw[:, 3])], -1)
    g = finite(g * norm[:, None])
    if cfg.max_delta is not None:
        g = g.clamp(-cfg.max_delta, cfg.max_delta)
    return g


def _yolo_cost(dl, cfg, obj_e, ious, gious, count, batch):
    """l.cost and the printed line; `dl` is the slot-major delta (entries last)."""
    sq = dl * dl
    total = sq.sum(dtype=torch.float64)
    nonbox = sq[..., obj_e:].sum(dtype=torch.float64)
    class_loss = cfg.obj_norm * nonbox
    if cfg.kind == "mse" or not cfg.show_details:
        cost = total
    else:
        lost = (1 - gious) if cfg.kind == "giou" else (1 - ious)
        cost = (cfg.iou_norm * lost.double().sum() / count if count else 0.0) + class_loss
    stats = {
        "avg_iou": float(ious.double().sum()) / count if count else 0.0,
        "count": count,
        "class_loss": float(class_loss) / batch,
        "iou_loss": float(total - class_loss) / batch,
        "total_loss": float(total) / batch,
        "cost": float(cost),
        "recall50": float((ious > 0.5).sum()) / count if count else 0.0,
        "recall75": float((ious > 0.75).sum()) / count if count else 0.0,
    }
    return stats, torch.as_tensor(cost, dtype=torch.float64)

