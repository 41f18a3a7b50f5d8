"""Winograd F(4x4, 3x3) for the inference fast path (builders.winograd, the native transforms):
the same convolution as float64 to float32 rounding on ragged shapes (sizes not multiples of 4,
channel counts not multiples of the kernels' 64-channel blocks, more tiles than one block, a
batch), the activations the output transform applies, when the fast path picks it, and that it
follows parameter updates and can be turned off."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fast_nets import built_with_statistics, fast_matching_plain, kernels

from builders import native, pointwise, winograd

needs_native = pytest.mark.skipif(native.library() is None, reason="no native kernels here")

ACTIVATIONS = {"linear": lambda y: y, "leaky": lambda y: F.leaky_relu(y, 0.1),
               "relu": F.relu, "mish": lambda y: y * torch.tanh(F.softplus(y))}


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max())


@needs_native
@pytest.mark.parametrize("n, c, k, h, w", [
    (1, 16, 16, 8, 8),      # whole tiles
    (2, 70, 130, 13, 9),    # ragged tiles, partial channel blocks, a batch
    (1, 3, 5, 1, 1),        # one pixel: every input of the tile but one is padding
    (1, 17, 33, 90, 101),   # more tiles (23 x 26) than one call's block
])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("tile", [4, 2])
def test_winograd_equals_the_direct_convolution(n, c, k, h, w, activation, tile):
    gen = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 3, 3, generator=gen) / math.sqrt(9 * c)
    bias = torch.randn(k, generator=gen)
    ref = ACTIVATIONS[activation](
        F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
    got = winograd.conv3x3(x, winograd.transform_weights(weight, tile), bias, activation)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    # F(4x4, 3x3)'s transforms round a few times more than a direct float32 sum does;
    # F(2x2, 3x3)'s (constants 1 and 1/2) about as much as it
    assert relative_error(got, ref) < (3e-5 if tile == 4 else 3e-6)
    direct = F.conv2d(x, weight, bias, padding=1)
    assert relative_error(ACTIVATIONS[activation](direct), ref) < 3e-5


@needs_native
def test_an_nchw_input_gives_the_same_values():
    x = torch.randn(1, 16, 12, 12)
    weight, bias = torch.randn(24, 16, 3, 3), torch.randn(24)
    u = winograd.transform_weights(weight)
    assert torch.equal(winograd.conv3x3(x, u, bias, "linear"),
                       winograd.conv3x3(x.contiguous(memory_format=torch.channels_last), u,
                                        bias, "linear"))


def test_the_variant_is_the_one_measured_fastest():
    # docs/benchmarks.md "Winograd": layer shapes of the benchmark nets, timed with the
    # weights cycled out of the caches as in a net (oneDNN's direct kernel -> F4 / F2)
    def tile(c, h, k, n=1):
        return winograd.tile_for(torch.Size([n, c, h, h]), k)
    assert tile(256, 52, 256) == 4        # F4 3.1x
    assert tile(256, 26, 512) == 4        # F4 2.12x, F2 1.87x: 49 tiles
    assert tile(128, 32, 256) == 4        # F4 2.21x, F2 1.56x
    assert tile(32, 208, 64) == 4         # F4 1.2x
    assert tile(64, 16, 128) == 4         # F4 1.49x, F2 1.32x: 16 tiles, small weights
    assert tile(512, 19, 512) == 2        # F4 1.45x, F2 1.63x: 25 tiles, large weights
    assert tile(256, 16, 512) == 2        # F4 1.11x, F2 1.76x (darknet53, 8 layers)
    assert tile(512, 13, 512) == 2        # F4 0.78x, F2 1.45x (yolov4-tiny)
    assert tile(512, 13, 1024) == 2       # F4 0.66x, F2 1.16x (yolov4)
    assert tile(128, 13, 128) == 2        # F4 1.00x, F2 1.20x
    native_products = pointwise.enabled()
    # 16 and 25 tiles of 2x2: F2 with the native products (1.20x, 1.22x), not with torch.bmm
    # (0.81x, 0.91x); F4 0.46-0.57x
    assert tile(512, 8, 1024) == (2 if native_products else 0)
    assert tile(512, 10, 1024) == (2 if native_products else 0)
    assert tile(512, 6, 1024) == 0        # 9 tiles
    assert tile(16, 104, 16) == 0         # F4 0.84x: thin products
    assert tile(3, 416, 32) == 0          # F4 0.4x
    assert tile(512, 13, 512, n=4) == 4   # a batch of 4: 64 tiles of 4x4


def test_without_the_native_products_small_maps_run_direct(monkeypatch):
    monkeypatch.setattr(pointwise, "enabled", lambda: False)
    assert winograd.tile_for(torch.Size([1, 512, 8, 8]), 1024) == 0
    assert not winograd.native_products(torch.Size([1, 512, 8, 8]), 1024, 2)
    assert winograd.tile_for(torch.Size([1, 512, 13, 13]), 1024) == 2


def test_which_products_run_natively(monkeypatch):
    # thin products whose weights stream from memory: native; more rows: torch.bmm
    monkeypatch.setattr(pointwise, "enabled", lambda: True)
    def native(c, h, k, tile=2):
        return winograd.native_products(torch.Size([1, c, h, h]), k, tile)
    assert native(512, 8, 1024) and native(1024, 8, 1024)   # 16 rows
    assert native(512, 13, 1024) and native(256, 13, 512)    # 49 rows, widening
    assert not native(512, 13, 512)                          # 49 rows, k = c: bmm 1.39x, 1.28x
    assert not native(256, 16, 512)                          # 64 rows


def test_only_3x3_stride_1_same_padding_applies():
    conv = torch.nn.Conv2d
    assert winograd.applies(conv(8, 8, 3, padding=1))
    assert not winograd.applies(conv(8, 8, 3, stride=2, padding=1))
    assert not winograd.applies(conv(8, 8, 1))
    assert not winograd.applies(conv(8, 8, 3, padding=0))
    assert not winograd.applies(conv(8, 8, 3, padding=2, dilation=2))
    assert not winograd.applies(conv(8, 8, 3, padding=1, groups=2))


CFG = """[net]
width=48
height=48
channels=3
[convolutional]
filters=32
size=3
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=mish
[convolutional]
batch_normalize=1
filters=40
size=3
stride=1
pad=1
activation=logistic
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=linear
"""


needs_avx512 = pytest.mark.skipif(not pointwise.enabled(), reason="no AVX-512 kernels here")


@needs_avx512
@pytest.mark.parametrize("n, c, k, h, w", [
    (1, 512, 1024, 8, 8),   # 16 rows, weights past the caches: the case the kernel is for
    (2, 70, 130, 13, 9),    # ragged rows (14 x 10 tiles), a partial panel, a batch
    (1, 300, 33, 5, 3),     # 300 channels: two blocks of the sum; rows 1-3 of a tile
])
@pytest.mark.parametrize("tile", [4, 2])
def test_the_native_products_equal_torch_bmm(n, c, k, h, w, tile):
    gen = torch.Generator().manual_seed(c + k)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 3, 3, generator=gen) / math.sqrt(9 * c)
    bias = torch.randn(k, generator=gen)
    ref = ACTIVATIONS["mish"](F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
    packed = winograd.transform_weights(weight, tile, panels=True)
    assert packed.shape == ((tile + 2) ** 2, -(-k // 32), c, 32)
    got = winograd.conv3x3(x, packed, bias, "mish")
    by_bmm = winograd.conv3x3(x, winograd.transform_weights(weight, tile), bias, "mish")
    bound = 3e-5 if tile == 4 else 3e-6  # as against float64: the sums run in another order
    assert relative_error(got, ref) < bound and relative_error(got, by_bmm.double()) < bound


def _net():
    return built_with_statistics(CFG)


def first() -> str:
    """The first layer's kernel (3 input channels): gathered inputs where the native 1x1
    kernel runs (builders.pointwise.conv_gather), else oneDNN's."""
    return "gather" if pointwise.enabled() else "packed"



