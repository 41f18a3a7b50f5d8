"""Darknet's training losses of the detection heads: [yolo], [Gaussian_yolo], [region],
[detection] (DETECTION.md §3-§5, AlexeyAB).

Darknet does not minimise a written loss: each head fills a `delta` buffer (= -dL/d(head input),
§0) with formulas that are often not the gradient of anything (IoU-family pseudo-gradients, the
missing sigma' on yolo x/y, max_delta clipping). We compute that delta `D` exactly, without
autograd, and return the surrogate `-(D * x).sum() / N` (N = the batch of `x`): its gradient with
respect to the head input `x` is `-D / N`, which is what Darknet back-propagates per image. The
returned value is shifted (by a constant, so the gradient is unchanged) to Darknet's `l.cost / N`.

Everything is vectorised over images, cells, anchors and truths. Truth is (N, M, 5) float
`[x, y, w, h, class]`, relative to the network input; a list ends at its first row with x == 0.
"""

from __future__ import annotations

import math

import torch

from cfgparse import Block

_IOU_KINDS = ("mse", "giou", "diou", "ciou")  # any other iou_loss string means plain "iou"

# [yolo] keys that belong to other parts of darkcfg (honoured there, not by the loss): data
# augmentation and multi-scale (jitter, resize, random), decoding/NMS (nms_kind, beta_nms).
_YOLO_ELSEWHERE = {"jitter", "resize", "random", "nms_kind", "beta_nms"}
# Keys Darknet reads but that play no part in the loss, or that we do not implement.
_YOLO_NOT_HONOURED = {
    "map": "the class remap file of [yolo] map is not applied by the loss",
    "embedding_layer": "tracking embeddings are not trained",
    **dict.fromkeys(("track_history_size", "sim_thresh", "dets_for_track", "dets_for_show",
                     "track_ciou_norm"), "tracking is not implemented"),
    "delta_normalizer": "Darknet's CPU build ignores it (only its GPU backward scales the delta); "
                        "darkcfg follows the CPU build",
}
_REGION_NOT_HONOURED = {
    "tree": "the hierarchical-softmax (tree) class loss is not implemented: classes train as a "
            "flat softmax",
    "map": "the class remap file of [region] map is not applied by the loss",
}


# -- configuration (called by the builders) -------------------------------------------------------

def configure_yolo(block: Block, layer, net_w: int, net_h: int) -> None:
    """Settings of a [yolo]/[Gaussian_yolo] loss, read from `layer.train_options`; records the keys
    written in `block` that the loss does not honour (`layer.unhonoured_keys`, W-warnings)."""
    o = layer.train_options
    pj = getattr(layer, "pjreddie", False)  # pjreddie reads no normalizers: they are all 1
    kind = str(o.get("iou_loss", "mse"))
    max_delta = None if o.get("max_delta") is None else float(o["max_delta"])
    cm = None
    if o.get("counters_per_class"):
        try:
            counts = [int(float(v)) for v in str(o["counters_per_class"]).split(",") if v.strip()]
        except ValueError:
            counts = []
        if len(counts) != layer.classes:
            raise block.error("E304", f"counters_per_class must list {layer.classes} numbers "
                              f"(one per class), not {o['counters_per_class']!r}",
                              "counters_per_class", hint="give one count per class")
        counts = [max(c, 1) for c in counts]
        top = max(counts)
        cm = [min(top / c, max_delta if max_delta is not None else math.inf) for c in counts]
    layer.loss_cfg = {
        "kind": kind if kind in _IOU_KINDS else "iou",
        "iou_norm": 1.0 if pj else float(o["iou_normalizer"]),
        "obj_norm": 1.0 if pj else float(o["obj_normalizer"]),
        "cls_norm": 1.0 if pj else float(o["cls_normalizer"]),
        "ignore_thresh": float(o["ignore_thresh"]), "truth_thresh": float(o["truth_thresh"]),
        "iou_thresh": float(o.get("iou_thresh", 1.0)),
        "iou_thresh_kind": str(o.get("iou_thresh_kind", "iou")),
        "max_delta": max_delta,
        "focal": bool(o.get("focal_loss", 0)), "smooth_eps": float(o.get("label_smooth_eps", 0)),
        "objectness_smooth": bool(o.get("objectness_smooth", 0)),
        # Darknet's default is 1 (the schema's 0 only matters when the key is written)
        "show_details": bool(o["show_details"]) if block.has("show_details") else True,
        "max": int(o["max"]), "class_multipliers": cm,
        "uc_norm": float(o.get("uc_normalizer", 1.0)),
        "yolo_point": str(o.get("yolo_point", "center")),
        "pjreddie": pj,
    }
    layer.net_size = (net_w, net_h)
    layer.unhonoured_keys = [(k, why) for k, why in _YOLO_NOT_HONOURED.items()
                             if block.has(k) and not (k == "delta_normalizer"
                                                      and o.get(k, 1.0) == 1.0)]


