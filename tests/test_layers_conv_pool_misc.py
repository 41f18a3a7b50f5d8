"""The conv, pool and misc layer families against real Darknet.

* oracle unit cfgs (u_conv, u_pool, u_misc, u_upsample, u_reorg, u_activations): every layer's
  output equals Darknet's within rel.err 1e-4, except the layers that hit Darknet's CPU
  activation bug (Darknet's CPU activation bugs, src/activations.c #2), which must give the intended
  formula instead;
* every layer of these families in every corpus cfg Darknet parsed: output shape, weight floats
  and BFLOPs equal Darknet's shape dump;
* a tiny forward + backward per registered section type, and a meta-device build.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle import oracle_index, oracle_input, oracle_outputs, rel_err, weights_file

from builders import build
from builders.registry import BuildContext, NetInfo, Shape, builder_for
from builders.weights import load_weights
from cfgparse import CfgError, parse

SHARED = Path(__file__).resolve().parents[2] / "shared" / "darknet"
ORACLE = SHARED / "oracle"
def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


# -- oracle unit cfgs ----------------------------------------------------------------------------

UNIT_CFGS = ["u_conv", "u_pool", "u_misc", "u_upsample", "u_reorg", "u_activations"]

# Darknet's CPU activation bugs, src/activations.c #2: Darknet's CPU activate() has no case for
# these outside [convolutional]
# (and none for relu6 at all), so its dump is all zeros there. We implement the formula.
DARKNET_ZERO_LAYERS = {9: "relu6", 37: "mish", 39: "swish", 41: "hard_mish",
                       43: "normalize_channels", 53: "relu6"}


def run_unit(name: str) -> tuple[dict[int, np.ndarray], object]:
    """Build oracle/cfg/NAME.cfg, load the oracle weights, run the oracle input (eval mode).
    u_activations has one `activation=bogus_name`, which Darknet runs as relu; if the parser
    rejects the name instead of warning (W204), we give it relu ourselves."""
    text = require(ORACLE / "cfg" / f"{name}.cfg").read_text()
    try:
        net = build(text)
    except CfgError as error:
        if "bogus_name" not in str(error):
            raise
        net = build(text.replace("activation=bogus_name", "activation=relu"))
    load_weights(net, weights_file(name))
    net.eval()
    with torch.no_grad():
        outs = net(torch.from_numpy(oracle_input(name)), collect=range(len(net.layers)))
    return {i: net.layers[i].darknet_output(y)[0].numpy() for i, y in outs.items()}, net


@pytest.mark.parametrize("name", UNIT_CFGS)
def test_unit_cfg_matches_darknet(name):
    ours, net = run_unit(name)
    reference = oracle_outputs(name)
    assert len(reference) == len(net.layers), "every unit-cfg layer is dumped"
    skip = DARKNET_ZERO_LAYERS if name == "u_activations" else {}
    errors = {i: rel_err(ours[i], ref) for i, ref in reference.items() if i not in skip}
    bad = {i: e for i, e in errors.items() if not e < 1e-4}
    assert not bad, f"{name}: layers over rel.err 1e-4: {bad}"


def _intended(name: str, x: np.ndarray) -> np.ndarray:
    """The activation formulas of src/activations.c, in float64 numpy (x is C x H x W)."""
    if name == "relu6":
        return np.clip(x, 0, 6)
    if name == "mish":
        return x * np.tanh(np.log1p(np.exp(x)))
    if name == "swish":
        return x / (1 + np.exp(-x))
    if name == "hard_mish":
        return np.where(x > 0, x, np.where(x > -2, x * x / 2 + x, 0))
    if name == "normalize_channels":
        positive = np.where(x > 0, x, 0).sum(axis=0, keepdims=True)
        return np.where(x > 0, x / (1e-4 + positive), 0)
    raise AssertionError(name)


def test_darknet_cpu_zero_activations_give_the_intended_formula():
    """The only layers excluded above: Darknet outputs zeros, we output the formula."""
    ours, net = run_unit("u_activations")
    reference = oracle_outputs("u_activations")
    index = {layer["idx"]: layer for layer in oracle_index("u_activations")["layers"]}
    for i, act in DARKNET_ZERO_LAYERS.items():
        assert net.meta[i].block.str("activation") == act
        assert not np.any(reference[i]), f"Darknet's layer {i} ({act}) is no longer all zeros"
        c, h, w = index[i]["out_c"], index[i]["out_h"], index[i]["out_w"]
        if net.meta[i].type == "activation":
            # its input is the [route] just before it
            pre = ours[i - 1].astype(np.float64).reshape(c, h, w)
        else:  # a depthwise 1x1 [convolutional]: weights and biases straight from the file
            conv = net.layers[i].conv
            weight = conv.weight.detach().numpy().reshape(c, 1, 1).astype(np.float64)
            bias = conv.bias.detach().numpy().reshape(c, 1, 1)
            pre = ours[i - 1].astype(np.float64).reshape(c, h, w) * weight + bias
        expected = _intended(act, pre).ravel()
        assert np.abs(ours[i]).max() > 0.1
        assert rel_err(ours[i], expected) < 1e-5, (i, act)


# -- every corpus layer of these families vs Darknet's shape dumps --------------------------------

# which shape folder holds which corpus, and the Darknet flavor that parsed it
SHAPE_FOLDERS = {"alexeyab": "alexeyab", "pjreddie": "alexeyab", "pjreddie-native": "pjreddie",
                 "alexeyab-failed-via-pjreddie": "pjreddie"}
TYPE_NAMES = {"reorg(REORG_OLD)": "reorg", "reorg3d(REORG)": "reorg3d"}


def _shape_dumps() -> list[tuple[str, str]]:
    if not (SHARED / "shapes").is_dir():
        return []
    return [(folder, p.name) for folder in SHAPE_FOLDERS
            for p in sorted((SHARED / "shapes" / folder).glob("*.json"))
            if not p.name.startswith("_")]


class _Placeholder(torch.nn.Module):
    pass


@pytest.mark.parametrize("folder,dump", _shape_dumps())
def test_corpus_layers_match_darknet_shapes(folder, dump):
    """Each layer of our families is built alone, on the meta device, from the input Darknet
    gave it; its output shape, weight floats and BFLOPs must equal Darknet's dump."""
    data = json.loads((SHARED / "shapes" / folder / dump).read_text())
    cfg = (SHARED / "shapes" / folder / data["cfg"]).resolve()
    flavor = SHAPE_FOLDERS[folder]
    blocks = list(parse(cfg))[1:]
    assert len(blocks) == len(data["layers"])
    net = data["net"]
    info = NetInfo(net["w"], net["h"], net["c"], net["inputs"], 1, flavor)
    shapes: list[Shape] = []
    layers: list[torch.nn.Module] = []
    checked = 0
    with torch.device("meta"):
        for i, (block, darknet) in enumerate(zip(blocks, data["layers"], strict=True)):
            out = Shape(darknet["out_c"], darknet["out_h"], darknet["out_w"], darknet["outputs"])
            kind = TYPE_NAMES.get(darknet["type"], darknet["type"])
            if block.type not in SECTION_CASES or kind != block.type:  # another file's
                shapes.append(out)
                layers.append(_Placeholder())
                continue
            first = Shape(net["c"], net["h"], net["w"], net["inputs"])
            ctx = BuildContext(i, shapes, shapes[-1] if shapes else first, info,
                               [b.type for b in blocks[:i]], layers=layers)
            layer, shape = builder_for(block)(block, ctx)
            where = f"{dump} layer {i} [{block.type}]"
            expected = (out.c, out.h, out.w, out.outputs)
            if "antialias_out_w" in darknet:  # the next layer sees the blurred output
                expected = (darknet["antialias_out_c"], darknet["antialias_out_h"],
                            darknet["antialias_out_w"], darknet["antialias_outputs"])
            assert tuple(shape) == expected, where
            floats = sum(t.numel() for t in layer.darknet_arrays())
            assert floats == darknet["weight_floats"], where
            reported = darknet.get("bflops")
            if reported is None and block.type == "convolutional":
                reported = darknet.get("conv_bflops")  # pjreddie dumps conv BFLOPs only
            if reported is not None:  # dumps round to 6 decimals
                assert layer.bflops == pytest.approx(reported, rel=5e-3, abs=1e-6), where
            assert all(t.is_meta for t in layer.parameters()), where
            shapes.append(shape)
            layers.append(layer)
            checked += 1
    if not checked:
        pytest.skip(f"{dump}: no layer of these families")


