"""The embedded dataset: coloured shapes on noisy backgrounds, generated on the fly, every image a
pure function of (seed, split, index). What `--train` uses without --data."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from darkcfg.data.base import DataSplits, check_classes_count

# -- the embedded dataset -------------------------------------------------------------------------
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "hstripes", "vstripes")
COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1), "magenta": (0.85, 0.15, 0.8), "cyan": (0.1, 0.85, 0.85),
           "orange": (1.0, 0.5, 0.05), "white": (0.95, 0.95, 0.95)}
GREYS = {"grey25": (0.3,), "grey50": (0.5,), "grey75": (0.75,), "white": (1.0,)}
PLACES = ("top-left", "top-right", "bottom-left", "bottom-right")
BACKDROPS = ("dark", "reddish", "greenish", "bluish")


class EmbeddedShapes(Dataset):
    """Coloured shapes on noisy backgrounds; class = (shape, colour[, quadrant, backdrop]).

    Up to 8 shapes x 8 colours = 64 classes vary shape and colour (size and position are
    nuisances); larger class counts also fix the quadrant and the backdrop tint (up to 1024
    distinguishable classes; beyond that classes repeat). Sample i is a pure function of
    (seed, split, i), so the set needs no storage and is identical on every run and rank."""

    def __init__(self, size: int, classes: int, channels: int, height: int, width: int,
                 seed: int, split: int):
        self.size, self.classes = size, classes
        self.c, self.h, self.w, self.seed, self.split = channels, height, width, seed, split
        colours = COLOURS if channels >= 3 else GREYS
        self.colours = list(colours.values())
        ncol = len(self.colours)
        self.factors = [len(SHAPES), ncol] + ([len(PLACES), len(BACKDROPS)]
                                              if classes > len(SHAPES) * ncol else [])
        self.names = [self._name(k, list(colours)) for k in range(classes)]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.ys, self.xs = (ys + 0.5) / height, (xs + 0.5) / width

    def _digits(self, label: int) -> list[int]:
        """(shape, colour[, quadrant, backdrop]) of a class. Colours run diagonally (class k < 8
        is shape k in colour k, then shape k in colour k+1, ...), so that few classes differ
        in both shape and colour, the easiest start for a net trained from scratch."""
        out = []
        for n in self.factors:
            out.append(label % n)
            label //= n
        out[1] = (out[0] + out[1]) % self.factors[1]
        return out

    def _name(self, label: int, colour_names: list[str]) -> str:
        d = self._digits(label)
        words = [colour_names[d[1]], SHAPES[d[0]]]
        if len(d) > 2:
            words += [PLACES[d[2]], BACKDROPS[d[3]]]
        return " ".join(words)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.split, index])
        label = index % self.classes  # balanced classes
        d = self._digits(label)
        shape, colour = d[0], np.array(self.colours[d[1]], np.float32)
        radius = rng.uniform(0.18, 0.32)
        if len(d) > 2:  # the quadrant is part of the class
            cy = (0.27 if d[2] < 2 else 0.73) + rng.uniform(-0.04, 0.04)
            cx = (0.27 if d[2] % 2 == 0 else 0.73) + rng.uniform(-0.04, 0.04)
            radius *= 0.7
        else:
            cy, cx = rng.uniform(0.3, 0.7, 2)
        dy, dx = (self.ys - cy) / radius, (self.xs - cx) / radius
        mask = _shape_mask(shape, dy, dx)
        back = np.full(self.c, 0.12, np.float32)
        if len(d) > 2 and d[3] and self.c >= 3:
            back[d[3] - 1] = 0.35
        img = back[:, None, None] + rng.normal(0, 0.06, (self.c, self.h, self.w))
        fill = colour[: self.c] if self.c <= len(colour) else np.resize(colour, self.c)
        fill = fill * rng.uniform(0.8, 1.0)
        img = np.where(mask[None], fill[:, None, None], img)
        img = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        return torch.from_numpy(img), label


def _shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    ay, ax = np.abs(dy), np.abs(dx)
    inside = (ay <= 1) & (ax <= 1)
    name = SHAPES[shape]
    if name == "disc":
        return dy * dy + dx * dx <= 1
    if name == "square":
        return (ay <= 0.8) & (ax <= 0.8)
    if name == "triangle":
        return (dy <= 0.8) & (ax <= (dy + 0.9) * 0.6)
    if name == "cross":
        return inside & ((ay <= 0.3) | (ax <= 0.3))
    if name == "ring":
        r2 = dy * dy + dx * dx
        return (r2 <= 1) & (r2 >= 0.36)
    if name == "diamond":
        return ay + ax <= 1
    if name == "hstripes":
        return inside & (np.floor((dy + 1) * 2.5) % 2 == 0)
    return inside & (np.floor((dx + 1) * 2.5) % 2 == 0)  # vstripes


def embedded_shapes(inputs: tuple[int, int, int], outputs: int, seed: int,
                    classes: int | None = None, train_size: int = 0,
                    val_size: int = 0) -> DataSplits:
    """The embedded classifier data for a network with (C, H, W) `inputs` and `outputs` classes,
    or only the first `classes` of them (a quick demo of a 1000-way net on a few classes)."""
    check_classes_count(classes, outputs, f"has {outputs} outputs")
    k = classes or outputs
    c, h, w = inputs
    train_size = train_size or max(8192, 16 * k)
    val_size = val_size or 512
    train = EmbeddedShapes(train_size, k, c, h, w, seed, 0)
    val = EmbeddedShapes(val_size, k, c, h, w, seed, 1)
    distinct = math.prod(train.factors)
    note = f" ({distinct} distinguishable)" if k > distinct else ""
    used = f"{k} of the network's {outputs} classes" if k < outputs else \
        f"{k} classes"
    return DataSplits(train, val, train.names,
                      f"embedded shapes: {used}{note}, {w}x{h}x{c}, "
                      f"{train_size} train / {val_size} val images, seed {seed}", in_memory=True)
