"""The base class of every built layer: what the graph, .weights I/O and summary ask of it."""

from __future__ import annotations

import torch
from torch import nn


class Layer(nn.Module):
    """A Darknet layer as an nn.Module.

    forward(x, *refs): `x` is the previous layer's output, `refs` the outputs of the layers the
    builder listed with `ctx.refs(...)`, in that order.
    """

    #: Darknet treats this layer type as a network output ([yolo], [region], [softmax], ...).
    is_output: bool = False
    #: This layer defines a training loss (see `loss`); a network trains on the sum over all
    #: such layers (`Network.loss_layers`).
    takes_loss: bool = False
    #: What its loss compares with, which picks the training task (darkcfg.train.tasks.TASKS):
    #: "classes" (class indices), "values" (regression vectors) or "boxes" (detection heads:
    #: truth (N, M, 5) [x, y, w, h, class], builders/heads/).
    loss_target: str = "values"
    #: forward accepts channels-last input (only logical-order ops, no `.view`): the inference
    #: fast path then passes such tensors on without converting them back to NCHW.
    channels_last_ok: bool = False
    #: forward is exactly `x + refs[0]` (a [shortcut] without weights or activation, `from` of
    #: the input's shape): the inference fast path lets the layer before add it (Network.forward)
    adds_only: bool = False
    #: `inference_forward(x, residual=None, out=None)` computes forward(x) [+ residual] [into
    #: `out`, channels of a [route]'s concatenation]: the fast path's fusions (Network.forward)
    #: of a [shortcut] into the layer before, and of a concatenation into the layers it reads
    fusable: bool = False
    #: the channel counts of the `refs` this layer concatenates whole, in order (a [route]'s
    #: output is nothing else), or None
    concatenates: tuple[int, ...] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.bflops: float = 0.0  # Darknet's BFLOPs for this layer at batch 1
        self.describe: str = ""  # summary column: e.g. "3 x 3/ 1" or "-1,-4"
        self.filters: int | str = ""  # summary column

    @property
    def run_error(self):
        """The CfgError this layer raises when it runs though it builds (a [softmax] or [region]
        whose tree= file is absent: shapes do not depend on it), else None. Building, summary
        and `check` pass; a forward (detect, export, training) stops on it, and `check --target
        onnx|tensorrt` reports it."""
        return None

    def darknet_arrays(self, scales: bool = True) -> list[torch.Tensor]:
        """Tensors in Darknet .weights file order (the parameters/buffers themselves, so that
        .weights I/O can copy into them). `scales=False` is Darknet's `dontloadscales`: a layer
        with batch-norm then lists only its biases and weights."""
        return []

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss from this layer's *input* `x` (e.g. logits for [softmax]), mean over the
        batch. Only layers with `takes_loss = True` implement it. Detection heads
        (builders.heads.DetectionHead) take `(x, truth, seen=0)` instead and return
        `(loss, stats)` (loss_target "boxes")."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss")

    def darknet_output(self, y: torch.Tensor) -> torch.Tensor:
        """`y` flattened in Darknet's memory order (per batch item), for --dump-outputs."""
        return y.flatten(1)

    def emit(self, ctx) -> str:
        """This layer as code in an emitted module (darkcfg/export/emit.py): register submodules and
        helpers on `ctx`, add statements, and return the expression of the output in terms of
        `ctx.inputs` (the previous output's variable, then the referenced layers'). The default
        traces this forward with torch.fx; override it for code that reads better."""
        return ctx.traced(self)

    def extra_repr(self) -> str:
        """The summary's size column (`describe`), shown in print(net)."""
        return self.describe
