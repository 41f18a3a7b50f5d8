"""The inference fast path (eval mode, no autograd, CPU float32: folded batch-norm, oneDNN
convolutions with fused activations, in-place mish, channels-last between layers) gives the plain
path's outputs, and leaves training, state_dict and copies untouched. (The oracle tests in
test_oracle_networks.py run eval + no_grad too, so they compare the fast path with Darknet.)"""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from oracle import ORACLE, SHARED, run_network

from builders import build, native
from builders.activations import mish_
from builders.conv import fast_inference_ok

CORPUS = SHARED / "corpus"
TOLERANCE = 1e-4  # the oracle's spec tolerance: max abs error / max |plain|


def randomize(net) -> None:
    """Weights and batch-norm statistics away from their identity defaults, so that folding
    the batch-norm is really exercised."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif name.endswith("bn.weight"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.dim() == 4:  # conv kernels: He, as Darknet initialises them
                t.copy_(torch.randn(t.shape, generator=gen) * (2 / t[0].numel()) ** 0.5)


def all_outputs(net, x: torch.Tensor, fast: bool) -> dict[int, torch.Tensor]:
    net.use_fast_inference(fast)
    with torch.no_grad():
        outs = net(x, collect=range(len(net.layers)))
    net.use_fast_inference(True)
    return outs


def assert_same(fast: dict, plain: dict) -> None:
    assert fast.keys() == plain.keys()
    for i, ref in plain.items():
        got = fast[i]
        assert got.shape == ref.shape and got.is_contiguous(), f"layer {i}"
        scale = max(float(ref.abs().max()), 1e-30)
        err = float((got - ref).abs().max()) / scale
        assert err < TOLERANCE, f"layer {i}: rel. error {err:.2e}"


def sized(path: Path, size: int, batch: int) -> str:
    text = path.read_text()
    for key, value in (("width", size), ("height", size), ("batch", batch)):
        text = re.sub(rf"(?m)^\s*{key}\s*=.*$", f"{key}={value}", text, count=1)
    return text


CONV_NET = """[net]
width=20
height=18
channels=3

[convolutional]
filters=8
size=3
stride=1
pad=1
activation={act}
batch_normalize={bn}

[convolutional]
filters=12
size=3
stride=2
pad=1
groups=4
activation={act}
batch_normalize={bn}

[convolutional]
filters=6
size=3
dilation=2
pad=1
activation={act}

[route]
layers=-1,-2
groups=1

[maxpool]
size=2
stride=2