# -- tiny forward + backward per section type -------------------------------------------------

NET = "[net]\nwidth={w}\nheight={h}\nchannels={c}\nbatch=2\n"
SECTION_CASES = {
    "convolutional": [
        "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky",
        "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=mish",
        "[convolutional]\nfilters=6\nsize=3\npad=1\ngroups=2\ndilation=2\nactivation=swish",
        "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nantialiasing=1\nactivation=relu",
        "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nantialiasing=2\nactivation=relu",
        "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nxnor=1\n"
        "activation=linear",
        "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=linear\n\n"
        "[convolutional]\nfilters=4\nsize=3\npad=1\nshare_index=-1\nactivation=logistic",
    ],
    "deconvolutional": ["[deconvolutional]\nfilters=2\nsize=4\nstride=2\npad=1\nactivation=relu",
                        "[deconvolutional]\nbatch_normalize=1\nfilters=2\nsize=3\nstride=2\n"
                        "activation=leaky"],
    "local": ["[local]\nfilters=2\nsize=3\nstride=1\npad=1\nactivation=leaky",
              "[local]\nfilters=2\nsize=3\nstride=2\npad=0\nactivation=linear"],
    "maxpool": ["[maxpool]\nsize=2\nstride=2", "[maxpool]\nsize=3\nstride_x=2\nstride_y=1",
                "[maxpool]\nsize=5\nstride=1", "[maxpool]\nmaxpool_depth=1\nout_channels=2",
                "[maxpool]\nsize=2\nstride=2\nantialiasing=1"],
    "local_avgpool": ["[local_avgpool]\nsize=3\nstride=2", "[local_avgpool]\nsize=2\nstride=2"],
    "avgpool": ["[avgpool]"],
    "dropout": ["[dropout]\nprobability=0.5"],
    "crop": ["[crop]\ncrop_width=4\ncrop_height=3\nflip=1",
             "[crop]\ncrop_width=5\ncrop_height=4\nnoadjust=1"],
    "batchnorm": ["[batchnorm]"],
    "normalization": ["[lrn]\nsize=5\nalpha=0.01\nbeta=0.75\nkappa=1",
                      "[lrn]\nsize=4\nalpha=0.01\nbeta=0.75\nkappa=2"],
    "upsample": ["[upsample]\nstride=2", "[upsample]\nstride=-2\nscale=0.25",
                 "[upsample]\nstride=1\nscale=3"],
    "reorg": ["[reorg]\nstride=2", "[reorg]\nstride=2\nreverse=1"],
    "reorg3d": ["[reorg3d]\nstride=2", "[reorg3d]\nstride=2\nreverse=1"],
    "activation": ["[activation]\nactivation=" + a for a in
                   ("mish", "gelu", "stair", "normalize_channels_softmax", "hard_mish")],
    "empty": ["[empty]"],
    "implicit": ["[implicit]\nfilters=5\natoms=2"],
    "logistic": ["[logistic]"],
    "l2norm": ["[l2norm]"],
    "adaptive_avgpool": ["[adaptive_avgpool]\nwidth=2\nheight=3", "[adaptive_avgpool]"],
}


