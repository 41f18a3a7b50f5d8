"""Winograd F(4x4, 3x3) and F(2x2, 3x3) for the inference fast path's 3x3 stride-1
convolutions on the CPU.

A 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A over a 6x6 input tile d (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015; interpolation points 0, +-1, +-2 and
infinity): the channel sums of the element-wise products are 36 matrix products
[tiles x c] x [c x k], which `torch.bmm` runs, with a quarter of the direct convolution's
multiply-adds. The transforms around them are builders.native's `darkcfg_wino43_input` and
`darkcfg_wino43_output` (the latter adds the bias and applies the activation). On small maps
F(2x2, 3x3) (4x4 input tiles, 16 products, `darkcfg_wino23_*`) runs instead: more rows per
product for 16/9 of the weights rather than 4x (`tile_for` says which). oneDNN has no
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

# G of F(4x4, 3x3) and of F(2x2, 3x3): the (m + 2) x 3 kernel transforms, by output tile m
_G = {4: torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                      dtype=torch.float64),
      2: torch.tensor([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
                      dtype=torch.float64)}

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


def tile_for(shape: torch.Size, out_channels: int) -> int:
    """The output tile of the Winograd variant that beats oneDNN's direct kernel for input
    `shape` (N, C, H, W): 4 for F(4x4, 3x3), 2 for F(2x2, 3x3), 0 for neither. Measured per
    layer shape with the weights cycled out of the caches between calls, as in a net
    (docs/benchmarks.md "Winograd"):

    * F(4x4, 3x3) from 49 tiles of 4x4 up (26x26 and larger at batch 1: 1.5-3.1x), and on 16-48
      tiles where the transformed weights (36 per channel pair) are small (up to 128 x 128
      channels: 64 -> 128 at 16x16 1.49x); with more channels its 16-48-row matrix products
      wait on 4x the weights streaming from memory (13x13 512 -> 512: 0.78x, 16x16 256 -> 512:
      1.11x).
    * F(2x2, 3x3) on the smaller maps from 36 tiles of 2x2 (12x12 up): 4x the rows and 16/9 of
      the weights (13x13 512 -> 512 1.45x, 256 -> 512 1.39x, 512 -> 1024 1.16x; 16x16
      256 -> 512 1.76x; 19x19 512 -> 512 1.63x, where F(4x4, 3x3) gives 1.45x).
    * Neither on fewer tiles (8x8 512 -> 1024: F(2x2, 3x3) 0.69x) or with fewer than 32 input
      or output channels, where the products are too thin (16 -> 16 at 104x104 0.84x,
      3 -> 32 at 416x416 0.4x)."""
    n, c, h, w = shape
    if c < 32 or out_channels < 32:
        return 0
    tiles4 = n * ((h + 3) // 4) * ((w + 3) // 4)
    tiles2 = n * ((h + 1) // 2) * ((w + 1) // 2)
    small = c * out_channels <= 128 * 128
    exact = h % 4 == 0 and w % 4 == 0
    if tiles4 >= 49 or (small and (tiles4 >= 25 or (tiles4 >= 16 and exact))):
        return 4
    return 2 if tiles2 >= 36 else 0


def transform_weights(weight: torch.Tensor, tile: int = 4) -> torch.Tensor:
    """G g G^T of F(tile x tile, 3x3) for every (output, input) channel pair of a [k, c, 3, 3]
    weight, computed in float64: [(tile + 2)^2, c, k] float32, element (i * (tile + 2) + j) the
    transform's (i, j) entry."""
    k, c = weight.shape[:2]
    g = _G[tile]
    u = torch.einsum("ia,kcab,jb->ijck", g, weight.detach().double(), g)
    return u.reshape((tile + 2) ** 2, c, k).float().contiguous()


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
    (`transform_weights`: [36, c, k] runs F(4x4, 3x3), [16, c, k] F(2x2, 3x3)) plus `bias`,
    then `activation` where the kernel has it (the caller applies any other and passes no
    `residual`), then + `residual` (the output's shape; a [shortcut] fused into this layer);
    channels-last output, in `out` if given (`output_rows`). Only where `enabled()`."""
    lib = native.library()
    x, ldx = input_rows(x)
    n, c, h, w = x.shape
    points, k = u.shape[0], u.shape[2]
    tile = 4 if points == 36 else 2
    forward, backward = (lib.darkcfg_wino43_input, lib.darkcfg_wino43_output) if tile == 4 else \
        (lib.darkcfg_wino23_input, lib.darkcfg_wino23_output)
    th, tw = (h + tile - 1) // tile, (w + tile - 1) // tile
    tiles = n * th * tw
    y, ldy = output_rows(out, n, k, h, w)
    res = None if residual is None else residual.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    code = ACTIVATION_CODES.get(activation, 0)
    block = max(16, min(BLOCK_TILES * 16 // tile ** 2,
                        BLOCK_BYTES // (points * 4 * (c + k))))
    for t0 in range(0, tiles, block):
        t1 = min(tiles, t0 + block)
        v = torch.empty(points, t1 - t0, c)
        forward(x.data_ptr(), ldx, v.data_ptr(), n, h, w, c, 1, th, tw, t0, t1, threads)
        m = torch.bmm(v, u)
        backward(m.data_ptr(), bias.data_ptr(), None if res is None else res.data_ptr(),
                 y.data_ptr(), ldy, h, w, k, th, tw, t0, t1, code, LEAKY_SLOPE, threads)
    return y
