"""Builders: [maxpool], [local_avgpool], [avgpool] (src/maxpool_layer.c make_maxpool_layer;
src/avgpool_layer.c).

Darknet pools with a *total* padding (default size-1): windows start at -padding/2 and positions
outside the input are ignored. We pad explicitly only where torch's own pooling would differ, so
the common cases (size 2 stride 2, SPP's size 5/9/13 stride 1) are a bare `nn.MaxPool2d`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cfgparse import Block

from . import native
from .conv import blur, blurred_size, c_div, check_output, describe_window, need_chw
from .layer import Layer
from .registry import BuildContext, Shape, register


def window_padding(n_in: int, n_out: int, size: int, stride: int, padding: int) -> tuple[int, int]:
    """Padding before and after one axis so that plain pooling visits Darknet's windows.
    A negative `after` (trailing inputs no window reaches) needs no padding: pooling drops them."""
    before = padding // 2
    after = (n_out - 1) * stride + size - n_in - before
    return before, max(after, 0)


class MaxPool(Layer):
    """[maxpool] with explicit padding (`pads` = left, right, top, bottom). Padded positions hold
    the lowest float, so a window entirely outside the input gives -FLT_MAX as in Darknet."""

    channels_last_ok = True

    def __init__(self, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int],
                 antialiasing: int = 0, blur_stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        left, right, top, bottom = pads
        symmetric = left == right and top == bottom and max(left, top) <= size // 2
        self.pads = None if symmetric else pads
        # torch pads with -inf itself when the padding is symmetric and at most half the window
        self.pool = nn.MaxPool2d(size, stride, (top, left) if symmetric else 0)
        self.antialiasing, self.blur_stride = antialiasing, blur_stride
        # Darknet's common [maxpool] size=2 stride=2: a native kernel in NCHW training
        self.two_by_two = size == 2 and tuple(stride) == (2, 2) and not any(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads is not None:
            x = F.pad(x, self.pads, value=torch.finfo(x.dtype).min)
        y = self.pool(x)
        if self.antialiasing:
            y = blur(y, self.antialiasing, self.blur_stride)
        return y


class _NativeMaxPool2x2(torch.autograd.Function):
    """size=2 stride=2 through builders.native: torch's values and gradients (the first of equal
    maxima takes the gradient), 3-6x faster on NCHW float32 tensors in training; `--amp`'s
    channels-last bfloat16 ones through their own kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.bf16 = x.dtype == torch.bfloat16
        y, which = _native_pool(x)(x)
        ctx.save_for_backward(which)
        ctx.shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (which,) = ctx.saved_tensors
        backward = native.maxpool2x2_backward_bf16 if ctx.bf16 else native.maxpool2x2_backward
        return backward(grad, which, ctx.shape)


def _native_pool(x: torch.Tensor):
    """The kernel for x's kind: float32 NCHW, or `--amp`'s bfloat16 channels-last."""
    return native.maxpool2x2_bf16 if x.dtype == torch.bfloat16 else native.maxpool2x2


def native_pool_ok(x: torch.Tensor) -> bool:
    """A plain NCHW float32 CPU tensor, or a channels-last bfloat16 one (`--amp`), the native
    kernels built, and nothing watching that needs torch's own ops (builders.native.takes,
    takes_bf16)."""
    return native.takes(x) or native.takes_bf16(x)


class PlainMaxPool(MaxPool):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.two_by_two and native_pool_ok(x):
            if torch.is_grad_enabled() and x.requires_grad:
                return _NativeMaxPool2x2.apply(x)
            return _native_pool(x)(x)[0]
        if self.two_by_two and _even_channels_last(x):
            y = native.maxpool2x2_channels_last(x) if x.dtype == torch.float32 else None
            return _max_of_quads(x) if y is None else y
        return self.pool(x)


def _even_channels_last(x: torch.Tensor) -> bool:
    """A channels-last 4-D CPU map of even height and width in eager inference (the fast
    path's maps; builders.native.eager_inference; a GPU has its own pooling kernel)."""
    return (native.eager_inference(x) and x.device.type == "cpu" and x.dim() == 4
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
            and x.is_contiguous(memory_format=torch.channels_last))


def _max_of_quads(x: torch.Tensor) -> torch.Tensor:
    """size=2 stride=2 on a channels-last map as two element-wise maxima of its [h/2, 2, w/2, 2]
    view: torch's values (a channels-last result), where the native kernel cannot run (it is
    1.7-2.5x faster than this on float32: builders.native.maxpool2x2_channels_last)."""
    n, c, h, w = x.shape
    v = x.permute(0, 2, 3, 1).view(n, h // 2, 2, w // 2, 2, c)
    rows = torch.maximum(v[:, :, 0], v[:, :, 1])
    return torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1]).permute(0, 3, 1, 2)


