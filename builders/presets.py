"""VGG presets: torchvision's VGG configurations A/B/D/E as data, emitted as cfg blocks.

The blocks are the same `Block` objects the parser makes from the generated cfg files (written
by `cfgparse.writer.write`), so a preset and its file build through the one path
(`builders.build`). The network equals
torchvision's `vgg11/13/16/19[_bn]`: 3x3 convolutions with pad 1 (+ batch-norm) + ReLU, 2x2
max-pools, a 7x7 adaptive average pool ([adaptive_avgpool], a darkcfg extension), then
Linear-ReLU-Dropout x2 and the last Linear, followed by [softmax].

With batch-norm, torchvision keeps the convolution's bias before BatchNorm2d, which Darknet's
`batch_normalize=1` drops; the _bn presets therefore use a linear [convolutional], a
[batchnorm] and an [activation] so that parameters and outputs stay equal to torchvision's.

Regenerate the cfg files with:  python -m builders.presets cfg/
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from cfgparse import Block, CfgError, Diagnostic, Option
from cfgparse.blocks import format_value
from cfgparse.schema import coerce_text
from cfgparse.writer import write

# torchvision.models.vgg `cfgs`: output channels of each 3x3 conv, "M" = 2x2 max-pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
          "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512,
          512, 512, "M"],
}
VGG_DEPTHS = {11: "A", 13: "B", 16: "D", 19: "E"}
POOLED = 7  # torchvision's AdaptiveAvgPool2d((7, 7))
HIDDEN = 4096

# [net] training settings (ImageNet-style SGD; the runner reads them, --set overrides them).
TRAINING = {
    "batch": 128, "subdivisions": 4, "learning_rate": 0.01, "momentum": 0.9, "decay": 0.0005,
    "policy": "steps", "steps": [300000, 400000], "scales": [0.1, 0.1], "max_batches": 500000,
    "burn_in": 100, "power": 1,  # a short linear warm-up: plain VGG diverges easily at first
    "flip": 1, "angle": 7, "aspect": 0.75, "saturation": 0.75, "exposure": 0.75, "hue": 0.1,
}

PRESET_NAMES = [f"vgg{d}{'_bn' if bn else ''}" for bn in (False, True) for d in VGG_DEPTHS]


def _block(section: str, values: dict, index: int, path: str) -> Block:
    """A block typed exactly as the parser types the same text."""
    options = {}
    for key, value in values.items():
        raw = format_value(value)
        options[key] = Option(key, raw, coerce_text(section, key, raw))
    return Block(section, section, options, path=path, index=index)


def _layers(config: Sequence[int | str], batch_norm: bool,
            num_classes: int) -> Iterator[tuple[str, dict, list[str]]]:
    """(section, values, torchvision state-dict names in Darknet .weights order) per layer.

    One walk over the data gives both the cfg and the name mapping, so they cannot disagree.
    """
    i = 0  # index in torchvision's `features` Sequential
    for v in config:
        if v == "M":
            # padding=0: Darknet's default (size-1) would round odd sizes up, torch rounds down
            yield "maxpool", {"size": 2, "stride": 2, "padding": 0}, []
            i += 1
            continue
        conv = {"filters": v, "size": 3, "stride": 1, "pad": 1}
        if not batch_norm:
            yield "convolutional", {**conv, "activation": "relu"}, \
                [f"features.{i}.bias", f"features.{i}.weight"]
            i += 2
            continue
        yield "convolutional", {**conv, "activation": "linear"}, \
            [f"features.{i}.bias", f"features.{i}.weight"]
        bn = f"features.{i + 1}"
        yield "batchnorm", {}, [f"{bn}.bias", f"{bn}.weight", f"{bn}.running_mean",
                                f"{bn}.running_var"]
        yield "activation", {"activation": "relu"}, []
        i += 3
    yield "adaptive_avgpool", {"width": POOLED, "height": POOLED}, []
    for j, out in ((0, HIDDEN), (3, HIDDEN), (6, num_classes)):
        last = j == 6
        yield "connected", {"output": out, "activation": "linear" if last else "relu"}, \
            [f"classifier.{j}.bias", f"classifier.{j}.weight"]
        if not last:
            yield "dropout", {"probability": 0.5}, []
    yield "softmax", {"groups": 1}, []


def _config(depth: int) -> list[int | str]:
    if depth not in VGG_DEPTHS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_DEPTHS)}, not {depth}")
    return VGG_CONFIGS[VGG_DEPTHS[depth]]


def vgg_blocks(depth: int, batch_norm: bool = False, num_classes: int = 1000, width: int = 224,
               height: int = 224) -> list[Block]:
    """The blocks of torchvision's vgg{depth}[_bn]: [net] then one block per layer."""
    path = f"<preset vgg{depth}{'_bn' if batch_norm else ''}>"
    net = {"width": width, "height": height, "channels": 3, **TRAINING}
    blocks = [_block("net", net, -1, path)]
    for index, (section, values, _) in enumerate(_layers(_config(depth), batch_norm,
                                                         num_classes)):
        blocks.append(_block(section, values, index, path))
    return blocks


