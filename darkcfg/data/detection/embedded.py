"""The embedded detection set: generated images with a few objects each and exact boxes.

Image i of a split is a pure function of (seed, split, i), so the set needs no storage and is
the same on every run, worker and rank. Each image (the network's input size) has 1-4 objects
on a dark, noisy, softly graded background. An object's class fixes its look: shape (8), colour
(8) and, beyond 64 classes, a striped fill; class k < 8 is shape k in colour k, so that the
first classes differ in both shape and colour. Sizes (12-45% of the image side), aspect ratios
(0.6-1.7) and positions vary; objects overlap little (IoU <= 0.1) and lie wholly inside the
image. The box of an object is the exact pixel extent of the shape drawn.

By default a network with more than `DEFAULT_CLASSES` classes (yolov3-tiny: 80) gets objects of
its first 8 classes only (a set a tiny net learns in minutes on a CPU); `classes=K` picks the
first K (up to the network's, 128 distinct looks).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

DEFAULT_CLASSES = 8
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "hbars", "vbars")
COLOURS = {"red": (230, 40, 25), "green": (25, 205, 50), "blue": (40, 80, 245),
           "yellow": (245, 220, 25), "magenta": (220, 40, 205), "cyan": (25, 215, 215),
           "orange": (255, 130, 15), "white": (240, 240, 240)}
FILLS = ("solid", "striped")
DISTINCT = len(SHAPES) * len(COLOURS) * len(FILLS)


def class_look(k: int) -> tuple[int, int, int]:
    """(shape, colour, fill) of class k."""
    shape, rest = k % len(SHAPES), k // len(SHAPES)
    colour = (shape + rest) % len(COLOURS)
    fill = (k // (len(SHAPES) * len(COLOURS))) % len(FILLS)
    return shape, colour, fill


def class_name(k: int) -> str:
    shape, colour, fill = class_look(k)
    name = f"{list(COLOURS)[colour]} {SHAPES[shape]}"
    return name + (" striped" if fill else "")


def shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Pixels of a shape in its own frame: dy, dx in [-1, 1] across the object's box."""
    ay, ax = np.abs(dy), np.abs(dx)
    name = SHAPES[shape]
    if name == "disc":
        return dy * dy + dx * dx <= 1
    if name == "square":
        return np.ones_like(dy, bool)
    if name == "triangle":
        return ax <= (dy + 1) * 0.5
    if name == "cross":
        return (ay <= 0.3) | (ax <= 0.3)
    if name == "ring":
        r2 = dy * dy + dx * dx
        return (r2 <= 1) & (r2 >= 0.4)
    if name == "diamond":
        return ay + ax <= 1
    if name == "hbars":
        return np.floor((dy + 1) * 2.5 - 1e-6) % 2 == 0
    return np.floor((dx + 1) * 2.5 - 1e-6) % 2 == 0  # vbars


class EmbeddedDetection(Dataset):
    """Sample i: (uint8 image (C, H, W), boxes (n, 5) float32 [x, y, w, h, class] relative)."""

    def __init__(self, size: int, classes: int, channels: int, height: int, width: int,
                 seed: int, split: int):
        self.size, self.classes = size, classes
        self.c, self.h, self.w, self.seed, self.split = channels, height, width, seed, split
        self.names = [class_name(k) for k in range(classes)]
        self.colours = np.array(list(COLOURS.values()), np.float32)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0xDE7EC7, self.split, index])
        h, w = self.h, self.w
        base = rng.uniform(15, 60, 3).astype(np.float32)
        ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        slope = rng.uniform(-20, 20, 2).astype(np.float32)
        img = base[:, None, None] + (slope[0] * ys + slope[1] * xs)[None] + \
            rng.standard_normal((3, h, w), dtype=np.float32) * 12
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(1, 5))):
            for _try in range(20):
                cls = int(rng.integers(self.classes))
                side = rng.uniform(0.12, 0.45) * min(h, w)
                aspect = float(np.exp(rng.uniform(-0.5, 0.5)))
                bw = max(int(round(side * np.sqrt(aspect))), 6)
                bh = max(int(round(side / np.sqrt(aspect))), 6)
                if bw >= w or bh >= h:
                    continue
                x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
                if all(_iou((x0, y0, bw, bh), b) <= 0.1 for b in boxes):
                    box = self._draw(img, cls, x0, y0, bw, bh, rng)
                    if box is not None:
                        boxes.append(box)
                    break
        img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        if self.c != 3:
            img = np.resize(img.mean(0, keepdims=True).astype(np.uint8), (self.c, h, w)) \
                if self.c == 1 else np.resize(img, (self.c, h, w))
        out = np.array([[(x0 + bw / 2) / w, (y0 + bh / 2) / h, bw / w, bh / h, c]
                        for x0, y0, bw, bh, c in boxes], np.float32).reshape(-1, 5)
        return torch.from_numpy(np.ascontiguousarray(img)), out

    def _draw(self, img: np.ndarray, cls: int, x0: int, y0: int, bw: int, bh: int,
              rng: np.random.Generator):
        """Paint class `cls` into the box; returns its exact pixel extent (x0, y0, w, h, cls)."""
        shape, colour, fill = class_look(cls)
        dy = (np.arange(bh, dtype=np.float32) + 0.5) / bh * 2 - 1
        dx = (np.arange(bw, dtype=np.float32) + 0.5) / bw * 2 - 1
        mask = np.broadcast_to(shape_mask(shape, dy[:, None], dx[None, :]), (bh, bw))
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        if not len(rows):
            return None
        rgb = self.colours[colour] * rng.uniform(0.8, 1.0)
        patch = np.broadcast_to(rgb[:, None, None], (3, bh, bw)).copy()
        if fill:  # diagonal stripes at 40% brightness
            stripes = (np.add.outer(np.arange(bh), np.arange(bw)) // 3) % 2 == 1
            patch[:, stripes] *= 0.4
        region = img[:, y0:y0 + bh, x0:x0 + bw]
        region[:, mask] = patch[:, mask] + \
            rng.standard_normal((3, int(mask.sum())), dtype=np.float32) * 6
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return [x0 + left, y0 + top, right - left, bottom - top, cls]


def _iou(a, b) -> float:
    ax, ay, aw, ah = a[:4]
    bx, by, bw, bh = b[:4]
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)
