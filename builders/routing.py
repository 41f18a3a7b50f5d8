"""Builders: routing family — [route], [shortcut], [scale_channels], [sam] (src/parser.c
parse_route; src/sam_layer.c).

These layers read other layers' outputs: the builder lists them with `ctx.refs`, and the forward
receives them after the previous layer's output.
"""

from __future__ import annotations

import torch
from torch import nn

from cfgparse import Block, CfgError
from cfgparse.errors import ERROR
from cfgparse.rules import shortcut_grid_rule

from .activations import activation_module
from .dense import as_shape
from .layer import Layer
from .registry import BuildContext, Shape, register


def _chw(shape: Shape) -> tuple[int, int, int]:
    """Darknet dims of a layer output; a flat output counts as `outputs` x 1 x 1."""
    if shape.c * shape.h * shape.w:
        return shape.c, shape.h, shape.w
    return shape.size, 1, 1


def _as4d(t: torch.Tensor, shape: Shape) -> torch.Tensor:
    """An image tensor as it is (a fully convolutional net may run at another size than the
    cfg's: random=1 multi-scale training, detection at any size); a flat one in its built
    shape."""
    if t.dim() == 4:
        return t  # as is (a same-shape reshape of batch 1 would also lose channels-last)
    c, h, w = _chw(shape)
    if t.dim() == 4 and t.shape[1] == c:  # keeps its size (a net run at another input size)
        return t
    return t.reshape(t.shape[0], c, h, w)


def _single_ref(block: Block, ctx: BuildContext, key: str) -> int:
    """The one layer `key` names (Darknet reads a single index there)."""
    refs = ctx.refs(block, key)
    if len(refs) != 1:
        raise block.error("E302", f"[{block.name}] takes one '{key}' layer", key,
                          hint=f"write {key}=<one layer index>")
    return refs[0]


def _raw(block: Block, key: str) -> str:
    opt = block.option(key)
    return opt.raw if opt is not None else ""


# -- [route] --------------------------------------------------------------------------------------

