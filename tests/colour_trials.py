"""Random RGB byte images and colour-jitter draws for the native colour kernels' tests: odd
sizes (the vector loops' tails), channel ties, greys and, if asked, saturated primaries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def colour_trials(seed: int, count: int, max_side: int, primaries: bool = False
                  ) -> Iterator[tuple[int, torch.Tensor, tuple[float, float, float]]]:
    """(trial, uint8 (3, h, w) image, (dhue, dsat, dexp)) `count` times, from `seed`."""
    rng = np.random.default_rng(seed)
    for t in range(count):
        h, w = (int(v) for v in rng.integers(1, max_side, 2))
        img = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        if t % 3 == 0:
            img[1] = img[0]  # ties between channels
        if t % 5 == 0:
            img[:] = img[2]  # greys
        if primaries and t % 7 == 0:
            img = img // 85 * 85  # saturated primaries and their mixes
        draws = (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.3, 2)),
                 float(rng.uniform(0.3, 2)))
        yield t, img, draws
