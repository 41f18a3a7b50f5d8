"""Builders: the small layers (src/upsample_layer.c; src/reorg_layer.c; src/crop_layer.c;
src/batchnorm_layer.c; src/parser.c parse_empty, pjreddie extras).

[dropout] [crop] [batchnorm] [normalization] [upsample] [reorg] [reorg3d] [activation] [empty]
[implicit], and pjreddie's [logistic] and [l2norm]. Where Darknet's element order is quirky
([reorg], [lrn], [upsample] with a negative stride) we reproduce it: trained weights depend on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cfgparse import Block

from .activations import activation
from .conv import check_output, need_chw
from .layer import Layer
from .norm import DarknetBatchNorm, batch_norm
from .registry import BuildContext, Shape, register


class Dropout(Layer):
    """Identity at inference; in training zero with probability p, scale the rest by 1/(1-p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)


@register("dropout")
def build_dropout(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    p = block.float("probability", 0.5 if ctx.net.flavor == "pjreddie" else 0.2)
    if not 0 <= p < 1:
        raise block.error("E203", f"probability must be in [0, 1), got {p:g}", "probability")
    # DropBlock is GPU-only in Darknet; its CPU forward is plain dropout, as here.
    block.mark_read("dropblock", "dropblock_size_rel", "dropblock_size_abs")
    layer = Dropout(p)
    layer.describe = f"p = {p:.2f}"
    return layer, ctx.input


class Crop(Layer):
    """[crop]: centre crop at inference, random offset (and flip) in training; then `2x - 1`
    unless noadjust."""

    def __init__(self, height: int, width: int, flip: bool, noadjust: bool) -> None:
        super().__init__()
        self.height, self.width, self.flip, self.noadjust = height, width, flip, noadjust

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if self.training:
            dh = int(torch.randint(h - self.height + 1, ()))
            dw = int(torch.randint(w - self.width + 1, ()))
            flip = self.flip and bool(torch.randint(2, ()))
        else:
            dh, dw, flip = (h - self.height) // 2, (w - self.width) // 2, False
        if flip:  # Darknet reads column w - dw - 1 - j for output column j
            y = x[:, :, dh:dh + self.height, w - dw - self.width:w - dw].flip(-1)
        else:
            y = x[:, :, dh:dh + self.height, dw:dw + self.width]
        return y if self.noadjust else y * 2 - 1


@register("crop")
def build_crop(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp = need_chw(block, ctx)
    height, width = block.int("crop_height"), block.int("crop_width")
    flip, noadjust = block.bool("flip"), block.bool("noadjust")
    # angle/saturation/exposure/shift are applied only by Darknet's GPU crop (training).
    block.mark_read("angle", "saturation", "exposure", "shift")
    if height > inp.h or width > inp.w:
        key = "crop_height" if height > inp.h else "crop_width"
        raise block.error("E303", f"crop {width} x {height} is larger than the input "
                          f"{inp.w} x {inp.h}", key)
    layer = Crop(height, width, flip, noadjust)
    layer.describe = f"{width} x {height}"
    return layer, Shape.chw(inp.c, height, width)


class BatchNormLayer(Layer):
    """[batchnorm]: per-channel batch normalisation. pjreddie's file has no biases (they stay 0)."""

    def __init__(self, bn: DarknetBatchNorm, biases_in_file: bool) -> None:
        super().__init__()
        self.bn = bn
        self.biases_in_file = biases_in_file
        if not biases_in_file:
            bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        stats = [self.bn.weight, self.bn.running_mean, self.bn.running_var]
        return [self.bn.bias, *stats] if self.biases_in_file else stats


def _channels(block: Block, ctx: BuildContext) -> int:
    """Channels of an image or of a flat vector (Darknet treats C x 1 x 1 and flat alike)."""
    shape = ctx.input
    if shape.c > 0:
        return shape.c
    if shape.size > 0:
        return shape.size
    raise block.error("E302", f"[{block.name}] has no input values", hint="check the layer before")


@register("batchnorm")
def build_batchnorm(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    layer = BatchNormLayer(batch_norm(_channels(block, ctx), ctx.net.flavor),
                           biases_in_file=ctx.net.flavor != "pjreddie")
    return layer, ctx.input


class LocalResponseNorm(Layer):
    """[lrn] as Darknet computes it: out_k = x_k * (kappa + alpha * S_k)^-beta with
    S_k = sum of x_j^2 over j in [k - (size-1)/2, k + size/2] minus x_{size/2}^2: its running
    sum starts without channel size/2, for every k (src/normalization_layer.c). alpha is not divided
    by size."""

    def __init__(self, size: int, alpha: float, beta: float, kappa: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.kappa = size, alpha, beta, kappa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squared = x * x
        channels = x.shape[1]
        behind, ahead = (self.size - 1) // 2, self.size // 2
        padded = F.pad(squared, (0, 0, 0, 0, behind, ahead))
        window = padded[:, 0:channels]
        for i in range(1, self.size):
            window = window + padded[:, i:i + channels]
        if ahead < channels:
            window = window - squared[:, ahead:ahead + 1]
        return x * (self.kappa + self.alpha * window).pow(-self.beta)


@register("normalization")
def build_normalization(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp = need_chw(block, ctx)
    layer = LocalResponseNorm(block.int("size"), block.float("alpha"), block.float("beta"),
                              block.float("kappa"))
    layer.describe = f"size {layer.size}"
    return layer, inp


class Upsample(Layer):
    """[upsample]: stride > 0 nearest-neighbour x stride; stride < 0 the SUM of each |s| x |s|
    block (not the mean); both times `scale`."""

    channels_last_ok = True

    def __init__(self, stride: int, scale: float) -> None:
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = abs(self.stride)
        if self.stride > 1 and x.is_contiguous(memory_format=torch.channels_last) \
                and not x.is_contiguous():  # fast path's layout: copy pixels, stay channels-last
            nhwc = x.permute(0, 2, 3, 1)[:, :, None, :, None]
            y = nhwc.expand(b, h, s, w, s, c).reshape(b, h * s, w * s, c).permute(0, 3, 1, 2)
        elif self.stride > 1:
            y = x[:, :, :, None, :, None].expand(b, c, h, s, w, s).reshape(b, c, h * s, w * s)
        elif self.stride < -1:
            oh, ow = h // s, w // s
            if oh * s != h or ow * s != w:
                # Darknet indexes the input with the output's row length: it reads the first
                # B*c*(oh*s)*(ow*s) values of the buffer as that shape.
                x = x.reshape(-1)[:b * c * oh * s * ow * s]
            y = x.reshape(b, c, oh, s, ow, s).sum(dim=(3, 5))
        else:
            y = x
        return y * self.scale if self.scale != 1 else y


@register("upsample")
def build_upsample(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp = need_chw(block, ctx)
    stride, scale = block.int("stride"), block.float("scale")
    if stride == 0:
        raise block.error("E203", "stride must not be 0", "stride",
                          hint="stride > 0 upsamples, stride < 0 downsamples")
    if stride > 0:
        out_h, out_w = inp.h * stride, inp.w * stride
    else:
        out_h, out_w = inp.h // -stride, inp.w // -stride
    check_output(block, "stride", f"{out_w} x {out_h}", out_h, out_w)
    layer = Upsample(stride, scale)
    layer.describe = f"{stride}x" + (f" *{scale:g}" if scale != 1 else "")
    return layer, Shape.chw(inp.c, out_h, out_w)


def reorg_gather(x: torch.Tensor, c: int, h: int, w: int, s: int) -> torch.Tensor:
    """Darknet `reorg_cpu(x, w, h, c, s, forward=0)`: Y[k, j, i] = X[k % (c/s²), j*s + dy,
    i*s + dx] with (dy, dx) = divmod(k // (c/s²), s) and X = the buffer viewed as
    (c/s², h*s, w*s). Returns Y's buffer, flat per batch item."""
    b = x.shape[0]
    x = x.reshape(b, c // (s * s), h, s, w, s)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(b, c * h * w)


def reorg_scatter(x: torch.Tensor, c: int, h: int, w: int, s: int) -> torch.Tensor:
    """Darknet `reorg_cpu(x, w, h, c, s, forward=1)`, the inverse of `reorg_gather`: the input
    viewed as (c, h, w) is written to an output viewed as (c/s², h*s, w*s)."""
    b = x.shape[0]
    x = x.reshape(b, s, s, c // (s * s), h, w)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(b, c * h * w)


class Reorg(Layer):
    """[reorg] / [reorg3d]: `reorg_cpu` on the dims Darknet passes (`dims` = c, h, w), gathering
    (forward=0) or scattering (forward=1), then viewed as the declared output shape."""

    def __init__(self, dims: tuple[int, int, int], stride: int, scatter: bool,
                 out: tuple[int, int, int]) -> None:
        super().__init__()
        self.dims, self.stride, self.scatter, self.out = dims, stride, scatter, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        move = reorg_scatter if self.scatter else reorg_gather
        return move(x, *self.dims, self.stride).view(x.shape[0], *self.out)


class Flatten(Layer):
    """pjreddie [reorg] flatten=1: CHW -> HWC order (reverse=1: HWC -> CHW), declared shape."""

    def __init__(self, hw: int, c: int, reverse: bool, out: tuple[int, int, int]) -> None:
        super().__init__()
        self.hw, self.c, self.reverse, self.out = hw, c, reverse, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        src = (b, self.hw, self.c) if self.reverse else (b, self.c, self.hw)
        return x.reshape(src).transpose(1, 2).reshape(b, *self.out)


class PadFlat(Layer):
    """pjreddie [reorg] extra=N: the input, flat, followed by N zeros."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.cat([flat, flat.new_zeros(flat.shape[0], self.extra)], dim=1)


def _reorg_divisible(block: Block, inp: Shape, s: int, channels_by: int, spatial: bool) -> None:
    if inp.c % channels_by or (spatial and (inp.h % s or inp.w % s)):
        need = f"channels divisible by {channels_by}" + \
            (f" and width/height divisible by {s}" if spatial else "")
        raise block.error("E302", f"[{block.name}] stride={s} needs {need}; the input is "
                          f"{inp.c} x {inp.h} x {inp.w}", "stride",
                          hint="Darknet would read or write past its buffers here")


@register("reorg")
def build_reorg(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    """AlexeyAB REORG_OLD = pjreddie [reorg]: the YOLOv2 reorg with its channel/row mixing."""
    inp = need_chw(block, ctx)
    s, reverse = block.int("stride"), block.bool("reverse")
    if reverse:
        out = (inp.c // (s * s), inp.h * s, inp.w * s)
    else:
        out = (inp.c * s * s, inp.h // s, inp.w // s)
    if ctx.net.flavor == "pjreddie":  # flatten/extra exist only in pjreddie's reorg
        flatten, extra = block.bool("flatten"), block.int("extra")
        if extra:
            layer: Layer = PadFlat(extra)
            layer.describe = f"+{extra}"
            return layer, Shape.flat(inp.size + extra)
        if flatten:
            if out[0] * out[1] * out[2] != inp.size:
                _reorg_divisible(block, inp, s, s * s, not reverse)
            layer = Flatten(inp.h * inp.w, inp.c, reverse, out)
            layer.describe = "flatten"
            return layer, Shape.chw(*out)
    _reorg_divisible(block, inp, s, s * s, not reverse)
    layer = Reorg((inp.c, inp.h, inp.w), s, reverse, out)
    layer.describe = f"/{s}" + " reverse" * reverse
    return layer, Shape.chw(*out)


@register("reorg3d")
def build_reorg3d(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    """AlexeyAB [reorg3d] (REORG): a true space-to-depth, channel index (dy*s + dx)*C + c.
    Darknet calls reorg_cpu with the *output* dims here."""
    inp = need_chw(block, ctx)
    s, reverse = block.int("stride"), block.bool("reverse")
    if reverse:
        _reorg_divisible(block, inp, s, s ** 4, False)
        out = (inp.c // (s * s), inp.h * s, inp.w * s)
    else:
        _reorg_divisible(block, inp, s, 1, True)
        out = (inp.c * s * s, inp.h // s, inp.w // s)
    layer = Reorg(out, s, reverse, out)
    layer.describe = f"/{s}" + " reverse" * reverse
    return layer, Shape.chw(*out)


class ActivationLayer(Layer):
    """[activation]: the activation alone (never in place: the input may be routed elsewhere)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = activation(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@register("activation")
def build_activation(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    name = block.str("activation")
    if name.startswith("normalize_channels"):
        need_chw(block, ctx)  # these normalise over the channels of each pixel
    layer = ActivationLayer(name)
    layer.describe = name
    return layer, ctx.input


class Empty(Layer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register("empty")
def build_empty(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    return Empty(), ctx.input


class Implicit(Layer):
    """[implicit] (YOLOR): a learned constant of shape filters x atoms x 1, whatever the input."""

    def __init__(self, filters: int, atoms: int, mean: float, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(filters, atoms, 1).normal_(mean, std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # -1 rather than *weight.shape: torch.fx (emit) cannot unpack a traced shape
        return self.weight.unsqueeze(0).expand(x.shape[0], -1, -1, -1).contiguous()

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        return [self.weight]


@register("implicit")
def build_implicit(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    filters, atoms = block.int("filters"), block.int("atoms")
    layer = Implicit(filters, atoms, block.float("mean"), block.float("std"))
    layer.filters = filters
    return layer, Shape.chw(filters, atoms, 1)


class Logistic(Layer):
    """pjreddie [logistic] (LOGXENT): sigmoid output; loss = logistic cross-entropy, summed over
    the outputs and averaged over the batch."""

    takes_loss = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        target = target.reshape(x.shape).to(x.dtype)
        return F.binary_cross_entropy_with_logits(x, target, reduction="sum") / x.shape[0]


@register("logistic")
def build_logistic(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    return Logistic(), ctx.input


class L2Norm(Layer):
    """pjreddie [l2norm]: each pixel's channel vector divided by its L2 norm (no epsilon)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


@register("l2norm")
def build_l2norm(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    _channels(block, ctx)
    return L2Norm(), ctx.input
