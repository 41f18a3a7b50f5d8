"""Builders: dense family — [connected], [softmax], [cost] (src/connected_layer.c
make_connected_layer; src/softmax_layer.c; src/cost_layer.c).

Tensor convention shared by the families in this repository: a layer whose Darknet shape has
out_c*out_h*out_w > 0 returns (N, C, H, W) (a [connected] layer returns (N, output, 1, 1), as
Darknet reports 1x1xoutput); layers that only set `outputs` ([softmax], [cost], [detection]) return
(N, outputs). Every layer here accepts either form and flattens in CHW order, as Darknet does.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cfgparse import Block, CfgError

from .activations import CONV_POST_OPS, activation_module
from .conv import FastPathCache, fast_path_runs, version_key
from .layer import Layer
from .norm import batch_norm
from .registry import BuildContext, Shape, register

# Darknet's [cost] skips truth entries equal to this marker when type=masked.
SECRET_NUM = -1234.0


def as_shape(t: torch.Tensor, shape: Shape) -> torch.Tensor:
    """`t` viewed the way this repository represents a tensor of Darknet shape `shape`. An
    image tensor with the right channels keeps its own height and width (a fully convolutional
    net runs at any input size: random=1 multi-scale, detection, export)."""
    if shape.c * shape.h * shape.w:
        if t.dim() == 4 and t.shape[1] == shape.c:
            return t  # as is (a same-shape reshape of batch 1 would also lose channels-last)
        return t.reshape(t.shape[0], shape.c, shape.h, shape.w)
    return t.flatten(1)  # (not reshape(n, -1): an empty batch has no -1)


def flat_input(block: Block, ctx: BuildContext) -> int:
    """Darknet's `inputs` for layers that read the previous output as a flat vector."""
    inputs = ctx.input.size
    if inputs <= 0:
        raise block.error("E303", f"[{block.name}] gets an empty input (the previous layer has "
                          "no outputs)", hint="check the layer before this one")
    return inputs


class DarknetLinear(nn.Module):
    """Darknet's connected computation y = act(BN?(W x) + b); also the sub-layer of [rnn],
    [gru] and [lstm]. With batch-norm the bias is the BN's bias (Darknet adds it after BN)."""

    def __init__(self, inputs: int, outputs: int, activation: str = "linear",
                 batch_normalize: bool = False, flavor: str = "alexeyab"):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs, bias=not batch_normalize)
        # [connected] rolls its BN statistics at 0.95/0.05 in AlexeyAB (conv: 0.9/0.1), §4
        self.bn = batch_norm(outputs, flavor, 0.05 if flavor == "alexeyab" else None) \
            if batch_normalize else None
        self.act = activation_module(activation, inplace=True)  # y is fresh: safe
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1))
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        # file order: biases, weights, then (BN) scales, rolling mean, rolling variance (§9)
        if self.bn is None:
            return [self.linear.bias, self.linear.weight]
        arrays = [self.bn.bias, self.linear.weight]
        if scales:
            arrays += [self.bn.weight, self.bn.running_mean, self.bn.running_var]
        return arrays


