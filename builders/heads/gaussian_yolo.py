"""[Gaussian_yolo] (Gaussian YOLOv3): a [yolo] whose box is four means with four uncertainties
(entries x, σx, y, σy, w, σw, h, σh). Its layer, builder, loss and decoding extend [yolo]'s
(builders/heads/yolo.py) where src/gaussian_yolo_layer.c differs from src/yolo_layer.c:
delta_gaussian_yolo_box, the uncertainty in the cost, yolo_point, and
get_gaussian_yolo_detections (scores times 1 - mean uncertainty). The loss settings are [yolo]'s
`YoloLoss` (uc_normalizer, yolo_point are its Gaussian fields)."""

from __future__ import annotations

import math

import torch

from cfgparse import Block

from ..boxes import box_giou, box_iou, dx_box_iou
from ..registry import BuildContext, register
from .base import HeadParts, finite
from .yolo import YoloDecoding, YoloHead, build_yolo_head


class GaussianYoloDecoding(YoloDecoding):
    native_decode = False  # its `finish` is torch's

    def finish(self, layer, v, boxes, obj, scores) -> HeadParts:
        sign = {"left_top": 1.0, "right_bottom": -1.0}.get(layer.settings.yolo_point, 0.0)
        bx = boxes[..., 0] + sign * boxes[..., 2] / 2
        by = boxes[..., 1] + sign * boxes[..., 3] / 2
        uncertainty = (v[..., 1] + v[..., 3] + v[..., 5] + v[..., 7]) / 4
        return HeadParts(torch.stack([bx, by, boxes[..., 2], boxes[..., 3]], -1), obj,
                         scores * (1 - uncertainty)[..., None])


class GaussianYoloHead(YoloHead):
    """Logistic on all entries but the w/h means (4, 6); x, y means scaled by scale_x_y."""

    head_decoding = GaussianYoloDecoding()
    gaussian = True
    box_entries = 8

    @staticmethod
    def activations(entries: int, new_coords: bool) -> tuple[set[int], set[int]]:
        return {0, 1, 2, 3, 5, 7} | set(range(8, entries)), {0, 2}

    def box_deltas(self, pbox, tbox, raw, outa, i, j, lw, lh, net_w, net_h, a_aw, a_ah, cm):
        return _gaussian_box_delta(self.settings, pbox, tbox, raw, outa, i, j, lw, lh, net_w,
                                   net_h, a_aw, a_ah, cm)

    def cost_stats(self, dl, obj_e, ious, gious, outa, tcls, p_obj, count, batch):
        return _gaussian_cost(dl, obj_e, ious, outa, tcls, p_obj, count, batch)


@register("Gaussian_yolo")
def build_gaussian_yolo(block: Block, ctx: BuildContext):
    return build_yolo_head(block, ctx, GaussianYoloHead)


# -- the loss -------------------------------------------------------------------------------------

def _gaussian_box_delta(cfg, pbox, tbox, raw, outa, i, j, lw, lh, net_w, net_h, a_aw, a_ah, cm):
    """delta_gaussian_yolo_box per assignment: (A, 8) in entry order (x, σx, y, σy, w, σw, h,
    σh), and the IoU it reports (GIoU for the IoU family)."""
    point = cfg.yolo_point
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
    if cfg.kind == "mse":
        reported = box_iou(pbox, tbox)
    else:
        reported = box_giou(pbox, tbox)
        p = pbox.clone()
        p[:, 2:] = torch.where(p[:, 2:] == 0, torch.ones_like(p[:, 2:]), p[:, 2:])
        g = dx_box_iou(p, tbox, cfg.kind)
        gx, gy, gw, gh = g.unbind(-1)
        if point in ("left_top", "right_bottom"):
            sign = -1 if point == "left_top" else 1
            gx, gy = gx + sign * gw / 2, gy + sign * gh / 2
        d_mu = torch.stack([gx, gy, gw * torch.exp(raw[:, 4]), gh * torch.exp(raw[:, 6])], -1)
    d_mu = finite(d_mu * (cfg.iou_norm * cm)[:, None])
    d_sigma = finite(d_sigma * cfg.uc_norm)
    if cfg.max_delta is not None:
        d_mu = d_mu.clamp(-cfg.max_delta, cfg.max_delta)
        d_sigma = d_sigma.clamp(-cfg.max_delta, cfg.max_delta)
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

