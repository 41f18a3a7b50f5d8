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
        found.append(("classes", "the loss follows AlexeyAB's forward_region_layer; pjreddie's "
                      "[region] loss (other layout and activations) is not reproduced"))
    layer.unhonoured_keys = found


def configure_detection(block: Block, layer, side: int, num: int, coords: int) -> None:
    o = layer.train_options
    layer.loss_cfg = {k: o[k] for k in ("rescore", "sqrt", "forced", "random", "coord_scale",
                                          "object_scale", "noobject_scale", "class_scale",
                                          "max")}
    layer.side, layer.num, layer.coords = side, num, coords
    found = []
    if block.has("reorg"):
        found.append(("reorg", "Darknet's [detection] forward does not use it either"))
    layer.unhonoured_keys = found


# -- shared helpers --------------------------------------------------------------------------------

def _finish(x: torch.Tensor, delta: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Surrogate with gradient -delta/N, whose value is Darknet's cost / N."""
    n = x.shape[0]
    surrogate = -(delta.detach() * x).sum() / n
    return surrogate + (cost.detach().to(surrogate.dtype) / n - surrogate.detach())


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
    dt, dev = x.dtype, x.device
    with torch.no_grad():
        v = x.detach().reshape(batch, n, entries, lh, lw)
        out = _yolo_activate(layer, v, gaussian)
        mask = torch.tensor(layer.mask, device=dev)
        anchors = torch.tensor(layer.anchors, dtype=dt, device=dev).view(-1, 2)
        aw = anchors[mask, 0].view(1, n, 1, 1)
        ah = anchors[mask, 1].view(1, n, 1, 1)
        col = torch.arange(lw, device=dev, dtype=dt).view(1, 1, 1, lw)
        row = torch.arange(lh, device=dev, dtype=dt).view(1, 1, lh, 1)
        ix, iy, iw, ih = (0, 2, 4, 6) if gaussian else (0, 1, 2, 3)
        pred = torch.stack(_yolo_box(layer, out, v, ix, iy, iw, ih, aw, ah, col, row, lw, lh,
                                     net_w, net_h), -1)  # (B, n, H, W, 4)
        obj_e = box_n
        p_obj = out[:, :, obj_e]
        p_obj = torch.where(torch.isfinite(p_obj), p_obj, torch.zeros_like(p_obj))
        p_cls = out[:, :, obj_e + 1:]
        alive, m_used = _alive(truth, cfg["max"])
        t = truth[:, :m_used].to(dev, dt)
        alive = alive[:, :m_used].to(dev)
        cls_id = t[..., 4].long() if m_used else torch.zeros(batch, 0, dtype=torch.long,
                                                             device=dev)
        usable = alive & (cls_id >= 0) & (cls_id < classes)
        cm_all = (torch.tensor(cfg["class_multipliers"], dtype=dt, device=dev)
                  if cfg["class_multipliers"] else None)

        delta = torch.zeros_like(v)
        on, tn = cfg["obj_norm"], cfg["truth_thresh"]
        # Phase A: every prediction against every truth
        if m_used:
            ious = box_iou(pred.unsqueeze(4), t[:, None, None, None, :, :4])
            ious = torch.where(usable[:, None, None, None, :], ious, torch.zeros_like(ious))
            best_iou, best_t = ious.max(4)
        else:
            best_iou = torch.zeros_like(p_obj)
            best_t = torch.zeros_like(p_obj, dtype=torch.long)
        if cfg["pjreddie"]:  # pjreddie's ignore test has no class condition
            best_match = best_iou
        else:
            any_cls = (p_cls > 0.25).any(2)
            best_match = torch.where(any_cls, best_iou, torch.zeros_like(best_iou))
        d_obj = on * (0 - p_obj)
        ignore = best_match > cfg["ignore_thresh"]
        if cfg["objectness_smooth"]:
            d_obj = torch.where(ignore, torch.maximum(d_obj, on * (best_match - p_obj)), d_obj)
        else:
            d_obj = torch.where(ignore, torch.zeros_like(d_obj), d_obj)
        if gaussian and cfg["objectness_smooth"]:
            _gaussian_ignore_classes(delta, ignore, best_match, best_t, t, p_cls, obj_e, cfg)

        # assignments (b, m, j, i, t, order): Phase A truth_thresh ones come first (order -1)
        hit = (best_iou > tn) & (m_used > 0)
        a_b, a_m, a_j, a_i = hit.nonzero(as_tuple=True)
        a_t = best_t[a_b, a_m, a_j, a_i]
        if cfg["objectness_smooth"]:
            d_obj[hit] = on * (best_iou[hit] ** 2 - p_obj[hit])
        else:
            d_obj[hit] = on * (1 - p_obj[hit])

        # Phase B: every truth at its cell, its best anchor (of all num) and iou_thresh extras
        b_b, b_t, b_m = _yolo_matches(layer, t, usable, anchors, net_w, net_h, cfg)
        b_i = (t[b_b, b_t, 0] * lw).long().clamp(0, lw - 1)
        b_j = (t[b_b, b_t, 1] * lh).long().clamp(0, lh - 1)

        all_b = torch.cat([a_b, b_b])
        all_m = torch.cat([a_m, b_m])
        all_j = torch.cat([a_j, b_j])
        all_i = torch.cat([a_i, b_i])
        all_t = torch.cat([a_t, b_t])
        order = torch.cat([torch.full_like(a_t, -1), b_t])
        phase_b = torch.cat([torch.zeros_like(a_t, dtype=torch.bool),
                             torch.ones_like(b_t, dtype=torch.bool)])
        tbox = t[all_b, all_t, :4]
        tcls = cls_id[all_b, all_t]
        cm = cm_all[tcls] if cm_all is not None else torch.ones_like(tbox[:, 0])
        pbox = pred[all_b, all_m, all_j, all_i]
        raw = v[all_b, all_m, :, all_j, all_i]  # (A, entries)
        outa = out[all_b, all_m, :, all_j, all_i]
        a_aw, a_ah = aw.view(-1)[all_m], ah.view(-1)[all_m]
        stat_iou = box_iou(pbox, tbox)
        stat_giou = box_giou(pbox, tbox)

        # box deltas accumulate (+=) over every assignment of a slot
        if gaussian:
            dbox = _gaussian_box_delta(cfg, layer, pbox, tbox, raw, outa, all_i, all_j, lw, lh,
                                       net_w, net_h, a_aw, a_ah, cm)
        else:
            dbox = _yolo_box_delta(cfg, layer, pbox, tbox, raw, outa, all_i, all_j, lw, lh,
                                   net_w, net_h, a_aw, a_ah, cm)
        slot = ((all_b * n + all_m) * lh + all_j) * lw + all_i
        slots = batch * n * lh * lw
        box_view = delta[:, :, :box_n].permute(0, 1, 3, 4, 2).reshape(-1, box_n)
        if cfg["pjreddie"]:  # pjreddie's delta_yolo_box assigns: the last truth wins
            last = _pick(slot, order, slots, "amax")
            box_view[slot[last]] = dbox[last].to(dt)
        else:
            box_view.index_add_(0, slot, dbox.to(dt))
        delta[:, :, :box_n] = box_view.view(batch, n, lh, lw, box_n).permute(0, 1, 4, 2, 3)

        # objectness of Phase B slots: the last truth's value (with objectness_smooth: only
        # where it is still exactly 0, i.e. the first truth's)
        d_obj_flat = d_obj.reshape(-1)
        p_obj_flat = p_obj.reshape(-1)
        if len(b_t):
            sb = slot[phase_b]
            cmb = cm[phase_b]
            keys = order[phase_b]
            if cfg["objectness_smooth"]:
                first = _pick(sb, keys, slots, "amin")
                s_first = sb[first]
                zero = d_obj_flat[s_first] == 0
                vals = cmb[first] * on * (1 - p_obj_flat[s_first])
                d_obj_flat[s_first[zero]] = vals[zero]
            else:
                last = _pick(sb, keys, slots, "amax")
                d_obj_flat[sb[last]] = cmb[last] * on * (1 - p_obj_flat[sb[last]])
        delta[:, :, obj_e] = d_obj_flat.view(batch, n, lh, lw)

        # classes: the first assignment of a slot writes every class; later ones (multi-label)
        # only their own class, to (y_true - p) * cm
        if len(all_t):
            cls_view = delta[:, :, obj_e + 1:].permute(0, 1, 3, 4, 2).reshape(-1, classes)
            pc_view = p_cls.permute(0, 1, 3, 4, 2).reshape(-1, classes)
            first = _pick(slot, order, slots, "amin")
            sf, cf = slot[first], tcls[first]
            pf = pc_view[sf]
            eps = cfg["smooth_eps"]
            onehot = torch.nn.functional.one_hot(cf, classes).to(dt)
            if cfg["focal"]:
                pt = pf.gather(1, cf[:, None]) + 1e-15
                grad = -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1)
                full = (onehot - pf) * (0.5 * grad)
            else:
                y = onehot * (1 - eps) + 0.5 * eps if eps else onehot
                full = y - pf
                if cm_all is not None:
                    full = full * (1 + onehot * (cm[first][:, None] * cfg["cls_norm"] - 1))
            if cfg["objectness_smooth"]:  # a truth_thresh slot: class target iou²
                was_a = ~phase_b[first]
                if was_a.any():
                    sa = sf[was_a]
                    iou2 = best_iou.reshape(-1)[sa] ** 2
                    ca = cf[was_a]
                    full[was_a, ca] = cm[first][was_a] * (iou2 - pc_view[sa, ca])
            cls_view[sf] = full
            later = torch.ones_like(slot, dtype=torch.bool)
            later[first] = False
            if later.any():
                sl, cl = slot[later], tcls[later]
                y_true = 1 * (1 - eps) + 0.5 * eps if eps else 1.0
                cls_view[sl, cl] = (y_true - pc_view[sl, cl]) * cm[later]
            delta[:, :, obj_e + 1:] = cls_view.view(batch, n, lh, lw, classes).permute(
                0, 1, 4, 2, 3)

        # Phase C (iou_thresh < 1): average a slot's box delta over its positive classes
        if cfg["iou_thresh"] < 1:
            k = (delta[:, :, obj_e + 1:] > 0).sum(2, keepdim=True).to(dt)
            divide = (delta[:, :, obj_e:obj_e + 1] != 0) & (k > 0)
            delta[:, :, :4] = delta[:, :, :4] / torch.where(divide, k, torch.ones_like(k))

        count = int(phase_b.sum())
        stats, cost = _yolo_cost(delta, cfg, box_n, obj_e, stat_iou[phase_b],
                                 stat_giou[phase_b], count, batch)
        layer.loss_stats = stats
        layer.last_delta = delta
    return _finish(x, delta.reshape(x.shape), cost)