@needs_native
def test_the_fast_path_runs_winograd_where_it_pays_and_matches_the_plain_path(monkeypatch):
    monkeypatch.delenv("DARKCFG_WINOGRAD", raising=False)  # the suite may run with it set
    net = _net()
    fast_matching_plain(net, torch.rand(1, 3, 48, 48))
    # the first layer has 3 input channels and the last stride 2: oneDNN's kernels
    assert kernels(net) == [first(), "winograd", "winograd", "packed"]
    # on a 14x14 map (16 ragged 4x4 tiles, 49 2x2 ones): F(2x2, 3x3)
    net.train().eval()
    fast_matching_plain(net, torch.rand(2, 3, 14, 14)[:1])
    assert kernels(net) == [first(), "winograd2", "winograd2", "packed"]
    # on an 8x8 map (16 2x2 tiles): F(2x2, 3x3) with the native products, else direct
    net.train().eval()
    fast_matching_plain(net, torch.rand(1, 3, 8, 8))
    small = "winograd2 panels" if pointwise.enabled() else "packed"
    assert kernels(net) == [first(), small, small, "packed"]


@needs_native
def test_winograd_follows_parameter_updates():
    net = _net()
    x = torch.rand(1, 3, 48, 48)
    before = fast_matching_plain(net, x)
    with torch.no_grad():
        net.layers[2].conv.weight.mul_(-1.5)
        net.layers[1].bn.running_var.mul_(3.0)
    assert not torch.allclose(before, fast_matching_plain(net, x))


