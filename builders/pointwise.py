"""1x1 convolutions of the inference fast path as one native matrix product with the bias and
the activation applied in registers (builders.native's `darkcfg_pointwise`, AVX-512).

A 1x1 stride-1 convolution on a channels-last map is the product [pixels x c] x [c x k]. oneDNN
computes it at the machine's matrix-product rate, but torch reaches no mish post-op, so every
mish layer paid a second pass over its output (yolov4's CSP blocks: 66 such layers, a third of
its time). The native kernel keeps a tile of 12 pixels x 32 output channels in registers
through the whole sum, then adds the bias, applies linear/leaky/relu/mish and stores once.
Where AVX-512 is missing, or with `DARKCFG_POINTWISE=0`, oneDNN's kernel runs as before.
`products` runs a batch of such products in one call: Winograd's element-wise stage on small
maps (builders.winograd.native_products), where each product has few rows and its weights come
from memory. The helpers the native kernels share (input_rows, output_rows, the activation
codes) live here.

Same values as the direct convolution to float32 rounding (the sum runs over channels in
order; tests/test_pointwise.py bounds it against float64).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from . import native
from .activations import CONV_POST_OPS

PANEL = 32  # output channels per weight panel (the kernel's PW_NR)

# the activations the native kernels apply themselves (others run after them)
ACTIVATION_CODES = {"linear": 0, "leaky": 1, "relu": 2, "mish": 3}
LEAKY_SLOPE = CONV_POST_OPS["leaky"][1][0]  # Darknet's leaky, as oneDNN's post-op gets it


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


def pack_weights(weight: torch.Tensor) -> torch.Tensor:
    """A [k, c, 1, 1] weight as the kernel's panels: [ceil(k / 32), c, 32], zeros past k."""
    k, c = weight.shape[:2]
    return pack_matrices(weight.detach().float().reshape(1, k, c).transpose(1, 2))[0]


def pack_matrices(u: torch.Tensor) -> torch.Tensor:
    """[points, c, k] matrices (the right-hand factors of `products`) as the kernel's panels:
    [points, ceil(k / 32), c, 32], zeros past k."""
    points, c, k = u.shape
    panels = -(-k // PANEL)
    w = F.pad(u, (0, panels * PANEL - k))
    return w.reshape(points, c, panels, PANEL).permute(0, 2, 1, 3).contiguous()


GATHER_CHANNELS = 4  # convolutions over at most this many input channels: `conv_gather`


def gather_applies(conv: torch.nn.Conv2d) -> bool:
    """Whether `conv_gather` computes `conv` (on inputs of up to GATHER_CHANNELS channels): no
    groups, no dilation; any window, stride and (zero) padding."""
    return (conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


@functools.lru_cache(maxsize=64)
def _gather_offsets(c: int, kh: int, kw: int, plane: int, row: int) -> torch.Tensor:
    """Where each of an output pixel's c * kh * kw inputs lies from the window's first, in a
    padded NCHW image (planes of `plane` floats, rows of `row`), in the weights' order."""
    ci, ky, kx = torch.meshgrid(torch.arange(c), torch.arange(kh), torch.arange(kw),
                                indexing="ij")
    return (ci * plane + ky * row + kx).reshape(-1).contiguous()


def conv_gather(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor,
                conv: torch.nn.Conv2d, activation: str, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """`conv` (gather_applies) of float32 `x`, a few channels (a network's first layer), with
    `packed` weights (pack_weights of the [k, c * kh * kw] weight) plus `bias`, then
    `activation` where the kernel has it (the caller applies any other): each output pixel's
    c x kh x kw inputs gathered from the zero-padded image into the 1x1 kernel's register tile
    (oneDNN's kernels run at a fifth of the machine's rate on 3 channels). Channels-last output,
    in `out` if given (`output_rows`). Only where `enabled()`."""
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    # F.pad keeps a 1x1 map's ambiguous strides as channels-last (a [maxpool] whose stride
    # passes its input leaves (c, 1, c, c)): the kernel reads NCHW
    padded = (F.pad(x, (pw, pw, ph, ph)) if ph or pw else x).contiguous()
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = (hp - kh) // sy + 1, (wp - kw) // sx + 1
    k = conv.out_channels
    y, ldy = output_rows(out, n, k, oh, ow)
    offsets = _gather_offsets(c, kh, kw, hp * wp, wp)
    native.library().darkcfg_conv_gather(
        padded.data_ptr(), n, c * hp * wp, wp, sy, sx, offsets.data_ptr(), offsets.numel(),
        packed.data_ptr(), bias.data_ptr(), y.data_ptr(), oh, ow, ldy, k,
        ACTIVATION_CODES.get(activation, 0), LEAKY_SLOPE, torch.get_num_threads())
    return y


def products(v: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """The batched matrix product [points, rows, c] x [points, c, k] -> [points, rows, k] with
    the right-hand factors packed by `pack_matrices`: `torch.bmm`'s result, one native call
    (Winograd's element-wise stage on small maps, builders.winograd). Only where `enabled()`."""
    points, rows, c = v.shape
    m = torch.empty(points, rows, k)
    native.library().darkcfg_pointwise_batch(points, v.data_ptr(), rows, c, packed.data_ptr(),
                                             m.data_ptr(), k, torch.get_num_threads())
    return m


def conv1x1(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, out_channels: int,
            activation: str, residual: torch.Tensor | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """The 1x1 convolution of float32 `x` with `packed` weights plus `bias`, then `activation`
    where the kernel has it (the caller applies any other and passes no `residual`), then +
    `residual` (the output's shape; a [shortcut] fused into this layer); channels-last output,
    in `out` if given (`output_rows`). Only where `enabled()`."""
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
