""".weights I/O: header variants, byte-identical round trips, partial load/save, size errors that
leave the network untouched, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from oracle import ORACLE, require_oracle, weights_file

from builders import build
from builders.weights import load_weights, read_header, save_weights, weight_floats
from cfgparse import CfgError

CFG = """
[net]
width=8
height=6
channels=3

[convolutional]
filters=4
size=3
stride=1
pad=1
batch_normalize=1
activation=leaky

[convolutional]
filters=4
size=1
stride=1
activation=linear

[shortcut]
from=-2
weights_type=per_channel
weights_normalization=relu

[maxpool]
size=2
stride=2

[batchnorm]

[connected]
output=5
batch_normalize=1
activation=relu

[connected]
output=3
activation=linear
"""
# per layer: conv 4+3*4+108, conv 4+16, shortcut (1+1)*4, maxpool 0, batchnorm 4*4,
# connected 5+48*5+3*5, connected 3+15
LAYER_FLOATS = [124, 20, 8, 0, 16, 260, 18]
TOTAL = sum(LAYER_FLOATS)


def make_net(text: str = CFG, **kw):
    torch.manual_seed(0)
    return build(text, **kw)


def header(version=(0, 2, 5), seen=0, wide=True) -> bytes:
    return np.array(version, "<i4").tobytes() + np.array([seen], "<u8" if wide else "<u4").tobytes()


def random_floats(n: int, seed: int = 1) -> np.ndarray:
    # positive variances keep the file a plausible one; any float32 would round-trip
    return np.random.default_rng(seed).uniform(0.5, 1.5, n).astype("<f4")


def write(path, head: bytes, floats: np.ndarray, extra: bytes = b"") -> str:
    path.write_bytes(head + floats.astype("<f4").tobytes() + extra)
    return str(path)


def flat_arrays(net, layers=None) -> np.ndarray:
    layers = range(len(net.layers)) if layers is None else layers
    parts = [t.detach().reshape(-1).numpy() for i in layers
             for t in net.layers[i].darknet_arrays()]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_unchanged(net, before: dict) -> None:
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} was modified"


def test_layer_float_counts_match_the_darknet_layout():
    net = make_net(device="meta")
    assert [sum(t.numel() for t in layer.darknet_arrays()) for layer in net.layers] == \
        LAYER_FLOATS
    assert weight_floats(net) == net.num_weight_floats() == TOTAL
    assert weight_floats(net, cutoff=2) == 144


@pytest.mark.parametrize("version,seen,wide", [
    ((0, 2, 5), 123_456_789_012, True),  # AlexeyAB: 64-bit seen
    ((0, 2, 0), 64_000, True),  # pjreddie's version, still 64-bit
    ((0, 1, 0), 4_000_000_000, False),  # old files: 32-bit seen
])
def test_round_trip_is_byte_identical(tmp_path, version, seen, wide):
    floats = random_floats(TOTAL)
    src = write(tmp_path / "in.weights", header(version, seen, wide), floats)
    net = make_net()
    info = load_weights(net, src)
    assert info == {"version": version, "seen": seen, "floats": TOTAL}
    # every float landed in the tensor the layer lists at that position
    np.testing.assert_array_equal(flat_arrays(net), floats)
    out = tmp_path / "out.weights"
    assert save_weights(net, out, seen=info["seen"], version=info["version"]) == TOTAL
    assert out.read_bytes() == (tmp_path / "in.weights").read_bytes()


def test_the_weights_command_keeps_the_loaded_seen(tmp_path, capsys):
    """`darkcfg weights --save-weights` wrote seen=0 whatever it loaded: a round trip of a
    .weights file keeps its seen (byte for byte), a darkcfg checkpoint's images_seen is the
    header's, --cutoff resets it as `darknet partial` does."""
    from darkcfg.cli import main

    cfg = tmp_path / "net.cfg"
    cfg.write_text(CFG)
    floats = random_floats(TOTAL)
    src = write(tmp_path / "in.weights", header(seen=123_456), floats)
    out = tmp_path / "out.weights"

    def weights(*argv):
        code = main(["weights", str(cfg), "--save-weights", str(out), *map(str, argv)])
        err = capsys.readouterr().err
        assert code == 0, err
        return err

    assert "seen=123456" in weights("--weights", src)
    assert out.read_bytes() == (tmp_path / "in.weights").read_bytes()
    weights("--weights", src, "--cutoff", "2")
    assert read_header(out.read_bytes(), str(out)).seen == 0
    net = make_net()
    load_weights(net, src)
    ckpt = tmp_path / "checkpoint.pt"  # its weights and bookkeeping (iteration 30 x batch 16)
    torch.save({"model": net.state_dict(), "iteration": 30, "images_seen": 480}, ckpt)
    assert "seen=480" in weights("--weights", ckpt)
    assert out.read_bytes() == header(seen=480) + floats.tobytes()
    torch.save(net.state_dict(), tmp_path / "plain.pt")  # a plain state_dict records none
    weights("--weights", tmp_path / "plain.pt")
    assert out.read_bytes() == header(seen=0) + floats.tobytes()


