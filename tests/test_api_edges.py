"""The library used from Python the ordinary PyTorch ways: copied, pickled, run in another
dtype, fed tensors of the wrong layout; and the typed options given one string for a tuple."""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_detect import tiny_cfg, write_images

from builders import build
from cfgparse import CfgError
from darkcfg.detect.decode import detect, load_pixels


def test_a_network_deep_copies_and_pickles(tmp_path):
    """EMA copies (copy.deepcopy), AveragedModel and torch.save(net) need a picklable module:
    the blocks in `net.meta` hold read-only option views that once refused."""
    net = build(str(tiny_cfg(tmp_path))).eval()
    twin = copy.deepcopy(net)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
        for other in (twin, loaded):
            assert all(torch.equal(a, b) for a, b in zip(want, other(x), strict=True))
    assert twin.meta[1].block == net.meta[1].block
    with pytest.raises(TypeError):  # still read-only after the copy
        twin.meta[1].block.options["size"] = 5


@pytest.mark.parametrize("thresholds", [{"thresh": float("nan")}, {"thresh": -0.1},
                                        {"nms": 1.5}])
def test_detect_refuses_a_threshold_outside_0_1(tmp_path, thresholds):
    """A NaN thresh found nothing, silently; the command line checked, the API did not."""
    cfg = tiny_cfg(tmp_path)
    image = write_images(tmp_path / "imgs")[0]
    net = build(str(cfg)).eval()
    with pytest.raises(ValueError, match="a threshold lies in"):
        detect(net, image, **thresholds)


def test_detect_with_a_float64_network_matches_float32(tmp_path):
    """detect() feeds the network its own dtype on the CPU (the fast path is float32-only and
    a float64 net once failed inside oneDNN)."""
    cfg = tiny_cfg(tmp_path)
    image = write_images(tmp_path / "imgs")[0]
    torch.manual_seed(0)
    net = build(str(cfg)).eval()
    wide = copy.deepcopy(net).double()
    found32, found64 = detect(net, image, thresh=0.05), detect(wide, image, thresh=0.05)
    assert len(found32[0]) > 0 and len(found32[0]) == len(found64[0])
    for a, b in zip(found32[0], found64[0], strict=True):
        assert a.class_id == b.class_id and abs(a.score - b.score) < 1e-4
        assert np.allclose(a.box, b.box, atol=1e-2)


def test_image_tensors_of_the_wrong_layout_or_range_are_refused():
    rgb = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    for bad, says in [(rgb.permute(1, 2, 0), ".permute(2, 0, 1)"),
                      (rgb.float(), "float pixels lie in [0, 1]"),
                      (rgb.int(), "not torch.int32"),
                      (torch.full((3, 4, 4), float("nan")), "float pixels lie in [0, 1]")]:
        with pytest.raises(ValueError, match=None) as err:
            load_pixels(bad)
        assert says in str(err.value), err.value
    with pytest.raises(TypeError, match="numpy array"):
        load_pixels(rgb.permute(1, 2, 0).numpy())
    with pytest.raises(TypeError, match="not list"):
        load_pixels([1, 2, 3])


