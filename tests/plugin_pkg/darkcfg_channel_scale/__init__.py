"""A real, small darkcfg plugin distribution (tests/test_plugins.py installs it on sys.path):
[channel_scale] multiplies each channel by a learned factor, then an optional activation."""

import torch
from torch import nn

from builders import Layer, register_section
from builders.activations import activation_module
from cfgparse.schema import ACTIVATIONS


class ChannelScale(Layer):
    def __init__(self, channels: int, init: float, activation: str):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), init))
        self.act = activation_module(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x * self.weight.view(1, -1, 1, 1))

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        return [self.weight]


@register_section("channel_scale", keys={"init": (float, 1.0, 0.0),
                                         "activation": (str, "linear", ACTIVATIONS)},
                  aliases=("chscale",))
def build_channel_scale(block, ctx):
    layer = ChannelScale(ctx.input.c, block.float("init"), block.str("activation"))
    layer.describe = f"x{block.float('init'):g}"
    layer.filters = ctx.input.c
    return layer, ctx.input
