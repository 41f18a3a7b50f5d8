"""Builders: [convolutional], [deconvolutional], [local] (src/convolutional_layer.c
make_convolutional_layer; src/local_layer.c; src/parser.c load_weights_upto, save_weights_upto).

A plain convolution is exactly `nn.Conv2d` (+ `nn.BatchNorm2d`-compatible BN) + an activation
module, with a forward that does nothing else, so that a VGG made of these layers runs as fast as
torchvision's. The rarer Darknet features (antialiasing, XNOR, shared weights) use a slower class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cfgparse import Block

from . import native, pointwise, winograd
from .activations import CONV_POST_OPS, activation_module, mish_
from .layer import Layer
from .norm import DarknetBatchNorm, batch_norm
from .registry import BuildContext, Shape, register

# Training-only or GPU-only [convolutional] keys: Darknet's CPU inference never reads them.
_CONV_TRAINING_KEYS = ("assisted_excitation", "sway", "rotate", "stretch", "stretch_sway", "dot",
                       "angle", "grad_centr", "reverse", "coordconv", "deform", "adam",
                       "bin_output", "cbn")


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero), which all Darknet size formulas use."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def need_chw(block: Block, ctx: BuildContext) -> Shape:
    """The input shape, which must be an image (C x H x W), not a flat vector."""
    shape = ctx.input
    if shape.c <= 0 or shape.h <= 0 or shape.w <= 0:
        raise block.error(
            "E302", f"[{block.name}] needs a C x H x W input, but layer {ctx.index - 1} gives a "
            f"flat vector of {shape.size} values", hint="put it before [connected]/[softmax] "
            "layers, or give [net] width, height and channels")
    return shape


def check_output(block: Block, key: str, what: str, *sizes: int) -> None:
    if min(sizes) <= 0:
        raise block.error("E303", f"[{block.name}] output would be {what}: nothing left",
                          key, hint="use a smaller size/stride or a larger input")


def check_window(block: Block, size: int, inp: Shape, padding: int, key: str = "size") -> None:
    """E303 when the kernel is larger than the padded input. Darknet's C division still gives
    an output of 1 (`(3 - 5) / 3 + 1`) and its im2col reads zeros past the edge; torch's
    convolution refuses such an input at run time, after `check` had passed the cfg."""
    if size > min(inp.h, inp.w) + 2 * padding:
        raise block.error(
            "E303", f"[{block.name}] size={size} is larger than its {inp.w} x {inp.h} input with "
            f"padding {padding}: no window fits (Darknet reads zeros past the edge; darkcfg "
            "cannot run it)", key, hint="use a smaller size, pad=1, or a larger input "
            "(width/height)")


def blur(x: torch.Tensor, kind: int, stride: tuple[int, int]) -> torch.Tensor:
    """Darknet's antialiasing blur, a fixed depthwise conv with the layer's real stride:
    kind 1: [1 2 1] x [1 2 1] / 16 with padding 1; kind 2: 2 x 2 box / 4, no padding."""
    if kind == 2:
        return F.avg_pool2d(x, 2, stride)
    taps = x.new_tensor([1.0, 2.0, 1.0])
    kernel = (taps[:, None] * taps[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(x, kernel, stride=stride, padding=1, groups=x.shape[1])


def blurred_size(kind: int, h: int, w: int, sy: int, sx: int) -> tuple[int, int]:
    size, pad = (2, 0) if kind == 2 else (3, 1)
    return c_div(h + 2 * pad - size, sy) + 1, c_div(w + 2 * pad - size, sx) + 1


def binarize_weights(w: torch.Tensor) -> torch.Tensor:
    """XNOR-net weights: sign(w) times the mean |w| of each filter (Darknet `binarize_weights`),
    with a straight-through gradient for training."""
    scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    binary = torch.where(w > 0, scale, -scale)
    return straight_through(binary, w)


def binarize_input(x: torch.Tensor) -> torch.Tensor:
    """Darknet `binarize_cpu`: +1 where x > 0, else -1 (straight-through gradient)."""
    binary = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
    return straight_through(binary, x)


def straight_through(binary: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`binary` in the forward, the identity's gradient for `t` in the backward. Written as
    binary + (t - t.detach()), which is exactly `binary` (t - t is 0); the textbook
    t + (binary - t).detach() is off by t's rounding, which for |t| ~ 1e7 is the whole value."""
    return binary.detach() + (t - t.detach())