def test_a_one_channel_network_sees_a_tensor_as_pillow_sees_the_file(tmp_path):
    """RGB(A) to one channel is the luminance, as Pillow's convert('L') gives for a path
    (it once took the red channel)."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    assert torch.equal(load_pixels(tensor, 1), load_pixels(str(tmp_path / "rgb.png"), 1))
    rgba = torch.cat([tensor, torch.full((1, 20, 30), 7, dtype=torch.uint8)])
    assert torch.equal(load_pixels(rgba, 3), tensor)
    grey = load_pixels(tensor.float() / 255, 1)
    assert torch.allclose(grey * 255, load_pixels(tensor, 1).float(), atol=0.6)


def test_model_spec_load_honours_partial(tmp_path):
    from darkcfg.model import ModelSpec

    cfg = tiny_cfg(tmp_path)
    state = build(str(cfg)).state_dict()
    some = dict(list(state.items())[:1])  # 1 of 4 tensors: under half
    torch.save(some, tmp_path / "part.pt")
    spec = ModelSpec(str(cfg), weights=str(tmp_path / "part.pt"), device="cpu")
    with pytest.raises(CfgError, match="--partial"):
        spec.load()
    net, report = ModelSpec(str(cfg), weights=str(tmp_path / "part.pt"), partial=True,
                            device="cpu").load()
    assert "1/4" in report and not net.training


def test_a_state_dict_with_cutoff_loads_only_the_first_layers(tmp_path):
    """--cutoff N loads layers 0..N-1 of a .weights file; of a state_dict or checkpoint it was
    ignored (every matching tensor loaded, the later layers too)."""
    from darkcfg.model import load_any_weights

    text = "[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\nsize=1\n" \
        "activation=leaky\n[connected]\noutput=3\nactivation=linear\n[softmax]\n"
    torch.manual_seed(1)
    trained = build(text)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(2)
    net = build(text)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_any_weights(net, tmp_path / "w.pt", cutoff=1)
    assert "(first 1 layers)" in report and "2/2" in report
    # --partial of a .weights file did nothing: it is --cutoff's job there
    from builders.weights import save_weights

    save_weights(trained, tmp_path / "w.weights")
    with pytest.raises(CfgError, match="--partial is for a torch state_dict") as err:
        load_any_weights(build(text), tmp_path / "w.weights", partial=True)
    assert "--cutoff N" in err.value.first.hint
    for key, value in net.state_dict().items():
        source = trained.state_dict() if key.startswith("layers.0.") else before
        assert torch.equal(value, source[key]), key


def test_one_string_for_a_tuple_field_is_one_value(tmp_path):
    from darkcfg.detect.run import DetectOptions
    from darkcfg.model import ModelSpec

    spec = ModelSpec(str(tiny_cfg(tmp_path)), sets="width=32")
    assert spec.sets == ("width=32",) and spec.build().input_shape.w == 32
    assert DetectOptions(spec, targets="a.jpg").targets == ("a.jpg",)


def test_build_takes_bytes_and_a_missing_path_with_an_equals_sign(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert len(build(cfg.read_bytes()).layers) == len(build(str(cfg)).layers)
    with pytest.raises(CfgError) as err:
        build(str(tmp_path / "lr=0.1" / "yolo.cfg"))  # a sweep's folder name, not cfg text
    assert err.value.first.code == "E901"


def test_a_yolo_set_rooted_at_the_working_folder_finds_its_labels(tmp_path, monkeypatch):
    """`path: .` run from the set's folder gives relative image paths (images/train/a.jpg),
    whose label file is labels/train/a.txt as for an absolute path: they were all missed
    (`1 train images (0 objects)`, no error)."""
    from PIL import Image

    from darkcfg.data.detection.formats import open_set

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "train" / "a.jpg")
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [x]\n")
    monkeypatch.chdir(tmp_path)
    found = open_set("data.yaml", strict=True)
    assert found.train.images == ["images/train/a.jpg"] and found.train.missing == 0
    assert found.train.boxes[0].tolist() == [[0.5, 0.5, 0.25, 0.25, 0.0]]  # x y w h class


def test_run_options_refuse_a_map_points_no_evaluation_has():
    """--map-points was checked by the detection task when a run started (reading the options
    with getattr): RunOptions refuses it for every caller, as its other values."""
    from pathlib import Path

    from cfgparse import CfgError
    from darkcfg.train.session import RunOptions

    with pytest.raises(CfgError, match="--map-points 7: use 0"):
        RunOptions("cfg/yolov3-tiny.cfg", "yolov3-tiny", Path("run"), map_points=7)
    assert RunOptions("cfg/yolov3-tiny.cfg", "yolov3-tiny", Path("run"),
                      map_points=101).map_points == 101


def test_dump_outputs_takes_a_tensor_as_it_takes_an_array(tmp_path):
    """docs/cfg-files.md: `dump_outputs(net, x, "out.npz")` runs x (N, C, H, W); a script's x is
    a tensor, which was refused as 'not an (N, C, H, W) array' although of that shape."""
    from darkcfg.export.dump import dump_outputs

    net = build(str(tiny_cfg(tmp_path))).eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    assert dump_outputs(net, x, tmp_path / "t.npz") == dump_outputs(net, x.numpy(),
                                                                      tmp_path / "a.npz")
    with np.load(tmp_path / "t.npz") as t, np.load(tmp_path / "a.npz") as a:
        assert t.files and all(np.array_equal(t[k], a[k]) for k in a.files)
    with pytest.raises(CfgError, match="E302"):  # the shape is still checked
        dump_outputs(net, torch.rand(3, 64, 64), tmp_path / "bad.npz")


ROUTED = ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=4\nsize=3\npad=1\n"
          "activation=leaky\n[maxpool]\nsize=2\nstride=2\n[upsample]\nstride=2\n[route]\n"
          "layers=-1,0\n")


@pytest.mark.parametrize("grad", [True, False])
def test_a_forward_on_the_wrong_input_names_the_shape_it_takes(grad):
    """net(x) of the wrong rank, channels, layout or dtype failed deep inside torch (an
    IndexError for a missing batch dimension, 'Given groups=1, weight of size ...'): now an
    InputError (a ValueError, and a RuntimeError as torch's was) naming (N, C, H, W)."""
    from builders import InputError

    net = build(ROUTED).eval()
    wide = build(ROUTED).double().eval()
    rgb = torch.rand(3, 32, 32)
    cases = [(rgb, "got (3, 32, 32); add the batch dimension"),
             (rgb[None, :1], "got (1, 1, 32, 32)"),
             (rgb.permute(1, 2, 0)[None], "channels last? x.permute(0, 3, 1, 2)"),
             ((rgb[None] * 255).to(torch.uint8), "got torch.uint8 (image bytes: x.float() / 255)")]
    with torch.set_grad_enabled(grad):
        for bad, says in cases:
            with pytest.raises(InputError) as err:
                net(bad)
            assert says in str(err.value), err.value
            assert isinstance(err.value, ValueError) and isinstance(err.value, RuntimeError)
            if bad.dtype != torch.uint8:
                assert "takes input of shape (N, 3, 32, 32)" in str(err.value)
        # numpy's float64 (torch.from_numpy), a half tensor, a float32 input to a .double() net:
        # torch's 'Input type (double) and bias type (float) should be the same' before
        for bad, model, says in [(rgb[None].double(), net, "takes torch.float32 input (its "
                                  "weights' dtype), got torch.float64 (x.float())"),
                                 (rgb[None].half(), net, "got torch.float16 (x.float())"),
                                 (rgb[None], wide, "takes torch.float64 input (its weights' "
                                  "dtype), got torch.float32 (x.to(torch.float64))")]:
            with pytest.raises(InputError, match=re.escape(says)):
                model(bad)
        with pytest.raises(TypeError, match=r"torch.Tensor of shape \(N, 3, 32, 32\), not "
                           r"numpy.ndarray \(torch.from_numpy"):
            net(rgb[None].numpy())
        assert net(rgb[None])[0].shape == (1, 8, 32, 32)  # the right input still runs
        assert net(torch.rand(1, 3, 64, 48))[0].shape == (1, 8, 64, 48)  # as another fitting size


@pytest.mark.parametrize("grad", [True, False])
def test_a_size_the_layers_cannot_take_names_the_layer_and_the_cfg_size(grad):
    """A 31x31 input reached the [route] as torch.cat's 'Sizes of tensors must match'; now the
    layer, the size and the cfg's input, with torch's error kept as the cause."""
    from builders import InputError

    net = build(ROUTED).eval()
    with torch.set_grad_enabled(grad), pytest.raises(InputError) as err:
        net(torch.rand(2, 3, 31, 31))
    message = str(err.value)
    assert message.startswith("layer 3 [route] cannot run on a 31x31 (WxH) input: Sizes of "
                              "tensors must match"), message
    assert "The cfg's input is (N, 3, 32, 32)" in message
    assert isinstance(err.value.__cause__, RuntimeError)


def test_a_compiled_network_names_the_size_it_cannot_take_with_the_same_graph():
    """torch.compile(net) on a 31x31 input raised the compiler's TorchRuntimeError ("when
    making fake tensor call"): forward's InputError comes from catching the layer's error,
    which the compiler's tracing never reaches. A forward pre-hook tries the size first on the
    meta device, outside the compiled graph: the same InputError; the graph is unchanged (one,
    no break) and a size that fits still runs, with collect= too."""
    from torch._dynamo.testing import CompileCounter

    from builders import InputError

    net = build(ROUTED).eval()
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(compiled(x)[0], net(x)[0])
        assert (counter.frame_count, counter.op_count) == (1, 7)  # one graph: no break
        with pytest.raises(InputError) as err:
            compiled(torch.rand(2, 3, 31, 31))
        assert str(err.value).startswith("layer 3 [route] cannot run on a 31x31 (WxH) input: "
                                         "Sizes of tensors must match"), err.value
        assert "The cfg's input is (N, 3, 32, 32)" in str(err.value)
        assert compiled(torch.rand(1, 3, 64, 48))[0].shape == (1, 8, 64, 48)
        assert list(compiled(torch.rand(1, 3, 31, 31), collect=[0])) == [0]  # before the route
        with pytest.raises(InputError, match="got torch.uint8"):  # forward's own checks
            compiled((x * 255).to(torch.uint8))
    # fullgraph=True (no break allowed) too, after a reset of the compiler's caches
    torch._dynamo.reset()
    whole = torch.compile(net, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(whole(x)[0], net(x)[0])
        with pytest.raises(InputError, match="cannot run on a 31x31"):
            whole(torch.rand(1, 3, 31, 31))
    # the hook, which the compiler does not trace, is still inlined by torch.export (marking
    # it disabled made every later export fail)
    for strict in (True, False):
        exported = torch.export.export(net, (x,), strict=strict).module()
        assert torch.allclose(exported(x)[0], net(x)[0])


def test_collect_refuses_an_index_that_is_no_layer():
    """collect=[99] ran the whole network, then a bare KeyError: 99; -1 the same."""
    net = build(ROUTED).eval()
    x = torch.rand(1, 3, 32, 32)
    for bad in ([99], [0, -1], ["2"]):
        with pytest.raises(IndexError, match=r"is not a layer index of this network \(0\.\.3"):
            net(x, collect=bad)
    assert list(net(x, collect=np.array([2, 0]))) == [2, 0]  # numpy integers are indices


def test_weights_io_with_its_arguments_swapped_says_so(tmp_path):
    """load_weights(path, net) was an AttributeError ('str' object has no attribute 'layers')."""
    from builders.weights import load_weights, save_weights

    net = build(ROUTED)
    path = tmp_path / "r.weights"
    save_weights(net, path)
    for call in (load_weights, save_weights):
        with pytest.raises(TypeError, match=rf"{call.__name__}\(net, path, \.\.\.\): net is the "
                           r"builders.Network .* not (str|PosixPath) \(the network comes first"):
            call(path if call is load_weights else str(path), net)
    with pytest.raises(TypeError, match="not Sequential"):
        load_weights(torch.nn.Sequential(), path)


def test_detect_refuses_a_batch_size_below_1_and_a_names_file_path(tmp_path):
    """batch_size=0 was range()'s 'arg 3 must not be zero'; names="coco.names" named the
    classes 'c', 'o', 'c', 'o' ... silently."""
    cfg = tiny_cfg(tmp_path)
    image = write_images(tmp_path / "imgs")[0]
    net = build(str(cfg)).eval()
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match=r"batch_size=.*: a count of images, 1 or more"):
            detect(net, image, batch_size=bad)
    for names in ("coco.names", tmp_path / "coco.names"):
        with pytest.raises(TypeError, match="names is the list of class names, not a file"):
            detect(net, image, names=names)


def test_an_export_from_python_names_the_cfg_it_was_built_from(tmp_path):
    """export(net, "m.onnx") wrote cfg='m' (the output's stem) into the metadata: now the file
    the network was built from, as the command line writes; cfg text keeps the stem."""
    pytest.importorskip("onnxruntime")
    import onnx

    from darkcfg.export.onnx import export

    for source, want in ((tiny_cfg(tmp_path), "tiny.cfg"), (ROUTED, "m")):
        out = tmp_path / "m.onnx"
        export(build(source), out)
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert meta["cfg"] == want
        out.unlink()


def test_a_flat_input_network_names_its_input_size():
    """A [net] inputs=3 network fed (4, 2) failed in the matrix product ('mat1 and mat2 shapes
    cannot be multiplied'); one item without its batch dimension the same."""
    from builders import InputError

    net = build("[net]\ninputs=3\n[connected]\noutput=2\nactivation=linear\n")
    assert net.expected_input() == "(N, 3)"
    with pytest.raises(InputError, match=r"takes input of shape \(N, 3\) \(\[net\] inputs=3 per "
                       r"item\), got \(4, 2\)$"):
        net(torch.rand(4, 2))
    with pytest.raises(InputError, match=r"got \(3,\); add the batch dimension: x\[None\]"):
        net(torch.rand(3))
    for fits in ((5, 3), (5, 3, 1, 1)):
        assert net(torch.rand(*fits))[0].shape[:2] == (5, 2)


@pytest.mark.parametrize("groups", [1, 2])
def test_softmax_loss_refuses_fractional_class_indices(groups):
    """Trainer.step(images, targets) / [softmax].loss with float targets of shape (N,) trained
    silently on .long() of them (0.7 as class 0); whole floats still count as indices."""
    net = build(f"[net]\ninputs=4\n[softmax]\ngroups={groups}\n")
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"\[softmax\] targets of shape \(3,\) are class "
                       r"indices, but hold 0\.7: pass whole class numbers, or probabilities"):
        net.layers[0].loss(x, torch.tensor([0.0, 0.7, 1.0]))
    whole = net.layers[0].loss(x, torch.tensor([0.0, 3.0, 1.0]))
    assert torch.equal(whole, net.layers[0].loss(x, torch.tensor([0, 3, 1])))


