"""Calibrated INT8 export (darkcfg/export/int8.py, `--export m.onnx --int8 --calibrate SRC`).

The bound: with 8-bit weights (per channel) and 8-bit activations (per tensor, MinMax over the
calibration images) each quantized tensor carries a rounding error of about 1/255 of its range
(~48 dB); through a few layers that stays under a few percent of the signal. So a small trained
network's INT8 outputs must be within 10% relative L2 error of fp32 and correlate with them at
>= 0.99 (sqrt(1 - 0.1^2) = 0.995), and agree on the top-1 class of >= 90% of the validation
images. A broken quantization (wrong ranges, wrong channel axis, a mis-read calibration image)
gives errors of the order of the signal itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from darkcfg.cli.flags import main  # noqa: E402
from darkcfg.export.int8 import (  # noqa: E402
    Int8Options,
    export_int8,
    l2_error,
    open_int8_data,
    quantizable_layers,
    runner,
)
from darkcfg.model import build_network, load_any_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = """[net]
batch=16
subdivisions=1
width=32
height=32
channels=3
learning_rate=0.01
momentum=0.9
decay=0.0005
max_batches=30
policy=constant

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=4
size=1
stride=1
pad=0
activation=linear

[avgpool]

[softmax]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small classifier trained for 30 iterations on 4 embedded classes."""
    folder = tmp_path_factory.mktemp("int8")
    cfg = folder / "small.cfg"
    cfg.write_text(SMALL)
    subprocess.run([sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--out",
                    str(folder / "run"), "--no-progress", "--workers", "0", "--valid-every", "0"],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    weights = folder / "run" / "small_final.weights"
    assert weights.exists()
    return cfg, weights


def load(cfg, weights):
    net, netcfg, _ = build_network(str(cfg), [], "alexeyab", 0)
    load_any_weights(net, str(weights))
    return net.eval(), netcfg


@pytest.mark.slow
def test_int8_runs_in_onnxruntime_and_tracks_fp32(trained, tmp_path):
    cfg, weights = trained
    net, netcfg = load(cfg, weights)
    data = open_int8_data(net, netcfg, None, 0, calib_images=32)
    report = export_int8(net, tmp_path / "small.int8.onnx", data,
                         Int8Options(repeats=3, batches=(1, 8)))
    assert report.metric == "top-1" and report.images > 0
    assert report.output_error <= 0.1 and report.correlation >= 0.99
    assert abs(report.fp32 - report.int8) <= 10.0  # points of top-1
    assert set(report.latency_fp32) == {1, 8} and all(v > 0 for v in report.latency_int8.values())
    # the file is INT8: every Conv reads a dequantized int8 weight
    import onnx

    model = onnx.load(str(tmp_path / "small.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") >= ops.count("Conv") + 1
    inits = {i.name: i for i in model.graph.initializer}
    assert any(i.data_type == onnx.TensorProto.INT8 for i in inits.values())
    # independent check of the report: run both in onnxruntime on validation images
    x = data.calibration[:8]
    with torch.no_grad():
        fp32 = list(net(x))
    int8 = runner(tmp_path / "small.int8.onnx")(x)
    assert l2_error(int8, fp32) <= 0.1
    agree = (int8[-1].reshape(8, -1).argmax(1) == fp32[-1].reshape(8, -1).argmax(1)).float()
    assert agree.mean() >= 0.875  # 7 of 8
    # sensitivity: every Conv measured, most sensitive first
    assert len(report.sensitivity) == len(quantizable_layers_of(net, tmp_path))
    errors = [s.error for s in report.sensitivity]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    text = str(report)
    assert "top-1" in text and "latency batch 8" in text


def quantizable_layers_of(net, tmp_path):
    from darkcfg.export.onnx import export_onnx

    export_onnx(net, tmp_path / "fp32.onnx", dynamic_batch=True)
    return quantizable_layers(tmp_path / "fp32.onnx")


@pytest.mark.slow
def test_keep_fp32_keeps_the_most_sensitive_layers(trained, tmp_path):
    cfg, weights = trained
    net, netcfg = load(cfg, weights)
    data = open_int8_data(net, netcfg, None, 0, calib_images=16)
    report = export_int8(net, tmp_path / "k.onnx", data,
                         Int8Options(keep_fp32=2, repeats=1, batches=(1,)))
    assert [s.node for s in report.kept_fp32] == [s.node for s in report.sensitivity[:2]]
    assert all(s.layer is not None for s in report.kept_fp32)  # named by darkcfg layer
    import onnx

    model = onnx.load(str(tmp_path / "k.onnx"))
    kept = {s.node for s in report.kept_fp32}
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear"
                   for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.name in kept:
            assert node.input[1] not in dequantized  # fp32 weight
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["kept_fp32_layers"] == ",".join(str(s.layer) for s in report.kept_fp32)


@pytest.mark.slow
def test_flag_form_contract(trained, tmp_path, capsys):
    cfg, weights = trained
    out = tmp_path / "m.onnx"
    rc = main([str(cfg), "--weights", str(weights), "--export", str(out), "--int8",
               "--calibrate", "embedded", "--calib-images", "8", "--keep-fp32", "1"])
    assert rc == 0 and out.exists()
    printed = capsys.readouterr().out
    assert "top-1 on" in printed and "latency batch 1" in printed and "kept in fp32" in printed


@pytest.mark.parametrize("args,needle", [
    (["--int8"], "needs --calibrate"),
    (["--int8", "--calibrate", "embedded", "--keep-fp32", "most"], "--keep-fp32"),
    (["--int8", "--calibrate", "nowhere/x.data"], "nowhere/x.data"),
    (["--int8", "--calibrate", "embedded", "--decode"], "drop --decode"),
])
def test_bad_flags_are_located_errors(tmp_path, capsys, args, needle):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    rc = main([str(cfg), "--export", str(tmp_path / "m.onnx"), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_detector_int8_reports_map(tmp_path):
    """yolov3-tiny (initial weights) at 96: the detector path (calibration through the
    network's resize, mAP@0.5 through darkcfg.detect.metrics) runs end to end; `auto` stops
    at the bound or at max_auto."""
    net, netcfg, _ = build_network(str(ROOT / "cfg" / "yolov3-tiny.cfg"),
                                   ["width=96", "height=96"], "alexeyab", 0)
    net.eval()
    data = open_int8_data(net, netcfg, None, 0, calib_images=8, classes=2)
    report = export_int8(net, tmp_path / "y.onnx", data,
                         Int8Options(keep_fp32="auto", max_auto=2, repeats=1, batches=(1,)))
    assert report.metric == "mAP@0.5"
    assert report.tried and report.tried[0][0] == 0
    last_kept, last_map = report.tried[-1]
    assert last_kept == len(report.kept_fp32)
    assert report.fp32 - last_map <= report.bound or last_kept == 2
    assert np.isfinite(report.correlation)


@pytest.mark.slow
def test_subcommand_form(trained, tmp_path, capsys):
    from darkcfg.cli import main as darkcfg_main

    cfg, weights = trained
    out = tmp_path / "sub.onnx"
    rc = darkcfg_main(["export", str(cfg), "--weights", str(weights), "--out", str(out),
                       "--int8", "--calibrate", "embedded", "--calib-images", "8"])
    assert rc == 0 and out.exists()
    assert "top-1 on" in capsys.readouterr().out


def test_subcommand_usage_errors(tmp_path, capsys):
    from darkcfg.cli import main as darkcfg_main

    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    assert darkcfg_main(["export", str(cfg), "--out", str(tmp_path / "m.pt2"), "--int8",
                         "--calibrate", "embedded"]) == 2
    assert "write ONNX" in capsys.readouterr().err


def test_missing_quantization_tools_are_e905_before_the_build(tmp_path, capsys, monkeypatch):
    """onnxruntime without its quantization tools (or their sympy) passed the package check,
    and --int8 ended in a ModuleNotFoundError traceback after the fp32 export."""
    import importlib

    import darkcfg.cli.export as command
    from darkcfg.cli import main as darkcfg_main

    real = importlib.import_module

    def imported(name, *args):
        if name.startswith("onnxruntime.quantization"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", imported)
    monkeypatch.setattr(command, "sized_model", lambda *a: pytest.fail("built before the check"))
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    assert darkcfg_main(["export", str(cfg), "--out", str(tmp_path / "m.onnx"), "--int8",
                         "--calibrate", "embedded"]) == 2
    err = capsys.readouterr().err
    assert "error[E905]" in err and "onnxruntime.quantization is not installed" in err, err


def test_keep_fp32_of_every_layer_is_refused_before_the_calibration(tmp_path, capsys,
                                                                     monkeypatch):
    """--keep-fp32 N >= the quantizable layers wrote an fp32 model labelled INT8; the count is
    known once the fp32 graph is exported, before the calibration."""
    from darkcfg.export import int8

    def calibrated(*args):
        raise AssertionError("calibrated before the refusal")

    monkeypatch.setattr(int8.Quantizer, "calibrate", calibrated)
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    out = tmp_path / "m.onnx"
    rc = main([str(cfg), "--export", str(out), "--int8", "--calibrate", "embedded",
               "--calib-images", "2", "--keep-fp32", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("--keep-fp32: error[E100]: --keep-fp32 5: the network has "
                                      "4 quantizable layers"), err
    assert "help: use 0 to 3" in err and not out.exists()


def test_report_counts_the_images_it_compared_and_names_the_reference(tmp_path, capsys):
    """'INT8 vs fp32 on 8 calibration images' was printed with 3 images, and the reference is
    PyTorch's fp32 network, not the fp32 onnxruntime graph; --opset is honoured."""
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    rc = main([str(cfg), "--export", str(tmp_path / "m.onnx"), "--int8", "--calibrate",
               "embedded", "--calib-images", "3", "--opset", "17"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "INT8 (onnxruntime) vs PyTorch's fp32 network on 3 calibration images" in out, out
    assert "top-1 on 512 validation images: fp32 (onnxruntime)" in out
    import onnx  # --opset was ignored with --int8

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_report_of_one_calibration_image_reads_right():
    """A one-image calibration set printed 'calibrated on 1 images'."""
    from darkcfg.export.int8 import Int8Report

    text = str(Int8Report("m.onnx", "top-1", 50.0, 50.0, [], [], {}, {}, 0.0, 1.0, 1, 1,
                          probe_images=1))
    assert "calibrated on 1 image)" in text and "on 1 calibration image:" in text
    assert "top-1 on 1 validation image:" in text


DETECTOR = """[net]
width=64
height=64
channels=3

[convolutional]
filters=14
size=1
stride=1
activation=linear

[yolo]
mask=0,1
anchors=10,14, 23,27
classes=2
num=2
"""


def test_detector_data_without_valid_warns_it_scores_training_images(tmp_path, capsys):
    """A .data without valid= is scored on its training images (Darknet's `detector map`
    does so too), which INT8 was calibrated on: said, not labelled 'validation images'."""
    from PIL import Image

    root = tmp_path / "set"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (10 * i, 50, 90)).save(root / "JPEGImages" / f"{i}.jpg")
        (root / "labels" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.5\n")
    (root / "train.txt").write_text("".join(f"{root}/JPEGImages/{i}.jpg\n" for i in range(3)))
    (root / "obj.names").write_text("cat\ndog\n")
    (root / "obj.data").write_text(f"classes = 2\ntrain = {root}/train.txt\n"
                                   f"names = {root}/obj.names\n")
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR)
    rc = main([str(cfg), "--export", str(tmp_path / "d.onnx"), "--int8", "--calibrate",
               str(root / "obj.data"), "--calib-images", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "has no separate validation split" in captured.err
    assert "scored on the training images" in captured.err
    assert "mAP@0.5 on 3 training images (no separate validation split)" in captured.out


def test_onnxruntime_quantization_raising_is_e904_and_keeps_the_old_file(tmp_path, capsys,
                                                                        monkeypatch):
    """onnxruntime's quantize_static raising (an op it cannot quantize, a bug of its version)
    reached the user as a traceback; it is a located E904, the file under the output's name
    is the old one and no temp file is left beside it."""
    import onnxruntime.quantization

    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : quantizer gave up\nsecond line")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", broken)
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous model")
    rc = main([str(cfg), "--export", str(out), "--int8", "--calibrate", "embedded",
               "--calib-images", "2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"{out}: error[E904]: INT8 calibration failed in onnxruntime"), err
    assert "RuntimeError: [ONNXRuntimeError] : 1 : FAIL : quantizer gave up" in err
    assert "second line" not in err and "Traceback" not in err
    assert out.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "small.cfg"]


def test_fewer_calibration_images_than_asked_are_said(tmp_path, capsys):
    """--calib-images 64 on a folder of 4 training images calibrated on 4 without a word."""
    from PIL import Image

    for split in ("train", "val"):
        for k, name in enumerate(("cat", "dog")):
            (tmp_path / "set" / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (90 * k, 40 * i, 70)).save(
                    tmp_path / "set" / split / name / f"{i}.jpg")
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL.replace("filters=4\n", "filters=2\n"))
    rc = main([str(cfg), "--export", str(tmp_path / "m.onnx"), "--int8", "--calibrate",
               str(tmp_path / "set"), "--calib-images", "64"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (f"warning: 64 calibration images asked (--calib-images), but the training split of "
            f"'{tmp_path / 'set'}' holds 4: calibrating on all 4") in captured.err
    assert "calibrated on 4 images" in captured.out


def test_calibration_images_that_all_fail_to_decode_are_located(tmp_path, capsys):
    """Training images whose headers read but whose pixels do not (JPEGs cut short): each is a
    W901, then the refusal named '<data>' and told to fix 'that file'; it names the data."""
    import io

    from PIL import Image

    root = tmp_path / "set"
    root.mkdir()
    noise = np.random.default_rng(0)
    for i in range(2):
        buffer = io.BytesIO()
        Image.fromarray(noise.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
        (root / f"{i}.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 3])
        (root / f"{i}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (root / "train.txt").write_text("".join(f"{root}/{i}.jpg\n" for i in range(2)))
    (root / "obj.names").write_text("cat\ndog\n")
    data = root / "obj.data"
    data.write_text(f"classes = 2\ntrain = {root}/train.txt\nnames = {root}/obj.names\n")
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTOR)
    rc = main([str(cfg), "--export", str(tmp_path / "d.onnx"), "--int8", "--calibrate",
               str(data), "--calib-images", "2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "warning[W901]" in err and "training goes on" not in err
    assert (f"{data}: error[E901]: cannot calibrate: not one training image decodes (none of "
            "the 2 images can be read)") in err, err
    assert "<data>" not in err and "Traceback" not in err
    assert not (tmp_path / "d.onnx").exists()


def classifier_set_with_a_cut_image(tmp_path, cut: str, shade: int) -> tuple[Path, Path]:
    """An ImageFolder `tmp_path/set` (train/ and val/, 3 plain images per class, none black:
    `shade` > 0 keeps every channel above 0) whose image `cut` ('val/cat/1.jpg') keeps its
    header and loses its pixels, and a small classifier cfg for it."""
    import io

    from PIL import Image

    for split in ("train", "val"):
        for k, name in enumerate(("cat", "dog")):
            (tmp_path / "set" / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 40), (90 * k + shade, 40 * i + shade, 70)).save(
                    tmp_path / "set" / split / name / f"{i}.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    path = tmp_path / "set" / cut
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 3])
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL.replace("filters=4\n", "filters=2\n"))
    return path, cfg


def test_an_undecodable_classifier_image_is_left_out_of_the_calibration(tmp_path, capsys):
    """One training image of a folder whose pixels do not decode stopped the INT8 export
    (training skips such an image with a W901); it is left out, the next image takes its
    place."""
    cut, cfg = classifier_set_with_a_cut_image(tmp_path, "train/cat/0.jpg", shade=0)
    rc = main([str(cfg), "--export", str(tmp_path / "m.onnx"), "--int8", "--calibrate",
               str(tmp_path / "set"), "--calib-images", "4"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"{cut}: warning[W901]: cannot read image '{cut}'" in captured.err
    assert "left out of the calibration; the next image takes its place" in captured.err
    assert "calibrated on 4 images" in captured.out


def test_an_undecodable_classifier_validation_image_is_scored_blank(tmp_path, capsys):
    """INT8's top-1 stopped with E901 at a validation image whose pixels do not decode; it
    scores it as `darkcfg valid` now does: a blank image of its class (W901, said once over
    the fp32 and INT8 passes), every image counted. The calibration still replaces a bad
    training image itself (it reads the training split raising)."""
    cut, cfg = classifier_set_with_a_cut_image(tmp_path, "val/cat/1.jpg", shade=10)
    net, netcfg, _ = build_network(str(cfg), [], "alexeyab", 0)
    data = open_int8_data(net.eval(), netcfg, str(tmp_path / "set"), 0, calib_images=2)

    def blank_is_cat(x):  # class 0 for an all-black input, else class 1
        black = x.flatten(1).abs().amax(1) == 0
        return [torch.stack([black.float(), (~black).float()], 1)]

    for _ in range(2):  # fp32, then INT8
        assert data.evaluation.score(blank_is_cat) == pytest.approx(100 * 4 / 6)
    assert data.evaluation.images == 6
    err = capsys.readouterr().err
    assert err.count("warning[W901]") == 1, err
    assert f"{cut}: warning[W901]: cannot read image '{cut}'" in err
    assert "scored as a blank image of its class" in err


@pytest.mark.parametrize("cfg_text", [DETECTOR, SMALL], ids=["detector", "classifier"])
@pytest.mark.parametrize("classes", ["0", "-2"])
def test_classes_under_one_is_a_usage_error_before_the_build(tmp_path, capsys, monkeypatch,
                                                             cfg_text, classes):
    """--classes 0 with --int8 was an E901 from the embedded data, after the build; it is a
    usage error (E100 at --classes) as `train --classes 0` is, before the build."""
    import darkcfg.cli.export as command
    from darkcfg.cli import main as darkcfg_main

    monkeypatch.setattr(command, "sized_model", lambda *a: pytest.fail("built before the check"))
    cfg = tmp_path / "m.cfg"
    cfg.write_text(cfg_text)
    out = tmp_path / "m.onnx"
    assert darkcfg_main(["export", str(cfg), "--out", str(out), "--int8", "--calibrate",
                         "embedded", "--classes", classes]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"--classes: error[E100]: --classes {classes}: need at least 1"), err
    assert "help: use --classes 1 or more" in err and not out.exists()


class _Split:
    """A training split of `size` images (C, 4, 4) filled with their index; `bad` ones raise
    DataError as a JPEG cut short does. `reads` counts every decode."""

    def __init__(self, size: int, bad: set[int] = frozenset()):
        self.size, self.bad, self.reads = size, set(bad), []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> torch.Tensor:
        from darkcfg.data import DataError

        self.reads.append(i)
        if i in self.bad:
            raise DataError(f"cannot read image 'img/{i}.jpg': image file is truncated")
        return torch.full((3, 4, 4), float(i))


def test_calibration_images_are_read_a_batch_at_a_time():
    """Every calibration image was decoded and stacked before the calibration (~2 MB each at
    416x416: --calib-images 8192 needed 17 GB); onnxruntime's reader now reads a batch at a
    time as it asks, and lets it go: memory is one batch whatever N."""
    from darkcfg.export.int8 import CalibrationImages, _reader

    split = _Split(1000)
    images = CalibrationImages(split, 400, lambda s: s)
    assert split.reads == [0]  # only the first pick, settled at once (E901 if none decodes)
    reader = _reader(images, batch=8)
    first = reader.get_next()["images"]
    assert first.shape == (8, 3, 4, 4) and first.dtype == np.float32
    assert len(split.reads) == 9  # the first again, and the next seven: not the 400
    seen = [first]
    while (batch := reader.get_next()) is not None:
        seen.append(batch["images"])
    values = np.concatenate(seen)[:, 0, 0, 0].astype(int).tolist()
    assert values == np.linspace(0, 999, 400).round().astype(int).tolist()  # spread over it
    assert len(images) == 400 and len(split.reads) == 401


def test_undecodable_calibration_images_are_replaced_and_said_once(capsys):
    """The stream keeps the W901 skip-and-replace: the next unused image of the split takes a
    bad one's place, a pick with none left is dropped (len() then counts what was read), every
    later pass reads the same images without a second warning, and `images[:k]` stacks the
    first k."""
    from darkcfg.export.int8 import CalibrationImages

    split = _Split(10, bad={3, 7})
    images = CalibrationImages(split, 4, lambda s: s)  # picks 0, 3, 6, 9
    assert [int(x[0, 0, 0]) for x in images] == [0, 4, 6, 9]
    assert [int(x[0, 0, 0]) for x in images[:3]] == [0, 4, 6]
    assert [int(x[0, 0, 0]) for x in images] == [0, 4, 6, 9]
    err = capsys.readouterr().err
    assert err.count("warning[W901]") == 1 and "img/3.jpg: warning[W901]" in err, err
    assert "left out of the calibration; the next image takes its place" in err
    short = _Split(4, bad={1})
    few = CalibrationImages(short, 4, lambda s: s)
    assert len(few) == 4  # planned, until read
    assert [int(x[0, 0, 0]) for x in few] == [0, 2, 3] and len(few) == 3


def test_none_decoding_is_e901_when_opened():
    from cfgparse import CfgError
    from darkcfg.export.int8 import CalibrationImages

    with pytest.raises(CfgError) as caught:
        CalibrationImages(_Split(3, bad={0, 1, 2}), 2, lambda s: s, "set.data")
    d = caught.value.diagnostics[0]
    assert d.code == "E901" and d.path == "set.data"
    assert d.message.startswith("cannot calibrate: not one training image decodes")


def test_open_int8_data_decodes_nothing_ahead_and_batching_keeps_the_ranges(tmp_path,
                                                                           monkeypatch):
    """open_int8_data decoded all N images up front; it now decodes the first only. The
    calibration reads 8 to a run: the MinMax ranges (per tensor, over the batch axis too) are
    the ones of one image a run."""
    from darkcfg.data import EmbeddedShapes
    from darkcfg.export.int8 import Quantizer
    from darkcfg.export.onnx import export_onnx

    reads = []
    real = EmbeddedShapes.__getitem__
    monkeypatch.setattr(EmbeddedShapes, "__getitem__", lambda s, i: reads.append(i) or real(s, i))
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    net, netcfg, _ = build_network(str(cfg), [], "alexeyab", 0)
    net.eval()
    data = open_int8_data(net, netcfg, None, 0, calib_images=64)
    assert len(reads) == 1
    assert data.calibration[:3].shape == (3, 3, 32, 32)
    export_onnx(net, tmp_path / "fp32.onnx", dynamic_batch=True)
    ranges = []
    for batch in (1, 8):
        work = tmp_path / f"b{batch}"
        work.mkdir()
        Quantizer(tmp_path / "fp32.onnx", str(work)).calibrate(data.calibration, batch=batch)
        ranges.append(_ranges(work / "ranges.json"))
    assert ranges[0].keys() == ranges[1].keys() and len(data.calibration) == 64
    for name, (low, high) in ranges[0].items():  # the same but for float rounding
        assert ranges[1][name] == pytest.approx((low, high), rel=1e-5, abs=1e-6), name


def _ranges(path) -> dict[str, tuple[float, float]]:
    """{tensor: (lowest, highest)} of an onnxruntime calibration cache."""
    import json

    return {name: tuple(float(np.ravel(r[end]["data"])[0]) for end in ("lowest", "highest"))
            for name, r in json.loads(path.read_text())["data"].items()}


@pytest.mark.parametrize("cfg_text, has", [(DETECTOR, "detects 2 classes"),
                                           (SMALL, "has 4 outputs")],
                         ids=["detector", "classifier"])
def test_classes_above_the_networks_is_a_usage_error(tmp_path, capsys, cfg_text, has):
    """--classes 99 with --int8 on the embedded data was an E901 from the data (as if a file
    were bad); it is the usage error E100 at --classes, as --classes 0 is."""
    from darkcfg.cli import main as darkcfg_main

    cfg = tmp_path / "m.cfg"
    cfg.write_text(cfg_text)
    out = tmp_path / "m.onnx"
    assert darkcfg_main(["export", str(cfg), "--out", str(out), "--int8", "--calibrate",
                         "embedded", "--classes", "99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"--classes: error[E100]: --classes 99: the network {has}"), err
    assert "help: use --classes 1.." in err and not out.exists()
