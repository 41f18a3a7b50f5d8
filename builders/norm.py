"""Darknet's batch normalisation, for (N, C, H, W) and (N, C) input.

AlexeyAB inference is exactly torch's `(x - mean) / sqrt(var + 1e-5) * scale + bias`, so
`DarknetBatchNorm` is an `nn.BatchNorm2d` that also takes (N, C) input (torch's fast kernels,
torchvision-compatible state-dict names: weight=scales, bias=biases, running_mean, running_var).
pjreddie puts the epsilon outside the root, `(x - mean) / (sqrt(var) + 1e-6)`, which torch has no
kernel for: `PjreddieBatchNorm`.

Training differs slightly from Darknet's CPU code, which normalises with the unbiased batch
variance; torch normalises with the biased one (and updates the running variance with the
unbiased one, as Darknet does). The rolling momentum is Darknet's: 0.1 for AlexeyAB conv/batchnorm
(`rolling = 0.9 * rolling + 0.1 * batch`), 0.05 for [connected], 0.01 for pjreddie.
"""

from __future__ import annotations

import torch
from torch import nn

ALEXEYAB_EPS = 1e-5
PJREDDIE_EPS = 1e-6


class DarknetBatchNorm(nn.BatchNorm2d):
    """AlexeyAB batch-norm over channel dim 1 of (N, C) or (N, C, H, W) input."""

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=ALEXEYAB_EPS, momentum=momentum)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected (N, C) or (N, C, H, W) input, got {x.dim()}D")

    def inference_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) with eval-mode output = a * x + b per channel (to fold into a convolution)."""
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def emitted(self, ctx, ndim: int | None) -> str:
        """Its constructor in an emitted module (darkcfg/export/emit.py): torch's own class, which
        computes the same (and has the same state_dict names)."""
        cls = "BatchNorm1d" if ndim == 2 else "BatchNorm2d"
        return f"nn.{cls}({self.num_features}, eps={self.eps}, momentum={self.momentum})"


class PjreddieBatchNorm(DarknetBatchNorm):
    """pjreddie's batch-norm: epsilon 1e-6 added to the standard deviation, not the variance."""

    def __init__(self, num_features: int, momentum: float = 0.01) -> None:
        super().__init__(num_features, momentum=momentum)
        self.eps = PJREDDIE_EPS

    def inference_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight / (torch.sqrt(self.running_var) + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return _pjreddie_forward(self, x)

    def emitted(self, ctx, ndim: int | None) -> str:
        """No torch class computes this: a copy of it at the top of the emitted module."""
        ctx.helper("PjreddieBatchNorm", _PJREDDIE_SOURCE)
        return f"PjreddieBatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum})"


_PJREDDIE_SOURCE = '''class PjreddieBatchNorm(nn.BatchNorm2d):
    """pjreddie Darknet's batch-norm: epsilon added to the standard deviation, (N, C) or
    (N, C, H, W) input."""

    def _check_input_dim(self, x):
        pass

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            mean, var = x.mean(dims), x.var(dims, unbiased=True)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        return ((x - mean.view(view)) / (var.sqrt().view(view) + self.eps)
                * self.weight.view(view) + self.bias.view(view))
'''
# the emitted copy is also what PjreddieBatchNorm runs: one home for the formula (the unbiased
# batch variance is Darknet's CPU code's, /(N-1))
_emitted: dict = {}
exec(compile(_PJREDDIE_SOURCE, f"{__file__}:_PJREDDIE_SOURCE", "exec"),
     {"torch": torch, "nn": nn}, _emitted)
_pjreddie_forward = _emitted["PjreddieBatchNorm"].forward


def batch_norm(num_features: int, flavor: str = "alexeyab",
               momentum: float | None = None) -> DarknetBatchNorm:
    """The batch-norm module for a Darknet flavor ('alexeyab' or 'pjreddie'); `momentum=None`
    takes the flavor's conv/batchnorm default."""
    if flavor == "pjreddie":
        return PjreddieBatchNorm(num_features, 0.01 if momentum is None else momentum)
    return DarknetBatchNorm(num_features, 0.1 if momentum is None else momentum)