[connected]
output=7
activation={act}
batch_normalize={bn}
"""


@pytest.mark.parametrize("flavor", ["alexeyab", "pjreddie"])
@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("act", ["leaky", "mish", "linear", "relu", "logistic", "swish",
                                 "relu6", "tanh", "hardtan", "elu", "gelu"])
def test_small_nets_fast_equals_plain(act, bn, flavor):
    text = CONV_NET.format(act=act, bn=bn)
    if flavor == "pjreddie":  # pjreddie has no [route] groups and other activations
        text = text.replace("groups=1\n", "")
        if act in ("mish", "swish", "relu6", "hardtan", "gelu"):
            pytest.skip(f"{act} is not a pjreddie activation")
    net = build(text, flavor=flavor).eval()
    randomize(net)
    x = torch.randn(3, 3, 18, 20)  # batch > 1
    assert_same(all_outputs(net, x, True), all_outputs(net, x, False))


CORPUS_CASES = [("alexeyab/yolov4-tiny.cfg", 96), ("alexeyab/yolov4-csp-s-mish.cfg", 64),
                ("alexeyab/yolov4.cfg", 64), ("alexeyab/vgg-conv.cfg", 64),
                ("alexeyab/efficientnet_b0.cfg", 64), ("pjreddie/darknet53.cfg", 64)]


@pytest.mark.parametrize(("cfg", "size"), CORPUS_CASES, ids=[c for c, _ in CORPUS_CASES])
def test_corpus_fast_equals_plain(cfg, size):
    path = CORPUS / cfg
    if not path.exists():
        pytest.skip(f"{path} is not available")
    net = build(sized(path, size, 2), flavor=cfg.split("/")[0]).eval()
    randomize(net)
    # a seeded input: the error must not depend on which tests ran before in this process
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert_same(all_outputs(net, x, True), all_outputs(net, x, False))


@pytest.mark.parametrize("name", ["yolov4-tiny", "csdarknet53-omega", "efficientnet_b0",
                                  "u_conv", "u_pool", "u_route_shortcut"])
def test_oracle_nets_fast_equals_plain(name):
    if not ORACLE.is_dir():
        pytest.skip("../shared/darknet/oracle is not available")
    fast = run_network(name)
    import builders.graph as graph

    original = graph.Network.forward

    def plain_forward(self, x, collect=None):
        self.use_fast_inference(False)
        try:
            return original(self, x, collect)
        finally:
            self.use_fast_inference(True)

    graph.Network.forward = plain_forward
    try:
        plain = run_network(name)
    finally:
        graph.Network.forward = original
    assert_same({i: torch.from_numpy(v) for i, v in fast.items()},
                {i: torch.from_numpy(v) for i, v in plain.items()})


TRAIN_NET = CONV_NET.format(act="mish", bn=1) + "\n[connected]\noutput=5\nactivation=linear\n"


def grads_after_one_step(net, x):
    net.train()
    net.zero_grad(set_to_none=True)
    out = net(x)[0]
    out.square().mean().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}, out.detach()


def test_training_after_fast_inference_is_unchanged():
    torch.manual_seed(0)
    net = build(TRAIN_NET)
    randomize(net)
    torch.manual_seed(0)
    twin = build(TRAIN_NET)  # the same weights; never sees an eval forward
    randomize(twin)
    x = torch.randn(4, 3, 18, 20)
    keys = list(net.state_dict())
    net.eval()
    with torch.no_grad():
        net(x)
    assert list(net.state_dict()) == keys  # the cache is no state
    grads, out = grads_after_one_step(net, x)
    twin_grads, twin_out = grads_after_one_step(twin, x)
    assert torch.equal(out, twin_out)
    for name, g in grads.items():
        assert torch.equal(g, twin_grads[name]), name
    # both nets' running statistics moved alike in train mode
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_fast_path_follows_parameter_updates():
    """An optimizer step (in place, in train mode or not) or a state_dict load invalidates the
    folded weights."""
    torch.manual_seed(0)
    net = build(TRAIN_NET)
    randomize(net)
    x = torch.randn(2, 3, 18, 20)
    net.eval()
    before = all_outputs(net, x, True)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.zero_grad()
    net(x)[0].sum().backward()  # eval mode with autograd: the plain path
    opt.step()
    after = all_outputs(net, x, True)
    assert not torch.allclose(after[0], before[0])
    assert_same(after, all_outputs(net, x, False))
    other = build(TRAIN_NET)
    randomize(other)
    with torch.no_grad():
        for t in other.state_dict().values():
            if t.is_floating_point():
                t.mul_(1.5)
    net.load_state_dict(other.state_dict())
    assert_same(all_outputs(net, x, True), all_outputs(other.eval(), x, False))


def test_layer_copies_and_pickles_after_fast_inference():
    """oneDNN's packed weights cannot be copied: a copy drops them and packs its own."""
    net = build(TRAIN_NET).eval()
    randomize(net)
    layer = net.layers[0]
    x = torch.randn(2, 3, 18, 20)
    with torch.no_grad():
        ref = layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        with torch.no_grad():
            assert torch.equal(clone(x), ref)


def test_plain_path_where_fast_does_not_apply():
    net = build(TRAIN_NET).eval()
    x = torch.randn(2, 3, 18, 20)
    assert not fast_inference_ok(x)  # autograd on
    with torch.no_grad():
        assert fast_inference_ok(x)
        assert not fast_inference_ok(x.double())
        assert not fast_inference_ok(x.to("meta"))
        y = net.double()(x.double())[0]  # float64: the plain modules
    assert y.dtype == torch.float64


@pytest.fixture(params=["native", "torch ops"])
def mish_kernel(request, monkeypatch):
    """mish_ through the native kernel (skipped without a C compiler) and through torch ops."""
    if request.param == "native":
        if native.library() is None:
            pytest.skip(native.status())
    else:
        monkeypatch.setattr(native, "_state", {"lib": None, "why": "test"})
    return request.param


