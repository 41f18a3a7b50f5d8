"""[contrastive] (AlexeyAB's contrastive-learning layer): its layer and builder. Its loss
(src/contrastive_layer.c) is not implemented, so it takes no loss and is not decoded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cfgparse import Block

from ..dense import flat_input
from ..layer import Layer
from ..registry import BuildContext, Shape, register
from .base import read_keys


@dataclass(frozen=True)
class ContrastiveSettings:
    """The keys Darknet's contrastive loss reads (kept, not yet used)."""

    temperature: float = 1.0
    cls_normalizer: float = 1.0
    max_delta: float | None = None
    contrastive_neg_max: int = 3


class Contrastive(Layer):
    """Its forward returns at once outside training, so the output buffer Darknet exposes stays
    zero: we return zeros too."""

    is_output = True

    def __init__(self, inputs: int):
        super().__init__()
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.inputs)


@register("contrastive")
def build_contrastive(block: Block, ctx: BuildContext):
    inputs = flat_input(block, ctx)
    layer = Contrastive(inputs)
    yolo_layer = block.int("yolo_layer", 0)
    if yolo_layer:
        target = ctx.resolve(block, "yolo_layer", yolo_layer)
        if ctx.types[target] != "yolo":
            raise block.error("E304", f"yolo_layer points at layer {target}, a "
                              f"[{ctx.types[target]}], not a [yolo] layer", "yolo_layer")
        yolo_layer = target
    layer.yolo_layer = yolo_layer or None
    layer.classes = block.int("classes")
    keys = read_keys(block, ctx.net.flavor, frozenset({"classes", "yolo_layer"}))
    layer.settings = ContrastiveSettings(
        temperature=float(keys["temperature"]), cls_normalizer=float(keys["cls_normalizer"]),
        max_delta=None if keys["max_delta"] is None else float(keys["max_delta"]),
        contrastive_neg_max=int(keys["contrastive_neg_max"]))
    layer.describe = f"{layer.classes} classes"
    return layer, Shape.flat(inputs)