def configure_region(block: Block, layer, flavor: str) -> None:
    o = layer.train_options
    layer.loss_cfg = {k: o[k] for k in ("thresh", "classfix", "rescore", "bias_match", "max",
                                          "coord_scale", "object_scale", "noobject_scale",
                                          "class_scale", "focal_loss") if k in o}
    layer.loss_cfg.setdefault("focal_loss", 0)
    found = [(k, why) for k, why in _REGION_NOT_HONOURED.items() if block.has(k)]
    if flavor == "pjreddie":
        found.append((None, "its loss follows AlexeyAB's forward_region_layer; pjreddie's "
                      "[region] loss (other layout and activations) is not reproduced"))
    layer.unhonoured_keys = found


def configure_detection(block: Block, layer, side: int, num: int, coords: int) -> None:
    o = layer.train_options
    layer.loss_cfg = {k: o[k] for k in ("rescore", "sqrt", "forced", "random", "coord_scale",
                                          "object_scale", "noobject_scale", "class_scale",
                                          "max")}
    layer.side, layer.num, layer.coords = side, num, coords
    layer.unhonoured_keys = []  # (`reorg` is parsed but unused by Darknet's forward too)


# -- shared helpers --------------------------------------------------------------------------------

def _finish(x: torch.Tensor, delta: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Surrogate with gradient -delta/N, whose value is Darknet's cost / N."""
    n = x.shape[0]
    surrogate = -(delta.detach() * x).sum(dtype=delta.dtype) / n
    return surrogate + (cost.detach().to(surrogate.dtype) / n - surrogate.detach())


def _work(x: torch.Tensor) -> torch.Tensor:
    """The head input, detached, in at least float32 (AMP gives half precision: IoUs and
    thresholds need float32, as in Darknet)."""
    x = x.detach()
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _alive(truth: torch.Tensor, max_boxes: int) -> tuple[torch.Tensor, int]:
    """Truth rows Darknet reads: up to `max` rows, ending at the first x == 0; and how many
    rows are worth keeping (the largest live count of any image)."""
    truth = truth[:, :max_boxes]
    alive = torch.cumprod((truth[..., 0] != 0).to(torch.int32), 1).bool()
    return alive, int(alive.sum(1).max()) if alive.numel() else 0


def _overlap(c1, w1, c2, w2):
    left = torch.maximum(c1 - w1 / 2, c2 - w2 / 2)
    right = torch.minimum(c1 + w1 / 2, c2 + w2 / 2)
    return right - left


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Darknet's box_iou on (..., 4) [x, y, w, h] (broadcasting); 0 for an empty union."""
    w = _overlap(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
    h = _overlap(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
    inter = torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    ok = (inter != 0) & (union != 0)
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)),
                       torch.zeros_like(inter))


def _enclosing(a, b):
    cw = torch.maximum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2) - \
        torch.minimum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2)
    ch = torch.maximum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2) - \
        torch.minimum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2)
    return cw, ch


