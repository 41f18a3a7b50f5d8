"""[net]'s classifier augmentations (training) and the evaluation resize, through
torchvision.transforms.v2 functionals."""

from __future__ import annotations

import numpy as np
import torch

from darkcfg.config import NetConfig
from darkcfg.data.draws import rand_scale


class Augment:
    """[net]'s classifier augmentations through torchvision.transforms.v2 functionals.

    train: random shorter-side resize in [min_crop, max_crop] (only when the cfg sets them) with
    aspect jitter, random crop to width x height, rotation by +-angle, horizontal flip, and
    Darknet's rand_scale() of saturation and exposure plus a +-hue shift.
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
            lo, hi = self.crop or (min(self.h, self.w), min(self.h, self.w))
            side = int(rng.integers(lo, max(hi, lo) + 1))
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
            img = F.rotate(img, float(rng.uniform(-self.angle, self.angle)))
        if self.flip and rng.random() < 0.5:
            img = F.horizontal_flip(img)
        if img.shape[0] == 3:
            if self.saturation != 1:
                img = F.adjust_saturation(img, rand_scale(self.saturation, rng))
            if self.hue:
                img = F.adjust_hue(img, float(rng.uniform(-self.hue, self.hue)))
        if self.exposure != 1:
            img = F.adjust_brightness(img, rand_scale(self.exposure, rng))
        return img