class Connected(FastPathCache, Layer):
    def __init__(self, inputs: int, outputs: int, activation: str, batch_normalize: bool,
                 flavor: str):
        super().__init__()
        self.unit = DarknetLinear(inputs, outputs, activation, batch_normalize, flavor)
        self.outputs = outputs
        self.filters = outputs
        self.describe = f"{inputs} -> {outputs}"
        self.fast_inference = True  # Network.use_fast_inference(False) selects the plain path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an input of another item size goes the plain way, whose shape error the network
        # turns into an InputError (oneDNN's names no size)
        if fast_path_runs(self, x, self.unit.linear.weight) and \
                math.prod(x.shape[1:]) == self.unit.linear.in_features:
            return self.inference_forward(x)
        return self.unit(x).view(x.shape[0], self.outputs, 1, 1)

    def _inference_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight with batch-norm folded in, and bias; cached like Convolutional's."""
        unit = self.unit
        sources = [unit.linear.weight] + ([unit.bn.weight, unit.bn.bias, unit.bn.running_mean,
                                           unit.bn.running_var] if unit.bn is not None
                                          else [unit.linear.bias])
        key = (version_key(sources), unit.bn.eps if unit.bn is not None else None)
        cache = self._inference_cache
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        with torch.no_grad():
            weight = unit.linear.weight.float()
            if unit.bn is not None:
                scale, bias = unit.bn.inference_scale_shift()
                weight = weight * scale.view(-1, 1)
            else:
                bias = unit.linear.bias
            weight, bias = weight.detach().contiguous(), bias.detach().float().contiguous()
        self._inference_cache = (key, weight, bias)
        return weight, bias

    def inference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The eval-mode forward as one oneDNN inner product with the activation fused: at
        batch 1 it streams the weights at about 1.6x the speed of torch's F.linear (a 4096 x
        25088 layer is DRAM-bound: 411 MB per image), and 2.6x at batch 4."""
        weight, bias = self._inference_params()
        post_op, scalars = CONV_POST_OPS.get(self.unit.activation, ("none", []))
        y = torch.ops.mkldnn._linear_pointwise(x.flatten(1), weight, bias,
                                               post_op, scalars, "")
        if self.unit.activation not in CONV_POST_OPS:
            y = self.unit.act(y)
        return y.view(x.shape[0], self.outputs, 1, 1)

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        return self.unit.darknet_arrays(scales)


@register("connected")
def build_connected(block: Block, ctx: BuildContext):
    inputs = flat_input(block, ctx)
    outputs = block.int("output")
    layer = Connected(inputs, outputs, block.str("activation"), block.bool("batch_normalize"),
                      ctx.net.flavor)
    # Darknet counts no FLOPs for [connected] (its shape dumps say 0), and totals must match
    layer.bflops = 0.0
    return layer, Shape.chw(outputs, 1, 1)


# -- [softmax] ------------------------------------------------------------------------------------

# Which files a cfg may name (its path-valued keys: [softmax]/[region] tree=). A cfg is often
# someone else's (a pull request linted in CI), so it may only reach files below its own folder,
# the folder above it (a Darknet checkout's root, where cfg/x.cfg names data/9k.tree) or the
# working folder -- after following links, with no `..` or absolute escape -- unless the user sets
# DARKCFG_CFG_PATHS=any. And no diagnostic ever quotes the content of such a file.
CFG_PATHS_ENV = "DARKCFG_CFG_PATHS"


def read_tree_groups(path: str) -> list[int]:
    """Group sizes of a Darknet hierarchy file (one `name parent` per line): consecutive lines
    with the same parent form one softmax group, as Darknet's read_tree (src/tree.c) groups them.
    A ValueError says which line is bad, never what it holds."""
    sizes: list[int] = []
    last_parent = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                parent = int(parts[1]) if len(parts) > 1 else -1
            except ValueError:
                raise ValueError(f"line {number} is not 'name parent-index'") from None
            if parent != last_parent or not sizes:
                sizes.append(0)
                last_parent = parent
            sizes[-1] += 1
    return sizes


def cfg_roots(block: Block) -> list[Path]:
    """The folders a cfg's relative paths resolve against, in order: the working folder (where
    Darknet opens them), the cfg's folder and the one above it."""
    here = Path(block.path).resolve().parent if block.path and block.path != "<string>" else None
    return [Path.cwd().resolve()] + ([here, here.parent] if here else [])


def find_cfg_file(block: Block, key: str) -> tuple[str | None, str | None]:
    """(path, None) for the file named by `key`, or (None, why not): not found in any of
    `cfg_roots`, or outside them (absolute, `..`, a link out) without DARKCFG_CFG_PATHS=any."""
    name = block.str(key)
    anywhere = os.environ.get(CFG_PATHS_ENV) == "any"
    if Path(name).is_absolute() and not anywhere:
        return None, "an absolute path"
    outside = False
    for root in cfg_roots(block):
        candidate = root / name
        if not candidate.is_file():
            continue
        real = candidate.resolve()
        if anywhere or real.is_relative_to(root):
            return os.fspath(real), None
        outside = True
    return None, ("outside the cfg's folders" if outside else None)


def load_tree(block: Block, key: str, count: int) -> tuple[list[int] | None, CfgError | None]:
    """(group sizes, None), or (None, the error to raise if the layer is run) when the file is
    absent: a missing tree does not change shapes, so building (and --summary) still work. A
    path the cfg may not name is an error now (the linter reports it)."""
    path, refused = find_cfg_file(block, key)
    if refused:
        raise block.error(
            "E901", f"the hierarchy file '{block.str(key)}' is {refused}: a cfg may only name "
            "files below the working folder, its own folder or the folder above it", key,
            hint=f"copy the file next to the cfg and name it relatively, or set "
            f"{CFG_PATHS_ENV}=any if you trust this cfg")
    if path is None:
        return None, block.error("E901", f"cannot open the hierarchy file '{block.str(key)}'",
                                 key, hint="run from the folder that holds it, or put it next "
                                 "to the cfg")
    try:
        sizes = read_tree_groups(path)
    except UnicodeDecodeError:
        raise block.error("E901", f"the hierarchy file '{path}' is not UTF-8 text", key,
                          hint="give a Darknet .tree file: one 'name parent-index' per line") \
            from None
    except OSError as exc:
        raise block.error("E901", f"cannot read the hierarchy file '{path}': "
                          f"{exc.strerror or type(exc).__name__}", key) from None
    except ValueError as exc:
        raise block.error("E901", f"bad hierarchy file '{path}': {exc}", key,
                          hint="give a Darknet .tree file: one 'name parent-index' per line") \
            from None
    if sum(sizes) != count:
        raise block.error("E302", f"the hierarchy '{path}' has {sum(sizes)} nodes, but this layer "
                          f"has {count} values to normalise", key)
    return sizes, None