def test_mish_in_place_matches_torch(mish_kernel):
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([-1e4, 1e4, 0.0, -0.0]),
                   torch.tensor([1e-30, -1e-30, 1e-40, -1e-40, -87.5, 19.99, 20.01])])
    x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))]
    x = x[: 4 * 5 * 7 * 142].reshape(4, 5, 7, 142)
    ref = F.mish(x.double()).float()
    for t in (x.clone(), x.clone().contiguous(memory_format=torch.channels_last),
              x.clone()[:, 1:4]):  # NCHW, channels-last, neither (a channel slice)
        want = ref[:, 1:4] if t.shape[1] == 3 else ref
        got = mish_(t)
        assert got.data_ptr() == t.data_ptr()
        assert float((got - want).abs().max()) < 4e-6
    big = torch.randn(3, 1 << 17) * 10  # several chunks / blocks
    assert float((mish_(big.clone()) - F.mish(big)).abs().max()) < 4e-6
    assert torch.equal(mish_(torch.tensor([float("nan"), 3.0])).isnan(),
                       torch.tensor([True, False]))


def test_native_mish_is_the_same_on_any_thread_count():
    if native.library() is None:
        pytest.skip(native.status())
    x = torch.randn(1 << 20) * 8
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(mish_(x.clone()))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(outs[0], o) for o in outs[1:])  # elementwise: no order effects


def test_native_kernels_fall_back_with_the_reason(tmp_path, monkeypatch):
    """A compiler that fails (or none) leaves the torch-op mish, and status() says why; a build
    goes to the cache folder under a hashed name, atomically (no temp file left)."""
    monkeypatch.delenv("DARKCFG_NATIVE", raising=False)  # the suite may run with it set
    monkeypatch.setenv("DARKCFG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")  # exits 1 on anything
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is None
    assert native.status().startswith("torch ops: could not build native_kernels.c with false")
    x = torch.randn(1000)
    assert float((mish_(x.clone()) - F.mish(x)).abs().max()) < 4e-6
    monkeypatch.setenv("DARKCFG_NATIVE", "0")
    monkeypatch.setattr(native, "_state", {})
    assert native.status() == "torch ops: disabled by DARKCFG_NATIVE=0"
    if native._compiler() is None:
        return
    monkeypatch.delenv("CC")
    monkeypatch.delenv("DARKCFG_NATIVE")
    monkeypatch.setattr(native, "_state", {})
    assert native.status().startswith(f"native: {tmp_path / 'cache'}")
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(built) == 2 and built[0].startswith("kernels-")  # the library, no temp file
    assert built[1] == built[0] + ".sha256"  # and the hash checked before loading it


def test_detect_keeps_the_packed_weights_of_an_eval_net():
    """detect() on a net already in eval mode reuses the fast path's folded, packed weights
    (calling eval() again would drop them: re-packing cost a third of a yolov4-tiny forward)."""
    from darkcfg.detect.decode import detect

    root = Path(__file__).resolve().parents[1]
    net = build(sized(root / "cfg" / "yolov4-tiny.cfg", 64, 1)).eval()
    image = torch.rand(3, 48, 80)
    detect(net, [image])
    caches = [layer._inference_cache for layer in net.layers if hasattr(layer, "conv")]
    assert all(c is not None for c in caches)
    detect(net, [image])
    assert all(a is layer._inference_cache for a, layer in
               zip(caches, [m for m in net.layers if hasattr(m, "conv")], strict=True))
    net.train()
    detect(net, [image])  # a training net is put in eval mode, as before
    assert not net.training


def test_the_fast_path_follows_a_changed_batch_norm_eps():
    """The folded weights' cache was keyed by the tensors' versions only: a batch-norm eps set
    after the first forward (a float, no version) kept the old folding."""
    net = build(CONV_NET.format(act="leaky", bn=1)).eval()
    x = torch.rand(1, 3, 18, 20)
    with torch.no_grad():
        net(x)  # fills the cache
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(1e-3)  # a variance of the order of eps: eps matters
        net(x)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 0.5
        fast = torch.cat([y.flatten() for y in net(x)])
        net.use_fast_inference(False)
        plain = torch.cat([y.flatten() for y in net(x)])
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-5)