@needs_native
@pytest.mark.parametrize("why", ["switched off", "no native kernels"])
def test_a_switch_turned_mid_run_changes_the_kernel_of_a_net_that_ran(monkeypatch, why):
    # each layer remembers its kernel per input shape (builders.conv _fast_plan), and per
    # setting of the off-switches: turning one later still takes effect
    monkeypatch.delenv("DARKCFG_WINOGRAD", raising=False)
    net = _net()
    x = torch.rand(1, 3, 48, 48)
    fast_matching_plain(net, x)
    assert kernels(net) == [first(), "winograd", "winograd", "packed"]
    if why == "switched off":
        monkeypatch.setenv("DARKCFG_WINOGRAD", "0")
    else:
        monkeypatch.setattr(winograd.native, "library", lambda: None)
    net.train().eval()  # drops the derived weights, so that kernels() sees the new ones
    fast_matching_plain(net, x)
    assert kernels(net) == [first()] + ["packed"] * 3
    monkeypatch.undo()
    net.train().eval()
    fast_matching_plain(net, x)
    assert kernels(net) == [first(), "winograd", "winograd", "packed"]


@pytest.mark.parametrize("why", ["switched off", "no native kernels"])
def test_without_winograd_the_direct_kernels_run(monkeypatch, why):
    if why == "switched off":
        monkeypatch.setenv("DARKCFG_WINOGRAD", "0")
    else:
        monkeypatch.setattr(winograd.native, "library", lambda: None)
    net = _net()
    fast_matching_plain(net, torch.rand(1, 3, 48, 48))
    assert kernels(net) == [first()] + ["packed"] * 3


@needs_native
def test_blocks_bounded_by_bytes_give_the_same_values(monkeypatch):
    # wide layers run in blocks of fewer tiles (BLOCK_BYTES); the smallest block, 16 tiles,
    # with a ragged last block, gives the one-block result (to the matrix product's rounding,
    # which may sum in another order for fewer rows)
    x = torch.randn(2, 40, 21, 18).contiguous(memory_format=torch.channels_last)
    u = winograd.transform_weights(torch.randn(36, 40, 3, 3) / 19)
    bias = torch.randn(36)
    whole = winograd.conv3x3(x, u, bias, "leaky")
    u2 = winograd.transform_weights(torch.randn(36, 40, 3, 3) / 19, 2)
    whole2 = winograd.conv3x3(x, u2, bias, "leaky")
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)
    assert relative_error(winograd.conv3x3(x, u, bias, "leaky"), whole.double()) < 1e-6
    assert relative_error(winograd.conv3x3(x, u2, bias, "leaky"), whole2.double()) < 1e-6


@needs_native
def test_the_avx2_build_computes_the_same(monkeypatch, tmp_path):
    # CI's machines have AVX-512; the project's reference CPU (Zen 3) has AVX2 only: the kernels
    # built without AVX-512 give the same Winograd and mish values, and 1x1 layers go to oneDNN
    import re

    from builders import pointwise
    from builders.activations import mish_

    if not re.search(r"\bavx2\b", open("/proc/cpuinfo").read()):
        pytest.skip("no AVX2 here")
    monkeypatch.setattr(native, "FLAGS", native.FLAGS + ["-mno-avx512f"])
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("DARKCFG_CACHE", str(tmp_path))
    for name in ("DARKCFG_WINOGRAD", "DARKCFG_POINTWISE"):
        monkeypatch.delenv(name, raising=False)
    if native.library() is None:
        pytest.skip(native.status())
    assert native.status().endswith("(AVX2)") and not pointwise.enabled()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 40, 15, 13, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(36, 40, 3, 3, generator=gen) / math.sqrt(360)
    bias = torch.randn(36, generator=gen)
    ref = ACTIVATIONS["mish"](F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
    for tile, bound in ((4, 3e-5), (2, 3e-6)):
        got = winograd.conv3x3(x, winograd.transform_weights(weight, tile), bias, "mish")
        assert relative_error(got, ref) < bound
    values = torch.linspace(-100, 100, 20001)
    assert float((mish_(values.clone()) - F.mish(values.double()).float()).abs().max()) < 4e-6
    net = _net()
    fast_matching_plain(net, torch.rand(1, 3, 14, 14))
    assert kernels(net) == [first(), "winograd2", "winograd2", "packed"]