class Route(Layer):
    """Concatenation along channels of each input's `group_id`-th 1/`groups` channel chunk."""

    channels_last_ok = True

    def __init__(self, in_shapes: list[Shape], out: Shape, groups: int, group_id: int):
        super().__init__()
        self.in_shapes, self.out = in_shapes, out
        self.groups, self.group_id = groups, group_id
        self.slices = [(group_id * _chw(s)[0] // groups, (group_id + 1) * _chw(s)[0] // groups)
                       for s in in_shapes]
        self.whole = groups == 1
        if self.whole and len(in_shapes) > 1 and all(s.c * s.h * s.w for s in in_shapes):
            self.concatenates = tuple(s.c for s in in_shapes)

    def forward(self, x: torch.Tensor, *refs: torch.Tensor) -> torch.Tensor:
        parts = [_as4d(r, s) for r, s in zip(refs, self.in_shapes, strict=True)]
        if not self.whole:
            parts = [p[:, a:b] for p, (a, b) in zip(parts, self.slices, strict=True)]
        y = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return as_shape(y, self.out)


@register("route")
def build_route(block: Block, ctx: BuildContext):
    sources = ctx.refs(block, "layers")
    # pjreddie's [route] has no groups: leave the keys unread there (W301 says so)
    groups = block.int("groups") if ctx.net.flavor == "alexeyab" else 1
    group_id = block.int("group_id") if ctx.net.flavor == "alexeyab" else 0
    if group_id >= groups:
        raise block.error("E203", f"group_id={group_id} must be below groups={groups}", "group_id")
    shapes = [ctx.shape_of(i) for i in sources]
    dims = [_chw(s) for s in shapes]
    if any(d[1:] != dims[0][1:] for d in dims):
        listed = ", ".join(f"{i}: {c}x{h}x{w}" for i, (c, h, w) in zip(sources, dims, strict=True))
        raise block.error("E302", f"[route] inputs differ in width/height ({listed})", "layers",
                          hint="route layers of the same spatial size, or resize one of them")
    if any(d[0] % groups for d in dims):
        raise block.error("E302", f"groups={groups} does not divide the channels of every input "
                          f"({', '.join(str(d[0]) for d in dims)})", "groups")
    c = sum(d[0] for d in dims) // groups
    h, w = dims[0][1:]
    if all(s.c * s.h * s.w for s in shapes):
        out = Shape.chw(c, h, w)
    else:  # routing flat outputs (e.g. a [softmax]): Darknet keeps only `outputs`
        out = Shape(sum(s.c for s in shapes) // groups, 0, 0, sum(s.size for s in shapes) // groups)
    layer = Route(shapes, out, groups, group_id)
    layer.describe = _raw(block, "layers") + (f" /{groups}:{group_id}" if groups > 1 else "")
    layer.filters = out.c
    return layer, out


# -- [shortcut] -----------------------------------------------------------------------------------

class Shortcut(Layer):
    """AlexeyAB's multi-input shortcut: out = w0*prev + sum_k w_k*from_k, where from_k adds into
    the first min(C, C_k) channels only; weights per layer (per_feature) or per layer and channel
    (per_channel), normalised with relu or softmax across the n+1 inputs; then the activation."""

    channels_last_ok = True

    def __init__(self, out: Shape, from_shapes: list[Shape], weights_type: str,
                 normalization: str, activation: str):
        super().__init__()
        self.out, self.from_shapes = out, from_shapes
        self.channels = _chw(out)[0]
        self.normalization = normalization
        n = len(from_shapes) + 1
        if weights_type == "none":
            self.weight = None
        else:
            per = self.channels if weights_type == "per_channel" else 1
            # the file stores [prev, from_1, ...] with 1 or C values each (§9); Darknet's
            # make_shortcut_layer starts them at 1
            self.weight = nn.Parameter(torch.ones(n, per))
        self.act = activation_module(activation)
        self.adds_only = (self.weight is None and activation == "linear"
                          and len(from_shapes) == 1 and _chw(from_shapes[0]) == _chw(out))

    def _weights(self) -> torch.Tensor:
        w = self.weight
        if self.normalization == "softmax":
            e = torch.exp(w - w.max(0, keepdim=True).values)
            return e / (1e-4 + e.sum(0, keepdim=True))
        if self.normalization in ("relu", "avg_relu"):
            r = torch.relu(w)
            return r / (1e-4 + r.sum(0, keepdim=True))
        return w  # weights without normalisation: the intended formula (§7.7 quirk a)

    def forward(self, x: torch.Tensor, *refs: torch.Tensor) -> torch.Tensor:
        prev = _as4d(x, self.out)
        ws = None
        if self.weight is not None:
            ws = self._weights().reshape(self.weight.shape[0], 1, -1, 1, 1)
            prev = prev * ws[0]
        y = prev
        for k, (ref, shape) in enumerate(zip(refs, self.from_shapes, strict=True)):
            add = _as4d(ref, shape)
            m = min(self.channels, add.shape[1])
            term = add[:, :m]
            if ws is not None:
                term = term * ws[k + 1][:, :m]
            y = y + term if m == self.channels else torch.cat([y[:, :m] + term, y[:, m:]], 1)
        return as_shape(self.act(y), self.out)

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        return [] if self.weight is None else [self.weight]


class ResamplingShortcut(Layer):
    """pjreddie's shortcut: out = alpha*prev + beta*from, where `from` is subsampled (stride =
    w_from/w_out) or spread out (sample = w_out/w_from) to the output grid and only the first
    min(C) channels and min(H), min(W) positions mix; other elements keep prev. Then activation."""

    def __init__(self, out: Shape, src: Shape, alpha: float, beta: float, activation: str):
        super().__init__()
        self.out, self.src = out, src
        c2, h2, w2 = _chw(out)
        c1, h1, w1 = _chw(src)
        self.stride = max(w1 // w2, 1)
        self.sample = max(w2 // w1, 1)
        self.minc, self.minh, self.minw = min(c1, c2), min(h1, h2), min(w1, w2)
        self.alpha, self.beta = alpha, beta
        self.act = activation_module(activation)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        prev = _as4d(x, self.out)
        src = _as4d(ref, self.src)
        st, sa = self.stride, self.sample
        c, h, w = self.minc, self.minh, self.minw
        add = src[:, :c, 0:h * st:st, 0:w * st:st][:, :, :h, :w]
        if sa == 1 and (c, h, w) == tuple(prev.shape[1:]):
            y = self.alpha * prev + self.beta * add
        else:
            # prev with the mixed window written in; out of place (slice_scatter) so that
            # exporters and tracers see a pure function
            window = prev[:, :c, 0:h * sa:sa, 0:w * sa:sa]
            mixed = self.alpha * window + self.beta * add
            rows = prev[:, :c, 0:h * sa:sa].slice_scatter(mixed, 3, 0, w * sa, sa)
            channels = prev[:, :c].slice_scatter(rows, 2, 0, h * sa, sa)
            y = prev.slice_scatter(channels, 1, 0, c)
        return as_shape(self.act(y), self.out)


@register("shortcut")
def build_shortcut(block: Block, ctx: BuildContext):
    sources = ctx.refs(block, "from")
    out = ctx.input
    shapes = [ctx.shape_of(i) for i in sources]
    activation = block.str("activation")
    pjreddie = ctx.net.flavor == "pjreddie"
    problems = [d for d in shortcut_grid_rule(block, sources, [_chw(s)[1:] for s in shapes],
                                              _chw(out)[1:], ctx.net.flavor)
                if d.severity == ERROR]  # (its W303 is the linter's to report)
    if problems:  # a grid that is no integer scale of the other: positions would be lost
        raise CfgError(problems)
    same_grid = all(_chw(s)[1:] == _chw(out)[1:] for s in shapes)
    if pjreddie or not same_grid:
        # pjreddie's formula; AlexeyAB asserts equal sizes and cannot build these cfgs at all
        if len(sources) != 1:
            raise block.error("E302", "a shortcut between layers of different width/height takes "
                              f"one 'from' layer, not {len(sources)}", "from")
        if not pjreddie:  # pjreddie has no weights_* keys: W301 reports them there
            if block.str("weights_type") != "none":
                raise block.error("E302", "weights_type needs 'from' layers of the same "
                                  "width/height as the previous layer", "weights_type")
            block.mark_read("weights_normalization")
        layer: Layer = ResamplingShortcut(out, shapes[0], block.float("alpha"), block.float("beta"),
                                          activation)
    else:
        weights_type = block.str("weights_type")
        if weights_type == "per_layer":
            weights_type = "per_feature"
        layer = Shortcut(out, shapes, weights_type, block.str("weights_normalization"),
                         activation)
    c, h, w = _chw(out)
    layer.bflops = c * h * w * len(sources) / 1e9
    layer.describe = _raw(block, "from")
    layer.filters = out.c
    return layer, out


# -- [scale_channels], [sam] ----------------------------------------------------------------------

class ScaleChannels(Layer):
    """out = from * input broadcast: per channel (input is 1x1xC, squeeze-excitation) or, with
    scale_wh=1, per location (input is WxHx1); then the activation."""

    def __init__(self, src: Shape, per_location: bool, activation: str):
        super().__init__()
        self.src, self.per_location = src, per_location
        self.act = activation_module(activation)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        src = _as4d(ref, self.src)
        n, c, h, w = src.shape
        scale = x.reshape(n, 1, h, w) if self.per_location else x.reshape(n, c, 1, 1)
        return as_shape(self.act(src * scale), self.src)


@register("scale_channels")
def build_scale_channels(block: Block, ctx: BuildContext):
    source = _single_ref(block, ctx, "from")
    src = ctx.shape_of(source)
    c, h, w = _chw(src)
    per_location = block.bool("scale_wh")
    need = h * w if per_location else c
    if ctx.input.size != need:
        what = "one value per location of" if per_location else "one value per channel of"
        raise block.error("E302", f"[scale_channels] needs {what} layer {source} ({need}), but "
                          f"the previous layer gives {ctx.input.size}", "from")
    layer = ScaleChannels(src, per_location, block.str("activation"))
    layer.describe = _raw(block, "from") + (" wh" if per_location else "")
    layer.filters = src.c
    return layer, src


class Sam(Layer):
    """Spatial attention: out = from * input elementwise, then the activation."""

    def __init__(self, src: Shape, activation: str):
        super().__init__()
        self.src = src
        self.act = activation_module(activation)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return as_shape(self.act(ref * x.reshape(ref.shape)), self.src)


@register("sam")
def build_sam(block: Block, ctx: BuildContext):
    source = _single_ref(block, ctx, "from")
    src = ctx.shape_of(source)
    if ctx.input.size != src.size:
        raise block.error("E302", f"[sam] multiplies layer {source} ({src.size} values) by the "
                          f"previous layer ({ctx.input.size} values): the sizes must match",
                          "from")
    layer = Sam(src, block.str("activation"))
    layer.describe = _raw(block, "from")
    layer.filters = src.c
    return layer, src
