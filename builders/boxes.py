"""Box geometry, the one home of it: Darknet's IoU family on centre/size boxes, the box-format
conversions, and the image geometry a box has to follow (resize_image, letterbox_image and the
inverse mapping of boxes, correct_yolo_boxes).

The detection losses, decoding and NMS, mAP, detection augmentation/validation and `--detect`
all use these, so a box means the same thing everywhere. Boxes are (..., 4) tensors
[x, y, w, h] (centre, size) unless a name says xyxy; functions broadcast.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# -- conversions ----------------------------------------------------------------------------------


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[x, y, w, h] (centre, size) -> [left, top, right, bottom]."""
    half = boxes[..., 2:4] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], -1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[left, top, right, bottom] -> [x, y, w, h] (centre, size)."""
    return torch.cat([(boxes[..., :2] + boxes[..., 2:4]) / 2, boxes[..., 2:4] - boxes[..., :2]],
                     -1)


# -- the IoU family (src/box.c) -------------------------------------------------------------------


def _overlap(c1, w1, c2, w2):
    """src/box.c overlap: the length two centred intervals share (negative when apart)."""
    left = torch.maximum(c1 - w1 / 2, c2 - w2 / 2)
    right = torch.minimum(c1 + w1 / 2, c2 + w2 / 2)
    return right - left


def _intersection_union(a: torch.Tensor, b: torch.Tensor):
    w = _overlap(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
    h = _overlap(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
    inter = torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)
    return inter, a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """src/box.c box_iou on (..., 4) boxes (broadcasting); 0 for an empty intersection or
    union. torchvision.ops.box_iou computes the areas from the corners, which differs from
    Darknet's w*h in the last bits: Darknet's numbers decide thresholds here."""
    inter, union = _intersection_union(a, b)
    ok = (inter != 0) & (union != 0)
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)),
                       torch.zeros_like(inter))


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """box_iou between every box of a (n, 4) and of b (m, 4): (n, m)."""
    return box_iou(a[:, None], b[None])


def _enclosing(a: torch.Tensor, b: torch.Tensor):
    """Width and height of the smallest box enclosing a and b (src/box.c box_c)."""
    cw = torch.maximum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2) - \
        torch.minimum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2)
    ch = torch.maximum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2) - \
        torch.minimum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2)
    return cw, ch


def box_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """src/box.c box_giou: IoU - (C - union) / C, C the enclosing box's area (IoU when C = 0)."""
    iou = box_iou(a, b)
    cw, ch = _enclosing(a, b)
    c = cw * ch
    _, union = _intersection_union(a, b)
    safe = torch.where(c == 0, torch.ones_like(c), c)
    return torch.where(c == 0, iou, iou - (c - union) / safe)


def box_diou(a: torch.Tensor, b: torch.Tensor, beta: float = 0.6,
             iou: torch.Tensor | None = None) -> torch.Tensor:
    """src/box.c box_diou (beta 0.6) and box_diounms (beta = beta_nms): IoU - (d²/c²)^beta, d the
    centres' distance, c the enclosing box's diagonal (IoU alone when c² = 0). The power is
    taken in double, as C's pow. `iou`: box_iou(a, b) when already known."""
    iou = box_iou(a, b) if iou is None else iou
    cw, ch = _enclosing(a, b)
    c = cw * cw + ch * ch
    d = (a[..., 0] - b[..., 0]) ** 2 + (a[..., 1] - b[..., 1]) ** 2
    safe = torch.where(c == 0, torch.ones_like(c), c)
    term = torch.pow(d.double() / safe.double(), beta).to(iou.dtype)
    return torch.where(c == 0, iou, iou - term)


