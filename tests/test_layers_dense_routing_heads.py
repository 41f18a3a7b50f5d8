"""Dense, routing, head and recurrent layers: Darknet's outputs (oracle), shapes and weight counts
(shape dumps), a real forward + backward per section type, and located errors for bad cfgs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle import SHARED, oracle_index, oracle_outputs, rel_err, run_network

from builders import build
from cfgparse import CfgError

TOLERANCE = 1e-4  # the oracle README's spec tolerance (max|diff| / max|ref|)


def _compare_all_layers(name: str, flavor: str | None = None) -> dict[int, float]:
    ours = run_network(name, flavor=flavor)
    refs = oracle_outputs(name)
    errors = {i: rel_err(ours[i], ref) for i, ref in refs.items()}
    assert errors, "no shipped layer"
    bad = {i: f"{e:.2e}" for i, e in errors.items() if not e < TOLERANCE}
    assert not bad, f"{name}: layers over {TOLERANCE}: {bad}"
    return errors


@pytest.mark.parametrize("name", ["u_route_shortcut", "u_attention", "u_heads", "u_fc"])
def test_unit_oracle_every_layer(name):
    errors = _compare_all_layers(name)
    index = oracle_index(name)
    assert sorted(errors) == [layer["idx"] for layer in index["layers"]]  # every layer shipped


@pytest.mark.parametrize("name, flavor", [("yolov3-tiny", None), ("yolov2-tiny", None),
                                          ("yolov2.pjreddie", "pjreddie")])
def test_network_oracle_shipped_layers(name, flavor):
    _compare_all_layers(name, flavor)


# -- a tiny real forward + backward per section type ----------------------------------------------

def _cfg(net: str, body: str) -> str:
    return textwrap.dedent(net).strip() + "\n\n" + textwrap.dedent(body).strip() + "\n"


IMAGE = """
    [net]
    width=4
    height=4
    channels=3
    """
FLAT = """
    [net]
    inputs=6
    batch=2
    time_steps=3
    """
CONV8 = """
    [convolutional]
    filters=8
    size=3
    pad=1
    activation=leaky
    """

SECTION_CFGS = {
    "connected": (IMAGE, "[connected]\noutput=5\nbatch_normalize=1\nactivation=leaky"),
    "softmax": (IMAGE, "[connected]\noutput=6\nactivation=linear\n[softmax]\ngroups=2\n"
                "temperature=2"),
    "cost": (IMAGE, "[connected]\noutput=6\nactivation=linear\n[cost]\ntype=smooth"),
    "route": (IMAGE, CONV8 + "\n[route]\nlayers=-1,0\ngroups=2\ngroup_id=1"),
    "shortcut": (IMAGE, CONV8 + CONV8 + "\n[shortcut]\nfrom=-2\nweights_type=per_channel\n"
                 "weights_normalization=softmax\nactivation=leaky"),
    "scale_channels": (IMAGE, CONV8 + "\n[avgpool]\n[convolutional]\nfilters=8\nsize=1\n"
                       "activation=logistic\n[scale_channels]\nfrom=-3"),
    "sam": (IMAGE, CONV8 + CONV8 + "\n[sam]\nfrom=-2"),
    "yolo": (IMAGE, "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n[yolo]\nmask=0,1\n"
             "anchors=1,2, 3,4, 5,6\nnum=3\nclasses=2\nscale_x_y=1.2"),
    "Gaussian_yolo": (IMAGE, "[convolutional]\nfilters=11\nsize=1\nactivation=linear\n"
                      "[Gaussian_yolo]\nmask=0\nanchors=1,2\nnum=1\nclasses=2"),
    "region": (IMAGE, "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n[region]\n"
               "anchors=1,1, 2,2\nnum=2\nclasses=2\ncoords=4\nsoftmax=1"),
    "detection": (IMAGE, "[connected]\noutput=32\nactivation=linear\n[detection]\nclasses=3\n"
                  "coords=4\nnum=1\nside=2\nsoftmax=1"),
    "contrastive": (IMAGE, CONV8 + "\n[contrastive]\nclasses=2"),
    "rnn": (FLAT, "[rnn]\noutput=4\nhidden=5\nactivation=leaky\nbatch_normalize=1\nshortcut=1"),
    "gru": (FLAT, "[gru]\noutput=4\nbatch_normalize=1"),
    "lstm": (FLAT, "[lstm]\noutput=4"),
    "crnn": (IMAGE.replace("channels=3", "channels=3\ntime_steps=2"),
             "[crnn]\nsize=3\npad=1\noutput=3\nhidden=4\nactivation=leaky\nbatch_normalize=1"),
    "conv_lstm": (IMAGE.replace("channels=3", "channels=3\ntime_steps=2"),
                  "[conv_lstm]\nsize=3\npad=1\noutput=3\npeephole=1\nbatch_normalize=1"),
    "history": (IMAGE.replace("channels=3", "channels=3\ntime_steps=2"),
                CONV8 + "\n[history]\nhistory_size=3"),
}
MINE = sorted(SECTION_CFGS)


def _input(net, batch: int) -> torch.Tensor:
    s = net.input_shape
    shape = (batch, s.c, s.h, s.w) if s.c * s.h * s.w else (batch, s.size)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), requires_grad=True)


@pytest.mark.parametrize("section", MINE)
def test_forward_backward(section):
    net_text, body = SECTION_CFGS[section]
    net = build(_cfg(net_text, body))
    net.train()
    x = _input(net, 6)  # 6 = 3 time steps x 2 sequences for the recurrent cases
    index = len(net.layers) - 1
    layer = net.layers[index]
    assert net.meta[index].type == section
    out = net(x, collect=range(len(net.layers)))
    y = out[index]
    shape = net.shapes[index]
    assert y.shape[0] == x.shape[0]
    assert y[0].numel() == shape.size
    if shape.c * shape.h * shape.w:
        assert tuple(y.shape[1:]) == (shape.c, shape.h, shape.w)
    assert torch.isfinite(y).all()
    if layer.takes_loss and layer.loss_target == "boxes":  # detection heads: truth boxes
        truth = torch.tensor([[0.4, 0.6, 0.3, 0.2, 1.0], [0, 0, 0, 0, 0]]).expand(x.shape[0], 2, 5)
        objective, stats = layer.loss(out[index - 1], truth)  # heads return (loss, stats)
        assert all(isinstance(v, (int, float)) for v in stats.values())
    elif layer.takes_loss:
        prev = out[index - 1]
        target = torch.softmax(torch.randn(x.shape[0], shape.size), 1)
        objective = layer.loss(prev, target)
    elif section in ("cost", "contrastive"):
        assert not y.any()  # Darknet's inference output of these layers stays zero
        return
    else:
        objective = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
    objective.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    weight_floats = sum(t.numel() for t in layer.darknet_arrays())
    assert weight_floats == sum(p.numel() for p in layer.parameters()) + sum(
        b.numel() for n, b in layer.named_buffers() if "running" in n)


@pytest.mark.parametrize("section", MINE)
def test_meta_build(section):
    net = build(_cfg(*SECTION_CFGS[section]), device="meta")
    assert all(p.is_meta for p in net.parameters())


# -- formulas on small tensors --------------------------------------------------------------------

def _run(text: str, x: torch.Tensor, flavor: str = "alexeyab") -> tuple:
    net = build(textwrap.dedent(text), flavor=flavor)
    net.eval()
    with torch.no_grad():
        out = net(x, collect=range(len(net.layers)))
    return net, out


def test_softmax_groups_temperature_and_loss():
    net, out = _run(_cfg(IMAGE, SECTION_CFGS["softmax"][1]), torch.randn(2, 3, 4, 4))
    logits, probs = out[0].reshape(2, 6), out[1]
    expected = torch.softmax(logits.reshape(2, 2, 3) / 2, -1).reshape(2, 6)
    torch.testing.assert_close(probs, expected)
    assert net.loss_layers == [1]
    target = torch.tensor([1, 4])
    loss = net.layers[1].loss(out[0], target)
    torch.testing.assert_close(loss, -torch.log(expected[[0, 1], [1, 4]]).mean())
    # the gradient is Darknet's delta p - truth (softmax_x_ent_cpu), not autograd's (p - t) / 2
    soft = build(_cfg("[net]\ninputs=4", "[softmax]\ntemperature=2"))
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]], requires_grad=True)
    soft.layers[0].loss(x, torch.tensor([2])).backward()
    p = torch.softmax(x.detach() / 2, -1)
    torch.testing.assert_close(x.grad, p - torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    # groups=2 with one label: Darknet's delta p - truth on every value, the label-less group
    # pushed toward 0 too (cross-entropy alone leaves its gradient 0)
    grouped = build(_cfg("[net]\ninputs=6", "[softmax]\ngroups=2\ntemperature=2"))
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0, -1.0]], requires_grad=True)
    loss = grouped.layers[0].loss(x, torch.tensor([4]))
    loss.backward()
    p = torch.softmax(x.detach().reshape(1, 2, 3) / 2, -1).reshape(1, 6)
    torch.testing.assert_close(loss, -torch.log(p[0, 4]))  # the cost: -log p at the truth only
    torch.testing.assert_close(x.grad, p - torch.tensor([[0.0, 0, 0, 0, 1, 0]]))


def test_softmax_tree_groups(tmp_path):
    (tmp_path / "t.tree").write_text("a -1\nb -1\nc 0\nd 0\ne 0\nf 1\n")
    cfg = tmp_path / "net.cfg"
    cfg.write_text(_cfg(IMAGE, "[connected]\noutput=6\nactivation=linear\n[softmax]\n"
                        "tree=t.tree"))
    net = build(cfg)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 4, 4), collect=[0, 1])
    logits, probs = out[0].reshape(6), out[1][0]
    for a, b in ((0, 2), (2, 5), (5, 6)):  # groups: {a, b}, {c, d, e}, {f}
        torch.testing.assert_close(probs[a:b], torch.softmax(logits[a:b], 0))


def test_softmax_tree_missing_file_builds_but_cannot_run():
    text = _cfg(IMAGE, "[connected]\noutput=6\n[softmax]\ntree=no/such.tree")
    net = build(text)
    assert net.shapes[1].size == 6  # shapes do not depend on the tree
    with pytest.raises(CfgError) as err:
        net(torch.randn(1, 3, 4, 4))
    assert err.value.code == "E901"
    assert err.value.first.line == text.splitlines().index("tree=no/such.tree") + 1


def test_cost_losses():
    x, t = torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([[0.5, 0.0, -1234.0]])
    for kind, expected in (("sse", 0.25 + 4 + 1239 ** 2), ("L1", 0.5 + 2 + 1239),
                           ("smooth", 0.25 + 3 + 2 * 1239 - 1), ("masked", 0.25 + 4)):
        net = build(_cfg("[net]\ninputs=3", f"[cost]\ntype={kind}\nscale=2"))
        assert net.layers[0].takes_loss
        # the error Darknet reports, unscaled (forward_cost_layer: scale weighs the delta only)
        torch.testing.assert_close(net.layers[0].loss(x, t), torch.tensor(expected))
    # the gradient is Darknet's delta times scale (backward_cost_layer), per image of the batch:
    # l2_cpu's delta is t - x (half the derivative of the sse it reports), smooth_l1's t - x
    # inside |t - x| < 1 and its sign outside, l1's the sign
    x = torch.tensor([[0.0, 2.0, 5.0], [1.0, 1.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.5, 0.0, -1.0], [1.0, 1.5, 3.0]])
    d = t - x.detach()
    for kind, delta in (("sse", d), ("L1", d.sign()),
                        ("smooth", torch.where(d.abs() < 1, d, d.sign()))):
        x.grad = None
        build(_cfg("[net]\ninputs=3", f"[cost]\ntype={kind}\nscale=2")).layers[0].loss(
            x, t).backward()
        torch.testing.assert_close(x.grad, -2 * delta / 2, msg=kind)
    after_softmax = build(_cfg("[net]\ninputs=3", "[softmax]\n[cost]"))
    assert not after_softmax.layers[1].takes_loss and after_softmax.loss_layers == [0]


def test_route_and_shortcut_formulas():
    text = _cfg(IMAGE, """
        [convolutional]
        filters=4
        size=1
        activation=linear
        [convolutional]
        filters=6
        size=1
        activation=linear
        [route]
        layers=0,1
        groups=2
        group_id=1
        [shortcut]
        from=1
        activation=linear
        [shortcut]
        from=0,1
        weights_type=per_feature
        weights_normalization=relu
        """)
    net = build(text)
    with torch.no_grad():
        net.layers[4].weight.copy_(torch.tensor([[1.0], [-2.0], [3.0]]))
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 4, 4), collect=range(5))
    a, b = out[0], out[1]
    torch.testing.assert_close(out[2], torch.cat([a[:, 2:], b[:, 3:]], 1))
    # the 6-channel from-layer only adds its first 5 channels into the 5-channel route output
    torch.testing.assert_close(out[3], out[2] + b[:, :5])
    w = torch.tensor([1.0, 0.0, 3.0]) / (1e-4 + 4)  # relu-normalised [prev, from 0, from 1]
    expected = out[3] * w[0]
    expected = torch.cat([expected[:, :4] + a * w[1], expected[:, 4:]], 1) + b[:, :5] * w[2]
    torch.testing.assert_close(out[4], expected)


@pytest.mark.parametrize("w_from, w_out, c_from, c_out", [(8, 4, 3, 5), (2, 4, 5, 3), (4, 4, 2, 3)])
def test_pjreddie_resampling_shortcut(w_from, w_out, c_from, c_out):
    from builders.registry import Shape
    from builders.routing import ResamplingShortcut

    layer = ResamplingShortcut(Shape.chw(c_out, w_out, w_out), Shape.chw(c_from, w_from, w_from),
                               alpha=0.5, beta=2.0, activation="linear")
    prev, src = torch.randn(1, c_out, w_out, w_out), torch.randn(1, c_from, w_from, w_from)
    expected = prev.clone()
    stride, sample = max(w_from // w_out, 1), max(w_out // w_from, 1)
    # src/shortcut_layer.c make_shortcut_layer [pj], element by element
    for k in range(min(c_from, c_out)):
        for j in range(min(w_from, w_out)):
            for i in range(min(w_from, w_out)):
                expected[0, k, j * sample, i * sample] = (
                    0.5 * prev[0, k, j * sample, i * sample]
                    + 2.0 * src[0, k, j * stride, i * stride])
    torch.testing.assert_close(layer(prev, src), expected)


def test_region_layouts_per_fork():
    x = torch.randn(1, 14, 2, 3)
    body = SECTION_CFGS["region"][1]
    ab, ab_out = _run(_cfg(IMAGE, body), torch.randn(1, 3, 4, 4))
    v = ab_out[0].reshape(1, 2, 7, 4, 4)
    y = ab_out[1].reshape(1, 2, 7, 4, 4)
    torch.testing.assert_close(y[:, :, :4], v[:, :, :4])
    torch.testing.assert_close(y[:, :, 4], torch.sigmoid(v[:, :, 4]))
    torch.testing.assert_close(y[:, :, 5:], torch.softmax(v[:, :, 5:], 2))
    flat = ab.layers[1].darknet_output(ab_out[1])[0]
    loc, anchor, k = 5, 1, 6  # AlexeyAB: out[loc][anchor*(coords+1+classes)+k]
    assert flat[loc * 14 + anchor * 7 + k] == y[0, anchor, k].reshape(-1)[loc]
    pj = build(_cfg(IMAGE, body), flavor="pjreddie").layers[1]
    pj_y = pj(x).reshape(1, 2, 7, 2, 3)
    xv = x.reshape(1, 2, 7, 2, 3)
    torch.testing.assert_close(pj_y[:, :, :2], torch.sigmoid(xv[:, :, :2]))
    torch.testing.assert_close(pj_y[:, :, 2:4], xv[:, :, 2:4])
    torch.testing.assert_close(pj.darknet_output(pj(x)), pj(x).reshape(1, -1))


@pytest.mark.parametrize("section", ["yolo", "Gaussian_yolo"])
def test_yolo_head_inference_equals_its_autograd_transform(section):
    # outside autograd the head copies once and transforms in place: the autograd path's
    # values and shape, from NCHW, channels-last (the fast path's) and flat inputs, and the
    # input is left as it was
    net = build(_cfg(IMAGE, SECTION_CFGS[section][1]))
    head = next(layer for layer in net.layers if hasattr(layer, "runs"))
    x = torch.randn(2, head.n * head.entries, 4, 4, requires_grad=True)
    want = head(x)
    for given in (x.detach(), x.detach().contiguous(memory_format=torch.channels_last),
                  x.detach().reshape(2, -1)):
        before = given.clone()
        with torch.no_grad():
            got = head(given)
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)
        assert got.shape == want.shape and torch.equal(given, before)


def test_gaussian_yolo_transform():
    net, out = _run(_cfg(IMAGE, SECTION_CFGS["Gaussian_yolo"][1]), torch.randn(1, 3, 4, 4))
    v, y = out[0], out[1]
    raw = {4, 6}  # the w and h means
    for e in range(11):
        expected = v[:, e] if e in raw else torch.sigmoid(v[:, e])
        torch.testing.assert_close(y[:, e], expected, msg=f"entry {e}")


def test_recurrent_steps_are_causal_and_stateful():
    for section in ("rnn", "gru", "lstm"):
        net = build(_cfg(FLAT, SECTION_CFGS[section][1]))
        net.eval()
        x = torch.randn(6, 6)  # 3 steps x 2 sequences, step-major
        with torch.no_grad():
            y = net(x)[0].reshape(3, 2, -1)
            later = x.clone()
            later[4:] += 1  # change the last step only
            y_later = net(later)[0].reshape(3, 2, -1)
            first = x.clone()
            first[:2] += 1  # change the first step only
            y_first = net(first)[0].reshape(3, 2, -1)
        torch.testing.assert_close(y[:2], y_later[:2], msg=section)  # the past is unaffected
        assert not torch.allclose(y[2], y_first[2]), section  # the state carries step 0 forward
    with pytest.raises(ValueError, match="time_steps"):
        build(_cfg(FLAT, "[rnn]\noutput=2"))(torch.randn(4, 6))


def test_history_stacks_the_last_inputs():
    body = "[history]\nhistory_size=3"
    net = build(_cfg(IMAGE.replace("channels=3", "channels=2\ntime_steps=3"), body))
    assert tuple(net.shapes[0][:3]) == (6, 4, 4)
    x = torch.arange(3 * 2 * 16, dtype=torch.float32).reshape(3, 2, 4, 4)  # 3 steps, 1 sequence
    y = net(x)[0]
    torch.testing.assert_close(y[2], torch.cat([x[2], x[1], x[0]], 0))
    torch.testing.assert_close(y[0], torch.cat([x[0], torch.zeros(4, 4, 4)], 0))


# -- shapes and weight counts of the recurrent corpus cfgs ----------------------------------------

def _recurrent_dumps() -> list:
    shapes = SHARED / "shapes"
    if not shapes.is_dir():
        return [pytest.param(None, id="no-shapes")]
    found = []
    for path in sorted(shapes.glob("*/*.json")):
        if path.name.startswith(("_", "INDEX")):
            continue
        kinds = {layer["type"] for layer in json.loads(path.read_text())["layers"]}
        if kinds & {"rnn", "gru", "lstm", "crnn"}:
            found.append(pytest.param(path, id=f"{path.parent.name}/{path.stem}"))
    return found


@pytest.mark.parametrize("dump", _recurrent_dumps())
def test_recurrent_shapes_and_weights(dump: Path | None):
    if dump is None:
        pytest.skip("../shared/darknet/shapes is not available")
    d = json.loads(dump.read_text())
    flavor = "pjreddie" if d["parser"].lower().startswith("pjreddie") else "alexeyab"
    net = build((dump.parent / d["cfg"]).resolve(), device="meta", flavor=flavor)
    assert len(net.layers) == len(d["layers"])
    for ref, meta, layer in zip(d["layers"], net.meta, net.layers, strict=True):
        out = meta.output
        assert (out.c, out.h, out.w, out.size) == (ref["out_c"], ref["out_h"], ref["out_w"],
                                                   ref["outputs"]), ref["i"]
        assert sum(t.numel() for t in layer.darknet_arrays()) == ref["weight_floats"], ref["i"]
        if "bflops" in ref:
            assert layer.bflops == pytest.approx(ref["bflops"], rel=5e-3, abs=1e-6), ref["i"]
    assert net.num_weight_floats() == d["total_weight_floats"]


# -- located errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("body, code, key", [
    # a head's input count is wrong at the key that sets it, where `check` points too
    ("[convolutional]\nfilters=20\nsize=1\n[yolo]\nmask=0,1\nanchors=1,2,3,4,5,6\nnum=3\n"
     "classes=2", "E304", "filters"),
    ("[convolutional]\nfilters=20\nsize=1\n[route]\nlayers=-1\n[yolo]\nmask=0,1\n"
     "anchors=1,2,3,4,5,6\nnum=3\nclasses=2", "E304", "mask"),
    ("[convolutional]\nfilters=14\nsize=1\n[yolo]\nmask=0,5\nanchors=1,2,3,4\nnum=2\nclasses=2",
     "E304", "mask"),
    ("[convolutional]\nfilters=13\nsize=1\n[region]\nnum=2\nclasses=2", "E304", "filters"),
    ("[connected]\noutput=30\n[detection]\nclasses=3\ncoords=4\nside=2", "E304", "output"),
    ("[convolutional]\nfilters=4\nsize=1\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0,1",
     "E302", "layers"),
    ("[convolutional]\nfilters=4\nsize=1\n[route]\nlayers=0\ngroups=3", "E302", "groups"),
    ("[convolutional]\nfilters=4\nsize=1\n[route]\nlayers=5", "E301", "layers"),
    ("[convolutional]\nfilters=4\nsize=1\n[maxpool]\nsize=2\nstride=2\n[convolutional]\n"
     "filters=4\nsize=1\n[shortcut]\nfrom=0,1", "E302", "from"),
    ("[convolutional]\nfilters=4\nsize=1\n[scale_channels]\nfrom=0", "E302", "from"),
    ("[convolutional]\nfilters=4\nsize=1\n[sam]\nfrom=0,0", "E202", "from"),
    ("[connected]\noutput=6\n[softmax]\ngroups=4", "E302", "groups"),
])
def test_bad_cfgs_give_located_errors(body, code, key):
    text = _cfg(IMAGE, body)
    with pytest.raises(CfgError) as err:
        build(text)
    diag = err.value.first
    assert diag.code == code
    line = next(i for i, raw in enumerate(text.splitlines(), 1) if raw.startswith(f"{key}="))
    assert diag.line == line, diag.format()


def test_region_pjreddie_numbers_match_numpy_formula():
    # independent check of the pjreddie in-layer transform against numpy (src/region_layer.c)
    x = np.random.default_rng(4).normal(size=(1, 2 * 7, 2, 2)).astype(np.float32)
    net = build(_cfg(IMAGE, "[convolutional]\nfilters=14\nsize=1\n[region]\nnum=2\nclasses=2\n"
                     "softmax=0"), flavor="pjreddie")
    y = net.layers[1](torch.from_numpy(x)).numpy().reshape(2, 7, 2, 2)
    v = x.reshape(2, 7, 2, 2)
    sig = 1 / (1 + np.exp(-v))
    expected = np.concatenate([sig[:, :2], v[:, 2:4], sig[:, 4:]], 1)  # softmax=0: logistic
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
