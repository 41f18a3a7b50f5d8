"""`--data digits`: scikit-learn's 1,797 real 8x8 handwritten digits (they ship inside
scikit-learn, nothing downloads), 8x8x1 images scaled to [0, 1], a seeded 80/20 split."""

from __future__ import annotations

import numpy as np
import torch

from darkcfg.data.base import data_error

DIGIT_NAMES = [str(d) for d in range(10)]


def digits_arrays(seed: int, val_share: float = 0.2):
    """(x_train, y_train, x_val, y_val): uint8 (N, 1, 8, 8) images (0..16 ink -> 0..255) and
    int64 labels, split by a permutation drawn from `seed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise data_error("--data digits needs scikit-learn, which is not installed", "--data",
                         "pip install 'darkcfg[digits]' (or: pip install scikit-learn)",
                         code="E905") from None
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = len(labels) - int(round(len(labels) * val_share))
    train, val = order[:cut], order[cut:]
    return (torch.from_numpy(images[train]), torch.from_numpy(labels[train]),
            torch.from_numpy(images[val]), torch.from_numpy(labels[val]))