def _net_size(layer, lw: int, lh: int) -> tuple[int, int]:
    """The current network input size: the built one, scaled like the grid (multi-scale)."""
    net_w, net_h = layer.net_size
    if lw != layer.out.w or lh != layer.out.h:
        net_w = round(net_w * lw / layer.out.w)
        net_h = round(net_h * lh / layer.out.h)
    return net_w, net_h


def _yolo_activate(layer, v: torch.Tensor, gaussian: bool) -> torch.Tensor:
    """The layer output in training (what Darknet's deltas are written against)."""
    return layer.forward(v.reshape(v.shape[0], -1, v.shape[3], v.shape[4])).view_as(v)


def _yolo_box(layer, out, v, ix, iy, iw, ih, aw, ah, col, row, lw, lh, net_w, net_h):
    bx = (col + out[:, :, ix]) / lw
    by = (row + out[:, :, iy]) / lh
    if layer.new_coords:
        bw = out[:, :, iw] * out[:, :, iw] * 4 * aw / net_w
        bh = out[:, :, ih] * out[:, :, ih] * 4 * ah / net_h
    else:
        bw = torch.exp(v[:, :, iw]) * aw / net_w
        bh = torch.exp(v[:, :, ih]) * ah / net_h
    return bx, by, bw, bh


def _pick(slot: torch.Tensor, key: torch.Tensor, slots: int, how: str) -> torch.Tensor:
    """Indices of the assignment with the smallest/largest `key` per slot (one per slot)."""
    best = torch.full((slots,), -2 if how == "amax" else 1 << 40, dtype=key.dtype,
                      device=key.device)
    best.scatter_reduce_(0, slot, key, how, include_self=True)
    # a slot is never assigned twice with the same key (one truth, one slot)
    return (key == best[slot]).nonzero(as_tuple=True)[0]


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


def _yolo_cost(delta, cfg, box_n, obj_e, ious, gious, count, batch):
    total = (delta.double() ** 2).sum()
    nonbox = (delta[:, :, obj_e:].double() ** 2).sum()
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

def _gaussian_ignore_classes(delta, ignore, best_match, best_t, t, p_cls, obj_e, cfg):
    raise NotImplementedError


def _gaussian_box_delta(cfg, layer, pbox, tbox, raw, outa, i, j, lw, lh, net_w, net_h, a_aw,
                        a_ah, cm):
    raise NotImplementedError