def test_first_arrays_are_darknets_conv_order(tmp_path):
    """biases, then BN scales, rolling mean, rolling variance, then the conv weights."""
    floats = np.arange(TOTAL, dtype="<f4")
    net = make_net()
    load_weights(net, write(tmp_path / "w.weights", header(), floats))
    conv = net.layers[0]
    biases, scales, mean, var, weights = conv.darknet_arrays()
    assert biases.tolist() == [0, 1, 2, 3] and scales.tolist() == [4, 5, 6, 7]
    assert mean.tolist() == [8, 9, 10, 11] and var.tolist() == [12, 13, 14, 15]
    assert weights.shape == (4, 3, 3, 3) and weights[0, 0, 0, 1].item() == 17


def test_transposed_connected_files(tmp_path):
    """major or minor > 1000: [connected] matrices are stored [in][out]; a load transposes them
    and a save with the same version writes them back transposed."""
    floats = random_floats(TOTAL, seed=3)
    src = write(tmp_path / "t.weights", header((0, 1001, 0), 7), floats)
    net = make_net()
    info = load_weights(net, src)
    assert info["version"] == (0, 1001, 0) and info["seen"] == 7
    start = sum(LAYER_FLOATS[:5]) + 5  # after the first connected layer's 5 biases
    stored = floats[start:start + 48 * 5].reshape(48, 5)
    weight = net.layers[5].darknet_arrays()[1]
    np.testing.assert_array_equal(weight.detach().numpy(), stored.T)
    out = tmp_path / "t2.weights"
    save_weights(net, out, seen=7, version=(0, 1001, 0))
    assert out.read_bytes() == (tmp_path / "t.weights").read_bytes()
    # the same values saved untransposed: the matrix now appears [out][in]
    plain = tmp_path / "plain.weights"
    save_weights(net, plain)
    body = np.frombuffer(plain.read_bytes()[20:], "<f4")
    np.testing.assert_array_equal(body[start:start + 240], stored.T.reshape(-1))


def test_header_sizes_follow_the_flavor():
    # pjreddie reads a 32-bit seen when major or minor >= 1000; AlexeyAB a 64-bit one
    data = header((0, 1001, 0), 5, wide=False) + b"\0" * 8
    assert read_header(data, "x", "pjreddie").size == 16
    assert read_header(data, "x", "alexeyab").size == 20
    assert read_header(header((0, 1, 0), 9, wide=False), "x").seen == 9


def test_too_short_file_is_an_error_and_loads_nothing(tmp_path):
    net = make_net()
    before = state(net)
    path = write(tmp_path / "short.weights", header(), random_floats(TOTAL - 7))
    with pytest.raises(CfgError) as err:
        load_weights(net, path)
    assert err.value.code == "E902"
    message = str(err.value)
    assert f"{TOTAL - 7} floats" in message and str(TOTAL) in message
    assert "layer 6" in message  # the file runs out inside the last layer
    assert_unchanged(net, before)


@pytest.mark.parametrize("extra", [b"\0\0\0\0", b"\0\0"])
def test_too_long_file_is_an_error_and_loads_nothing(tmp_path, extra):
    net = make_net()
    before = state(net)
    path = write(tmp_path / "long.weights", header(), random_floats(TOTAL), extra)
    with pytest.raises(CfgError) as err:
        load_weights(net, path)
    assert err.value.code == "E902"
    assert str(TOTAL) in str(err.value)
    assert_unchanged(net, before)


