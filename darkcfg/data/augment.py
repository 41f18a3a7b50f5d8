"""[net]'s classifier augmentations (training) and the evaluation resize, through
torchvision.transforms.v2 functionals; Darknet's float HSV colour jitter (`distort_image`, also
the detector's for a Darknet built without OpenCV)."""

from __future__ import annotations

import numpy as np
import torch

from builders import native
from darkcfg.config import NetConfig
from darkcfg.data.draws import rand_scale


class Augment:
    """[net]'s classifier augmentations through torchvision.transforms.v2 functionals.

    train: random shorter-side resize in [min_crop, max_crop] (only when the cfg sets them) with
    aspect jitter, random crop to width x height, rotation by +-angle, horizontal flip, and
    Darknet's colour jitter: distort_image with rand_scale() of saturation and exposure and a
    +-hue shift.
    eval: shorter side to the net size, centre crop (Darknet's `classifier predict`).
    Random draws come from the numpy Generator passed in (seeded per sample by `Samples`)."""

    def __init__(self, cfg: NetConfig, train: bool):
        self.h, self.w = cfg.height, cfg.width
        self.train = train
        lo = cfg.min_crop
        hi = cfg.max_crop
        self.crop = (lo or min(self.h, self.w), hi or 2 * max(self.h, self.w)) \
            if (lo or hi) else None
        self.aspect, self.angle, self.flip = cfg.aspect, cfg.angle, cfg.flip
        self.saturation, self.exposure, self.hue = cfg.saturation, cfg.exposure, cfg.hue

    @property
    def random(self) -> bool:
        return self.train and bool(self.crop or self.aspect != 1 or self.angle or self.flip or
                                   self.saturation != 1 or self.exposure != 1 or self.hue)

    def __call__(self, img: torch.Tensor, rng: np.random.Generator | None = None
                 ) -> torch.Tensor:
        h, w = img.shape[-2:]
        if not self.random and (h, w) == (self.h, self.w):
            return img  # nothing to do: no import, no generator (tiny in-memory sets feel it)
        from torchvision.transforms.v2 import functional as F

        if rng is None:
            rng = np.random.default_rng()
        if self.train and (self.crop or self.aspect != 1):
            lo, hi = sorted(self.crop or (min(self.h, self.w), min(self.h, self.w)))
            side = int(rng.integers(lo, hi + 1))  # Darknet's rand_int swaps reversed bounds
            ratio = rand_scale(self.aspect, rng)
            short = min(h, w)
            nh, nw = max(round(h * side / short), 1), max(round(w * side / short * ratio), 1)
            img = F.resize(img, [nh, nw], antialias=True)
            top = int(rng.integers(0, max(nh - self.h, 0) + 1))
            left = int(rng.integers(0, max(nw - self.w, 0) + 1))
            img = F.crop(img, top, left, self.h, self.w)  # pads with 0 when smaller
        elif (h, w) != (self.h, self.w):
            scale = max(self.h / h, self.w / w)
            img = F.resize(img, [max(round(h * scale), self.h), max(round(w * scale), self.w)],
                           antialias=True)
            img = F.center_crop(img, [self.h, self.w])
        if not self.train:
            return img
        if self.angle:
            # rand_uniform(-angle, angle) swaps reversed bounds: angle=-5 is angle=5
            spread = abs(self.angle)
            img = F.rotate(img, float(rng.uniform(-spread, spread)))
        if self.flip and rng.random() < 0.5:
            img = F.horizontal_flip(img)
        if self.saturation != 1 or self.exposure != 1 or self.hue:
            # src/data.c load_image_augment_paths -> src/image.c random_distort_image (both forks,
            # OpenCV build or not): hue, then saturation and exposure drawn, one float HSV pass
            dhue = float(rng.uniform(-self.hue, self.hue)) if self.hue else 0.0
            dsat = rand_scale(self.saturation, rng) if self.saturation != 1 else 1.0
            dexp = rand_scale(self.exposure, rng) if self.exposure != 1 else 1.0
            img = distort_samples(img, dhue, dsat, dexp)
        return img


def distort_samples(img: torch.Tensor, dhue: float, dsat: float, dexp: float) -> torch.Tensor:
    """`distort_image` on a sample: bytes (the loader's) are read as value / 255 and rounded
    back (samples travel as bytes until collation: Darknet's float pixels kept to 1/255), in one
    native pass where the kernels are built (the same bytes; 0.4 ms at 224x224, 4-9 ms for
    torchvision's saturation, hue and brightness ops); floats stay floats. Channels other than
    3 have no hue: only the value is scaled, as for grey."""
    if img.dtype == torch.uint8 and img.shape[0] == 3 and img.is_contiguous() \
            and img.device.type == "cpu":
        out = native.distort_u8(img, dhue, dsat, dexp)
        if out is not None:
            return out
    x = img.to(torch.float32, copy=True)
    if img.dtype == torch.uint8:
        x.div_(255)
    if x.shape[0] <= 3:
        x = distort_image(x, dhue, dsat, dexp)
    else:
        x = x.mul_(np.float32(dexp)).clamp_(0, 1)
    return x.mul_(255).round_().to(torch.uint8) if img.dtype == torch.uint8 else x


def distort_image(x: torch.Tensor, dhue: float, dsat: float, dexp: float) -> torch.Tensor:
    """src/image.c distort_image on float RGB (3, h, w) in [0, 1]: rgb_to_hsv (H in [0, 1)),
    S *= dsat, V *= dexp, H += dhue wrapped into [0, 1), hsv_to_rgb, then clamped to [0, 1]
    (constrain_image). One channel: V *= dexp only."""
    if x.shape[0] < 3:
        return (x * np.float32(dexp)).clamp_(0, 1)
    r, g, b = x[0], x[1], x[2]
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.where(v > 0, delta / torch.where(v > 0, v, 1), 0)
    d = torch.where(delta > 0, delta, 1)  # grey: h is not used (s == 0 below)
    h = torch.where(r == v, (g - b) / d, torch.where(g == v, 2 + (b - r) / d, 4 + (r - g) / d))
    h = torch.where(h < 0, h + 6, h) / 6
    s = s * np.float32(dsat)
    v = v * np.float32(dexp)
    h = h + np.float32(dhue)
    h = torch.where(h > 1, h - 1, torch.where(h < 0, h + 1, h))
    h6 = h * 6
    index = torch.floor(h6)
    f = h6 - index
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # hsv_to_rgb's six sectors (index >= 5: the last one, as its else branch)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v)]
    out = [v.clone(), p.clone(), q.clone()]
    for k, rgb in enumerate(table):
        at = index == k
        for ch in range(3):
            out[ch] = torch.where(at, rgb[ch], out[ch])
    grey = s == 0
    out = torch.stack([torch.where(grey, v, o) for o in out])
    return out.clamp_(0, 1)