@pytest.mark.parametrize("device", ["cuda", "cuda:7", torch.device("cuda", 7), "mps", "xpu",
                                    "bogus"])
def test_build_on_a_device_this_machine_lacks_is_E100(device):
    """build(cfg, device="cuda") without a GPU raised torch's "Found no NVIDIA driver" from deep
    inside the first layer (mps: NotImplementedError, xpu: AssertionError); ModelSpec's
    --device already said E100. Now build() says it too, named as its keyword."""
    kind = torch.device(device).type if device != "bogus" else "bogus"
    if kind == "cuda" and torch.cuda.device_count() > 7 or \
            kind == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has the device")
    with pytest.raises(CfgError) as err:
        build("[net]\ninputs=4\n[softmax]\n", device=device)
    text = str(err.value)
    assert text.startswith("device: error[E100]: "), text
    assert "help: use device='cpu'" in text, text
    if kind == "cuda":
        assert "CUDA GPU" in text, text
    assert build("[net]\ninputs=4\n[softmax]\n", device="meta").input_shape.size == 4


@pytest.mark.parametrize("bad, shown", [(7, "7"), (-1, "-1"), (-100, "-100"), (7.0, "7")])
def test_trainer_step_names_a_class_target_out_of_range(bad, shown):
    """Trainer.step with class 7 for 5 classes was torch's IndexError "Target 7 is out of
    bounds." (a device-side assert on CUDA), and -100 was cross-entropy's "ignore"."""
    from darkcfg.config import NetConfig
    from darkcfg.train.loop import Trainer

    net = build("[net]\nbatch=4\ninputs=6\nmax_batches=10\n[connected]\noutput=5\n[softmax]\n")
    trainer = Trainer(net, NetConfig.from_block(net.net_block))
    good = torch.tensor([0, 4, 2, 3])
    with pytest.raises(ValueError, match=rf"^class target {shown} is out of range: layer 1 "
                       r"\(\[softmax\]\) has 5 classes, numbered 0\.\.4$"):
        trainer.step(torch.randn(4, 6), good.to(torch.tensor(bad).dtype).index_fill(0,
                     torch.tensor([1]), bad))
    assert trainer.iteration == 0
    assert torch.isfinite(trainer.step(torch.randn(4, 6), good)) and trainer.iteration == 1


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_export_gives_the_network_back_in_its_own_modes(tmp_path, suffix):
    """export(net, ...) left a network being trained in eval mode (dropout off, batch-norm
    statistics frozen from then on, silently); each module keeps its own flag."""
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    from darkcfg.export.onnx import export

    net = build("[net]\nwidth=16\nheight=16\nchannels=3\n[convolutional]\nfilters=4\nsize=3\n"
                "batch_normalize=1\nactivation=leaky\n[dropout]\n[avgpool]\n[softmax]\n")
    net.train()
    net.layers[0].eval()  # a frozen batch-norm, say
    before = [(name, m.training) for name, m in net.named_modules()]
    grads = [(name, p.requires_grad) for name, p in net.named_parameters()]
    export(net, tmp_path / f"m{suffix}")
    assert [(name, m.training) for name, m in net.named_modules()] == before
    assert [(name, p.requires_grad) for name, p in net.named_parameters()] == grads
    net.eval()
    export(net, tmp_path / f"again{suffix}")
    assert not any(m.training for m in net.modules())