def preset_text(depth: int, batch_norm: bool) -> str:
    name = f"vgg{depth}{'_bn' if batch_norm else ''}"
    letter = VGG_DEPTHS[depth]
    comment = (f"{name}: torchvision's VGG configuration {letter}"
               f"{' with batch-norm' if batch_norm else ''}; same parameters and outputs.\n"
               "Generated by `python -m builders.presets cfg/` (builders/presets.py); edit that, "
               "not this file.\n[adaptive_avgpool] is a darkcfg extension (see the README).")
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return f"{header}\n{write(vgg_blocks(depth, batch_norm))}"


# -- torchvision state_dict <-> ours ----------------------------------------------------------

def _names(net) -> list[list[str]]:
    """torchvision names of each of our layer's `darknet_arrays()`: the preset whose layer
    sequence this network has (its classes are whatever its last [connected] says)."""
    types = [m.type for m in net.meta]
    for depth in VGG_DEPTHS:
        for batch_norm in (False, True):
            layers = list(_layers(_config(depth), batch_norm, 1))
            if [section for section, _, _ in layers] == types:
                return [names for _, _, names in layers]
    raise CfgError(Diagnostic("E302", "this network is not one of the VGG presets "
                              f"({', '.join(PRESET_NAMES)})", net.net_block.path,
                              hint="build it from cfg/vgg*.cfg or builders.presets.vgg_blocks"))


def _pairs(net) -> list[tuple[str, torch.Tensor]]:
    pairs = []
    for i, (layer, names) in enumerate(zip(net.layers, _names(net), strict=True)):
        arrays = layer.darknet_arrays()
        if len(arrays) != len(names):
            raise CfgError(Diagnostic(
                "E302", f"layer {i} ([{net.meta[i].type}]) stores {len(arrays)} arrays, "
                f"torchvision's {len(names)}", net.net_block.path,
                hint="build the preset with the default (alexeyab) flavor"))
        pairs.extend(zip(names, arrays, strict=True))
    return pairs


@torch.no_grad()
def load_torchvision_state_dict(net, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a torchvision vgg*/vgg*_bn state_dict into a preset network. Every key and shape is
    checked before anything is copied."""
    pairs = _pairs(net)
    expected = {name for name, _ in pairs}
    ignored = {k for k in state_dict if k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected - ignored)
    wrong = [f"{name} {tuple(state_dict[name].shape)} != {tuple(t.shape)}" for name, t in pairs
             if name in state_dict and tuple(state_dict[name].shape) != tuple(t.shape)]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:4]}" if missing else "",
                 f"unexpected {unexpected[:4]}" if unexpected else "",
                 f"shapes differ: {wrong[:4]}" if wrong else ""]
        raise CfgError(Diagnostic("E302", "the state_dict does not fit this VGG: "
                                  + "; ".join(p for p in parts if p), net.net_block.path,
                                  hint="use the torchvision model of the same depth, batch-norm "
                                  "and number of classes"))
    for name, t in pairs:
        t.copy_(state_dict[name])


@torch.no_grad()
def to_torchvision_state_dict(net) -> OrderedDict[str, torch.Tensor]:
    """A state_dict that torchvision's vgg*/vgg*_bn of the same configuration loads strictly."""
    pairs = _pairs(net)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()

    def order(item: tuple[str, torch.Tensor]) -> tuple:
        part, index, leaf = item[0].split(".")
        return (part != "features", int(index), _LEAF_ORDER.index(leaf))

    for name, t in sorted(pairs, key=order):
        out[name] = t.detach().clone()
        if name.endswith("running_var"):  # BatchNorm2d has this buffer too
            out[name.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return out


_LEAF_ORDER = ["weight", "bias", "running_mean", "running_var"]  # torch's registration order


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m builders.presets",
                                 description="Write the VGG preset cfgs (vgg11..vgg19, _bn).")
    ap.add_argument("folder", nargs="?", default="cfg", help="where to write (default: cfg)")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for batch_norm in (False, True):
        for depth in VGG_DEPTHS:
            path = folder / f"vgg{depth}{'_bn' if batch_norm else ''}.cfg"
            path.write_text(preset_text(depth, batch_norm))
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
