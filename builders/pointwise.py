"""1x1 convolutions of the inference fast path as one native matrix product with the bias and
the activation applied in registers (builders.native's `darkcfg_pointwise`, AVX-512).

A 1x1 stride-1 convolution on a channels-last map is the product [pixels x c] x [c x k]. oneDNN
computes it at the machine's matrix-product rate, but torch reaches no mish post-op, so every
mish layer paid a second pass over its output (yolov4's CSP blocks: 66 such layers, a third of
its time). The native kernel keeps a tile of 12 pixels x 32 output channels in registers
through the whole sum, then adds the bias, applies linear/leaky/relu/mish and stores once.
Where AVX-512 is missing, or with `DARKCFG_POINTWISE=0`, oneDNN's kernel runs as before.

Same values as the direct convolution to float32 rounding (the sum runs over channels in
order; tests/test_pointwise.py bounds it against float64).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import native
from .winograd import ACTIVATION_CODES, LEAKY_SLOPE, input_rows, output_rows

PANEL = 32  # output channels per weight panel (the kernel's PW_NR)


def enabled() -> bool:
    """Not turned off (`DARKCFG_POINTWISE=0`) and the native kernel built with AVX-512."""
    if os.environ.get("DARKCFG_POINTWISE", "1") == "0":
        return False
    lib = native.library()
    return lib is not None and bool(lib.darkcfg_pointwise_available())


def applies(conv: torch.nn.Conv2d) -> bool:
    """Whether `conv` is a plain 1x1 stride-1 convolution without padding or groups."""
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1)


def pack_weights(weight: torch.Tensor) -> torch.Tensor:
    """A [k, c, 1, 1] weight as the kernel's panels: [ceil(k / 32), c, 32], zeros past k."""
    k, c = weight.shape[:2]
    panels = -(-k // PANEL)
    w = F.pad(weight.detach().float().reshape(k, c).t(), (0, panels * PANEL - k))
    return w.reshape(c, panels, PANEL).permute(1, 0, 2).contiguous()


def conv1x1(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, out_channels: int,
            activation: str, residual: torch.Tensor | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """The 1x1 convolution of float32 `x` with `packed` weights plus `bias`, then `activation`
    where the kernel has it (the caller applies any other and passes no `residual`), then +
    `residual` (the output's shape; a [shortcut] fused into this layer); channels-last output,
    in `out` if given (builders.winograd.output_rows). Only where `enabled()`."""
    x, ldx = input_rows(x)
    n, c, h, w = x.shape
    k = out_channels
    y, ldy = output_rows(out, n, k, h, w)
    res = None if residual is None else residual.contiguous(memory_format=torch.channels_last)
    native.library().darkcfg_pointwise(
        x.data_ptr(), ldx, n * h * w, c, packed.data_ptr(), bias.data_ptr(),
        None if res is None else res.data_ptr(), y.data_ptr(), ldy, k,
        ACTIVATION_CODES.get(activation, 0), LEAKY_SLOPE, torch.get_num_threads())
    return y
