"""Darknet activations (src/activations.c) as functions on tensors.

We implement the intended formula everywhere. Darknet's CPU build returns 0 for relu6, swish, mish,
hard_mish and normalize_channels* outside [convolutional]/[shortcut] (§11 #2); that is a Darknet
bug we do not copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import native

Activation = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


def _loggy(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sigmoid(x) - 1


def _relie(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, 0.01 * x)


def _ramp(x: torch.Tensor) -> torch.Tensor:
    return x * (x > 0) + 0.1 * x


def _elu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, torch.expm1(x))


def _selu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x * x * x))


def _plse(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1,
                                                           0.125 * x + 0.5))


def _stair(x: torch.Tensor) -> torch.Tensor:
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


def _lhtan(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


def _mish(x: torch.Tensor) -> torch.Tensor:
    # Darknet's softplus uses thresholds at +-20; torch's softplus(threshold=20) matches above,
    # and below -20 log1p(e^x) == e^x to float precision.
    return x * torch.tanh(F.softplus(x, threshold=20))


def _hard_mish(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


def _normalize_channels(x: torch.Tensor) -> torch.Tensor:
    pos = torch.clamp(x, min=0)
    return torch.where(x > 0, x / (1e-4 + pos.sum(dim=1, keepdim=True)), torch.zeros_like(x))


def _normalize_channels_softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x)
    return e / (1e-4 + e.sum(dim=1, keepdim=True))


def _normalize_channels_softmax_maxval(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=1, keepdim=True))
    return e / (1e-4 + e.sum(dim=1, keepdim=True))


ACTIVATIONS: dict[str, Activation] = {
    "linear": _identity,
    "logistic": torch.sigmoid,
    "loggy": _loggy,
    "relu": F.relu,
    "relu6": F.relu6,
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "relie": _relie,
    "ramp": _ramp,
    "leaky": _leaky,
    "revleaky": _leaky,
    "tanh": torch.tanh,
    "plse": _plse,
    "stair": _stair,
    "hardtan": lambda x: torch.clamp(x, -1, 1),
    "lhtan": _lhtan,
    "swish": F.silu,
    "mish": _mish,
    "hard_mish": _hard_mish,
    "normalize_channels": _normalize_channels,
    "normalize_channels_softmax": _normalize_channels_softmax,
    "normalize_channels_softmax_maxval": _normalize_channels_softmax_maxval,
}

# Activations torch implements exactly as Darknet does, as nn.Modules (faster than a Lambda).
_MODULES = {"relu": torch.nn.ReLU, "leaky": lambda: torch.nn.LeakyReLU(0.1),
            "revleaky": lambda: torch.nn.LeakyReLU(0.1), "logistic": torch.nn.Sigmoid,
            "linear": torch.nn.Identity, "swish": torch.nn.SiLU, "mish": torch.nn.Mish,
            "tanh": torch.nn.Tanh, "relu6": torch.nn.ReLU6}
# Those whose backward needs only their output, so they may overwrite their input (as
# torchvision's VGG does with ReLU(inplace=True)).
_INPLACE = {"relu": lambda: torch.nn.ReLU(inplace=True),
            "leaky": lambda: torch.nn.LeakyReLU(0.1, inplace=True),
            "revleaky": lambda: torch.nn.LeakyReLU(0.1, inplace=True),
            "relu6": lambda: torch.nn.ReLU6(inplace=True)}


def activation(name: str) -> Activation:
    """The function for a Darknet activation name; an unknown name is relu, as in Darknet
    ("Couldn't find activation function X, going with ReLU"). The parser rejects such names
    (E204), so this is only reached for blocks made in code."""
    return ACTIVATIONS.get(name, F.relu)


def activation_module(name: str, inplace: bool = False) -> torch.nn.Module:
    """An nn.Module for an activation: torch's own where it matches Darknet exactly.
    `inplace=True` may overwrite the input: only for a tensor nobody else holds (a fresh conv
    output), never for a layer input that the graph may keep for a later route."""
    factory = (_INPLACE.get(name) if inplace else None) or _MODULES.get(name)
    if factory is not None:
        return factory()
    return Lambda(activation(name), name)


class Lambda(torch.nn.Module):
    def __init__(self, fn: Activation, name: str):
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name

    def emitted(self, ctx, ndim: int | None) -> str:
        """In an emitted module (darkcfg/export/emit.py): a small class traced from the function."""
        name = "".join(part.title() for part in self.name.split("_"))
        return ctx.helper_class(self, name) + "()"

# -- inference fast path (builders.conv: eval mode, no autograd, CPU float32) --------------------

#: Activations oneDNN applies inside the convolution and inner-product kernels (name, scalars
#: of `torch.ops.mkldnn._convolution_pointwise` / `_linear_pointwise`), each equal to Darknet's
#: formula.
CONV_POST_OPS: dict[str, tuple[str, list[float]]] = {
    "linear": ("none", []), "relu": ("relu", []), "leaky": ("leaky_relu", [0.1]),
    "revleaky": ("leaky_relu", [0.1]), "logistic": ("sigmoid", []), "tanh": ("tanh", []),
    "swish": ("swish", []), "hardtan": ("hardtanh", [-1.0, 1.0]), "relu6": ("hardtanh", [0.0, 6.0]),
}

# elements per step of `mish_`: two 1 MiB buffers stay in the caches of two cores
_MISH_CHUNK = 1 << 18


def _flat_dense(x: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of every element of a dense (NCHW or channels-last) tensor, or None."""
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)  # a view: the permuted tensor is contiguous
    return None


def mish_(x: torch.Tensor) -> torch.Tensor:
    """Mish in place, without autograd: x * tanh(softplus(x)) = x - 2x / ((1 + e^x)^2 + 1).

    The native kernel (builders.native: one pass, ~3x faster than the torch ops below) when it
    is available; else one exp and one division instead of torch's exp, log1p and tanh (about
    3x faster than F.mish on CPU), in cache-sized chunks. Large x: the denominator overflows to
    inf and the result is x, as Darknet's softplus threshold gives; the absolute error stays
    below ~2e-6 for |x| <= 20."""
    flat = _flat_dense(x)
    if flat is None:
        return x.copy_(_mish(x))
    if x.dtype == torch.float32 and x.device.type == "cpu" and native.mish_inplace(flat):
        return x
    tmp = torch.empty(min(_MISH_CHUNK, flat.numel()), dtype=x.dtype, device=x.device)
    for start in range(0, flat.numel(), _MISH_CHUNK):
        part = flat[start:start + _MISH_CHUNK]
        d = tmp[:part.numel()]
        torch.exp(part, out=d)
        d.add_(1).mul_(d).add_(1)
        part.addcdiv_(part, d, value=-2)
    return x