_ONEDNN = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise", "_linear_pointwise"))


def fast_inference_ok(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether the inference fast path may run on input `x` (and a layer's `weight`): no
    autograd, plain CPU float32 tensors, oneDNN present, and no tracer, compiler, exporter or
    autocast watching (they need the plain modules' ops). Not on an empty map (a size the
    network's pools shrink to nothing): the native kernels divide by its pixel count (SIGFPE),
    where torch's ops say what is wrong."""
    return (_ONEDNN and not torch.is_grad_enabled() and type(x) is torch.Tensor
            and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.numel() > 0
            and (weight is None or weight.dtype == torch.float32)
            and torch.backends.mkldnn.enabled and not native.torch_ops_needed())


def fast_path_runs(module: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether `module` (a `Network`, or a layer with a fast forward) takes the inference fast
    path on `x`: in eval mode, not switched off (`Network.use_fast_inference(False)`), and
    `fast_inference_ok`."""
    return not module.training and module.fast_inference and fast_inference_ok(x, weight)


def version_key(tensors) -> tuple:
    """Identifies the values of `tensors` for a cache: their storage and version counters (every
    in-place update bumps them: optimizer steps, load_state_dict, .weights loading)."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def describe_window(size: int, sy: int, sx: int) -> str:
    stride = f"{sx:2d}" if sx == sy else f"{sx}x{sy}"
    return f"{size} x {size}/{stride}"


class FastPathCache:
    """Mixin of the layers whose eval forward uses derived weights (batch-norm folded, packed for
    oneDNN) in `_inference_cache`: dropped when the layer enters or leaves training mode (so a
    training net holds no second copy), kept by eval() on an eval net (callers may call it on
    every batch), never copied or pickled (oneDNN's packed tensors cannot be); rebuilt at the
    next fast forward, or whenever a parameter's version changes."""

    _inference_cache = None

    def train(self, mode: bool = True):
        if mode or self.training:
            self._inference_cache = None
        return super().train(mode)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_inference_cache"] = None
        return state


class Convolutional(FastPathCache, Layer):
    """[convolutional]: conv (bias only without BN) -> BN -> activation [-> blur].

    `conv.weight` is Darknet's weights array ([filters][c/groups][ky][kx]); with BN, `bn.bias` is
    Darknet's biases and `bn.weight` its scales. This generic forward handles every option; the
    plain cases use the subclasses below, whose forward does nothing but the modules' work."""

    winograd_ok = pointwise_ok = False  # set per layer below; for layers pickled before them

    def __init__(self, conv: nn.Conv2d, bn: nn.Module | None, act: nn.Module, *,
                 antialiasing: int = 0, blur_stride: tuple[int, int] = (1, 1),
                 xnor: bool = False, binary: bool = False, flipped: bool = False,
                 shared_from: int | None = None) -> None:
        super().__init__()
        self.conv = conv
        if bn is not None:
            self.bn = bn
        self.act = act
        self.antialiasing = antialiasing
        self.blur_stride = blur_stride
        self.xnor, self.binary, self.flipped = xnor, binary, flipped
        self.shared_from = shared_from
        self.activation = ""  # the Darknet activation name (set by the builder)
        # the inference fast path may compute it as Winograd (builders.winograd)
        self.winograd_ok = winograd.applies(conv) and not (xnor or binary or antialiasing)
        # or a 1x1 layer as one native product with the activation fused (builders.pointwise)
        self.pointwise_ok = pointwise.applies(conv) and not (xnor or binary or antialiasing)
        # or, on few input channels (a first layer), by the same tile with gathered inputs
        self.gather_ok = pointwise.gather_applies(conv) and not (xnor or binary or antialiasing)
        self.fast_inference = True  # Network.use_fast_inference(False) selects the plain path

    @property
    def has_bn(self) -> bool:
        return "bn" in self._modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight
        if self.xnor or self.binary:
            weight = binarize_weights(weight)
        if self.xnor:
            x = binarize_input(x)
        y = self.conv._conv_forward(x, weight, self.conv.bias)
        if self.has_bn:
            y = self.bn(y)
        y = self.act(y)
        if self.antialiasing:
            y = blur(y, self.antialiasing, self.blur_stride)
        return y

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight with batch-norm folded in, and its bias (float32)."""
        with torch.no_grad():
            weight = self.conv.weight.float()
            if self.has_bn:
                scale, bias = self.bn.inference_scale_shift()
                weight = weight * scale.view(-1, 1, 1, 1)
            else:
                bias = self.conv.bias
            return weight.contiguous(), bias.detach().float().contiguous()

    def winograd_tile(self, shape) -> int:
        """The output tile of the Winograd variant the fast path runs this layer as for input
        `shape` (N, C, H, W) where the native kernels run (builders.winograd.tile_for: 4, 2, or 0
        for oneDNN's direct kernel); the memory estimate asks it too."""
        return winograd.tile_for(shape, self.conv.out_channels) if self.winograd_ok else 0

    def fast_kind(self, shape) -> str:
        """Which kernel the fast path runs for input `shape`: "winograd" (F(4x4, 3x3)) or
        "winograd2" (F(2x2, 3x3), builders.winograd), "pointwise" (builders.pointwise: 1x1
        with the activation in registers) or "packed" (oneDNN's)."""
        tile = self.winograd_tile(shape)
        if tile and winograd.enabled():
            return "winograd" if tile == 4 else "winograd2"
        if self.pointwise_ok and pointwise.enabled():
            return "pointwise"
        if self.gathers(shape):
            return "gather"
        return "packed"

    def gathers(self, shape) -> bool:
        """Whether the fast path runs this layer as builders.pointwise.conv_gather for input
        `shape` (N, C, H, W): few input channels (a first layer), the native kernels there."""
        conv = self.conv
        return (self.gather_ok and shape[1] <= pointwise.GATHER_CHANNELS
                and all(size + 2 * p >= k for size, p, k in zip(
                    shape[2:], conv.padding, conv.kernel_size, strict=True))
                and pointwise.enabled())

    def _value_sources(self) -> tuple[torch.Tensor, ...]:
        """The tensors the fast path's derived weights are made from, read from the modules'
        dicts (this runs at every forward; nn.Module.__getattr__ costs ~1 us a name)."""
        conv = self._modules["conv"]
        bn = self._modules.get("bn")
        if bn is None:
            return conv._parameters["weight"], conv._parameters["bias"]
        p, b = bn._parameters, bn._buffers
        return (conv._parameters["weight"], p["weight"], p["bias"], b["running_mean"],
                b["running_var"])

    def _fast_plan(self, shape: torch.Size) -> tuple[str, str]:
        """(`fast_kind`, the cache slot of its derived weights) for input `shape`, remembered per
        shape and setting of the kernels' off-switches (the rules cost ~10 us a forward)."""
        plans = self.__dict__.setdefault("_fast_plans", {})
        plan_key = (shape, *native.switches())
        plan = plans.get(plan_key)
        if plan is None:
            kind = self.fast_kind(shape)
            tile = winograd.TILES.get(kind, 0)
            # Winograd's products natively (weights in panels) or by torch.bmm: one layout each
            panels = bool(tile) and winograd.native_products(shape, self.conv.out_channels, tile)
            plan = plans[plan_key] = (kind, kind + " panels" if panels else kind)
        return plan

    def _inference_params(self, x: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
        """The fast path's kind for input `x` (`fast_kind`) and its derived weights, with the
        bias (batch-norm folded): "winograd" / "winograd2" (builders.winograd's transformed
        weights), "pointwise" (builders.pointwise's panels) or "packed" (the folded weight
        packed for the layout oneDNN picks for `x`'s shape; other shapes still work). Each is
        made on first need and cached while the
        parameters' storage and version counters (bumped by every in-place update: optimizer
        steps, load_state_dict, .weights loading) stay the same."""
        bn = self._modules.get("bn")  # eps is a float, no tensor version tracks it
        key = (version_key(self._value_sources()), bn.eps if bn is not None else None)
        cache = self.__dict__.get("_inference_cache")
        if cache is None or cache["key"] != key:
            cache = self._inference_cache = {"key": key}
        kind, slot = self._fast_plan(x.shape)
        if slot not in cache:
            weight, cache["bias"] = self._folded()
            conv = self.conv
            if kind.startswith("winograd"):
                cache[slot] = winograd.transform_weights(weight, winograd.TILES[kind],
                                                         slot.endswith(" panels"))
            elif kind in ("pointwise", "gather"):
                cache[slot] = pointwise.pack_weights(weight.reshape(weight.shape[0], -1, 1, 1))
            else:
                cache[slot] = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, list(conv.padding), list(conv.stride), list(conv.dilation),
                    conv.groups, list(x.shape))
        return kind, cache[slot], cache["bias"]

    def inference_forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                          out: torch.Tensor | None = None) -> torch.Tensor:
        """The eval-mode forward in one oneDNN call: batch-norm folded into the weights, the
        activation fused into the kernel where oneDNN has it (mish: in place after it), weights
        packed once, channels-last output. Same values as `forward` to float32 rounding. 3x3
        stride-1 layers run as Winograd F(4x4, 3x3) or F(2x2, 3x3) where that is faster
        (builders.winograd), 1x1 layers as builders.pointwise's product. Network.forward's
        fusions: `residual` is added to the output (a plain [shortcut] after this layer), and
        `out` (channels of a [route]'s concatenation, builders.pointwise.output_rows) receives
        it; the native kernels do both before the result leaves them."""
        kind, weight, bias = self._inference_params(x)
        in_kernel = self.activation in pointwise.ACTIVATION_CODES
        if kind.startswith("winograd") and in_kernel:
            return winograd.conv3x3(x, weight, bias, self.activation, residual, out)
        if kind == "pointwise" and in_kernel:
            return pointwise.conv1x1(x, weight, bias, self.conv.out_channels, self.activation,
                                     residual, out)
        if kind == "gather":
            whole = in_kernel and residual is None  # else the rest is done after it
            y = pointwise.conv_gather(x, weight, bias, self.conv,
                                      self.activation if in_kernel else "linear",
                                      out if whole else None)
            if whole:
                return y
            if not in_kernel:
                y = self.act(y)
        elif kind.startswith("winograd"):
            y = self.act(winograd.conv3x3(x, weight, bias, "linear"))
        elif kind == "pointwise":
            y = self.act(pointwise.conv1x1(x, weight, bias, self.conv.out_channels, "linear"))
        else:
            if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
                x = x.contiguous(memory_format=torch.channels_last)
            post_op, scalars = CONV_POST_OPS.get(self.activation, ("none", []))
            conv = self.conv
            y = torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                conv.groups, post_op, scalars, "")
            if self.activation == "mish":
                y = mish_(y)
            elif self.activation not in CONV_POST_OPS:
                y = self.act(y)
        return _finish(y, residual, out)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The output's height and width for an input of `h` x `w` (the fusable layers)."""
        conv = self.conv
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in zip(
            (h, w), conv.padding, conv.dilation, conv.kernel_size, conv.stride, strict=True))

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        if self.shared_from is not None:
            return []  # Darknet stores a shared layer's weights only once, at the source layer
        weights = self.conv.weight
        if self.flipped:  # stored transposed, [c/groups*size*size][filters]
            weights = weights.view(weights.shape[0], -1).t()
        if not self.has_bn:
            return [self.conv.bias, weights]
        if not scales:
            return [self.bn.bias, weights]
        return [self.bn.bias, self.bn.weight, self.bn.running_mean, self.bn.running_var, weights]


class PlainConv(Convolutional):
    channels_last_ok = True
    fusable = True

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
        if fast_path_runs(self, x, self.conv._parameters["weight"]):
            return self.inference_forward(x, residual, out)
        return _finish(self.act(self.conv(x)), residual, out)


class PlainConvBN(Convolutional):
    channels_last_ok = True
    fusable = True

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
        if fast_path_runs(self, x, self.conv._parameters["weight"]):
            return self.inference_forward(x, residual, out)
        y = self.conv(x)
        slope = _FUSED_SLOPES.get(self.activation)
        if slope is not None and self.training and fused_bn_ok(y, self.bn):
            y = _BatchNormAct.apply(y, self.bn.weight, self.bn.bias, self.bn, slope)
        else:
            y = self.act(self.bn(y))
        return _finish(y, residual, out)


def _finish(y: torch.Tensor, residual: torch.Tensor | None, out: torch.Tensor | None
            ) -> torch.Tensor:
    """A fusable layer's output off the fast path: + `residual`, into `out` (Network.forward's
    fusions ask for them on the fast path; here they cost what the unfused layers do)."""
    if residual is not None:
        y = y + residual
    return y if out is None else out.copy_(y)


# activations the training kernel fuses after batch-norm: the slope below zero
_FUSED_SLOPES = {"leaky": 0.1, "relu": 0.0, "linear": 1.0}


def fused_bn_ok(y: torch.Tensor, bn: nn.Module) -> bool:
    """Whether training batch-norm + activation may run as builders.native's fused kernels: an
    AlexeyAB batch-norm with running statistics (float32) on a CPU tensor of more than one value
    per channel, the native kernels built, and either a plain NCHW float32 tensor with no
    tracer, compiler, exporter or autocast watching, or (`--amp`) a channels-last bfloat16 one
    with no tracer, compiler or exporter."""
    return (type(bn) is DarknetBatchNorm and bn.track_running_stats and bn.momentum is not None
            and bn.affine and bn.weight.is_contiguous() and bn.weight.dtype == torch.float32
            and (native.takes(y) or native.takes_bf16(y))
            and y.shape[0] * y.shape[2] * y.shape[3] > 1)


class _BatchNormAct(torch.autograd.Function):
    """Training batch-norm (torch's numbers: biased variance in the normalisation, the unbiased
    one into the running variance, `momentum`) then leaky/relu/linear, through builders.native: one
    op of two passes each way where torch runs two ops of five to six passes together."""

    @staticmethod
    def forward(ctx, y, weight, bias, bn, slope):
        # float32 NCHW, or bfloat16 channels-last under `--amp` (fused_bn_ok said which)
        bf16 = y.dtype == torch.bfloat16
        run = native.bn_act_forward_bf16 if bf16 else native.bn_act_forward
        out, mean, invstd, var = run(y, weight.detach(), bias.detach(), bn.eps, slope)
        with torch.no_grad():
            m = bn.momentum
            bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1 - m).add_(var, alpha=m)
            bn.num_batches_tracked.add_(1)
        ctx.save_for_backward(y, weight, bias, mean, invstd)
        ctx.slope, ctx.bf16 = slope, bf16
        return out

    @staticmethod
    def backward(ctx, grad):
        y, weight, bias, mean, invstd = ctx.saved_tensors
        run = native.bn_act_backward_bf16 if ctx.bf16 else native.bn_act_backward
        dy, dw, db = run(y, grad, weight.detach(), bias.detach(), mean, invstd, ctx.slope)
        return dy, dw, db, None, None


def _shared_source(block: Block, ctx: BuildContext) -> tuple[int | None, Convolutional | None]:
    """The [convolutional] layer whose weights `share_index` reuses (index and module)."""
    if not block.has("share_index"):
        return None, None
    index = ctx.resolve(block, "share_index", block.int("share_index"))
    source = ctx.layers[index]
    if not isinstance(source, Convolutional):
        raise block.error("E302", f"share_index refers to layer {index}, which is "
                          f"[{ctx.types[index]}], not [convolutional]", "share_index",
                          hint="point share_index at a [convolutional] layer")
    return index, source


@register("convolutional")
def build_convolutional(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp = need_chw(block, ctx)
    filters, size = block.int("filters"), block.int("size")
    stride = block.int("stride")
    sx, sy = block.int("stride_x"), block.int("stride_y")
    if sx < 1 or sy < 1:  # Darknet uses stride_x/stride_y only when both are given
        sx = sy = stride
    dilation = 1 if size == 1 else block.int("dilation")
    padding = size // 2 if block.int("pad") else block.int("padding")
    xnor, binary = block.bool("xnor"), block.bool("binary")
    groups = 1 if xnor else max(block.int("groups"), 1)
    batch_normalize = block.bool("batch_normalize") or block.bool("cbn")
    act_name = block.str("activation")
    antialiasing = block.int("antialiasing")
    flipped = block.bool("flipped")
    block.mark_read(*_CONV_TRAINING_KEYS)

    if inp.c % groups or filters % groups:
        raise block.error("E302", f"groups={groups} must divide both the input channels "
                          f"({inp.c}) and filters ({filters})", "groups")
    if antialiasing not in (0, 1, 2):
        raise block.error("E204", f"antialiasing must be 0, 1 or 2, got {antialiasing}",
                          "antialiasing")
    conv_sy, conv_sx = (1, 1) if antialiasing else (sy, sx)  # antialiasing: stride in the blur
    out_h = c_div(inp.h + 2 * padding - size, conv_sy) + 1
    out_w = c_div(inp.w + 2 * padding - size, conv_sx) + 1
    check_output(block, "size", f"{out_w} x {out_h}", out_h, out_w)
    check_window(block, size, inp, padding)
    if dilation > 1 and 2 * padding != size - 1:
        # Darknet sizes the output without dilation but runs im2col with it: the two disagree
        # and its GEMM then reads the im2col buffer with the wrong row length.
        raise block.error("E300", f"dilation={dilation} with size={size} needs pad=1 (padding "
                          f"{(size - 1) // 2}); otherwise Darknet's output is scrambled",
                          "dilation", hint="set pad=1 with an odd size")

    shared_from, source = _shared_source(block, ctx)
    conv = nn.Conv2d(inp.c, filters, size, (conv_sy, conv_sx), padding * dilation, dilation,
                     groups, bias=not batch_normalize)
    bn = batch_norm(filters, ctx.net.flavor) if batch_normalize else None
    if source is not None:
        if source.conv.weight.shape != conv.weight.shape:
            raise block.error(
                "E302", f"share_index layer has weights {tuple(source.conv.weight.shape)}, this "
                f"layer needs {tuple(conv.weight.shape)}", "share_index",
                hint="share weights only between layers with equal filters, size, channels")
        # Darknet shares the weights and biases; BN scales and statistics stay per layer.
        conv.weight = source.conv.weight
        source_bias = source.bn.bias if source.has_bn else source.conv.bias
        if bn is not None:
            bn.bias = source_bias
        else:
            conv.bias = source_bias
    plain = not (antialiasing or xnor or binary or flipped or source is not None)
    cls = (PlainConvBN if bn is not None else PlainConv) if plain else Convolutional
    layer = cls(conv, bn, activation_module(act_name, inplace=True),
                antialiasing=antialiasing, blur_stride=(sy, sx), xnor=xnor, binary=binary,
                flipped=flipped, shared_from=shared_from)

    nweights = inp.c // groups * filters * size * size
    layer.activation = act_name
    layer.bflops = 2.0 * nweights * out_h * out_w / 1e9 / (32 if xnor else 1)
    layer.filters = filters
    extras = [f"g{groups}"] * (groups > 1) + [f"d{dilation}"] * (dilation > 1) + \
        ["xnor"] * xnor + [f"AA{antialiasing}"] * bool(antialiasing)
    layer.describe = " ".join([describe_window(size, sy, sx)] + extras)
    if antialiasing:
        out_h, out_w = blurred_size(antialiasing, out_h, out_w, sy, sx)
        check_output(block, "antialiasing", f"{out_w} x {out_h} after the blur", out_h, out_w)
    return layer, Shape.chw(filters, out_h, out_w)


class Deconvolutional(Layer):
    """pjreddie [deconvolutional]: `nn.ConvTranspose2d` (weights [c][filters][ky][kx], Darknet's
    layout) -> BN or bias -> activation."""

    def __init__(self, deconv: nn.ConvTranspose2d, bn: nn.Module | None, act: nn.Module):
        super().__init__()
        self.deconv = deconv
        if bn is not None:
            self.bn = bn
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deconv(x)
        if "bn" in self._modules:
            y = self.bn(y)
        return self.act(y)

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        if "bn" not in self._modules:
            return [self.deconv.bias, self.deconv.weight]
        if not scales:
            return [self.bn.bias, self.deconv.weight]
        return [self.bn.bias, self.bn.weight, self.bn.running_mean, self.bn.running_var,
                self.deconv.weight]


@register("deconvolutional")
def build_deconvolutional(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp = need_chw(block, ctx)
    filters, size, stride = block.int("filters"), block.int("size"), block.int("stride")
    padding = size // 2 if block.int("pad") else block.int("padding")
    batch_normalize = block.bool("batch_normalize")
    out_h = (inp.h - 1) * stride + size - 2 * padding
    out_w = (inp.w - 1) * stride + size - 2 * padding
    check_output(block, "padding", f"{out_w} x {out_h}", out_h, out_w)
    deconv = nn.ConvTranspose2d(inp.c, filters, size, stride, padding, bias=not batch_normalize)
    bn = batch_norm(filters, ctx.net.flavor) if batch_normalize else None
    layer = Deconvolutional(deconv, bn, activation_module(block.str("activation"),
                                                          inplace=True))
    layer.bflops = 2.0 * inp.c * filters * size * size * inp.h * inp.w / 1e9
    layer.filters = filters
    layer.describe = describe_window(size, stride, stride)
    return layer, Shape.chw(filters, out_h, out_w)


class LocallyConnected(Layer):
    """[local]: a convolution with separate weights at every output location.

    `weight` is (locations, filters, c*size*size), Darknet's file order; `bias` is
    (filters, out_h*out_w), one per output element. Darknet sizes the output with `pad` as a flag
    but pads im2col by its value and reads the im2col buffer with its own row length; `take`
    reproduces that when the two disagree."""

    def __init__(self, c: int, filters: int, size: int, stride: int, pad: int,
                 out_hw: tuple[int, int], act: nn.Module):
        super().__init__()
        self.size, self.stride, self.pad = size, stride, pad
        self.out_hw = out_hw
        locations = out_hw[0] * out_hw[1]
        fan_in = c * size * size
        bound = (2.0 / fan_in) ** 0.5  # Darknet's init: U(-1, 1) * sqrt(2 / fan_in)
        self.weight = nn.Parameter(torch.empty(locations, filters, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(filters, locations))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # (B, c*k*k, L')
        fan_in, locations = self.weight.shape[2], self.weight.shape[0]
        if cols.shape[2] != locations:
            # Darknet reads the (c*k*k, L') buffer as (c*k*k, L); any missing tail reads zeros
            flat = cols.reshape(cols.shape[0], -1)
            need = fan_in * locations
            if flat.shape[1] < need:
                flat = F.pad(flat, (0, need - flat.shape[1]))
            cols = flat[:, :need].reshape(cols.shape[0], fan_in, locations)
        y = torch.einsum("bkl,lfk->bfl", cols, self.weight) + self.bias
        return self.act(y.reshape(y.shape[0], y.shape[1], *self.out_hw))

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        return [self.bias, self.weight]


@register("local")
def build_local(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    inp = need_chw(block, ctx)
    filters, size, stride = block.int("filters"), block.int("size"), block.int("stride")
    pad = block.int("pad")
    window = 1 if pad else size  # Darknet: pad is a flag in the size formula (§11 #9)
    out_h = c_div(inp.h - window, stride) + 1
    out_w = c_div(inp.w - window, stride) + 1
    check_output(block, "size", f"{out_w} x {out_h}", out_h, out_w)
    check_window(block, size, inp, pad)
    in_h = c_div(inp.h + 2 * pad - size, stride) + 1
    in_w = c_div(inp.w + 2 * pad - size, stride) + 1
    if in_h <= 0 or in_w <= 0:
        raise block.error("E303", f"[{block.name}] im2col would produce no columns "
                          f"(size {size} on {inp.w} x {inp.h} with padding {pad})", "size")
    if in_h * in_w < out_h * out_w:
        # Darknet would read past its im2col buffer into stale workspace memory
        raise block.error("E300", f"[local] pad={pad} with size={size}: Darknet computes "
                          f"{out_w} x {out_h} outputs but only {in_w} x {in_h} windows",
                          "pad", hint="use pad=1 with size=3, or pad=0")
    layer = LocallyConnected(inp.c, filters, size, stride, pad, (out_h, out_w),
                             activation_module(block.str("activation"), inplace=True))
    layer.filters = filters
    layer.describe = describe_window(size, stride, stride)
    return layer, Shape.chw(filters, out_h, out_w)
