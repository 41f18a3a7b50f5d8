"""Darknet's random draws that more than one augmentation uses, from a numpy Generator (seeded
per sample or per period by the caller, so every draw is reproducible). Torch-free."""

from __future__ import annotations

import numpy as np


def rand_scale(s: float, rng: np.random.Generator) -> float:
    """Darknet's `src/utils.c rand_scale(s)`: x uniform between 1 and s (`rand_uniform` swaps
    its bounds, so for s < 1 x lies in [s, 1]), returned as x or 1/x with even odds. For s < 1
    this is not rand_scale(1/s): the uniform half lies below 1."""
    x = float(rng.uniform(min(1.0, s), max(1.0, s)))
    return x if rng.random() < 0.5 else 1.0 / x
