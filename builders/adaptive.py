"""[adaptive_avgpool]: a darkcfg extension, not a Darknet section.

torchvision's VGG (and many other PyTorch classifiers) average-pool the last feature map to a
fixed size with `AdaptiveAvgPool2d`, so the classifier's input size, and thus its weights, do not
depend on the input resolution. Darknet has no such layer; this one makes the VGG presets equal
to torchvision's at any input size. Keys: `width`, `height` (the output size, default 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cfgparse import Block

from .layer import Layer
from .registry import BuildContext, Shape, register


class AdaptiveAvgPool(Layer):
    def __init__(self, height: int, width: int, input_shape: Shape) -> None:
        super().__init__()
        self.size = (height, width)
        self.describe = f"-> {width} x {height}"
        # one add per input element plus one divide per output element
        self.bflops = (input_shape.c * input_shape.h * input_shape.w
                       + input_shape.c * height * width) / 1e9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.size)


@register("adaptive_avgpool")
def build_adaptive_avgpool(block: Block, ctx: BuildContext) -> tuple[Layer, Shape]:
    width, height = block.int("width"), block.int("height")
    c, h, w = ctx.input.c, ctx.input.h, ctx.input.w
    if c * h * w == 0:
        raise block.error("E302", f"[{block.name}] needs an image-shaped input (C x H x W), but "
                          f"the previous layer gives a flat vector of {ctx.input.size}",
                          hint="put it after a convolutional or pooling layer")
    return AdaptiveAvgPool(height, width, ctx.input), Shape.chw(c, height, width)
