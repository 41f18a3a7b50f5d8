"""VGG presets: data -> blocks equal to the parser's, generated cfgs up to date, parameter counts
and outputs equal to torchvision's, state_dict transfer both ways, [adaptive_avgpool]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from builders import build
from builders.presets import (
    PRESET_NAMES,
    VGG_DEPTHS,
    load_torchvision_state_dict,
    preset_text,
    to_torchvision_state_dict,
    vgg_blocks,
)
from builders.weights import load_weights, save_weights
from cfgparse import CfgError, parse
from cfgparse.writer import write

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
VARIANTS = [(depth, bn) for bn in (False, True) for depth in VGG_DEPTHS]
# the counts torchvision documents (the others are checked against torchvision itself)
KNOWN_PARAMS = {"vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg11": 132_863_336,
                "vgg19": 143_667_240}


def _name(depth: int, bn: bool) -> str:
    return f"vgg{depth}{'_bn' if bn else ''}"


def _torchvision(depth: int, bn: bool, **kw) -> torch.nn.Module:
    return getattr(torchvision.models, _name(depth, bn))(weights=None, **kw)


@torch.no_grad()
def _random_torchvision(depth: int, bn: bool, seed: int = 0, **kw) -> torch.nn.Module:
    """A torchvision VGG with cheap random values everywhere, biases and BN statistics included
    (torchvision zeroes those, which would hide a swapped name mapping). Its own kaiming init of
    the 100M-parameter classifier takes seconds; uniform noise scaled by fan-in does not."""
    with torch.device("meta"):
        model = _torchvision(depth, bn, **kw)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            t.zero_()
        elif t.dim() > 1:  # conv / linear weights
            t.uniform_(-1, 1, generator=gen).mul_((3 / t[0].numel()) ** 0.5)
        elif name.endswith("running_var") or (bn and name.endswith("weight")):
            t.uniform_(0.5, 1.5, generator=gen)
        else:  # biases, running means
            t.uniform_(-0.1, 0.1, generator=gen)
    return model.eval()


def _unfilled(source, **kw):
    """Our network built on the meta device, then given (uninitialised) CPU memory: the state
    comes from a state_dict or .weights file anyway."""
    net = build(source, device="meta", **kw)
    return net.to_empty(device="cpu")


@pytest.mark.parametrize("depth,bn", VARIANTS, ids=[_name(*v) for v in VARIANTS])
def test_generated_cfg_is_up_to_date_and_parses_to_the_same_blocks(depth, bn):
    blocks = vgg_blocks(depth, bn)
    path = CFG_DIR / f"{_name(depth, bn)}.cfg"
    assert path.read_text() == preset_text(depth, bn), \
        "regenerate with: python -m builders.presets cfg/"
    parsed = parse(path)
    assert list(parsed) == blocks
    assert not parsed.warnings
    assert [b.type for b in parsed] == [b.type for b in blocks]
    assert [b.index for b in parsed] == [b.index for b in blocks]
    assert list(parse(write(blocks))) == blocks


def test_presets_are_data_with_the_requested_sizes():
    blocks = vgg_blocks(11, num_classes=10, width=32, height=48)
    net, *layers = blocks
    assert (net.int("width"), net.int("height"), net.int("channels")) == (32, 48, 3)
    assert [b.int("output") for b in layers if b.type == "connected"] == [4096, 4096, 10]
    assert sum(b.type == "convolutional" for b in layers) == 8
    assert sum(b.type == "maxpool" for b in layers) == 5
    # the runner needs these
    for key in ("batch", "subdivisions", "learning_rate", "momentum", "decay", "policy",
                "max_batches", "burn_in", "flip", "saturation", "exposure", "hue"):
        assert key in net, key
    assert PRESET_NAMES == [_name(*v) for v in VARIANTS]
    with pytest.raises(ValueError):
        vgg_blocks(12)


@pytest.mark.parametrize("depth,bn", VARIANTS, ids=[_name(*v) for v in VARIANTS])
def test_parameter_count_and_state_dict_layout_equal_torchvision(depth, bn):
    ours = build(CFG_DIR / f"{_name(depth, bn)}.cfg", device="meta")
    assert not ours.warnings  # every key is honoured
    with torch.device("meta"):
        theirs = _torchvision(depth, bn)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    if _name(depth, bn) in KNOWN_PARAMS:
        assert count == KNOWN_PARAMS[_name(depth, bn)]
    exported = to_torchvision_state_dict(ours)
    assert list(exported) == list(theirs.state_dict())
    theirs.load_state_dict(exported, strict=True, assign=True)  # keys and shapes


@pytest.mark.parametrize("depth,bn", [(11, False), (11, True)], ids=["vgg11", "vgg11_bn"])
def test_torchvision_weights_give_equal_outputs_both_ways(depth, bn, tmp_path):
    theirs = _random_torchvision(depth, bn, num_classes=10)
    blocks = vgg_blocks(depth, bn, num_classes=10, width=40, height=40)
    ours = _unfilled(blocks).eval()
    load_torchvision_state_dict(ours, theirs.state_dict())
    x = torch.rand(2, 3, 40, 40)  # 40 -> 1x1 features: the adaptive pool replicates them
    with torch.no_grad():
        logits = theirs(x)
        last = len(ours.layers) - 1
        got = ours(x, collect=[last - 1, last])
    assert logits.abs().max() > 0.1
    assert (got[last - 1].reshape(2, -1) - logits).abs().max() <= 1e-5 * logits.abs().max()
    torch.testing.assert_close(got[last].reshape(2, -1), torch.softmax(logits, 1), rtol=1e-5,
                               atol=1e-6)

    if not bn:  # and through a Darknet .weights file into a fresh network
        save_weights(ours, tmp_path / "vgg.weights")
        ours = _unfilled(blocks).eval()
        load_weights(ours, tmp_path / "vgg.weights")
        with torch.no_grad():
            again = ours(x, collect=[last - 1])[last - 1].reshape(2, -1)
        assert torch.equal(again, got[last - 1].reshape(2, -1))
    with torch.device("meta"):
        back = _torchvision(depth, bn, num_classes=10)
    back.load_state_dict(to_torchvision_state_dict(ours), strict=True, assign=True)
    back.eval()
    for (k, a), (k2, b) in zip(theirs.state_dict().items(), back.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(back(x), logits)


def test_state_dict_that_does_not_fit_is_rejected_before_copying():
    ours = _unfilled(vgg_blocks(11, num_classes=10, width=32, height=32))
    for t in ours.state_dict().values():
        t.zero_()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    sd = _random_torchvision(11, False, num_classes=10).state_dict()
    bad_shape = dict(sd, **{"classifier.6.weight": torch.zeros(9, 4096)})
    with pytest.raises(CfgError, match="classifier.6.weight"):
        load_torchvision_state_dict(ours, bad_shape)
    missing = {k: v for k, v in sd.items() if k != "features.0.bias"}
    with pytest.raises(CfgError, match="features.0.bias"):
        load_torchvision_state_dict(ours, missing)
    with pytest.raises(CfgError, match="unexpected"):
        load_torchvision_state_dict(ours, dict(sd, extra=torch.zeros(1)))
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(CfgError, match="not one of the VGG presets"):
        load_torchvision_state_dict(build(vgg_blocks(11)[:5], device="meta"), sd)


ADAPTIVE = """
[net]
width={w}
height={h}
channels=2

[adaptive_avgpool]
width=3
height=2
"""


@pytest.mark.parametrize("w,h", [(5, 7), (3, 2), (2, 1)])
def test_adaptive_avgpool_equals_torch(w, h):
    net = build(ADAPTIVE.format(w=w, h=h))
    assert net.shapes[0] == (2, 2, 3, 12)
    x = torch.randn(1, 2, h, w)
    torch.testing.assert_close(net(x)[0], torch.nn.AdaptiveAvgPool2d((2, 3))(x))


def test_adaptive_avgpool_defaults_and_errors():
    net = build(ADAPTIVE.format(w=9, h=9).replace("width=3\nheight=2\n", ""), device="meta")
    assert net.shapes[0][:3] == (2, 7, 7)
    flat = "[net]\ninputs=10\n\n[adaptive_avgpool]\n"
    with pytest.raises(CfgError) as err:
        build(flat, device="meta")
    assert err.value.code == "E302" and err.value.first.line == 4
    with pytest.raises(CfgError) as err:
        build(ADAPTIVE.format(w=4, h=4).replace("width=3", "width=0"), device="meta")
    assert err.value.code == "E203"
