"""Helpers of the inference fast path's tests (test_winograd.py, test_pointwise.py): a small net
with non-trivial batch-norm statistics, which kernel each layer ran, and the fast path checked
against the plain modules."""

from __future__ import annotations

import torch

from builders import build


def built_with_statistics(cfg: str):
    """The eval net of `cfg` (seeded), its batch-norm statistics and scales away from 0 / 1, so
    that folding them into the weights is exercised."""
    torch.manual_seed(0)
    net = build(cfg).eval()
    with torch.no_grad():
        for layer in net.layers:
            if getattr(layer, "has_bn", False):
                layer.bn.running_mean.uniform_(-0.2, 0.2)
                layer.bn.running_var.uniform_(0.5, 2.0)
                layer.bn.weight.uniform_(0.5, 1.5)
    return net


def kernels(net) -> list[str]:
    """The fast path's kernel per layer as its cache holds it ("winograd", "winograd2", with
    " panels" where builders.pointwise runs their products, "pointwise", "packed"), "" for
    layers without one."""
    return [next((k for k in (layer._inference_cache or {}) if k not in ("key", "bias")), "")
            for layer in net.layers]


def fast_matching_plain(net, x, tolerance: float = 1e-4):
    """The fast path's output, after checking it against the plain path's within `tolerance`
    of the largest output."""
    with torch.no_grad():
        fast = net(x)[0]
        plain = net.use_fast_inference(False)(x)[0]
    net.use_fast_inference(True)
    assert (fast - plain).abs().max() <= tolerance * plain.abs().max()
    return fast
