"""Winograd F(4x4, 3x3) and F(2x2, 3x3) for the inference fast path's 3x3 stride-1
convolutions on the CPU.

A 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A over a 6x6 input tile d (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015; interpolation points 0, +-1, +-2 and
infinity): the channel sums of the element-wise products are 36 matrix products
[tiles x c] x [c x k] with a quarter of the direct convolution's multiply-adds: `torch.bmm`
runs them, or on few tiles builders.pointwise's native kernel (`native_products`). The
transforms around them are builders.native's `darkcfg_wino43_input` and `darkcfg_wino43_output`
(the latter adds the bias and applies the activation). On small maps
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

from . import native, pointwise
from .pointwise import ACTIVATION_CODES, LEAKY_SLOPE, input_rows, output_rows

# G of F(4x4, 3x3) and of F(2x2, 3x3): the (m + 2) x 3 kernel transforms, by output tile m
_G = {4: torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                      dtype=torch.float64),
      2: torch.tensor([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
                      dtype=torch.float64)}

# the fast path's kind of layer (builders.conv `fast_kind`) -> its output tile
TILES = {"winograd": 4, "winograd2": 2}

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
    if tiles2 >= 36:
        return 2
    # from 16 tiles only with the native products (8x8 512 -> 1024: 1.20x; by torch.bmm 0.81x)
    return 2 if tiles2 >= 16 and native_products(shape, out_channels, 2) else 0


def native_products(shape: torch.Size, out_channels: int, tile: int) -> bool:
    """Whether the Winograd products of a layer with input `shape` (N, C, H, W) run in
    builders.pointwise's native kernel rather than `torch.bmm`: where that kernel is built, on
    products of up to 36 rows (tiles), or up to 49 rows where the layer widens (k >= 2c). Those
    are the thin products whose weights stream from memory, where torch's kernel loses time
    (16 x [49 x 512] x [512 x 1024], 13x13 512 -> 1024 in F(2x2, 3x3): 1.14-1.23x; 16 rows:
    1.2-1.7x); on more rows torch's packed kernel is as fast or faster (100-512 rows:
    0.83-0.98x). Measured with the weights cycled out of the caches (docs/benchmarks.md)."""
    n, c, h, w = shape
    tiles = n * ((h + tile - 1) // tile) * ((w + tile - 1) // tile)
    rows = min(tiles, _block_tiles(tile, c, out_channels))
    return pointwise.enabled() and (rows <= 36 or (rows <= 49 and out_channels >= 2 * c))


def transform_weights(weight: torch.Tensor, tile: int = 4, panels: bool = False
                      ) -> torch.Tensor:
    """G g G^T of F(tile x tile, 3x3) for every (output, input) channel pair of a [k, c, 3, 3]
    weight, computed in float64: [(tile + 2)^2, c, k] float32, element (i * (tile + 2) + j) the
    transform's (i, j) entry; with `panels`, packed for the native products
    (builders.pointwise.pack_matrices: [(tile + 2)^2, ceil(k / 32), c, 32])."""
    k, c = weight.shape[:2]
    g = _G[tile]
    u = torch.einsum("ia,kcab,jb->ijck", g, weight.detach().double(), g)
    u = u.reshape((tile + 2) ** 2, c, k).float()
    return pointwise.pack_matrices(u) if panels else u.contiguous()


def _block_tiles(tile: int, c: int, k: int) -> int:
    """Tiles per call of the transforms and the products."""
    points = (tile + 2) ** 2
    return max(16, min(BLOCK_TILES * 16 // tile ** 2, BLOCK_BYTES // (points * 4 * (c + k))))


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor, activation: str,
            residual: torch.Tensor | None = None, out: torch.Tensor | None = None
            ) -> torch.Tensor:
    """The 3x3 stride-1 padding-1 convolution of float32 `x` with transformed weights `u`
    (`transform_weights`: [36, ...] runs F(4x4, 3x3), [16, ...] F(2x2, 3x3); packed in panels,
    the products run natively) plus `bias` (k values),
    then `activation` where the kernel has it (the caller applies any other and passes no
    `residual`), then + `residual` (the output's shape; a [shortcut] fused into this layer);
    channels-last output, in `out` if given (`output_rows`). Only where `enabled()`."""
    lib = native.library()
    x, ldx = input_rows(x)
    n, c, h, w = x.shape
    points, k = u.shape[0], bias.numel()
    tile = 4 if points == 36 else 2
    panels = u.dim() == 4
    forward, backward = (lib.darkcfg_wino43_input, lib.darkcfg_wino43_output) if tile == 4 else \
        (lib.darkcfg_wino23_input, lib.darkcfg_wino23_output)
    th, tw = (h + tile - 1) // tile, (w + tile - 1) // tile
    tiles = n * th * tw
    y, ldy = output_rows(out, n, k, h, w)
    res = None if residual is None else residual.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    code = ACTIVATION_CODES.get(activation, 0)
    block = _block_tiles(tile, c, k)
    for t0 in range(0, tiles, block):
        t1 = min(tiles, t0 + block)
        v = torch.empty(points, t1 - t0, c)
        forward(x.data_ptr(), ldx, v.data_ptr(), n, h, w, c, 1, th, tw, t0, t1, threads)
        m = pointwise.products(v, u, k) if panels else torch.bmm(v, u)
        backward(m.data_ptr(), bias.data_ptr(), None if res is None else res.data_ptr(),
                 y.data_ptr(), ldy, h, w, k, th, tw, t0, t1, code, LEAKY_SLOPE, threads)
    return y
