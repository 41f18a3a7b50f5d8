"""`--data digits`: scikit-learn's 1,797 real 8x8 handwritten digits (they ship inside
scikit-learn, nothing downloads), 8x8x1 images scaled to [0, 1], a seeded 80/20 split."""

from __future__ import annotations

import numpy as np
import torch

from .base import DataSplits, data_error

DIGIT_NAMES = [str(d) for d in range(10)]


def digits_arrays(seed: int, val_share: float = 0.2):
    """(x_train, y_train, x_val, y_val): uint8 (N, 1, 8, 8) images (0..16 ink -> 0..255) and
    int64 labels, split by a permutation drawn from `seed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise data_error("--data digits needs scikit-learn", "--data",
                         "pip install scikit-learn (or: pip install 'darkcfg[dev]')") from None
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = len(labels) - int(round(len(labels) * val_share))
    train, val = order[:cut], order[cut:]
    return (torch.from_numpy(images[train]), torch.from_numpy(labels[train]),
            torch.from_numpy(images[val]), torch.from_numpy(labels[val]))


def digits_data(inputs: tuple[int, ...], seed: int) -> DataSplits:
    """`--data digits` for a network taking 8x8x1 images."""
    from .sources import Tensors

    if tuple(inputs) != (1, 8, 8):
        raise data_error(f"--data digits holds 8x8x1 images, but the network takes "
                         f"{'x'.join(map(str, inputs))}", "--data",
                         "set width=8 height=8 channels=1 in [net] (see cfg/digits.cfg)")
    x_train, y_train, x_val, y_val = digits_arrays(seed)
    return DataSplits(Tensors(x_train, y_train), Tensors(x_val, y_val), DIGIT_NAMES,
                      f"scikit-learn digits: {len(x_train)} train / {len(x_val)} val 8x8 "
                      "images (seeded 80/20 split)", in_memory=True)
