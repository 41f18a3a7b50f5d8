"""Network: the only loop over blocks. Builds each layer through the registry, propagates shapes,
and runs a generic forward that keeps only the outputs later layers (or the caller) need."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cfgparse import Block, CfgError, Diagnostic, parse
from cfgparse.errors import WARNING

from .layer import Layer
from .registry import BuildContext, NetInfo, Shape, builder_for

# Keys every layer section may carry (SEMANTICS.md §5); the graph reads them, not the builders.
_COMMON_KEYS = ("clip", "onlyforward", "dont_update", "burnin_update", "train_only_bn",
                "stream", "wait_stream", "truth", "dontsave", "numload", "smooth")


@dataclass(frozen=True)
class LayerInfo:
    """Per-layer facts the graph keeps beside the module (for weights I/O, summary, training)."""

    index: int
    type: str
    block: Block
    input: Shape
    output: Shape
    sources: tuple[int, ...]
    stopbackward: int = 0
    dontload: bool = False
    dontloadscales: bool = False
    lr_scale: float = 1.0


def net_info(net: Block, flavor: str = "alexeyab") -> NetInfo:
    width, height, channels = net.int("width"), net.int("height"), net.int("channels")
    image = width * height * channels
    inputs = net.int("inputs", image or None) if "inputs" in net or image else None
    if not inputs:
        raise net.error("E305", "[net] gives no input size",
                        hint="set width, height and channels (or inputs for flat data)")
    return NetInfo(width, height, channels, inputs, max(net.int("batch"), 1), flavor,
                   net.int("time_steps"))


class Network(nn.Module):
    def __init__(self, blocks: Sequence[Block], *, flavor: str = "alexeyab",
                 device: torch.device | str | None = None):
        super().__init__()
        if not blocks or blocks[0].type != "net":
            where = blocks[0].diagnostic("E107", "the first section must be [net]") if blocks \
                else Diagnostic("E100", "no sections to build")
            raise CfgError(where)
        self.net_block: Block = blocks[0]
        self.info = net_info(self.net_block, flavor)
        first = (Shape(self.info.channels, self.info.height, self.info.width, self.info.inputs)
                 if self.info.width * self.info.height * self.info.channels
                 else Shape.flat(self.info.inputs))
        self.input_shape = first
        self.layers = nn.ModuleList()
        self.meta: list[LayerInfo] = []
        self.warnings: list[Diagnostic] = []
        shapes: list[Shape] = []
        on_meta = device is not None and torch.device(device).type == "meta"
        with torch.device(device) if device is not None else contextlib.nullcontext(), \
                _skip_torch_init() if on_meta else contextlib.nullcontext():
            for index, block in enumerate(blocks[1:]):
                ctx = BuildContext(index, shapes, shapes[-1] if shapes else first, self.info,
                                   [m.type for m in self.meta], layers=self.layers)
                module, shape = builder_for(block)(block, ctx)
                if not isinstance(module, Layer):
                    raise TypeError(f"builder for [{block.type}] returned {type(module)}")
                meta = LayerInfo(
                    index, block.type, block, ctx.input, shape, tuple(ctx.sources),
                    stopbackward=block.int("stopbackward"), dontload=block.bool("dontload"),
                    dontloadscales=block.bool("dontloadscales"),
                    lr_scale=block.float("learning_rate"),
                )
                block.mark_read(*_COMMON_KEYS)
                self.warnings.extend(
                    block.diagnostic("W301", f"darkcfg ignores '{o.key}' in [{block.name}]",
                                     o.key, severity=WARNING, on_value=False,
                                     hint="remove it, or see the README for supported keys")
                    for o in block.unread())
                self.layers.append(module)
                self.meta.append(meta)
                shapes.append(shape)
        self.shapes = shapes
        n = len(self.layers)
        outputs = [i for i, m in enumerate(self.layers) if m.is_output]
        if n and n - 1 not in outputs:
            outputs.append(n - 1)
        self.output_indices: list[int] = outputs
        self._sources = [m.sources for m in self.meta]
        self._plan(outputs)

    def _plan(self, keep: Iterable[int]) -> None:
        """Which outputs to hold on to, and when each can be dropped."""
        keep = set(keep)
        last_use: dict[int, int] = {}
        for i, srcs in enumerate(self._sources):
            for j in srcs:
                last_use[j] = i
        self._store = frozenset(last_use) | keep
        free: list[list[int]] = [[] for _ in self._sources]
        for j, i in last_use.items():
            if j not in keep:
                free[i].append(j)
        self._free_after = free

    def forward(self, x: torch.Tensor, collect: Iterable[int] | None = None):
        """Run the network. Returns the output layers' tensors (a list, in layer order); with
        `collect`, a dict {index: tensor} of those layers instead."""
        wanted = None if collect is None else list(collect)
        store = self._store if wanted is None else self._store | set(wanted)
        # with `collect`, layers after the last wanted one are not run (e.g. the training step
        # asks for the loss layer's input: the [softmax]/[cost] after it would be wasted work)
        stop = len(self.layers) - 1 if wanted is None else max(wanted, default=-1)
        saved: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            if i > stop:
                break
            srcs = self._sources[i]
            x = layer(x, *[saved[j] for j in srcs]) if srcs else layer(x)
            if i in store:
                saved[i] = x
            for j in self._free_after[i]:
                if wanted is None or j not in wanted:
                    del saved[j]
        if wanted is not None:
            return {i: saved[i] for i in wanted}
        return [saved[i] for i in self.output_indices]

    # -- conveniences ---------------------------------------------------------------------------
    @property
    def blocks(self) -> list[Block]:
        return [self.net_block] + [m.block for m in self.meta]

    @property
    def loss_layers(self) -> list[int]:
        """Every layer whose `loss` trains this network (layer i's loss reads layer i-1's output),
        in layer order; the network's loss is their sum (training.tasks). Empty: nothing to
        train (e.g. detectors, whose loss is not implemented yet)."""
        return [i for i, layer in enumerate(self.layers) if layer.takes_loss]

    def num_weight_floats(self) -> int:
        return sum(t.numel() for layer in self.layers for t in layer.darknet_arrays())

    def bflops(self) -> float:
        return sum(float(layer.bflops) for layer in self.layers)


@contextlib.contextmanager
def _skip_torch_init():
    """Meta tensors hold no values, so torch's own reset_parameters only cost time (~40% of a
    corpus-wide meta build). Skipped for torch's modules only, during a meta build."""
    classes = [nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.Linear]
    saved = [(cls, cls.__dict__["reset_parameters"]) for cls in classes
             if "reset_parameters" in cls.__dict__]
    for cls, _ in saved:
        cls.reset_parameters = _no_reset
    try:
        yield
    finally:
        for cls, method in saved:
            cls.reset_parameters = method


def _no_reset(self) -> None:
    return None


def build(source: str | os.PathLike | Sequence[Block], *, device: torch.device | str | None = None,
          flavor: str = "alexeyab") -> Network:
    """A Network from a cfg/yaml path, cfg text, or blocks (parsed, from YAML or a preset).

    `flavor="pjreddie"` selects the few formulas where pjreddie's Darknet differs from AlexeyAB's
    (BN epsilon, [batchnorm] weights, [region] layout, ...; SEMANTICS.md [pj] notes)."""
    if flavor not in ("alexeyab", "pjreddie"):
        raise ValueError(f"flavor must be 'alexeyab' or 'pjreddie', not {flavor!r}")
    blocks = source if isinstance(source, Sequence) and not isinstance(source, str) else \
        parse(source, flavor=flavor)
    return Network(list(blocks), flavor=flavor, device=device)