@pytest.mark.parametrize("section,case", [(s, i) for s, cases in SECTION_CASES.items()
                                          for i in range(len(cases))])
def test_tiny_forward_backward(section, case):
    c = 16 if section == "reorg3d" and case == 1 else 4
    text = NET.format(w=8, h=6, c=c) + "\n" + SECTION_CASES[section][case]
    torch.manual_seed(case)
    net = build(text)
    assert net.meta[-1].type == section
    assert not net.warnings, [str(w) for w in net.warnings]
    net.train()
    x = torch.randn(2, c, 6, 8, requires_grad=True)
    (y,) = net(x)
    expected = net.shapes[-1]
    assert tuple(y.shape[1:]) == (expected.c, expected.h, expected.w)
    assert torch.isfinite(y).all()
    if net.layers[-1].takes_loss:
        loss = net.layers[-1].loss(x, torch.rand_like(x))
    else:
        loss = (y * torch.randn_like(y)).sum()
    loss.backward()
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if params:
        assert any(p.grad.abs().sum() > 0 for p in params)
    if section not in ("implicit", "empty"):  # implicit ignores its input
        assert x.grad is not None and x.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        (again,) = net(x)
    assert again.shape == y.shape


def test_dropout_is_identity_in_eval_and_scales_in_training():
    net = build(NET.format(w=8, h=8, c=16) + "[dropout]\nprobability=0.25")
    x = torch.rand(4, 16, 8, 8) + 1
    net.eval()
    assert net(x)[0] is x
    net.train()
    y = net(x)[0]
    kept = y != 0
    assert 0.6 < kept.float().mean() < 0.9
    assert torch.allclose(y[kept], (x / 0.75)[kept])