@pytest.mark.parametrize("floats, extra", [(TOTAL, b"\0\0"), (TOTAL - 1, b"\0\0")])
def test_a_part_of_a_float_is_named_damage_not_a_cfg_mismatch(tmp_path, floats, extra):
    """All the floats and 2 bytes more (or a file cut inside its last float): no cfg and no
    cutoff makes it load, so the hint says the file is damaged, not to try --cutoff."""
    net = make_net()
    path = write(tmp_path / "odd.weights", header(), random_floats(floats), extra)
    for cutoff in (None, 3):
        with pytest.raises(CfgError) as err:
            load_weights(net, path, cutoff=cutoff)
        d = err.value.first
        assert d.code == "E902" and "2 stray bytes" in d.message
        assert "no whole number of floats" in d.message
        assert "intact copy" in d.hint and "cutoff" not in d.hint


def test_truncated_header_and_missing_file(tmp_path):
    net = make_net()
    (tmp_path / "tiny.weights").write_bytes(header()[:14])
    with pytest.raises(CfgError) as err:
        load_weights(net, tmp_path / "tiny.weights")
    assert err.value.code == "E901"
    with pytest.raises(CfgError) as err:
        load_weights(net, tmp_path / "absent.weights")
    assert err.value.code == "E901"


def test_partial_save_and_load(tmp_path):
    net = make_net()
    floats = random_floats(TOTAL, seed=5)
    full = write(tmp_path / "full.weights", header(seen=999), floats)
    load_weights(net, full)
    # like `darknet partial cfg weights out 2`: the first two layers, seen reset to 0
    part = tmp_path / "part.weights"
    assert save_weights(net, part, cutoff=2) == 144
    assert part.read_bytes() == header(seen=0) + floats[:144].tobytes()

    fresh = make_net()
    fresh.layers[6].darknet_arrays()[0].data.fill_(42.0)
    before = state(fresh)
    # a partial file does not fit the whole network...
    with pytest.raises(CfgError) as err:
        load_weights(fresh, part)
    assert "where layer 2 begins" in str(err.value)
    # the hint fits a library call and the command line both
    assert "load it with cutoff=2 (--cutoff 2 on the command line)" in str(err.value)
    assert_unchanged(fresh, before)
    # ...but loads with the cutoff, leaving the later layers alone
    assert load_weights(fresh, part, cutoff=2)["floats"] == 144
    np.testing.assert_array_equal(flat_arrays(fresh, [0, 1]), floats[:144])
    assert fresh.layers[6].darknet_arrays()[0].tolist() == [42.0] * 3
    # a full file loads partially too (what `darknet partial` reads)
    other = make_net()
    assert load_weights(other, full, cutoff=3)["floats"] == 152
    np.testing.assert_array_equal(flat_arrays(other, [0, 1, 2]), floats[:152])
    with pytest.raises(CfgError):  # a prefix shorter than the cutoff asks for
        load_weights(make_net(), part, cutoff=3)
    with pytest.raises(CfgError):
        load_weights(make_net(), full, cutoff=-1)


def test_dontload_and_dontloadscales(tmp_path):
    text = CFG.replace("[maxpool]", "[maxpool]\ndontload=1", 1)
    text = text.replace("filters=4\nsize=3", "filters=4\nsize=3\ndontloadscales=1", 1)
    text = text.replace("output=3\n", "output=3\ndontload=1\n", 1)
    net = make_net(text)
    conv = net.layers[0]
    scales_before = [t.clone() for t in conv.darknet_arrays()[1:4]]
    last_before = [t.clone() for t in net.layers[6].darknet_arrays()]
    # conv without its 12 BN floats; the last connected layer not at all
    expected = TOTAL - 12 - 18
    floats = random_floats(expected, seed=7)
    assert load_weights(net, write(tmp_path / "w.weights", header(), floats))["floats"] == \
        expected
    biases, *bn, weights = conv.darknet_arrays()
    np.testing.assert_array_equal(biases.detach().numpy(), floats[:4])
    np.testing.assert_array_equal(weights.detach().reshape(-1).numpy(), floats[4:112])
    for t, old in zip(bn, scales_before, strict=True):
        assert torch.equal(t, old)
    for t, old in zip(net.layers[6].darknet_arrays(), last_before, strict=True):
        assert torch.equal(t, old)
    # saving writes every layer in full, as Darknet does
    assert save_weights(net, tmp_path / "all.weights") == TOTAL