def box_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    iou = box_iou(a, b)
    cw, ch = _enclosing(a, b)
    c = cw * ch
    w = _overlap(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
    h = _overlap(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
    inter = torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    safe = torch.where(c == 0, torch.ones_like(c), c)
    return torch.where(c == 0, iou, iou - (c - union) / safe)


def box_iou_kind(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """box_iou_kind for iou_thresh_kind: iou, giou, diou ((d²/c²)^0.6), ciou."""
    if kind == "giou":
        return box_giou(a, b)
    if kind not in ("diou", "ciou"):
        return box_iou(a, b)
    iou = box_iou(a, b)
    cw, ch = _enclosing(a, b)
    c = cw * cw + ch * ch
    d = (a[..., 0] - b[..., 0]) ** 2 + (a[..., 1] - b[..., 1]) ** 2
    safe = torch.where(c == 0, torch.ones_like(c), c)
    if kind == "diou":
        return torch.where(c == 0, iou, iou - (d / safe) ** 0.6)
    aspect = torch.atan(b[..., 2] / b[..., 3]) - torch.atan(a[..., 2] / a[..., 3])
    v = 4 / math.pi ** 2 * aspect ** 2
    alpha = v / (1 - iou + v + 1e-6)
    return torch.where(c == 0, iou, iou - (d / safe + alpha * v))


def dx_box_iou(p: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """Darknet's dx_box_iou (DETECTION.md §3.5), literally: (..., 4) -> (gx, gy, gw, gh)."""
    px, py, pw, ph = p.unbind(-1)
    tx, ty, tw, th = t.unbind(-1)
    pt0, pb0, pl0, pr0 = py - ph / 2, py + ph / 2, px - pw / 2, px + pw / 2
    pt, pb = torch.minimum(pt0, pb0), torch.maximum(pt0, pb0)
    pl, pr = torch.minimum(pl0, pr0), torch.maximum(pl0, pr0)
    tt, tb, tl, tr = ty - th / 2, ty + th / 2, tx - tw / 2, tx + tw / 2
    zero = torch.zeros_like(px)
    big_x = (pb - pt) * (pr - pl)
    big_xt = (tb - tt) * (tr - tl)
    ih = torch.minimum(pb, tb) - torch.maximum(pt, tt)
    iw = torch.minimum(pr, tr) - torch.maximum(pl, tl)
    inter = iw * ih
    union = big_x + big_xt - inter
    s = (px - tx) ** 2 + (py - ty) ** 2
    gcw = torch.maximum(pr, tr) - torch.minimum(pl, tl)
    gch = torch.maximum(pb, tb) - torch.minimum(pt, tt)
    gc = gcw * gch
    dx_t, dx_b, dx_l, dx_r = -(pr - pl), pr - pl, -(pb - pt), pb - pt
    di_t = torch.where(pt > tt, -iw, zero)
    di_b = torch.where(pb < tb, iw, zero)
    di_l = torch.where(pl > tl, -ih, zero)
    di_r = torch.where(pr < tr, ih, zero)
    du = [dx_t - di_t, dx_b - di_b, dx_l - di_l, dx_r - di_r]
    di = [di_t, di_b, di_l, di_r]
    u_ok = union > 0
    u2 = torch.where(u_ok, union * union, torch.ones_like(union))
    g = [torch.where(u_ok, (union * a - inter * b) / u2, zero) for a, b in zip(di, du, strict=True)]
    # the pred edges are min/max-swapped when inverted (never for positive w, h)
    tb_ok, lr_ok = pt0 < pb0, pl0 < pr0
    g[0], g[1] = torch.where(tb_ok, g[0], g[1]), torch.where(tb_ok, g[1], g[0])
    g[2], g[3] = torch.where(lr_ok, g[2], g[3]), torch.where(lr_ok, g[3], g[2])
    disjoint = (iw <= 0) | (ih <= 0)
    if kind == "giou":
        dc = [torch.where(pt < tt, -gcw, zero), torch.where(pb > tb, gcw, zero),
              torch.where(pl < tl, -gch, zero), torch.where(pr > tr, gch, zero)]
        c_ok = gc > 0
        c2 = torch.where(c_ok, gc * gc, torch.ones_like(gc))
        term = [(gc * a - union * b) / c2 for a, b in zip(du, dc, strict=True)]
        g = [torch.where(disjoint, tm, torch.where(c_ok, e + tm, e))
             for e, tm in zip(g, term, strict=True)]
    gx, gy = g[2] + g[3], g[0] + g[1]
    gw, gh = g[3] - g[2], g[1] - g[0]
    if kind in ("diou", "ciou"):
        # C from the centre-size edges (the same numbers as above for positive w, h)
        cl = torch.minimum(px - pw / 2, tx - tw / 2)
        cr = torch.maximum(px + pw / 2, tx + tw / 2)
        ct = torch.minimum(py - ph / 2, ty - th / 2)
        cb = torch.maximum(py + ph / 2, ty + th / 2)
        cw, ch = cr - cl, cb - ct
        c = cw * cw + ch * ch
        a, b = (pl < tl).to(px.dtype), (pr > tr).to(px.dtype)
        c_, d = (pt < tt).to(px.dtype), (pb > tb).to(px.dtype)
        c_ok = c > 0
        cc = torch.where(c_ok, c * c, torch.ones_like(c))
        ddx = (2 * (tx - px) * c - 2 * cw * (b - a) * s) / cc
        ddy = (2 * (ty - py) * c - 2 * ch * (d - c_) * s) / cc
        ddw = cw * (a + b) * s / cc
        ddh = ch * (c_ + d) * s / cc
        if kind == "ciou":
            delta_ar = torch.atan(tw / th) - torch.atan(pw / ph)
            v = 4 / math.pi ** 2 * delta_ar * delta_ar
            alpha = v / (1 - inter / torch.where(union == 0, torch.ones_like(union), union)
                         + v + 0.000001)
            ddw = ddw + alpha * (8 / math.pi ** 2 * delta_ar * ph)
            ddh = ddh + alpha * (-8 / math.pi ** 2 * delta_ar * pw)
        out = []
        for e, dd in zip((gx, gy, gw, gh), (ddx, ddy, ddw, ddh), strict=True):
            out.append(torch.where(disjoint, dd, torch.where(c_ok, e + dd, e)))
        gx, gy, gw, gh = out
    return torch.stack([gx, gy, gw, gh], -1)


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


# -- [yolo] ----------------------------------------------------------------------------------------

def yolo_loss(layer, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> torch.Tensor:
    """[yolo] (and [Gaussian_yolo]) loss, DETECTION.md §3 / §3.10."""
    cfg = layer.loss_cfg
    gaussian = layer.entries == layer.classes + 9
    box_n = 8 if gaussian else 4
    n, entries, classes = layer.n, layer.entries, layer.classes
    batch, _, lh, lw = x.shape
    net_w, net_h = _net_size(layer, lw, lh)
    xd = _work(x)
    dt, dev = xd.dtype, x.device
    smooth = cfg["objectness_smooth"]
    with torch.no_grad():
        v = xd.reshape(batch, n, entries, lh, lw)
        out = layer.forward(xd).view_as(v)  # the layer output Darknet's deltas use
        mask = torch.tensor(layer.mask, device=dev)
        anchors = torch.tensor(layer.anchors, dtype=dt, device=dev).view(-1, 2)
        aw = anchors[mask, 0].view(1, n, 1, 1)
        ah = anchors[mask, 1].view(1, n, 1, 1)
        pred = torch.stack(_yolo_box(layer, out, v, gaussian, aw, ah, lw, lh, net_w, net_h,
                                     cfg["yolo_point"]), -1)  # (B, n, H, W, 4)
        obj_e = box_n
        p_obj = out[:, :, obj_e]
        p_obj = torch.where(torch.isfinite(p_obj), p_obj, torch.zeros_like(p_obj))
        p_cls = out[:, :, obj_e + 1:]
        alive, m_used = _alive(truth, cfg["max"])
        t = truth[:, :m_used].to(dev, dt)
        alive = alive[:, :m_used].to(dev)
        cls_id = t[..., 4].long()
        usable = alive & (cls_id >= 0) & (cls_id < classes)
        cm_all = (torch.tensor(cfg["class_multipliers"], dtype=dt, device=dev)
                  if cfg["class_multipliers"] else None)
        # deltas are built slot-major (B, n, H, W, entries): one row per (image, anchor, cell)
        dl = torch.zeros(batch, n, lh, lw, entries, dtype=dt, device=dev)
        flat = dl.view(-1, entries)
        out_flat = out.permute(0, 1, 3, 4, 2).reshape(-1, entries)
        on = cfg["obj_norm"]

        # Phase A: every prediction against every truth
        if m_used:
            ious = box_iou(pred.unsqueeze(4), t[:, None, None, None, :, :4])
            ious = torch.where(usable[:, None, None, None, :], ious, torch.zeros_like(ious))
            best_iou, best_t = ious.max(4)
        else:
            best_iou = torch.zeros_like(p_obj)
            best_t = torch.zeros_like(p_obj, dtype=torch.long)
        if cfg["pjreddie"]:  # pjreddie's ignore test has no class condition
            best_match, match_t = best_iou, best_t
        else:  # only predictions with any class > 0.25 count (compare_yolo_class)
            any_cls = (p_cls > 0.25).any(2)
            best_match = torch.where(any_cls, best_iou, torch.zeros_like(best_iou))
            match_t = best_t
        d_obj = on * (0 - p_obj)
        ignore = best_match > cfg["ignore_thresh"]
        if smooth and gaussian:
            d_obj = torch.where(ignore, on * (best_match ** 2 - p_obj), d_obj)
        elif smooth:
            d_obj = torch.where(ignore, torch.maximum(d_obj, on * (best_match - p_obj)), d_obj)
        else:
            d_obj = torch.where(ignore, torch.zeros_like(d_obj), d_obj)
        hit = (best_iou > cfg["truth_thresh"]) & (m_used > 0)
        if smooth:
            d_obj = torch.where(hit, on * (best_iou ** 2 - p_obj), d_obj)
        else:
            d_obj = torch.where(hit, on * (1 - p_obj), d_obj)
        a_b, a_m, a_j, a_i = hit.nonzero(as_tuple=True)
        a_t = best_t[a_b, a_m, a_j, a_i]

        # Phase B: every truth at its cell, its best anchor (of all num) and iou_thresh extras
        b_b, b_t, b_m = _yolo_matches(layer, t, usable, anchors, net_w, net_h, cfg)
        b_i, b_j = _truth_cell(t[b_b, b_t], lw, lh, cfg["yolo_point"] if gaussian else "center")

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
        if gaussian:
            dbox, stat_iou = _gaussian_box_delta(cfg, pbox, tbox, raw, outa, all_i, all_j, lw,
                                                 lh, net_w, net_h, a_aw, a_ah, cm)
        else:
            dbox = _yolo_box_delta(cfg, layer, pbox, tbox, raw, outa, all_i, all_j, lw, lh,
                                   net_w, net_h, a_aw, a_ah, cm)
            stat_iou = box_iou(pbox, tbox)
        stat_giou = box_giou(pbox, tbox)
        if cfg["pjreddie"]:  # pjreddie's delta_yolo_box assigns: the last truth wins
            last = _pick(slot, key, "amax")
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
                first = _pick(sb, kb, "amin")
                s_first = sb[first]
                zero = flat[s_first, obj_e] == 0
                vals = cmb[first] * on * (1 - p_obj_flat[s_first])
                flat[s_first[zero], obj_e] = vals[zero]
            else:
                last = _pick(sb, kb, "amax")
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
                      focal=cfg["focal"] and not gaussian, cls_norm=cfg["cls_norm"],
                      multipliers=cm_all is not None)

        # Phase C: average a slot's box delta over its positive classes ([yolo]: only with
        # iou_thresh < 1 and a nonzero objectness delta; [Gaussian_yolo]: always)
        if (gaussian or cfg["iou_thresh"] < 1) and len(slot):  # (other slots have no classes)
            us = torch.unique(c_slot)
            rows = flat[us]
            k = (rows[:, obj_e + 1:] > 0).sum(1, keepdim=True).to(dt)
            divide = k > 0
            if not gaussian:
                divide &= rows[:, obj_e:obj_e + 1] != 0
            flat[us, :box_n] = rows[:, :box_n] / torch.where(divide, k, torch.ones_like(k))

        count = int(phase_b.sum())
        delta = dl.permute(0, 1, 4, 2, 3)  # Darknet's layout (a view)
        if gaussian:
            stats, cost = _gaussian_cost(dl, obj_e, stat_iou[phase_b], outa[phase_b],
                                         tcls[phase_b], p_obj, count, batch)
        else:
            stats, cost = _yolo_cost(dl, cfg, obj_e, stat_iou[phase_b], stat_giou[phase_b],
                                     count, batch)
            # what Darknet's commented-out line would print (Obj, No Obj, class prob)
            hit_b = outa[phase_b]
            stats["avg_obj"] = float(hit_b[:, obj_e].double().mean()) if count else 0.0
            stats["avg_noobj"] = float(p_obj.double().mean())
            stats["avg_class"] = float(hit_b[torch.arange(count, device=dev),
                                             obj_e + 1 + tcls[phase_b]].double().mean()) \
                if count else 0.0
        layer.loss_stats = stats
        layer.last_delta = delta
    return _finish(x, delta.reshape(x.shape), cost)


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
    first = _pick(slot, key, "amin")
    sf, cf = slot[first], cls[first]
    pf = pc_view[sf]
    eps = cfg["smooth_eps"]
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
        last = _pick(w_slot * classes + w_cls, w_key, "amax")
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


def _pick(slot: torch.Tensor, key: torch.Tensor, how: str) -> torch.Tensor:
    """Indices of the assignment with the smallest/largest `key` per slot (one per slot: a slot
    is never assigned twice with the same key)."""
    if not len(slot):
        return slot
    uniq, inverse = torch.unique(slot, return_inverse=True)
    best = torch.zeros(len(uniq), dtype=key.dtype, device=key.device)
    best.scatter_reduce_(0, inverse, key, how, include_self=False)
    return (key == best[inverse]).nonzero(as_tuple=True)[0]


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
    best_n = _first_argmax(iou)
    mask = torch.tensor(layer.mask, device=t.device)
    is_best = (best_n[..., None] == mask) & usable[..., None]  # (B, M, n)
    chosen = is_best
    if cfg["iou_thresh"] < 1:
        kind_iou = box_iou_kind(ashape[None, None][..., mask, :], tshape[:, :, None],
                                cfg["iou_thresh_kind"])
        extra = usable[..., None] & ~is_best & (best_n[..., None] != mask) & \
            (kind_iou > cfg["iou_thresh"])
        chosen = is_best | extra
    return chosen.nonzero(as_tuple=True)


def _first_argmax(iou: torch.Tensor) -> torch.Tensor:
    """argmax with Darknet's strict '>' from 0: the first maximum, 0 when all are 0."""
    top = iou.max(-1, keepdim=True).values
    idx = torch.arange(iou.shape[-1], device=iou.device).expand_as(iou)
    first = torch.where(iou == top, idx, torch.full_like(idx, iou.shape[-1])).min(-1).values
    return torch.where(top.squeeze(-1) > 0, first, torch.zeros_like(first))


def _yolo_box_delta(cfg, layer, pbox, tbox, raw, outa, i, j, lw, lh, net_w, net_h, a_aw, a_ah,
                    cm):
    """delta_yolo_box per assignment: (A, 4)."""
    norm = cfg["iou_norm"] * cm
    if cfg["kind"] == "mse":
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
    g = dx_box_iou(p, tbox, cfg["kind"])
    if not layer.new_coords:
        g = torch.stack([g[:, 0], g[:, 1], g[:, 2] * torch.exp(raw[:, 2]),
                         g[:, 3] * torch.exp(raw[:, 3])], -1)
    g = _finite(g * norm[:, None])
    if cfg["max_delta"] is not None:
        g = g.clamp(-cfg["max_delta"], cfg["max_delta"])
    return g


def _yolo_cost(dl, cfg, obj_e, ious, gious, count, batch):
    """l.cost and the printed line; `dl` is the slot-major delta (entries last)."""
    sq = dl * dl
    total = sq.sum(dtype=torch.float64)
    nonbox = sq[..., obj_e:].sum(dtype=torch.float64)
    class_loss = cfg["obj_norm"] * nonbox
    if cfg["kind"] == "mse" or not cfg["show_details"]:
        cost = total
    else:
        lost = (1 - gious) if cfg["kind"] == "giou" else (1 - ious)
        cost = (cfg["iou_norm"] * lost.double().sum() / count if count else 0.0) + class_loss
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


# -- [Gaussian_yolo] (DETECTION.md §3.10) ----------------------------------------------------------

def _gaussian_box_delta(cfg, pbox, tbox, raw, outa, i, j, lw, lh, net_w, net_h, a_aw, a_ah, cm):
    """delta_gaussian_yolo_box per assignment: (A, 8) in entry order (x, σx, y, σy, w, σw, h,
    σh), and the IoU it reports (GIoU for the IoU family)."""
    point = cfg["yolo_point"]
    scale = 2 - tbox[:, 2] * tbox[:, 3]
    tx, ty = tbox[:, 0], tbox[:, 1]
    if point in ("left_top", "right_bottom"):
        sign = -1 if point == "left_top" else 1
        tx, ty = tx + sign * tbox[:, 2] / 2, ty + sign * tbox[:, 3] / 2
    target = torch.stack([tx * lw - i, ty * lh - j, torch.log(tbox[:, 2] * net_w / a_aw),
                          torch.log(tbox[:, 3] * net_h / a_ah)], -1)
    mu, sigma = outa[:, [0, 2, 4, 6]], outa[:, [1, 3, 5, 7]]
    z = (target - mu) / sigma
    pdf = torch.exp(z * z * -0.5) / (math.sqrt(2 * math.pi) * (sigma + 0.3))
    temp = 0.5 / (pdf + 1e-9) * pdf * scale[:, None]
    d_mu = temp * z / sigma
    d_sigma = temp * (z * z / sigma - 1 / (sigma + 0.3))
    if cfg["kind"] == "mse":
        reported = box_iou(pbox, tbox)
    else:
        reported = box_giou(pbox, tbox)
        p = pbox.clone()
        p[:, 2:] = torch.where(p[:, 2:] == 0, torch.ones_like(p[:, 2:]), p[:, 2:])
        g = dx_box_iou(p, tbox, cfg["kind"])
        gx, gy, gw, gh = g.unbind(-1)
        if point in ("left_top", "right_bottom"):
            sign = -1 if point == "left_top" else 1
            gx, gy = gx + sign * gw / 2, gy + sign * gh / 2
        d_mu = torch.stack([gx, gy, gw * torch.exp(raw[:, 4]), gh * torch.exp(raw[:, 6])], -1)
    d_mu = _finite(d_mu * (cfg["iou_norm"] * cm)[:, None])
    d_sigma = _finite(d_sigma * cfg["uc_norm"])
    if cfg["max_delta"] is not None:
        d_mu = d_mu.clamp(-cfg["max_delta"], cfg["max_delta"])
        d_sigma = d_sigma.clamp(-cfg["max_delta"], cfg["max_delta"])
    return torch.stack([d_mu, d_sigma], -1).reshape(-1, 8), reported


def _gaussian_cost(dl, obj_e, ious, outa, tcls, p_obj, count, batch):
    sq = dl * dl
    total = float(sq.sum(dtype=torch.float64))
    class_loss = float(sq[..., obj_e:].sum(dtype=torch.float64))
    # Darknet's "uncertainty" split zeroes entries 4..7 (the w/h mean and sigma), not the sigmas
    except_uc = total - float(sq[..., 4:8].sum(dtype=torch.float64))
    avg_cat = float(outa[torch.arange(len(tcls)), obj_e + 1 + tcls].double().sum()) \
        if count else 0.0
    stats = {
        "avg_iou": float(ious.double().sum()) / count if count else 0.0,
        "count": count,
        "avg_class": avg_cat / count if count else 0.0,
        "avg_obj": float(outa[:, obj_e].double().sum()) / count if count else 0.0,
        "avg_noobj": float(p_obj.double().mean()),
        "recall50": float((ious > 0.5).sum()) / count if count else 0.0,
        "recall75": float((ious > 0.75).sum()) / count if count else 0.0,
        "class_loss": class_loss / batch,
        "iou_loss": (except_uc - class_loss) / batch,
        "uc_loss": (total - except_uc) / batch,
        "total_loss": total / batch,
        "cost": total,
    }
    return stats, torch.as_tensor(total, dtype=torch.float64)


# -- [region] (YOLOv2, DETECTION.md §4) ------------------------------------------------------------

def region_loss(layer, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> torch.Tensor:
    """AlexeyAB's forward_region_layer. Its deltas are true negative gradients with respect to
    the raw input (sigma' applied, softmax + cross-entropy on the classes)."""
    cfg = layer.loss_cfg
    n, k, classes, entries = layer.n, layer.coords, layer.classes, layer.entries
    batch, _, lh, lw = x.shape
    xd = _work(x)
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
        alive, m_used = _alive(truth, int(cfg.get("max", 200)))
        t = truth[:, :m_used].to(dev, dt)
        alive = alive[:, :m_used].to(dev)
        cls_id = t[..., 4].long()
        usable = alive & (cls_id >= 0) & (cls_id < classes)
        delta = torch.zeros_like(v)

        # every slot: no-object objectness, ignored above thresh; classfix
        if m_used:
            ious = box_iou(pred.unsqueeze(4), t[:, None, None, None, :, :4])
            ious = torch.where(usable[:, None, None, None, :], ious, torch.zeros_like(ious))
            best_iou, best_t = ious.max(4)
        else:
            best_iou = torch.zeros_like(p_obj)
            best_t = torch.zeros_like(p_obj, dtype=torch.long)
        noobj = cfg["noobject_scale"]
        class_scale = cfg["class_scale"]
        avg_cat, class_count = 0.0, 0
        if cfg["classfix"] == -1:
            delta[:, :, k] = noobj * (best_iou - p_obj) * obj_grad
        else:
            above = best_iou > cfg["thresh"]
            delta[:, :, k] = torch.where(above, torch.zeros_like(p_obj),
                                         noobj * (0 - p_obj) * obj_grad)
            if cfg["classfix"] > 0 and bool(above.any()):
                fb, fm, fj, fi = above.nonzero(as_tuple=True)
                fc = cls_id[fb, best_t[fb, fm, fj, fi]]
                scale = class_scale * (p_obj[fb, fm, fj, fi] if cfg["classfix"] == 2 else 1.0)
                d, cat = _region_class(p_cls[fb, fm, :, fj, fi], fc, scale, cfg["focal_loss"])
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
        if cfg["bias_match"]:
            shapes = (anchors / torch.tensor([lw, lh], dtype=dt, device=dev))[None].expand(
                len(b_b), n, 2)
        else:
            shapes = pred[b_b, :, j, i, 2:]  # (T, n, 2)
        zeros = torch.zeros_like(shapes)
        fit = box_iou(torch.cat([zeros, shapes], -1),
                      torch.cat([torch.zeros_like(tb[:, None, :2]), tb[:, None, 2:4]], -1))
        best_n = _first_argmax(fit)
        ious_t = box_iou(pred[b_b, best_n, j, i], tb[:, :4])
        count = len(b_b)
        slot = ((b_b * n + best_n) * lh + j) * lw + i
        last = _pick(slot, b_t, "amax")
        lb, ln, lj, li, lt = b_b[last], best_n[last], j[last], i[last], tb[last]
        cs = cfg["coord_scale"]
        lsx, lsy = sx[lb, ln, lj, li], sy[lb, ln, lj, li]
        delta[lb, ln, 0, lj, li] = cs * (lt[:, 0] * lw - li - lsx) * lsx * (1 - lsx)
        delta[lb, ln, 1, lj, li] = cs * (lt[:, 1] * lh - lj - lsy) * lsy * (1 - lsy)
        delta[lb, ln, 2, lj, li] = cs * (torch.log(lt[:, 2] * lw / anchors[ln, 0])
                                         - v[lb, ln, 2, lj, li])
        delta[lb, ln, 3, lj, li] = cs * (torch.log(lt[:, 3] * lh / anchors[ln, 1])
                                         - v[lb, ln, 3, lj, li])
        po = p_obj[lb, ln, lj, li]
        target = ious_t[last] if cfg["rescore"] else torch.ones_like(po)
        delta[lb, ln, k, lj, li] = cfg["object_scale"] * (target - po) * po * (1 - po)
        d, _ = _region_class(p_cls[lb, ln, :, lj, li], lt[:, 4].long(), class_scale,
                             cfg["focal_loss"])
        delta[lb, ln, k + 1:, lj, li] = d
        # statistics of every truth (Darknet prints them per truth, overwritten or not)
        avg_cat += float(p_cls[b_b, best_n, :, j, i].gather(
            1, tb[:, 4].long()[:, None]).double().sum()) if count else 0.0
        class_count += count
        cost = (delta.double() ** 2).sum()
        layer.loss_stats = _region_stats(delta, k, ious_t, p_obj[b_b, best_n, j, i], p_obj,
                                         avg_cat, class_count, count, batch, float(cost))
        layer.last_delta = delta
    return _finish(x, delta.reshape(x.shape), cost)


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


# -- [detection] (YOLOv1, DETECTION.md §5) ---------------------------------------------------------

def detection_truth(truth: torch.Tensor, side: int, classes: int, max_boxes: int = 200):
    """fill_truth_region: Darknet's per-cell truth grid from box lists. Returns is_obj (N, L),
    class (N, L; -1 = none or out of range), and (x_off, y_off, w, h) (N, L, 4). Only the first
    box per cell is kept (Darknet shuffles the boxes first), boxes under .001 are dropped."""
    batch = truth.shape[0]
    cells = side * side
    alive, m_used = _alive(truth, max_boxes)
    t = truth[:, :m_used]
    keep = alive[:, :m_used] & (t[..., 2] >= .001) & (t[..., 3] >= .001)
    b, k = keep.nonzero(as_tuple=True)
    tb = t[b, k]
    col = (tb[:, 0] * side).long().clamp(0, side - 1)
    row = (tb[:, 1] * side).long().clamp(0, side - 1)
    cell = b * cells + row * side + col
    first = _pick(cell, k, "amin")
    cell, tb, col, row = cell[first], tb[first], col[first], row[first]
    is_obj = torch.zeros(batch * cells, dtype=torch.bool, device=truth.device)
    cls = torch.full((batch * cells,), -1, dtype=torch.long, device=truth.device)
    box = torch.zeros(batch * cells, 4, dtype=truth.dtype, device=truth.device)
    is_obj[cell] = True
    c = tb[:, 4].long()
    cls[cell] = torch.where((c >= 0) & (c < classes), c, torch.full_like(c, -1))
    box[cell] = torch.stack([tb[:, 0] * side - col, tb[:, 1] * side - row, tb[:, 2], tb[:, 3]], -1)
    return is_obj.view(batch, cells), cls.view(batch, cells), box.view(batch, cells, 4)


def detection_loss(layer, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> torch.Tensor:
    """forward_detection_layer: plain deltas on the raw input (after the in-layer softmax of the
    classes, whose Jacobian Darknet's backward skips)."""
    cfg = layer.loss_cfg
    side, n, coords, classes = layer.side, layer.num, layer.coords, layer.classes
    cells = side * side
    batch = x.shape[0]
    xd = _work(x)
    dt = xd.dtype
    with torch.no_grad():
        out = layer.forward(xd).reshape(batch, -1)
        split, conf_end = cells * classes, cells * (classes + n)
        p_cls = out[:, :split].view(batch, cells, classes)
        conf = out[:, split:conf_end].view(batch, cells, n)
        boxes = out[:, conf_end:].view(batch, cells, n, coords)
        is_obj, cls, tbox = detection_truth(truth.to(x.device, dt), side, classes,
                                            int(cfg["max"]))
        d_cls = torch.zeros_like(p_cls)
        d_conf = cfg["noobject_scale"] * (0 - conf)
        d_box = torch.zeros_like(boxes)
        onehot = torch.zeros_like(p_cls)
        has_cls = is_obj & (cls >= 0)
        onehot[has_cls] = torch.nn.functional.one_hot(cls[has_cls], classes).to(dt)
        d_cls[is_obj] = cfg["class_scale"] * (onehot[is_obj] - p_cls[is_obj])

        ob, oc = is_obj.nonzero(as_tuple=True)
        tb = tbox[ob, oc]  # (T, 4): x_off, y_off, w, h
        truth_rel = torch.cat([tb[:, :2] / side, tb[:, 2:]], -1)[:, None]
        pb = boxes[ob, oc][..., :4]  # (T, n, 4)
        pb = torch.cat([pb[..., :2] / side,
                        pb[..., 2:] ** 2 if cfg["sqrt"] else pb[..., 2:]], -1)
        iou = box_iou(pb, truth_rel)
        rmse = ((pb - truth_rel) ** 2).sum(-1).sqrt()
        by_iou = _first_argmax(iou)
        low = torch.where(rmse < 20, rmse, torch.full_like(rmse, math.inf))
        by_rmse = torch.where(torch.isfinite(low.min(-1).values), low.argmin(-1),
                              torch.zeros_like(by_iou))
        best = torch.where((iou > 0).any(-1), by_iou, by_rmse)
        if cfg["forced"]:
            best = torch.where(tb[:, 2] * tb[:, 3] < .1, torch.ones_like(best),
                               torch.zeros_like(best)).clamp(max=n - 1)
        if cfg["random"] and seen < 64000:
            best = torch.randint(0, n, best.shape, device=best.device)
        rows = torch.arange(len(ob), device=x.device)
        iou_best = iou[rows, best]
        c_best = conf[ob, oc, best]
        target = iou_best if cfg["rescore"] else torch.ones_like(c_best)
        d_conf[ob, oc, best] = cfg["object_scale"] * (target - c_best)
        want = torch.cat([tb[:, :2], tb[:, 2:].sqrt() if cfg["sqrt"] else tb[:, 2:]], -1)
        d_box[ob, oc, best, :4] = cfg["coord_scale"] * (want - boxes[ob, oc, best, :4])
        delta = torch.cat([d_cls.reshape(batch, -1), d_conf.reshape(batch, -1),
                           d_box.reshape(batch, -1)], 1)
        count = len(ob)
        cost = (delta.double() ** 2).sum()
        pos_cat = float((p_cls[ob, oc] * onehot[ob, oc]).double().sum())
        layer.loss_stats = {
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
        layer.last_delta = delta
    return _finish(x, delta.reshape(x.shape), cost)
