"""1x1 convolutions as one native product with the activation in registers (builders.pointwise):
the same convolution as float64 to float32 rounding on ragged shapes (pixel counts not multiples
of the 12-pixel tile, output channels not multiples of the 32-channel panel, input channels past
one 256-channel block of the sum, a batch), the same values on any thread count, when the fast
path picks it, that it follows parameter updates, and that it can be turned off."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fast_nets import built_with_statistics, fast_matching_plain, kernels

from builders import pointwise

needs_kernel = pytest.mark.skipif(not pointwise.enabled(),
                                  reason="no AVX-512 native kernels here")

ACTIVATIONS = {"linear": lambda y: y, "leaky": lambda y: F.leaky_relu(y, 0.1),
               "relu": F.relu, "mish": lambda y: y * torch.tanh(F.softplus(y))}


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max())


def _case(n, c, k, h, w):
    gen = torch.Generator().manual_seed(n * 1000 + c * 10 + k)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 1, 1, generator=gen) / math.sqrt(c)
    return x, weight, torch.randn(k, generator=gen)


@needs_kernel
@pytest.mark.parametrize("n, c, k, h, w", [
    (1, 64, 64, 8, 9),       # whole panels, a tail tile of 0 < 12 pixels
    (2, 70, 130, 13, 9),     # a batch, a ragged last panel (130 = 4 x 32 + 2)
    (1, 3, 5, 1, 1),         # one pixel, one partial panel
    (1, 600, 40, 7, 11),     # the sum in blocks: 256 + 256 + 88 channels
    (1, 32, 255, 40, 41),    # a [yolo] head's 255 outputs, many tiles
])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_it_equals_the_convolution(n, c, k, h, w, activation):
    x, weight, bias = _case(n, c, k, h, w)
    ref = ACTIVATIONS[activation](F.conv2d(x.double(), weight.double(), bias.double()))
    got = pointwise.conv1x1(x, pointwise.pack_weights(weight), bias, k, activation)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, ref) < 2e-6
    direct = ACTIVATIONS[activation](F.conv2d(x, weight, bias))
    assert relative_error(direct, ref) < 2e-6  # the bound is float32 rounding, not looser


@needs_kernel
def test_every_row_count_of_a_tile_is_right():
    # pixels are cut into near-equal tiles of 1-12 rows, each row count compiled on its own:
    # 1-30 pixels reach all of them (25 = 9 + 8 + 8, 13 = 7 + 6, ...)
    x, weight, bias = _case(1, 40, 45, 5, 6)
    packed = pointwise.pack_weights(weight)
    flat = x.permute(0, 2, 3, 1).reshape(30, 40)
    for pixels in range(1, 31):
        part = flat[:pixels].reshape(1, 1, pixels, 40).permute(0, 3, 1, 2)
        ref = F.conv2d(part.double(), weight.double(), bias.double())
        got = pointwise.conv1x1(part, packed, bias, 45, "linear")
        assert relative_error(got, ref) < 2e-6, pixels


@needs_kernel
def test_batched_products_equal_torch_bmm():
    # Winograd's products: few rows, weights in panels, several products split between threads
    gen = torch.Generator().manual_seed(5)
    for points, rows, c, k in [(16, 49, 70, 130), (36, 16, 300, 33), (4, 1, 8, 64)]:
        v = torch.randn(points, rows, c, generator=gen)
        u = torch.randn(points, c, k, generator=gen) / math.sqrt(c)
        got = pointwise.products(v, pointwise.pack_matrices(u), k)
        ref = torch.bmm(v.double(), u.double())
        assert got.shape == ref.shape and relative_error(got, ref) < 2e-6


@needs_kernel
def test_the_values_do_not_depend_on_the_thread_count():
    x, weight, bias = _case(1, 300, 70, 17, 19)
    packed = pointwise.pack_weights(weight)
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(pointwise.conv1x1(x, packed, bias, 70, "mish"))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(outs[0], o) for o in outs[1:])  # each sum in one order


@needs_kernel
def test_an_nchw_input_gives_the_same_values():
    x, weight, bias = _case(1, 16, 24, 12, 12)
    packed = pointwise.pack_weights(weight)
    assert torch.equal(pointwise.conv1x1(x.contiguous(), packed, bias, 24, "leaky"),
                       pointwise.conv1x1(x, packed, bias, 24, "leaky"))


def test_only_plain_1x1_convolutions_apply():
    conv = torch.nn.Conv2d
    assert pointwise.applies(conv(8, 8, 1))
    assert not pointwise.applies(conv(8, 8, 1, stride=2))
    assert not pointwise.applies(conv(8, 8, 1, padding=1))
    assert not pointwise.applies(conv(8, 8, 1, groups=2))
    assert not pointwise.applies(conv(8, 8, 3, padding=1))


CFG = """[net]
width=20
height=20
channels=3
[convolutional]
filters=24
size=3
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=40
size=1
stride=1
pad=1
activation=mish
[convolutional]
batch_normalize=1
filters=33
size=1
stride=1
pad=1
activation=logistic
[convolutional]
filters=8
size=1
stride=2
pad=1
activation=linear
"""


def _net():
    return built_with_statistics(CFG)



@needs_kernel
def test_the_fast_path_runs_1x1_layers_natively_and_matches_the_plain_path(monkeypatch):
    monkeypatch.delenv("DARKCFG_POINTWISE", raising=False)
    net = _net()
    fast_matching_plain(net, torch.rand(2, 3, 20, 20), 1e-5)
    # the 3x3 layer on 3 channels gathers its inputs; a strided 1x1 one stays with oneDNN;
    # logistic runs after the kernel
    assert kernels(net) == ["gather", "pointwise", "pointwise", "packed"]


@needs_kernel
def test_it_follows_parameter_updates():
    net = _net()
    x = torch.rand(1, 3, 20, 20)
    before = fast_matching_plain(net, x, 1e-5)
    with torch.no_grad():
        net.layers[1].bn.running_var.mul_(3.0)
        net.layers[2].conv.weight.mul_(-1.5)
    assert not torch.allclose(before, fast_matching_plain(net, x, 1e-5))


@pytest.mark.parametrize("why", ["switched off", "no native kernels"])
def test_without_it_onednn_runs(monkeypatch, why):
    if why == "switched off":
        monkeypatch.setenv("DARKCFG_POINTWISE", "0")
    else:
        monkeypatch.setattr(pointwise.native, "library", lambda: None)
    net = _net()
    fast_matching_plain(net, torch.rand(1, 3, 20, 20), 1e-5)
    assert kernels(net) == ["packed"] * 4


RESIDUAL_CFG = """[net]
width=24
height=24
channels=3
[convolutional]
batch_normalize=1
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
[shortcut]
from=-2
activation=linear
[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation={act}
[shortcut]
from=-2
activation=linear
[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=leaky
[shortcut]
from=-2
activation=leaky
[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=leaky
[shortcut]
from=-2
weights_type=per_feature
activation=linear
[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=linear
[shortcut]
from=-2
activation=linear
[route]
layers=-2
"""


@pytest.mark.parametrize("act", ["mish", "logistic"])  # in the kernel / after it, then added
def test_plain_shortcuts_are_added_by_the_layer_before(monkeypatch, act):
    for name in ("DARKCFG_POINTWISE", "DARKCFG_WINOGRAD"):
        monkeypatch.delenv(name, raising=False)
    net = built_with_statistics(RESIDUAL_CFG.replace("{act}", act))
    # a shortcut with an activation or weights is its own layer; the last conv's output is
    # read by the route too, so its shortcut cannot take it over
    assert net._adds_next == {1, 3}
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        fast = net(x)[0]
        plain = net.use_fast_inference(False)(x)[0]
        net.use_fast_inference(True)
        # asked for a fused layer's own output, the net runs it unfused
        collected = net(x, collect=[1, 2])
        unfused_conv = net.use_fast_inference(False)(x, collect=[1])[1]
    net.use_fast_inference(True)
    assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
    assert (collected[1] - unfused_conv).abs().max() <= 1e-5 * unfused_conv.abs().max()
    assert not torch.allclose(collected[1], collected[2])


ROUTE_CFG = """[net]
width=20
height=20
channels=3
[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky
[route]
layers=-1
groups=2
group_id=1
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
size=1
stride=1
pad=1
activation=logistic
[route]
layers=-1,-2
[convolutional]
batch_normalize=1
filters=48
size=1
stride=1
pad=1
activation=leaky
[route]
layers=-1,-6
[maxpool]
size=1
stride=1
[route]
layers=-1,-3
[convolutional]
filters=16
size=1
stride=1
pad=1
activation=linear
"""


def test_concatenations_are_written_in_place_by_the_layers_they_read(monkeypatch):
    for name in ("DARKCFG_POINTWISE", "DARKCFG_WINOGRAD"):
        monkeypatch.delenv(name, raising=False)
    net = built_with_statistics(ROUTE_CFG)
    # route 4 takes [3, 2]; route 6 [5, 0] (layer 0 is read by the group route 1 too: that and
    # layer 3 read its view); route 8 reads a max-pool, which writes nowhere but its output
    assert net._writes_into == {3: (4, 0), 2: (4, 40), 5: (6, 0), 0: (6, 48)}
    for batch in (1, 2):
        x = torch.rand(batch, 3, 20, 20)
        with torch.no_grad():
            fast = net(x)[0]
            plain = net.use_fast_inference(False)(x)[0]
            net.use_fast_inference(True)
            collected = net(x, collect=[4, 6])  # no fusion: the same values
        assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
        with torch.no_grad():
            again = net(x, collect=[9])[9]
        assert torch.allclose(again, fast, rtol=0, atol=1e-6 * float(fast.abs().max()))
        assert collected[6].shape == (batch, 112, 20, 20)


def test_a_kernel_reads_channels_of_a_wider_map_in_place():
    # the group route's view (channels 32..63 of a channels-last map) needs no copy
    x = torch.randn(1, 64, 9, 11).contiguous(memory_format=torch.channels_last)
    view = x[:, 32:]
    assert pointwise.input_rows(view)[0].data_ptr() == view.data_ptr()
    weight, bias = torch.randn(24, 32, 1, 1), torch.randn(24)
    packed = pointwise.pack_weights(weight)
    if pointwise.enabled():
        assert torch.equal(pointwise.conv1x1(view, packed, bias, 24, "leaky"),
                           pointwise.conv1x1(view.contiguous(), packed, bias, 24, "leaky"))


@needs_kernel
@pytest.mark.parametrize("n, c, k, size, stride, pad, h, w, activation", [
    (1, 3, 32, 3, 1, 1, 13, 17, "leaky"),   # a first layer: one panel, ragged rows of pixels
    (2, 3, 40, 3, 2, 1, 15, 12, "mish"),    # a batch, stride 2, a partial second panel
    (1, 1, 16, 3, 1, 1, 9, 9, "relu"),      # one channel (grayscale)
    (1, 3, 64, 7, 2, 3, 23, 21, "linear"),  # a 7x7 stem, two panels
    (2, 4, 70, 5, 3, 0, 16, 19, "leaky"),   # no padding, stride 3, three panels
    (1, 3, 24, 3, (1, 2), 1, 11, 14, "leaky"),  # stride_y=1 stride_x=2 (Darknet allows both)
])
def test_gathered_convolution_is_the_convolution(n, c, k, size, stride, pad, h, w, activation):
    gen = torch.Generator().manual_seed(c * 100 + k)
    x = torch.randn(n, c, h, w, generator=gen)
    conv = torch.nn.Conv2d(c, k, size, stride, pad)
    weight = conv.weight.detach()
    bias = torch.randn(k, generator=gen)
    packed = pointwise.pack_weights(weight.reshape(k, -1, 1, 1))
    ref = ACTIVATIONS[activation](F.conv2d(x.double(), weight.double(), bias.double(), stride,
                                           pad))
    got = pointwise.conv_gather(x, packed, bias, conv, activation)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, ref) < 2e-6
    # a channels-last input, and one thread, give the same values
    again = pointwise.conv_gather(x.contiguous(memory_format=torch.channels_last), packed, bias,
                                  conv, activation)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = pointwise.conv_gather(x, packed, bias, conv, activation)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, again) and torch.equal(got, single)


@needs_kernel
def test_gathered_convolution_of_a_1x1_map_with_channels_last_strides():
    """Found by fuzzing against OpenCV: a [maxpool] whose stride passes its 8x8 input leaves a
    4x1x1 map of strides (4, 1, 4, 4); padding it kept them (channels-last) and the kernel read
    it as NCHW, so the next 3x3 convolution computed other values than Darknet's."""
    x = torch.as_strided(torch.randn(4, generator=torch.Generator().manual_seed(3)),
                         (1, 4, 1, 1), (4, 1, 4, 4))
    conv = torch.nn.Conv2d(4, 16, 3, 1, 1)
    packed = pointwise.pack_weights(conv.weight.detach().reshape(16, -1, 1, 1))
    bias = conv.bias.detach()
    ref = F.conv2d(x.double(), conv.weight.detach().double(), bias.double(), 1, 1)
    assert relative_error(pointwise.conv_gather(x, packed, bias, conv, "linear"), ref) < 2e-6


@needs_kernel
def test_gathered_convolution_writes_into_a_concatenation():
    x = torch.randn(1, 3, 10, 11)
    conv = torch.nn.Conv2d(3, 20, 3, 1, 1)
    packed = pointwise.pack_weights(conv.weight.detach().reshape(20, -1, 1, 1))
    bias = conv.bias.detach()
    whole = torch.full((1, 52, 10, 11), 7.0).contiguous(memory_format=torch.channels_last)
    got = pointwise.conv_gather(x, packed, bias, conv, "leaky", out=whole[:, 16:36])
    ref = F.leaky_relu(conv(x), 0.1).detach()
    assert got.data_ptr() == whole[:, 16:36].data_ptr()
    assert torch.allclose(whole[:, 16:36], ref, atol=1e-5)
    assert (whole[:, :16] == 7).all() and (whole[:, 36:] == 7).all()  # its channels only


@needs_kernel
def test_a_map_smaller_than_the_window_is_left_to_torch():
    # no output pixel fits: oneDNN's kernel (torch's error), never the gathered one
    net = built_with_statistics("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\n"
                                "filters=8\nsize=5\nstride=1\npad=0\nactivation=leaky\n")
    layer = net.layers[0]
    assert layer.gathers((1, 3, 8, 8)) and not layer.gathers((1, 3, 4, 8))
    with torch.no_grad(), pytest.raises(RuntimeError):
        net(torch.rand(1, 3, 4, 8))
