"""Winograd F(4x4, 3x3) for the inference fast path's 3x3 stride-1 convolutions on the CPU.

A 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A over a 6x6 input tile d (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015; interpolation points 0, +-1, +-2 and
infinity): the channel sums of the element-wise products are 36 matrix products
[tiles x c] x [c x k], which `torch.bmm` runs, with a quarter of the direct convolution's
multiply-adds. The transforms around them are builders.native's `darkcfg_wino43_input` and
`darkcfg_wino43_output` (the latter adds the bias and applies the activation). oneDNN has no
Winograd kernel for float32 reachable through torch, and its direct kernels already run at the
machine's matrix-product rate, so this is where a 3x3 layer gets faster than that rate.

The values differ from the direct convolution's by float32 rounding of the transforms: about
5e-5 of the output's scale on random weights, a few times the direct kernel's own rounding
(tests/test_winograd.py bounds it against float64). Darknet computes these layers by im2col and
a matrix product (src/convolutional_layer.c forward_convolutional_layer); `DARKCFG_WINOGRAD=0`
or `Network.use_fast_inference(False)` keeps the direct kernels.
"""

from __future__ import annotations

import os

import torch

from . import native
from .activations import CONV_POST_OPS

# the activations the output transform applies itself (others run after it)
ACTIVATION_CODES = {"linear": 0, "leaky": 1, "relu": 2, "mish": 3}
LEAKY_SLOPE = CONV_POST_OPS["leaky"][1][0]  # Darknet's leaky, as oneDNN's post-op gets it

# G of F(4x4, 3x3): the 6x3 kernel transform
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                  dtype=torch.float64)

# tiles per call of the transforms and the product: keeps a block's transformed input and
# products in the cores' caches on large layers, and bounds their memory on wide ones
BLOCK_TILES = 512
BLOCK_BYTES = 32 << 20


def enabled() -> bool:
    """Not turned off (`DARKCFG_WINOGRAD=0`) and the native transforms built."""
    return os.environ.get("DARKCFG_WINOGRAD", "1") != "0" and native.library() is not None


def applies(conv: torch.nn.Conv2d) -> bool:
    """Whether `conv` has the one shape these kernels compute: 3x3, stride 1, padding 1, no
    dilation, no groups."""
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1)


def pays_off(shape: torch.Size, out_channels: int) -> bool:
    """Whether Winograd beats oneDNN's direct kernel for input `shape` (N, C, H, W), as
    measured per layer inside vgg-16, darknet53, yolov4-tiny and yolov4 and per layer shape
    with the caches emptied between calls (docs/benchmarks.md "Winograd"): 1.2-3x faster from
    25 tiles of 4x4 up (a 17x17 map), and on 16 tiles that cover the map exactly (16x16
    256 -> 512 in darknet53: 1.1x), except with few channels, where the products are too thin
    (16 -> 16 at 104x104 0.84x, 3 -> 32 at 416x416 0.4x). On smaller or ragged maps the
    transformed weights, 4x the weights and read once per call, cost more than the saved
    arithmetic (13x13 256 -> 512 in yolov4-tiny, 16 tiles for 169 pixels: 0.76x)."""
    n, c, h, w = shape
    tiles = n * ((h + 3) // 4) * ((w + 3) // 4)
    exact = h % 4 == 0 and w % 4 == 0
    return c >= 32 and out_channels >= 32 and (tiles >= 25 or (tiles >= 16 and exact))


def transform_weights(weight: torch.Tensor) -> torch.Tensor:
    """G g G^T for every (output, input) channel pair of a [k, c, 3, 3] weight, computed in
    float64: [36, c, k] float32, element (i * 6 + j) the transform's (i, j) entry."""
    k, c = weight.shape[:2]
    u = torch.einsum("ia,kcab,jb->ijck", _G, weight.detach().double(), _G)
    return u.reshape(36, c, k).float().contiguous()


def input_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`x` for a native kernel, and how many floats apart its pixels lie: as it is if it is
    channels-last, or channels [c0, c0 + c) of a channels-last map (a [route]'s groups, or a
    layer whose output went into a concatenation), else a channels-last copy."""
    n, c, h, w = x.shape
    ld = x.stride(3)
    if (x.dtype == torch.float32 and x.stride(1) == 1 and ld >= c and x.stride(2) == w * ld
            and (n == 1 or x.stride(0) == h * w * ld)):
        return x, ld
    return x.contiguous(memory_format=torch.channels_last), c


def output_rows(out: torch.Tensor | None, n: int, k: int, h: int, w: int
                ) -> tuple[torch.Tensor, int]:
    """Where a native kernel writes its [n, k, h, w] output, and how many floats apart its
    pixels lie: a new channels-last tensor, or `out`, which may be channels [c0, c0 + k) of a
    channels-last [n, C, h, w] tensor (a [route]'s concatenation, Network.forward)."""
    if out is None:
        return torch.empty(n, k, h, w, memory_format=torch.channels_last), k
    ld = out.stride(3)
    if (tuple(out.shape) != (n, k, h, w) or out.dtype != torch.float32 or out.stride(1) != 1
            or out.stride(2) != w * ld or out.stride(0) != h * w * ld or ld < k):
        raise ValueError(f"out must be float32 [{n}, {k}, {h}, {w}] channels of a channels-last "
                         f"tensor, not {tuple(out.shape)} strided {out.stride()}")
    return out, ld


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor, activation: str,
            residual: torch.Tensor | None = None, out: torch.Tensor | None = None
            ) -> torch.Tensor:
    """The 3x3 stride-1 padding-1 convolution of float32 `x` with transformed weights `u`
    ([36, c, k]) plus `bias`, then `activation` where the kernel has it (the caller applies
    any other and passes no `residual`), then + `residual` (the output's shape; a [shortcut]
    fused into this layer); channels-last output, in `out` if given (`output_rows`). Only
    where `enabled()`."""
    lib = native.library()
    x, ldx = input_rows(x)
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = (h + 3) // 4, (w + 3) // 4
    tiles = n * th * tw
    y, ldy = output_rows(out, n, k, h, w)
    res = None if residual is None else residual.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    code = ACTIVATION_CODES.get(activation, 0)
    block = max(16, min(BLOCK_TILES, BLOCK_BYTES // (36 * 4 * (c + k))))
    for t0 in range(0, tiles, block):
        t1 = min(tiles, t0 + block)
        v = torch.empty(36, t1 - t0, c)
        lib.darkcfg_wino43_input(x.data_ptr(), ldx, v.data_ptr(), n, h, w, c, 1, th, tw, t0,
                                 t1, threads)
        m = torch.bmm(v, u)
        lib.darkcfg_wino43_output(m.data_ptr(), bias.data_ptr(),
                                  None if res is None else res.data_ptr(), y.data_ptr(), ldy,
                                  h, w, k, th, tw, t0, t1, code, LEAKY_SLOPE, threads)
    return y