class DepthMaxPool(Layer):
    """[maxpool] maxpool_depth=1: out[g] = max over input channels g, g+out_c, g+2*out_c, ..."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        groups = -(-c // self.out_channels)
        missing = groups * self.out_channels - c
        if missing:
            x = F.pad(x, (0, 0, 0, 0, 0, missing), value=torch.finfo(x.dtype).min)
        return x.view(b, groups, self.out_channels, h, w).amax(dim=1)


def _pool_geometry(block: Block, ctx: BuildContext) -> tuple[Shape, int, int, int, int]:
    """Input shape, size, stride_y, stride_x, total padding, with Darknet's defaults."""
    inp = need_chw(block, ctx)
    stride = block.int("stride")
    sx, sy = block.int("stride_x", stride), block.int("stride_y", stride)
    size = block.int("size", stride)
    padding = block.int("padding", size - 1)
    return inp, size, sy, sx, padding


def _out_size(inp: Shape, size: int, sy: int, sx: int, padding: int) -> tuple[int, int]:
    return c_div(inp.h + padding - size, sy) + 1, c_div(inp.w + padding - size, sx) + 1


@register("maxpool")
def build_maxpool(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp, size, sy, sx, padding = _pool_geometry(block, ctx)
    depth = block.bool("maxpool_depth")
    out_channels = block.int("out_channels")
    antialiasing = block.int("antialiasing")
    block.mark_read("maxpool_zero_nonmax")  # GPU-only in Darknet: the CPU forward ignores it
    if depth:
        if out_channels > inp.c:
            raise block.error("E302", f"out_channels={out_channels} exceeds the input's "
                              f"{inp.c} channels", "out_channels")
        layer: Layer = DepthMaxPool(out_channels)
        out = Shape.chw(out_channels, inp.h, inp.w)
        layer.describe = f"depth /{out_channels}"
    else:
        if antialiasing not in (0, 1, 2):
            raise block.error("E204", f"antialiasing must be 0, 1 or 2, got {antialiasing}",
                              "antialiasing")
        pool_sy, pool_sx = (1, 1) if antialiasing else (sy, sx)  # antialiasing: stride in blur
        out_h, out_w = _out_size(inp, size, pool_sy, pool_sx, padding)
        check_output(block, "size", f"{out_w} x {out_h}", out_h, out_w)
        top, bottom = window_padding(inp.h, out_h, size, pool_sy, padding)
        left, right = window_padding(inp.w, out_w, size, pool_sx, padding)
        pads = (left, right, top, bottom)
        cls = MaxPool if antialiasing or any(pads) else PlainMaxPool
        layer = cls(size, (pool_sy, pool_sx), pads, antialiasing, (sy, sx))
        layer.bflops = size * size * inp.c * out_h * out_w / 1e9
        if antialiasing:
            out_h, out_w = blurred_size(antialiasing, out_h, out_w, sy, sx)
            check_output(block, "antialiasing", f"{out_w} x {out_h} after the blur", out_h, out_w)
        out = Shape.chw(inp.c, out_h, out_w)
        layer.describe = describe_window(size, sy, sx) + (f" AA{antialiasing}" * bool(antialiasing))
    return layer, out


class LocalAvgPool(Layer):
    """[local_avgpool]: the mean of the in-range elements of each window (count_include_pad
    False, with Darknet's asymmetric padding)."""

    def __init__(self, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int]):
        super().__init__()
        self.size, self.stride, self.pads = size, stride, pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not any(self.pads):
            return F.avg_pool2d(x, self.size, self.stride)
        total = F.avg_pool2d(F.pad(x, self.pads), self.size, self.stride, divisor_override=1)
        ones = x.new_ones(1, 1, x.shape[2], x.shape[3])
        count = F.avg_pool2d(F.pad(ones, self.pads), self.size, self.stride, divisor_override=1)
        return total / count


@register("local_avgpool")
def build_local_avgpool(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp, size, sy, sx, padding = _pool_geometry(block, ctx)
    out_h, out_w = _out_size(inp, size, sy, sx, padding)
    check_output(block, "size", f"{out_w} x {out_h}", out_h, out_w)
    top, bottom = window_padding(inp.h, out_h, size, sy, padding)
    left, right = window_padding(inp.w, out_w, size, sx, padding)
    if max(left, right, top, bottom) >= size:
        raise block.error("E303", f"padding={padding} puts whole windows outside the input, "
                          "where Darknet divides by zero", "padding")
    layer = LocalAvgPool(size, (sy, sx), (left, right, top, bottom))
    layer.bflops = size * size * inp.c * out_h * out_w / 1e9
    layer.describe = describe_window(size, sy, sx)
    return layer, Shape.chw(inp.c, out_h, out_w)


class GlobalAvgPool(Layer):
    """[avgpool]: the mean over H x W of each channel -> C x 1 x 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


@register("avgpool")
def build_avgpool(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp = need_chw(block, ctx)
    layer = GlobalAvgPool()
    layer.describe = f"{inp.w} x {inp.h}"
    return layer, Shape.chw(inp.c, 1, 1)
