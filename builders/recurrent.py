"""Builders: recurrent family — [rnn], [gru], [lstm], [crnn], [conv_lstm], [history]
(src/rnn_layer.c, src/gru_layer.c, src/lstm_layer.c, src/crnn_layer.c, src/conv_lstm_layer.c;
src/parser.c load_weights_upto, save_weights_upto).

Darknet runs a recurrent net on a batch of `time_steps * B` items laid out step-major: items
[t*B, (t+1)*B) are time step t. Layers that are not recurrent treat the whole batch alike; these
layers walk the steps in order, carrying their state. The state starts at zero on every forward
call (Darknet keeps it between calls at inference, e.g. when generating text one step at a time).

Each recurrent layer is built from Darknet's own sub-layers ([connected] or [convolutional] units,
with batch-norm if asked), whose arrays the .weights file stores one after the other.
"""

from __future__ import annotations

import torch
from torch import nn

from cfgparse import Block

from .activations import activation, activation_module
from .dense import DarknetLinear, as_shape, flat_input
from .layer import Layer
from .norm import batch_norm
from .registry import BuildContext, Shape, register


class DarknetConvUnit(nn.Module):
    """A [convolutional] sub-layer: act(BN?(conv(x)) + b); the .weights order is biases,
    (BN scales, rolling mean, rolling variance), weights."""

    def __init__(self, in_c: int, out_c: int, size: int, stride: int, padding: int,
                 dilation: int, groups: int, act: str, batch_normalize: bool, flavor: str):
        super().__init__()
        # Darknet pads padding*dilation on each side (§7.1)
        self.conv = nn.Conv2d(in_c, out_c, size, stride, padding * dilation, dilation, groups,
                              bias=not batch_normalize)
        self.bn = batch_norm(out_c, flavor) if batch_normalize else None
        self.act = activation_module(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        if self.bn is None:
            return [self.conv.bias, self.conv.weight]
        bn = [self.bn.weight, self.bn.running_mean, self.bn.running_var] if scales else []
        return [self.bn.bias, *bn, self.conv.weight]

    def bflops(self, out_h: int, out_w: int) -> float:
        return 2 * self.conv.weight.numel() * out_h * out_w / 1e9


class Recurrent(Layer):
    """Common part: the step loop over a step-major batch, and the .weights order."""

    def __init__(self, time_steps: int, in_dims: tuple[int, ...], out: Shape,
                 file_order: list[str]):
        super().__init__()
        self.time_steps, self.in_dims, self.out = time_steps, in_dims, out
        self.file_order = file_order  # sub-layer names in .weights order

    def split_steps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input as one (B, *in_dims) tensor per time step."""
        n, t = x.shape[0], self.time_steps
        if n % t:
            raise ValueError(f"a batch of {n} is not a whole number of time_steps={t} sequences "
                             "(Darknet lays out time_steps * batch items, step-major)")
        return list(x.reshape(t, n // t, *self.in_dims).unbind(0))

    def join_steps(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        return as_shape(torch.cat(outputs, 0), self.out)

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        return [t for name in self.file_order
                for t in getattr(self, name).darknet_arrays(scales)]


# -- [rnn], [crnn] --------------------------------------------------------------------------------

class VanillaRNN(Recurrent):
    """state_t = (state_{t-1} if shortcut) + input(x_t) + self(state_{t-1});
    y_t = output(state_t). Units are [connected] ([rnn]) or 3x3-style convolutions ([crnn])."""

    def __init__(self, time_steps: int, in_dims: tuple[int, ...], out: Shape,
                 input_unit: nn.Module, self_unit: nn.Module, output_unit: nn.Module,
                 state_shape: tuple[int, ...], shortcut: bool):
        super().__init__(time_steps, in_dims, out, ["input", "self_unit", "output"])
        self.input, self.self_unit, self.output = input_unit, self_unit, output_unit
        self.state_shape, self.shortcut = state_shape, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.split_steps(x)
        state = x.new_zeros(steps[0].shape[0], *self.state_shape)
        outputs = []
        for xt in steps:
            new = self.input(xt) + self.self_unit(state)
            state = new + state if self.shortcut else new
            outputs.append(self.output(state))
        return self.join_steps(outputs)


@register("rnn")
def build_rnn(block: Block, ctx: BuildContext):
    pjreddie = ctx.net.flavor == "pjreddie"
    inputs, outputs = flat_input(block, ctx), block.int("output")
    hidden = outputs if pjreddie else block.int("hidden")  # pjreddie has no 'hidden'
    act, bn = block.str("activation"), block.bool("batch_normalize")
    log = 0 if pjreddie else block.int("logistic")  # AlexeyAB: 1 logistic, 2 loggy self-layer
    self_act = {1: "logistic", 2: "loggy"}.get(log, act)
    flavor = ctx.net.flavor
    out = Shape.flat(outputs) if pjreddie else Shape.chw(outputs, 1, 1)
    layer = VanillaRNN(ctx.net.time_steps, (inputs,), out,
                       DarknetLinear(inputs, hidden, act, bn, flavor),
                       DarknetLinear(hidden, hidden, self_act, bn, flavor),
                       DarknetLinear(hidden, outputs, act, bn, flavor), (hidden,),
                       block.bool("shortcut"))
    layer.describe, layer.filters = f"{inputs} -> {outputs}", outputs
    return layer, out


def _conv_geometry(block: Block):
    """size (default 3), stride, padding, dilation, groups as Darknet's recurrent conv parsers
    read them."""
    size = block.int("size", 3)
    stride = block.int("stride")
    dilation = block.int("dilation") if size > 1 else 1  # Darknet forces 1 for 1x1 kernels
    block.mark_read("dilation")
    padding = size // 2 if block.int("pad") else block.int("padding")
    groups = block.int("groups")
    return size, stride, padding, dilation, groups


def _out_size(block: Block, in_size: int, size: int, stride: int, padding: int,
              dilation: int) -> int:
    """Darknet's output size; the torch convolution must agree (it does unless dilation > 1
    meets an unusual padding, which Darknet computes inconsistently, §11 #8)."""
    darknet = (in_size + 2 * padding - size) // stride + 1
    torch_size = (in_size + 2 * padding * dilation - dilation * (size - 1) - 1) // stride + 1
    if darknet <= 0:
        raise block.error("E303", f"the output size would be {darknet}: the input ({in_size}) is "
                          f"smaller than the kernel ({size})", "size")
    if darknet != torch_size:
        raise block.error("E300", f"dilation={dilation} with size={size} and padding={padding} "
                          "gives an output size Darknet computes inconsistently", "dilation",
                          hint="use pad=1 with an odd size, or dilation=1")
    return darknet


def _check_state_grid(block: Block, size: int, padding: int) -> None:
    """The convolutions over the recurrent state (stride 1) must give back the state's grid:
    2 x padding = size - 1. Darknet makes them for the input's grid (one buffer size for all),
    so another padding has no meaning there; torch failed at the first step."""
    if 2 * padding != size - 1:
        key = next((k for k in ("pad", "padding", "size") if k in block), None)
        raise block.error(
            "E302", f"[{block.name}] size={size} with padding={padding}: the convolutions over "
            f"its recurrent state would change the state's size from step to step", key,
            hint="use an odd size with pad=1 (padding = size/2)")


def _check_groups(block: Block, groups: int, *channels: int) -> None:
    bad = [c for c in channels if c % groups]
    if bad:
        raise block.error("E302", f"groups={groups} does not divide {bad[0]} channels", "groups")


@register("crnn")
def build_crnn(block: Block, ctx: BuildContext):
    flavor = ctx.net.flavor
    c, h, w = ctx.input.c, ctx.input.h, ctx.input.w
    if not c * h * w:
        raise block.error("E302", "[crnn] needs an input with channels, height and width",
                          hint="put it after a convolutional (or [connected]) layer")
    if flavor == "pjreddie":  # pjreddie: fixed 3x3, stride 1, pad 1; its own key names
        size, stride, padding, dilation, groups = 3, 1, 1, 1, 1
        hidden, output = block.int("hidden_filters"), block.int("output_filters")
    else:
        size, stride, padding, dilation, groups = _conv_geometry(block)
        hidden, output = block.int("hidden"), block.int("output")
        block.mark_read("xnor")  # XNOR is a GPU speed-up; the .weights layout is unchanged
    _check_state_grid(block, size, padding)
    _check_groups(block, groups, c, hidden, output)
    oh = _out_size(block, h, size, stride, padding, dilation)
    ow = _out_size(block, w, size, stride, padding, dilation)
    act, bn = block.str("activation"), block.bool("batch_normalize")
    shortcut = block.bool("shortcut")

    def unit(cin: int, cout: int, st: int) -> DarknetConvUnit:
        return DarknetConvUnit(cin, cout, size, st, padding, dilation, groups, act, bn, flavor)

    # the self and output convolutions run on the state grid, so their stride is 1
    out = Shape.chw(output, oh, ow)
    layer = VanillaRNN(ctx.net.time_steps, (c, h, w), out, unit(c, hidden, stride),
                       unit(hidden, hidden, 1), unit(hidden, output, 1), (hidden, oh, ow),
                       shortcut)
    layer.bflops = sum(u.bflops(oh, ow) for u in (layer.input, layer.self_unit, layer.output))
    layer.describe, layer.filters = f"{size} x {size}/{stride:>2}", output
    return layer, out


# -- [gru] ----------------------------------------------------------------------------------------

class GRU(Recurrent):
    """z = σ(Wz x + Uz h), r = σ(Wr x + Ur h), h~ = act(Wh x + Uh (r*h)),
    h = z*h + (1-z)*h~ (Darknet's weighted_sum); the output is h."""

    def __init__(self, time_steps: int, out: Shape, inputs: int, outputs: int, bn: bool,
                 flavor: str, candidate: str):
        input_names = ["input_z", "input_r", "input_h"]
        state_names = ["state_z", "state_r", "state_h"]
        # AlexeyAB stores the input units first; pjreddie's wz..uh puts the state units first
        order = state_names + input_names if flavor == "pjreddie" else input_names + state_names
        super().__init__(time_steps, (inputs,), out, order)
        for name in input_names:
            setattr(self, name, DarknetLinear(inputs, outputs, "linear", bn, flavor))
        for name in state_names:
            setattr(self, name, DarknetLinear(outputs, outputs, "linear", bn, flavor))
        self.outputs = outputs
        self.candidate = activation(candidate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.split_steps(x)
        h = x.new_zeros(steps[0].shape[0], self.outputs)
        outputs = []
        for xt in steps:
            z = torch.sigmoid(self.input_z(xt) + self.state_z(h))
            r = torch.sigmoid(self.input_r(xt) + self.state_r(h))
            cand = self.candidate(self.input_h(xt) + self.state_h(r * h))
            h = z * h + (1 - z) * cand
            outputs.append(h)
        return self.join_steps(outputs)


@register("gru")
def build_gru(block: Block, ctx: BuildContext):
    pjreddie = ctx.net.flavor == "pjreddie"
    inputs, outputs = flat_input(block, ctx), block.int("output")
    # AlexeyAB always uses tanh for the candidate (USET); pjreddie only with tanh=1
    candidate = ("tanh" if block.bool("tanh") else "logistic") if pjreddie else "tanh"
    out = Shape.flat(outputs) if pjreddie else Shape.chw(outputs, 1, 1)
    layer = GRU(ctx.net.time_steps, out, inputs, outputs, block.bool("batch_normalize"),
                ctx.net.flavor, candidate)
    layer.describe, layer.filters = f"{inputs} -> {outputs}", outputs
    return layer, out


# -- [lstm], [conv_lstm] --------------------------------------------------------------------------

class LSTM(Recurrent):
    """f = σ(Wf h + Uf x (+ Vf c)), i = σ(Wi h + Ui x (+ Vi c)), g = act(Wg h + Ug x),
    c = f*c + i*g, o = σ(Wo h + Uo x (+ Vo c)), h = o * act(c); the output is h. U* read the
    input, W* the previous output, V* (peephole, [conv_lstm] only) the cell."""

    def __init__(self, time_steps: int, in_dims: tuple[int, ...], out: Shape,
                 file_order: list[str], units: dict[str, nn.Module],
                 state_shape: tuple[int, ...], cell_activation: str = "tanh",
                 state_constrain: float = 0.0):
        super().__init__(time_steps, in_dims, out, file_order)
        for name, unit in units.items():
            setattr(self, name, unit)
        self.peephole = "vf" in units
        self.state_shape = state_shape
        self.cell_act = activation(cell_activation)
        self.state_constrain = state_constrain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.split_steps(x)
        h = x.new_zeros(steps[0].shape[0], *self.state_shape)
        c = torch.zeros_like(h)
        outputs = []
        for xt in steps:
            f = self.wf(h) + self.uf(xt)
            i = self.wi(h) + self.ui(xt)
            if self.peephole:
                f, i = f + self.vf(c), i + self.vi(c)
            g = self.cell_act(self.wg(h) + self.ug(xt))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * g
            o = self.wo(h) + self.uo(xt)
            if self.peephole:
                o = o + self.vo(c)
            h = torch.sigmoid(o) * self.cell_act(c)
            if self.state_constrain:
                c = c.clamp(-self.state_constrain, self.state_constrain)
            outputs.append(h)
        return self.join_steps(outputs)


@register("lstm")
def build_lstm(block: Block, ctx: BuildContext):
    flavor = ctx.net.flavor
    inputs, outputs = flat_input(block, ctx), block.int("output")
    bn = block.bool("batch_normalize")
    units = {f"u{g}": DarknetLinear(inputs, outputs, "linear", bn, flavor) for g in "figo"}
    units.update({f"w{g}": DarknetLinear(outputs, outputs, "linear", bn, flavor) for g in "figo"})
    gates = "ifog" if flavor == "pjreddie" else "figo"  # the forks store the gates differently
    order = [f"w{g}" for g in gates] + [f"u{g}" for g in gates]
    out = Shape.flat(outputs) if flavor == "pjreddie" else Shape.chw(outputs, 1, 1)
    layer = LSTM(ctx.net.time_steps, (inputs,), out, order, units, (outputs,))
    layer.describe, layer.filters = f"{inputs} -> {outputs}", outputs
    return layer, out


@register("conv_lstm")
def build_conv_lstm(block: Block, ctx: BuildContext):
    flavor = ctx.net.flavor
    c, h, w = ctx.input.c, ctx.input.h, ctx.input.w
    if not c * h * w:
        raise block.error("E302", "[conv_lstm] needs an input with channels, height and width")
    if block.bool("bottleneck"):
        raise block.error("E300", "darkcfg cannot build [conv_lstm] with bottleneck=1 (Darknet "
                          "implements it on the GPU only)", "bottleneck",
                          hint="remove bottleneck=1")
    size, stride, padding, dilation, groups = _conv_geometry(block)
    output = block.int("output")
    _check_state_grid(block, size, padding)
    _check_groups(block, groups, c, output)
    oh = _out_size(block, h, size, stride, padding, dilation)
    ow = _out_size(block, w, size, stride, padding, dilation)
    act, bn = block.str("activation"), block.bool("batch_normalize")
    peephole = block.bool("peephole")
    constrain = block.float("state_constrain", ctx.net.time_steps * 32)
    # GPU/training-only details: XNOR kernels, the GPU shortcut and gradient normaliser
    block.mark_read("xnor", "shortcut", "time_normalizer")

    def unit(cin: int, st: int) -> DarknetConvUnit:
        return DarknetConvUnit(cin, output, size, st, padding, dilation, groups, act, bn, flavor)

    # U reads the input (with the layer's stride); W and V run on the state grid
    units = {f"u{g}": unit(c, stride) for g in "figo"}
    units.update({f"w{g}": unit(output, 1) for g in "figo"})
    order = (["vf", "vi", "vo"] if peephole else []) + ["wf", "wi", "wg", "wo",
                                                         "uf", "ui", "ug", "uo"]
    if peephole:
        units.update({f"v{g}": unit(output, 1) for g in "fio"})
    out = Shape.chw(output, oh, ow)
    layer = LSTM(ctx.net.time_steps, (c, h, w), out, order, units, (output, oh, ow),
                 block.str("lstm_activation"), constrain)
    layer.bflops = sum(u.bflops(oh, ow) for u in units.values()) + \
        (12 if peephole else 9) * out.size / 1e9
    layer.describe, layer.filters = f"{size} x {size}/{stride:>2}", output
    return layer, out


# -- [history] ------------------------------------------------------------------------------------

class History(Recurrent):
    """out_t = concat(x_t, out_{t-1}'s first (history_size-1)*C channels) along channels: the
    last history_size inputs, newest first (zeros before the first step)."""

    def __init__(self, time_steps: int, in_dims: tuple[int, int, int], out: Shape,
                 history_size: int):
        super().__init__(time_steps, in_dims, out, [])
        self.history_size = history_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.split_steps(x)
        c, h, w = self.in_dims
        keep = c * (self.history_size - 1)
        prev = x.new_zeros(steps[0].shape[0], c * self.history_size, h, w)
        outputs = []
        for xt in steps:
            prev = torch.cat([xt, prev[:, :keep]], 1)
            outputs.append(prev)
        return self.join_steps(outputs)


@register("history")
def build_history(block: Block, ctx: BuildContext):
    c, h, w = ctx.input.c, ctx.input.h, ctx.input.w
    if not c * h * w:
        raise block.error("E302", "[history] needs an input with channels, height and width")
    size = block.int("history_size")
    out = Shape.chw(c * size, h, w)
    layer = History(ctx.net.time_steps, (c, h, w), out, size)
    layer.describe, layer.filters = f"x{size}", out.c
    return layer, out