def box_ciou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """src/box.c box_ciou: IoU - (d²/c² + alpha·v), v the aspect-ratio term."""
    iou = box_iou(a, b)
    cw, ch = _enclosing(a, b)
    c = cw * cw + ch * ch
    d = (a[..., 0] - b[..., 0]) ** 2 + (a[..., 1] - b[..., 1]) ** 2
    safe = torch.where(c == 0, torch.ones_like(c), c)
    aspect = torch.atan(b[..., 2] / b[..., 3]) - torch.atan(a[..., 2] / a[..., 3])
    v = 4 / math.pi ** 2 * aspect ** 2
    alpha = v / (1 - iou + v + 1e-6)
    return torch.where(c == 0, iou, iou - (d / safe + alpha * v))


def box_iou_kind(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """src/box.c box_iou_kind (iou_thresh_kind): iou, giou, diou or ciou; any other is iou."""
    if kind == "giou":
        return box_giou(a, b)
    if kind == "diou":
        return box_diou(a, b)
    if kind == "ciou":
        return box_ciou(a, b)
    return box_iou(a, b)


def dx_box_iou(p: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """src/box.c dx_box_iou: the derivative Darknet uses for the IoU-family losses (iou, giou,
    diou, ciou) of the predicted box p against the truth t, (..., 4) -> (gx, gy, gw, gh)."""
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


# -- image geometry (src/image.c) -----------------------------------------------------------------


def resize_image(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """src/image.c resize_image on (..., C, H, W) floats: bilinear with the corner pixels
    aligned, no antialiasing. uint8 pixels are read as value / 255 first (Darknet's load_image),
    in one native pass where the kernels are there (no float copy of the whole image)."""
    if x.dtype == torch.uint8:
        out = torch.empty((*x.shape[:-2], h, w), dtype=torch.float32, device=x.device)
        return out if _resize_bytes(x, out) else resize_image(x.float().div_(255), w, h)
    if x.shape[-1] == w and x.shape[-2] == h:
        return x
    batched = x.dim() == 4
    out = F.interpolate(x if batched else x[None], size=(h, w), mode="bilinear",
                        align_corners=True)
    return out if batched else out[0]


def _resize_bytes(x: torch.Tensor, out: torch.Tensor) -> bool:
    """`resize_image` of uint8 `x` into the float view `out` by the native kernel, image by
    image; False (out untouched) where it cannot."""
    from . import native

    if x.dim() == 3:
        return native.resize_u8(x, out)
    if x.dim() != 4 or native.library() is None:
        return False
    return all(native.resize_u8(a, b) for a, b in zip(x, out, strict=True))


def letterbox_size(image_w: int, image_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """(new_w, new_h) of the image inside a letterboxed network input: src/image.c
    letterbox_image compares the two scales in float and truncates the other side."""
    if np.float32(net_w) / np.float32(image_w) < np.float32(net_h) / np.float32(image_h):
        return net_w, (image_h * net_w) // image_w
    return (image_w * net_h) // image_h, net_h


def letterbox_image(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """src/image.c letterbox_image on (..., C, H, W) floats (or uint8, read as value / 255):
    keep the aspect ratio, resize_image, paste centred (integer offset) on a 0.5 grey canvas."""
    new_w, new_h = letterbox_size(x.shape[-1], x.shape[-2], w, h)
    canvas = torch.full((*x.shape[:-2], h, w), 0.5, dtype=torch.float32, device=x.device) \
        if x.dtype == torch.uint8 else x.new_full((*x.shape[:-2], h, w), 0.5)
    if new_w == 0 or new_h == 0:  # a sliver of an image: Darknet embeds nothing
        return canvas
    top, left = (h - new_h) // 2, (w - new_w) // 2
    inside = canvas[..., top:top + new_h, left:left + new_w]
    if x.dtype != torch.uint8 or not _resize_bytes(x, inside):
        inside.copy_(resize_image(x, new_w, new_h))
    return canvas


def correct_boxes(boxes: torch.Tensor, image_size, net_size, letter_box: bool) -> torch.Tensor:
    """src/yolo_layer.c correct_yolo_boxes with relative=1: boxes (K, 4) relative to the
    letterboxed network input -> relative to the original image (identity without letterbox)."""
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
