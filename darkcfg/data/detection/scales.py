"""`random=1` multi-scale training (src/detector.c train_detector): the input size of each
iteration, as a pure
function of (seed, iteration), torch-free.

Darknet (`train_detector`) draws a new size every 10 loop passes: `coef` = 1.4 when the last
detection layer has `random=1`, else `random` itself; `r = rand_scale(coef)` (uniform in
[1, coef], inverted half of the time); `dim = roundl(r·init/resize_step + 1)·resize_step` for the
width and the height with the same `r`; a shrinking `r < 1` never gives more than `init`; the floor
is `resize_step`. The first draw and every draw once `iteration > max_batches − 100` use
`r = coef` (the largest size). For init 416: 320..416 when r < 1, 448..608 when r ≥ 1, and 608
first and last.

One difference, for resumability: Darknet counts its 10-iteration periods from the start of
each `detector train` process (so a resumed Darknet run starts with the largest size again);
darkcfg counts them from iteration 0 of the run, draws period p's `r` from a generator seeded by
(seed, p), and uses the largest size for period 0 only, so a killed and resumed run sees exactly
the sizes of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

from cfgparse.rules import multiscale_coef, multiscale_dims
from darkcfg.data.draws import rand_scale

PERIOD = 10  # iterations between size changes (Darknet's `count++ % 10 == 0`)
_STREAM = 0x5CA1E  # keeps these draws apart from the per-sample ones


def scale_dims(r: float, init_w: int, init_h: int, step: int) -> tuple[int, int]:
    """(w, h) for the factor `r` (Darknet's formula, +1-step bias included: the rule is
    cfgparse.rules.multiscale_dims)."""
    return multiscale_dims(r, init_w, init_h, step)


def training_size(iteration: int, init_w: int, init_h: int, random: float, seed: int,
                  max_batches: int, resize_step: int = 32) -> tuple[int, int]:
    """The network input (width, height) for iteration `iteration` (0-based: the number of
    iterations done before it). `random` is the last detection layer's key (0: no multi-scale,
    the size stays (init_w, init_h)); `resize_step` is [net] resize_step."""
    if not random:
        return init_w, init_h
    coef = multiscale_coef(random)
    step = max(int(resize_step), 1)
    period = iteration // PERIOD
    start = period * PERIOD
    if period == 0 or start > max_batches - 100:
        r = coef
    else:
        r = rand_scale(coef, np.random.default_rng([seed & 0xFFFFFFFF, _STREAM, period]))
    return scale_dims(r, init_w, init_h, step)


def possible_dims(init_w: int, init_h: int, random: float, resize_step: int = 32
                  ) -> list[tuple[int, int]]:
    """Every (width, height) multi-scale can give (one `r` for both sides), smallest first."""
    if not random:
        return [(init_w, init_h)]
    coef = multiscale_coef(random)
    lo, hi = min(coef, 1 / coef), max(coef, 1 / coef)
    step = max(int(resize_step), 1)
    return sorted({scale_dims(float(r), init_w, init_h, step)
                   for r in [*np.linspace(lo, hi, 4001), coef]})


def possible_sizes(init: int, random: float, resize_step: int = 32) -> list[int]:
    """Every size multi-scale can give for one side of a square network (tests, the README)."""
    return sorted({w for w, _ in possible_dims(init, init, random, resize_step)})