def grouped_log_softmax(x: torch.Tensor, sizes: list[int], temperature: float) -> torch.Tensor:
    """log-softmax of (N, K) `x / temperature` over consecutive groups of the given sizes."""
    if len(set(sizes)) == 1:
        n = x.shape[0]
        return F.log_softmax(x.reshape(n, len(sizes), sizes[0]) / temperature, -1).flatten(1)
    return torch.cat([F.log_softmax(part / temperature, -1)
                      for part in torch.split(x, sizes, dim=1)], 1)


class Softmax(Layer):
    is_output = True
    loss_target = "classes"

    def __init__(self, inputs: int, groups: int, temperature: float, spatial: bool,
                 channels: int, tree: list[int] | None, tree_error: CfgError | None,
                 takes_loss: bool):
        super().__init__()
        self.inputs, self.groups, self.temperature = inputs, groups, temperature
        self.spatial, self.channels = spatial, channels
        self.tree, self.tree_error = tree, tree_error
        self.takes_loss = takes_loss
        self.describe = f"{inputs}" + (f" /{groups}" if groups > 1 else "")

    @property
    def run_error(self):
        return self.tree_error

    def _sizes(self) -> list[int]:
        if self.tree_error is not None:
            raise self.tree_error
        return self.tree if self.tree is not None else [self.inputs // self.groups] * self.groups

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Per-value log-probabilities, flattened in Darknet's order: (N, inputs)."""
        n = x.shape[0]
        if self.spatial:  # softmax over the channels of each location (Darknet's GPU path)
            y = F.log_softmax(x.reshape(n, self.channels, self.inputs // self.channels)
                              / self.temperature, 1)
            return y.flatten(1)
        return grouped_log_softmax(x.flatten(1), self._sizes(), self.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.tree is None and not self.spatial and self.tree_error is None:
            y = torch.softmax(x.reshape(n, self.groups, self.inputs // self.groups)
                              / self.temperature, -1)
            return y.flatten(1)
        return self.log_probs(x).exp()

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy -sum(truth * log p) per image, mean over the batch; `target` holds class
        indices (N,) into the flattened output, or a probability / one-hot matrix (N, inputs).
        The gradient is Darknet's delta, p - truth (softmax_x_ent_cpu), whatever the temperature:
        autograd's carries a 1/temperature factor, taken out here."""
        plain = self.groups == 1 and self.tree is None and not self.spatial
        if target.dim() == 1:
            _check_class_indices(target, "softmax")
        if plain and target.dim() == 1:  # the common case: torch's fused cross-entropy
            logits = x.reshape(x.shape[0], -1)
            loss = F.cross_entropy(logits if self.temperature == 1 else logits / self.temperature,
                                   target.long())
        else:
            logp = self.log_probs(x)
            truth = _truth_matrix(target, logp, "softmax")
            loss = -(truth * logp).sum(1).mean()
            if self.groups > 1 and self.tree is None and not self.spatial:
                loss = loss + self._untruthed_groups_push(x, truth)
        if self.temperature == 1:
            return loss
        return loss.detach() + self.temperature * (loss - loss.detach())


    def _untruthed_groups_push(self, x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Zero in value, p * (1 - truth's sum in the group) in gradient. Darknet's delta is
        p - truth for every value (softmax_layer.c, softmax_x_ent_cpu), so a group holding no
        truth (one label among `groups`) is pushed toward 0; cross-entropy's gradient there is
        p * (truth's sum) - truth, i.e. zero. This term adds the difference."""
        n = x.shape[0]
        scaled = x.reshape(n, self.groups, -1) / self.temperature
        left = 1 - truth.reshape(n, self.groups, -1).sum(-1)
        push = (left * torch.logsumexp(scaled, -1)).sum(1).mean()
        return push - push.detach()


def _check_class_indices(target: torch.Tensor, what: str) -> None:
    """Class indices (N,) in floats (a regression target, or soft labels without their class
    dimension) were truncated by .long(): 0.7 trained as class 0. Whole floats are indices."""
    if target.is_floating_point() and not torch.equal(target, target.trunc()):
        odd = target[target != target.trunc()][0].item()
        raise ValueError(f"[{what}] targets of shape {tuple(target.shape)} are class indices, "
                         f"but hold {odd:g}: pass whole class numbers, or probabilities of "
                         "shape (N, classes)")


def _truth_matrix(target: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    n, k = like.shape
    if target.dim() == 1:
        if target.shape[0] != n:
            raise ValueError(f"[{what}] target has {target.shape[0]} labels for {n} inputs")
        return F.one_hot(target.long(), k).to(like.dtype)
    truth = target.reshape(target.shape[0], -1).to(like.dtype)
    if truth.shape != like.shape:
        raise ValueError(f"[{what}] target has shape {tuple(target.shape)}, expected ({n}, {k})")
    return truth


@register("softmax")
def build_softmax(block: Block, ctx: BuildContext):
    inputs = flat_input(block, ctx)
    groups = block.int("groups")
    if inputs % groups:
        raise block.error("E302", f"groups={groups} does not divide the {inputs} inputs", "groups",
                          hint=f"use a divisor of {inputs}")
    temperature = block.float("temperature")
    if temperature == 0:
        raise block.error("E203", "temperature must not be 0", "temperature")
    spatial = block.bool("spatial")
    if spatial and not ctx.input.c * ctx.input.h * ctx.input.w:
        raise block.error("E302", "spatial=1 needs an input with channels, height and width",
                          "spatial")
    tree, tree_error = (load_tree(block, "tree", inputs) if block.has("tree") else (None, None))
    layer = Softmax(inputs, groups, temperature, spatial, ctx.input.c, tree, tree_error,
                    takes_loss=not block.bool("noloss"))
    return layer, Shape.flat(inputs)


# -- [cost] ---------------------------------------------------------------------------------------

class Cost(Layer):
    """Darknet's [cost]: its output buffer stays zero at inference (there is no truth), so the
    forward returns zeros; training goes through `loss`."""

    is_output = True

    def __init__(self, inputs: int, cost_type: str, scale: float, takes_loss: bool):
        super().__init__()
        self.inputs, self.cost_type, self.scale = inputs, cost_type, scale
        self.takes_loss = takes_loss
        self.describe = cost_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.inputs)

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Darknet's error summed over the values of each image, mean over the batch (`scale`
        weighs only the gradient): sse (seg, wgan on CPU) sum((t - x)^2); L1 sum|t - x|;
        smooth: d^2 where |d| < 1 else 2|d| - 1 (Darknet's smooth_l1); masked = sse skipping
        truth == -1234. The gradient is Darknet's delta, scale * (x - t) for sse (not
        autograd's 2 (x - t))."""
        pred = x.reshape(x.shape[0], -1)
        truth = target.reshape(target.shape[0], -1).to(pred.dtype)
        if truth.shape != pred.shape:
            raise ValueError(f"[cost] target has shape {tuple(target.shape)}, expected "
                             f"{tuple(pred.shape)}")
        diff = truth - pred
        if self.cost_type == "masked":
            diff = torch.where(truth == SECRET_NUM, torch.zeros_like(diff), diff)
        if self.cost_type == "L1":
            err = diff.abs()
        elif self.cost_type == "smooth":
            err = torch.where(diff.abs() < 1, diff * diff, 2 * diff.abs() - 1)
        else:
            err = diff * diff
        value = err.sum(1).mean()
        # Darknet reports the error unscaled (cost_layer.c forward_cost_layer) and scales only
        # the delta it passes back (backward_cost_layer). Its delta is diff (l2_cpu,
        # smooth_l1_cpu: +-1 past |diff| = 1), half the derivative of the error it reports;
        # L1's is the sign, the whole derivative
        factor = self.scale * (1.0 if self.cost_type == "L1" else 0.5)
        return value.detach() + factor * (value - value.detach())


@register("cost")
def build_cost(block: Block, ctx: BuildContext):
    inputs = flat_input(block, ctx)
    # ratio (top-k of the error) and pjreddie's noobj/thresh only act in the GPU code
    block.mark_read("ratio", *(("noobj", "thresh") if ctx.net.flavor == "pjreddie" else ()))
    after_softmax = bool(ctx.types) and ctx.types[-1] == "softmax"
    layer = Cost(inputs, block.str("type"), block.float("scale"), takes_loss=not after_softmax)
    return layer, Shape.flat(inputs)