def test_pjreddie_dropout_default_and_batchnorm_file_layout():
    text = NET.format(w=4, h=4, c=3) + "[dropout]\n\n[batchnorm]"
    assert build(text).layers[0].p == 0.2
    pj = build(text, flavor="pjreddie")
    assert pj.layers[0].p == 0.5
    assert len(pj.layers[1].darknet_arrays()) == 3  # no biases in pjreddie's file
    assert len(build(text).layers[1].darknet_arrays()) == 4


def test_pjreddie_batchnorm_puts_epsilon_outside_the_root():
    net = build(NET.format(w=2, h=2, c=3) + "[batchnorm]", flavor="pjreddie").eval()
    bn = net.layers[0].bn
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([1e-6, 4.0, 0.25]))
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.randn(1, 3, 2, 2)
    mean, var = bn.running_mean.view(3, 1, 1), bn.running_var.view(3, 1, 1)
    expected = (x - mean) / (var.sqrt() + 1e-6) * bn.weight.view(3, 1, 1)
    assert torch.allclose(net(x)[0], expected, rtol=1e-5)


def test_crop_training_takes_a_random_window_of_the_input():
    net = build(NET.format(w=6, h=5, c=1) + "[crop]\ncrop_width=3\ncrop_height=2\nnoadjust=1\n"
                "flip=1").train()
    x = torch.arange(30.0).view(1, 1, 5, 6)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        y = net(x)[0][0, 0]
        rows = {int(v) // 6 for v in y.flatten()}
        assert len(rows) == 2 and max(rows) - min(rows) == 1
        step = int(y[0, 1] - y[0, 0])
        assert step in (1, -1)
        seen.add((min(rows), int(y.min()) % 6, step))
    assert len(seen) > 6  # offsets and flips both vary


def test_share_index_ties_weights_and_biases_not_bn_statistics():
    text = NET.format(w=6, h=6, c=3) + (
        "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=3\npad=1\nactivation=leaky\n\n"
        "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=3\npad=1\nshare_index=0\n"
        "activation=leaky")
    net = build(text)
    first, second = net.layers
    assert second.conv.weight is first.conv.weight
    assert second.bn.bias is first.bn.bias
    assert second.bn.running_mean is not first.bn.running_mean
    assert second.darknet_arrays() == []
    assert net.num_weight_floats() == 3 * 4 + 3 * 3 * 9
    with pytest.raises(CfgError, match="share_index"):
        build(NET.format(w=6, h=6, c=3) + "[convolutional]\nfilters=3\nsize=3\npad=1\n\n"
              "[convolutional]\nfilters=4\nsize=3\npad=1\nshare_index=0")


def test_xnor_binarizes_weights_per_filter_and_input_signs():
    text = NET.format(w=5, h=5, c=2) + "[convolutional]\nfilters=2\nsize=3\npad=1\nxnor=1\n" \
        "activation=linear"
    net = build(text).eval()
    layer = net.layers[0]
    assert layer.bflops == pytest.approx(2 * 2 * 2 * 9 * 25 / 1e9 / 32)
    x = torch.randn(1, 2, 5, 5)
    w = layer.conv.weight.detach()
    binary = torch.sign(w) * w.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = torch.nn.functional.conv2d(torch.where(x > 0, 1.0, -1.0), binary,
                                          layer.conv.bias, padding=1)
    assert torch.allclose(net(x)[0], expected, atol=1e-6)


def test_flipped_weights_are_read_transposed():
    text = NET.format(w=3, h=3, c=2) + "[convolutional]\nfilters=3\nsize=1\nflipped=1\n" \
        "activation=linear"
    layer = build(text).layers[0]
    _, weights = layer.darknet_arrays()
    with torch.no_grad():
        weights.copy_(torch.arange(6.0).view(2, 3))  # file order: [c*size*size][filters]
    assert layer.conv.weight.view(3, 2).tolist() == [[0, 3], [1, 4], [2, 5]]


def test_upsample_negative_stride_sums_blocks():
    net = build(NET.format(w=4, h=4, c=1) + "[upsample]\nstride=-2\nscale=0.5")
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert net(x)[0].flatten().tolist() == [(0 + 1 + 4 + 5) / 2, (2 + 3 + 6 + 7) / 2,
                                            (8 + 9 + 12 + 13) / 2, (10 + 11 + 14 + 15) / 2]


@pytest.mark.parametrize("body,code", [
    ("[convolutional]\nfilters=4\nsize=9\nactivation=linear", "E303"),
    ("[convolutional]\nfilters=4\nsize=3\ngroups=2\nactivation=linear", "E302"),
    ("[convolutional]\nfilters=4\nsize=3\ndilation=2\nactivation=linear", "E300"),
    ("[convolutional]\nfilters=4\nsize=3\nshare_index=5", "E301"),
    ("[upsample]\nstride=0", "E203"),
    ("[reorg]\nstride=2", "E302"),
    ("[reorg3d]\nstride=4", "E302"),
    ("[crop]\ncrop_width=9\ncrop_height=2", "E303"),
    ("[dropout]\nprobability=1", "E203"),
    ("[maxpool]\nmaxpool_depth=1\nout_channels=9", "E302"),
    ("[local]\nfilters=2\nsize=5\npad=1", "E300"),
    # Darknet's C division gives (5 - 7) / 3 + 1 = 1, but no window fits: torch refused it at
    # run time (a RuntimeError traceback) after the build and `check` had passed it
    ("[convolutional]\nfilters=4\nsize=7\nstride=3\nactivation=linear", "E303"),
    ("[local]\nfilters=2\nsize=7\nstride=3\npad=0", "E303"),
])
def test_bad_input_is_a_located_error(body, code):
    text = NET.format(w=5, h=5, c=3) + body
    with pytest.raises(CfgError) as info:
        build(text)
    error = info.value.first
    assert error.code == code, str(info.value)
    assert error.line >= 6, str(info.value)  # located in the layer's section, not at [net]


def test_meta_build_allocates_nothing():
    """A net of these layers with a 115M-float [local] (460 MB if allocated) builds on meta."""
    text = NET.format(w=448, h=448, c=3) + "\n\n".join([
        "[convolutional]\nbatch_normalize=1\nfilters=64\nsize=7\nstride=2\npad=1\n"
        "activation=leaky",
        "[maxpool]\nsize=2\nstride=2",
        "[convolutional]\nfilters=1024\nsize=3\nstride=16\npad=1\nactivation=leaky",
        "[local]\nfilters=256\nsize=3\nstride=1\npad=1\nactivation=leaky",
        "[dropout]\nprobability=.5",
        "[lrn]", "[upsample]\nstride=2", "[reorg]\nstride=2", "[avgpool]"])
    start = time.perf_counter()
    net = build(text, device="meta")
    assert time.perf_counter() - start < 5
    tensors = list(net.parameters()) + list(net.buffers())
    assert tensors and all(t.is_meta for t in tensors)
    assert net.num_weight_floats() > 115_000_000
    assert tuple(net.shapes[3]) == (256, 7, 7, 256 * 49)


# -- the native 2x2 max-pool used in NCHW training ------------------------------------------------
def test_native_maxpool_2x2_equals_torch_values_and_gradients(monkeypatch):
    """[maxpool] size=2 stride=2 runs a native kernel on NCHW float32 tensors (3-6x faster than
    torch's NCHW kernel in training): values and gradients equal torch's, ties (the first maximum
    in the window takes the gradient, as Darknet's forward_maxpool_layer keeps the first), odd
    sizes, NaN, no-grad, and torch's own ops wherever a tracer or autocast watches."""
    import torch.nn.functional as F

    from builders import native
    from builders.pool import PlainMaxPool

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    layer = PlainMaxPool(2, (2, 2), (0, 0, 0, 0))
    assert layer.two_by_two
    calls = []
    real = native.maxpool2x2
    monkeypatch.setattr(native, "maxpool2x2", lambda x: calls.append(x.shape) or real(x))
    rng = np.random.default_rng(0)
    cases = [rng.normal(size=(3, 5, 12, 16)), rng.normal(size=(2, 4, 7, 9)),
             rng.integers(0, 3, size=(2, 3, 8, 8)).astype(float),  # many ties
             np.zeros((1, 2, 4, 6))]
    nan = rng.normal(size=(1, 2, 6, 6))
    nan[0, 1, 2, 3] = np.nan
    cases.append(nan)
    for case in cases:
        x = torch.tensor(case, dtype=torch.float32, requires_grad=True)
        grad = torch.from_numpy(rng.normal(size=(*case.shape[:2], case.shape[2] // 2,
                                                 case.shape[3] // 2)).astype(np.float32))
        want = F.max_pool2d(x, 2, 2)
        (want_grad,) = torch.autograd.grad(want, x, grad)
        got = layer(x)
        (got_grad,) = torch.autograd.grad(got, x, grad)
        assert torch.equal(got, want) or torch.allclose(got, want, equal_nan=True)
        assert torch.equal(got_grad, want_grad)
        with torch.no_grad():
            assert torch.allclose(layer(x), want, equal_nan=True)
    assert len(calls) == 2 * len(cases)  # the native kernel ran, with and without autograd
    calls.clear()
    x = torch.rand(1, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    torch.jit.trace(layer, x, check_trace=False)
    layer(x.contiguous(memory_format=torch.channels_last))  # torch's fast NHWC kernel
    layer(x.double())
    assert calls == []


def test_channels_last_maxpool_2x2_outside_autograd_equals_torchs(monkeypatch):
    # the inference fast path's channels-last maps: the native one-pass kernel on float32 (two
    # maxima of a view on other types, or without the kernels), torch's values (NaN included,
    # channel counts around a vector's width) and a channels-last result; odd sizes and
    # autograd keep torch's kernel
    import torch.nn.functional as F

    from builders import native, pool

    layer = pool.PlainMaxPool(2, (2, 2), (0, 0, 0, 0))
    kernel, quads = [], []
    real_kernel, real_quads = native.maxpool2x2_channels_last, pool._max_of_quads
    monkeypatch.setattr(native, "maxpool2x2_channels_last",
                        lambda x: kernel.append(x.shape) or real_kernel(x))
    monkeypatch.setattr(pool, "_max_of_quads", lambda x: quads.append(x.shape) or real_quads(x))
    shapes = [(2, 37, 10, 12), (1, 16, 4, 4), (1, 17, 2, 2), (1, 3, 6, 8)]
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            x[-1, -1, 1, 1] = float("nan")
            got = layer(x)
            torch.testing.assert_close(got, F.max_pool2d(x, 2, 2), rtol=0, atol=0,
                                       equal_nan=True)
            assert got.is_contiguous(memory_format=torch.channels_last)
        odd = torch.randn(1, 8, 7, 9).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(layer(odd), F.max_pool2d(odd, 2, 2), rtol=0, atol=0)
        wide = torch.randn(1, 5, 6, 6, dtype=torch.float64).contiguous(
            memory_format=torch.channels_last)
        torch.testing.assert_close(layer(wide), F.max_pool2d(wide, 2, 2), rtol=0, atol=0)
    if native.library() is not None:
        assert kernel == [torch.Size(s) for s in shapes] and quads == [wide.shape]
    x = torch.randn(2, 37, 10, 12).contiguous(memory_format=torch.channels_last)
    kernel.clear(), quads.clear()
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert kernel == [] and quads == [] and x.grad is not None
    monkeypatch.setattr(native, "library", lambda: None)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.max_pool2d(x, 2, 2), rtol=0, atol=0)
    assert quads == [x.shape]


def test_bfloat16_channels_last_maxpool_2x2_equals_torchs(monkeypatch):
    """Under `--amp` (bfloat16 channels-last tensors) [maxpool] size=2 stride=2 runs its own
    native kernel: values and gradients equal torch's channels-last bfloat16 pool bit for bit,
    with ties, odd sizes, NaN, and channel counts around a vector's width; the gradient is
    written whole (zero outside the windows' maxima and at a trailing odd row or column)."""
    import torch.nn.functional as F

    from builders import native
    from builders.pool import PlainMaxPool

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    layer = PlainMaxPool(2, (2, 2), (0, 0, 0, 0))
    calls = []
    real = native.maxpool2x2_bf16
    monkeypatch.setattr(native, "maxpool2x2_bf16", lambda x: calls.append(x.shape) or real(x))
    rng = np.random.default_rng(1)
    cases = [rng.normal(size=(3, 5, 12, 16)), rng.normal(size=(2, 33, 7, 9)),
             rng.integers(0, 3, size=(2, 17, 8, 8)).astype(float),  # many ties
             np.zeros((1, 2, 4, 6)), rng.normal(size=(1, 1, 3, 3))]
    nan = rng.normal(size=(1, 2, 6, 6))
    nan[0, 1, 2, 3] = np.nan
    cases.append(nan)
    for case in cases:
        x = torch.tensor(case, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last).requires_grad_(True)
        shape = (*case.shape[:2], case.shape[2] // 2, case.shape[3] // 2)
        grad = torch.from_numpy(rng.normal(size=shape)).to(torch.bfloat16)
        want = F.max_pool2d(x, 2, 2)
        (want_grad,) = torch.autograd.grad(want, x, grad)
        got = layer(x)
        assert got.is_contiguous(memory_format=torch.channels_last)
        (got_grad,) = torch.autograd.grad(got, x, grad)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))
        assert torch.equal(got_grad, want_grad)
        with torch.no_grad():
            assert torch.equal(layer(x).view(torch.int16), want.view(torch.int16))
    assert len(calls) == 2 * len(cases)


def test_training_step_through_the_native_maxpool_equals_torchs(tmp_path, monkeypatch):
    """A train step of a cfg with 2x2 max-pools gives the very gradients torch's own pooling
    gives, run after run (each window is written by one thread: resumes stay byte-identical)."""
    from builders import pool
    from builders.pool import PlainMaxPool

    cfg = tmp_path / "p.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\nfilters=8\n"
                   "size=3\npad=1\nactivation=leaky\n\n[maxpool]\nsize=2\nstride=2\n\n"
                   "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"
                   "[maxpool]\nsize=2\nstride=2\n\n[avgpool]\n\n[softmax]\n")
    x = torch.rand(4, 3, 32, 32)

    def gradients():
        torch.manual_seed(0)
        net = build(str(cfg))
        assert sum(isinstance(layer, PlainMaxPool) for layer in net.layers) == 2
        net(x)[-1].pow(2).sum().backward()
        return [p.grad.clone() for p in net.parameters()]

    first, second = gradients(), gradients()
    monkeypatch.setattr(pool, "native_pool_ok", lambda x: False)
    plain = gradients()
    for a, b, c in zip(first, second, plain, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


# -- the fused training batch-norm + activation -------------------------------------------------
@pytest.mark.parametrize("activation, slope", [("leaky", 0.1), ("relu", 0.0), ("linear", 1.0)])
def test_fused_training_batch_norm_activation_equals_torchs(activation, slope, monkeypatch):
    """A training [convolutional] batch_normalize=1 with leaky or linear runs batch-norm and the
    activation as one native op: outputs, every gradient and the running statistics equal
    torch's BatchNorm2d + LeakyReLU within float32 rounding (an input where the activation's
    kink falls within rounding of its input is avoided: either side is right there)."""
    import copy

    import torch.nn.functional as F

    from builders import conv as conv_module
    from builders import native

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    ran = []
    real = native.bn_act_forward
    monkeypatch.setattr(native, "bn_act_forward", lambda *a: ran.append(1) or real(*a))
    block = ("[net]\nwidth=14\nheight=12\nchannels=3\n\n[convolutional]\nbatch_normalize=1\n"
             f"filters=6\nsize=3\npad=1\nactivation={activation}\n")
    rng = np.random.default_rng(0)
    for trial in range(40):  # a draw with no pre-activation within 1e-4 of the kink
        torch.manual_seed(trial)
        net = build(list(parse(block))).train()
        layer = net.layers[0]
        with torch.no_grad():
            layer.bn.weight.uniform_(0.5, 1.5)
            layer.bn.bias.uniform_(-0.5, 0.5)
        x = torch.from_numpy(rng.normal(1, 2, (5, 3, 12, 14)).astype(np.float32))
        with torch.no_grad():
            z = layer.bn.train()(layer.conv(x))
            layer.bn.running_mean.zero_(), layer.bn.running_var.fill_(1)
            layer.bn.num_batches_tracked.zero_()
        if slope == 1.0 or z.abs().min() > 1e-4:
            break
    reference = copy.deepcopy(layer)
    grad = torch.from_numpy(rng.normal(size=(5, 6, 12, 14)).astype(np.float32))
    x.requires_grad_(True)
    got = layer(x)
    got_grads = torch.autograd.grad(got, [x, *layer.parameters()], grad)
    assert ran == [1]
    monkeypatch.setattr(conv_module, "fused_bn_ok", lambda y, bn: False)
    want = reference(x)
    want_grads = torch.autograd.grad(want, [x, *reference.parameters()], grad)
    assert ran == [1]  # the reference ran torch's ops
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(layer.bn, name), getattr(reference.bn, name)
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7), name
    if slope == 0.1:
        assert F.leaky_relu(torch.tensor(-1.0), 0.1) == -0.1  # the slope Darknet's leaky has


@pytest.mark.parametrize("slope", [0.1, 0.0, 1.0])
@pytest.mark.parametrize("shape", [(4, 6, 9, 11), (2, 40, 5, 3), (3, 3, 1, 1)])
def test_bfloat16_channels_last_batch_norm_activation_is_exact_arithmetic_rounded(shape, slope):
    """`--amp`'s batch-norm + activation kernel (bfloat16 channels-last in and out, float32
    parameters and statistics) against the same formulas in float64 on the same bfloat16
    values: statistics to float32 rounding, outputs and the input gradient to bfloat16
    rounding (2^-8 relative), the parameter gradients to float accumulation."""
    from builders import native

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    g = torch.Generator().manual_seed(len(shape) + int(10 * slope) + shape[1])
    n, c, h, w = shape
    x = (torch.randn(shape, generator=g) * 3 + 1).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=g).to(torch.bfloat16)
    weight, bias = torch.rand(c, generator=g) + 0.5, torch.rand(c, generator=g) - 0.5
    assert native.takes_bf16(x) and (h * w == 1 or not native.takes_bf16(x.contiguous()))
    y, mean, invstd, var = native.bn_act_forward_bf16(x, weight, bias, 1e-5, slope)
    dx, dw, db = native.bn_act_backward_bf16(x, grad, weight, bias, mean, invstd, slope)
    assert y.dtype == dx.dtype == torch.bfloat16 and y.is_contiguous(
        memory_format=torch.channels_last)

    xd, gd = x.double(), grad.double()
    m = xd.mean((0, 2, 3), keepdim=True)
    centred = xd - m
    biased = (centred ** 2).mean((0, 2, 3), keepdim=True)
    inv = 1 / torch.sqrt(biased + 1e-5)
    z = centred * inv * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)
    act = torch.where(z > 0, z, z * slope)
    dz = torch.where(z > 0, gd, gd * slope)
    want_db, want_dw = dz.sum((0, 2, 3)), (dz * centred * inv).sum((0, 2, 3))
    want_dx = weight.double().view(1, -1, 1, 1) * inv * (
        dz - dz.mean((0, 2, 3), keepdim=True)
        - centred * inv * (dz * centred * inv).mean((0, 2, 3), keepdim=True))
    count = n * h * w
    torch.testing.assert_close(mean.double(), m.flatten(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(invstd.double(), inv.flatten(), rtol=1e-5, atol=0)
    if count > 1:
        torch.testing.assert_close(var.double(), biased.flatten() * count / (count - 1),
                                   rtol=1e-5, atol=1e-6)
    away = z.abs() > 1e-3  # not at the kink, where either side is right
    ulp = 2.0 ** -8
    assert ((y.double() - act).abs() <= ulp * act.abs() + 1e-6)[away].all()
    scale = float(want_dx.abs().max())
    assert ((dx.double() - want_dx).abs() <= ulp * want_dx.abs() + 1e-3 * scale)[away].all()
    torch.testing.assert_close(db.double(), want_db, rtol=1e-4, atol=1e-4 * float(
        want_db.abs().max()))
    torch.testing.assert_close(dw.double(), want_dw, rtol=1e-4, atol=1e-4 * float(
        want_dw.abs().max()))


def test_amp_training_layers_take_the_bfloat16_kernel_and_match_torchs(monkeypatch):
    """Under bfloat16 autocast on a channels-last net (what `--amp` runs on the CPU), a
    [convolutional] batch_normalize=1 leaky layer in training goes through the bfloat16 kernel:
    its output, running statistics and parameter gradients agree with torch's own bfloat16
    batch-norm + leaky to bfloat16 rounding."""
    import copy

    from builders import conv as conv_module
    from builders import native

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    ran = []
    real = native.bn_act_forward_bf16
    monkeypatch.setattr(native, "bn_act_forward_bf16", lambda *a: ran.append(1) or real(*a))
    block = ("[net]\nwidth=20\nheight=16\nchannels=3\n\n[convolutional]\nbatch_normalize=1\n"
             "filters=8\nsize=3\npad=1\nactivation=leaky\n")
    torch.manual_seed(0)
    layer = build(list(parse(block))).train().layers[0].to(memory_format=torch.channels_last)
    reference = copy.deepcopy(layer)
    x = torch.rand(6, 3, 16, 20).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(6, 8, 16, 20)

    def run(module):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        return out, torch.autograd.grad(out.float(), list(module.parameters()), grad)

    got, got_grads = run(layer)
    assert ran == [1] and got.dtype == torch.bfloat16
    monkeypatch.setattr(conv_module, "fused_bn_ok", lambda y, bn: False)
    want, want_grads = run(reference)
    assert ran == [1]
    assert torch.allclose(got.float(), want.float(), rtol=2 ** -7, atol=2 ** -7)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(a, b, rtol=0.02, atol=0.02 * float(b.abs().max()))
    for name in ("running_mean", "running_var"):
        a, b = getattr(layer.bn, name), getattr(reference.bn, name)
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