def test_save_is_atomic(tmp_path):
    out = tmp_path / "keep.weights"
    out.write_bytes(b"old contents")
    broken = make_net(device="meta")  # meta tensors cannot be written: the save fails midway
    with pytest.raises((NotImplementedError, RuntimeError)):
        save_weights(broken, out)
    assert out.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["keep.weights"]  # no temporary file left behind
    with pytest.raises(CfgError) as err:
        save_weights(make_net(), tmp_path / "no" / "such" / "dir.weights")
    assert err.value.code == "E901"


def test_real_darknet_file_round_trips(tmp_path):
    """The weights the oracle ran real Darknet with: every byte back as it was."""
    require_oracle()
    for name in ("yolov3-tiny", "yolov2.pjreddie"):  # AlexeyAB and pjreddie networks
        source = weights_file(name)
        flavor = "pjreddie" if name.endswith("pjreddie") else "alexeyab"
        net = build(ORACLE / "cfg" / f"{name}.cfg", flavor=flavor)
        info = load_weights(net, source)
        assert info["floats"] == (source.stat().st_size - 20) // 4
        out = tmp_path / f"{name}.weights"
        save_weights(net, out, seen=info["seen"], version=info["version"])
        assert out.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("head", [
    b"\x08\x08\x12\x07pytorch\x1a\x052.9.0" + b"\0" * 40,  # the start of an .onnx protobuf
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b"\0" * 40,  # a PNG
    b"[net]\nwidth=8\n",  # a cfg, shorter than a 20-byte header
], ids=["onnx", "png", "cfg"])
def test_a_file_that_is_no_weights_file_says_so(tmp_path, head):
    """An .onnx or an image given as --weights was reported as a size mismatch of 'version
    118622728.1869904240.443048818': the header is no Darknet version, so the file is no
    .weights file at all."""
    net = make_net()
    before = state(net)
    path = tmp_path / "model.weights"
    path.write_bytes(head)
    with pytest.raises(CfgError) as err:
        load_weights(net, path)
    message = str(err.value)
    if head.startswith(b"\x08"):  # which file it is, not 'version 118622728.1869904240...'
        assert err.value.code == "E901" and "is an ONNX model, not Darknet .weights" in message
        assert "load the weights it was exported from" in message
    else:
        assert err.value.code == "E901" and "is not a Darknet .weights file" in message, message
        assert "implausible header: version" in message and "help:" in message
    assert_unchanged(net, before)


def test_a_plausible_header_with_the_wrong_size_is_still_a_size_error(tmp_path):
    # the transposed marker (minor 1001) is a real version
    path = write(tmp_path / "t.weights", header((0, 1001, 0)), random_floats(TOTAL - 1))
    with pytest.raises(CfgError) as err:
        load_weights(make_net(), path)
    assert err.value.code == "E902" and "version 0.1001.0" in str(err.value)


def test_a_classifier_of_another_class_count_is_told_the_fine_tuning_cutoff(tmp_path):
    head = "[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\nsize=1\n" \
        "activation=leaky\n[connected]\noutput={}\nactivation=linear\n[softmax]\n"
    trained = build(head.format(4))
    save_weights(trained, tmp_path / "four.weights")
    for classes in (3, 6):  # fewer, more: the file is longer, shorter than the network reads
        with pytest.raises(CfgError) as err:
            load_weights(build(head.format(classes)), tmp_path / "four.weights")
        hint = err.value.first.hint
        assert "fine-tune on another class count" in hint and hint.endswith(
            ": cutoff=1 (--cutoff 1 on the command line)"), hint
        assert "[connected]" in hint
    # a file that does not even hold the layers before the last gets no such advice
    with pytest.raises(CfgError) as err:
        load_weights(build(head.replace("filters=2", "filters=100").format(4)),
                     tmp_path / "four.weights")
    assert "fine-tune" not in err.value.first.hint


def test_a_file_that_is_no_weights_gets_a_hint_for_python_and_the_command_line(tmp_path):
    """The hint said "--weights takes ..." to a load_weights() caller."""
    net = build("[net]\ninputs=4\n[connected]\noutput=2\n")
    for name, data in (("m.onnx", b"\x08\x07\x12\x07pytorch" + bytes(64)),
                       ("x.weights", b"\xff" * 64)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CfgError) as err:
            load_weights(net, tmp_path / name)
        hint = err.value.first.hint
        assert hint.startswith("load ") and "--weights takes" not in hint, hint
        assert "a torch state_dict / darkcfg checkpoint" in hint, hint