def test_detect_with_too_few_or_too_many_names(tmp_path):
    """names= shorter than the heads' classes named the others '' silently, longer ones were
    ignored; now as `darkcfg detect --names`: fewer warn and the rest are named by number,
    more are refused (the command line's W302 and E304)."""
    torch.manual_seed(0)
    net = build(str(tiny_cfg(tmp_path))).eval()  # classes=7
    image = write_images(tmp_path / "imgs")[0]
    with pytest.raises(ValueError, match=r"names lists 9 class names, but the network's "
                       r"\[yolo\] has classes=7"):
        detect(net, image, names=[f"c{i}" for i in range(9)])
    with pytest.warns(UserWarning, match=r"names lists 3 class names and the network has "
                      r"classes=7: classes 3\.\.6 are named by number"):
        found = detect(net, image, thresh=0.05, names=["a", "b", "c"])[0]
    assert {f.class_id for f in found} == set(range(7)), found
    assert all(f.name == ("abc"[f.class_id] if f.class_id < 3 else str(f.class_id))
               for f in found), found
    assert all(f.name == "" for f in detect(net, image, thresh=0.05)[0])  # no names: none


GROUPED = """[net]
width=6
height=6
channels=2
[convolutional]
filters=4
size=3
pad=1
activation=leaky
[local_avgpool]
size=2
stride=2
[connected]
output=6
activation=relu
[dropout]
probability=0.2
[softmax]
groups=2
[cost]
"""


@pytest.mark.parametrize("cfg", ["digits.cfg", "yolov3-tiny.cfg", GROUPED])
@pytest.mark.parametrize("training", [False, True])
def test_an_empty_batch_gives_empty_outputs(cfg, training):
    """torch modules take a batch of 0; a cfg with [connected] or [softmax] failed on one
    ("cannot reshape tensor of 0 elements into shape [0, -1]") where conv nets worked."""
    from darkcfg.bundled import FOLDER

    net = build(FOLDER / cfg if cfg.endswith(".cfg") else cfg).train(training)
    c, h, w = (net.net_block.int(k) for k in ("channels", "height", "width"))
    one = net(torch.rand(1, c, h, w))
    empty = net(torch.rand(0, c, h, w))
    one, empty = ([y] if torch.is_tensor(y) else y for y in (one, empty))
    assert [tuple(y.shape) for y in empty] == [(0, *y.shape[1:]) for y in one]
