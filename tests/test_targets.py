"""`darkcfg check --target opencv|onnx|tensorrt` (darkcfg/lint/targets.py): warnings W601-W604
for what a deployment runtime does not run as Darknet does, torch-free; the OpenCV data checked
against OpenCV itself where it is installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cfgparse import parse
from cfgparse.errors import CODES, WARNING
from cfgparse.schema import ACTIVATIONS, SECTIONS
from darkcfg.lint.cli import main
from darkcfg.lint.targets import OPENCV_ACTIVATIONS, OPENCV_SECTIONS, check_target

ROOT = Path(__file__).resolve().parents[1]
BASE = """[net]
width=32
height=32
channels=3

[convolutional]
filters=4
size=3
pad=1
activation=leaky
"""


def cfg(tmp_path, text: str) -> Path:
    path = tmp_path / "model.cfg"
    path.write_text(BASE + textwrap.dedent(text))
    return path


def codes(path: Path, target: str) -> list[tuple[str, int]]:
    return [(d.code, d.line) for d in check_target(parse(path), target)]


def test_codes_are_in_the_table():
    for code in ("W601", "W602", "W603", "W604"):
        assert code in CODES


def test_opencv_names_section_activation_and_keys(tmp_path):
    path = cfg(tmp_path, """
        [convolutional]
        filters=4
        size=3
        pad=1
        activation=relu6
        flipped=1

        [local]
        filters=2
        size=1

        [softmax]
        groups=2
        """)
    found = check_target(parse(path), "opencv")
    assert [(d.code, d.line) for d in found] == [("W602", 16), ("W603", 17), ("W601", 19),
                                                 ("W603", 24)]
    assert all(d.severity == WARNING for d in found)
    assert "relu6" in found[0].message and "[local]" in found[2].message


def test_clean_cfg_has_no_target_warnings():
    for target in ("opencv", "onnx", "tensorrt"):
        assert codes(ROOT / "cfg" / "yolov3-tiny.cfg", target) == []


def test_dious_nms_is_named_for_tensorrt_only():
    # yolov4-tiny's heads ask for greedynms: the ONNX graph builds it (a Loop over Unique
    # groups), TensorRT's parser has no Unique and its NMS plugin is IoU-based
    found = codes(ROOT / "cfg" / "yolov4-tiny.cfg", "tensorrt")
    assert [c for c, _ in found] == ["W604", "W604"]
    assert codes(ROOT / "cfg" / "yolov4-tiny.cfg", "onnx") == []
    assert codes(ROOT / "cfg" / "yolov4-tiny.cfg", "opencv") == []


def test_opencv_softmax_rules_need_the_input_shape(tmp_path):
    """Measured against OpenCV 4.x (tests/test_opencv.py): its softmax ignores `temperature`
    (cifar.test.cfg) and normalises channels per position where Darknet normalises the whole
    c*h*w input (go.cfg); the second needs the graph's shapes, so only the build finds it."""
    from darkcfg.lint.stages import Options, check_file

    spatial = cfg(tmp_path, """
        [softmax]
        temperature=3
        """)
    assert codes(spatial, "opencv") == [("W604", 13)]  # block rules: the key only
    found = [(d.code, d.line) for d in check_file(spatial, Options(targets=("opencv",)))
             if d.code.startswith("W60")]
    assert found == [("W604", 12), ("W604", 13)]
    pooled = tmp_path / "pooled.cfg"
    pooled.write_text(BASE + "\n[avgpool]\n\n[softmax]\n")
    assert not [d for d in check_file(pooled, Options(targets=("opencv",)))
                if d.code.startswith("W60")]
    # without --target nothing about runtimes, with the build or without
    assert not [d for d in check_file(spatial) if d.code.startswith("W60")]


def test_opencv_crop_needs_noadjust(tmp_path):
    """Measured against OpenCV 4.14 (vgg-16.cfg, and a [crop] + [convolutional] cfg): after a
    [crop] that rescales (noadjust=0, Darknet's default) OpenCV refuses to run; with
    noadjust=1 it runs and matches."""
    for noadjust, want in (("", [("W603", 6)]), ("noadjust=1", [])):
        path = tmp_path / "c.cfg"
        path.write_text(f"[net]\nwidth=32\nheight=32\nchannels=3\n\n[crop]\ncrop_width=28\n"
                        f"crop_height=28\n{noadjust}\n\n[convolutional]\nfilters=4\nsize=1\n"
                        "activation=linear\n")
        assert codes(path, "opencv") == want


def test_opencv_connected_batch_norm_is_named(tmp_path):
    """OpenCV 4.x loads a batch-normalized [connected] layer's .weights misplaced (measured in
    tests/test_opencv.py): W603 on its batch_normalize line."""
    path = cfg(tmp_path, """
        [connected]
        output=4
        batch_normalize=1
        activation=leaky

        [connected]
        output=2
        batch_normalize=0
        activation=leaky
        """)
    assert codes(path, "opencv") == [("W603", 14)]


def test_opencv_default_activation_and_flat_input_are_named(tmp_path):
    """Found by fuzzing .weights through OpenCV 4.14 (tests/test_opencv.py measures both): a
    [convolutional]/[connected] without activation= is logistic in Darknet and linear in OpenCV
    (W604 at the section), and a flat [net] (inputs= alone) loads in OpenCV but does not run
    (W603 at inputs)."""
    path = cfg(tmp_path, """
        [convolutional]
        filters=4
        size=1

        [connected]
        output=2
        """)
    assert codes(path, "opencv") == [("W604", 12), ("W604", 16)]
    assert codes(path, "onnx") == codes(path, "tensorrt") == []
    assert "Darknet applies its default, logistic" in check_target(parse(path), "opencv")[0].message
    flat = tmp_path / "flat.cfg"
    flat.write_text("[net]\ninputs=16\n\n[connected]\noutput=2\nactivation=linear\n")
    assert codes(flat, "opencv") == [("W603", 2)]
    flat.write_text("[net]\ninputs=16\nwidth=1\nheight=1\nchannels=16\n\n[connected]\n"
                    "output=2\nactivation=linear\n")
    assert codes(flat, "opencv") == []


@pytest.mark.parametrize("section, code", [
    ("[convolutional]\nsize=1\nactivation=linear\n", "W603"),  # filters: OpenCV refuses
    ("[convolutional]\nfilters=2\nactivation=linear\n", "W603"),  # size
    ("[convolutional]\nfilters=2\nsize=3\nstride_x=2\nstride_y=1\nactivation=linear\n",
     "W604"),
    ("[maxpool]\nsize=2\n", "W604"), ("[maxpool]\nstride=1\n", "W604"),
    ("[maxpool]\nsize=2\nstride=2\nstride_y=1\n", "W604"),
    ("[maxpool]\nsize=2\nstride=2\n", None), ("[maxpool]\nstride=2\n", None),
    ("[upsample]\n", "W604"), ("[upsample]\nstride=2\n", None), ("[reorg]\n", "W604"),
    ("[yolo]\nanchors=1,1\nnum=1\nclasses=1\n", "W603"),
    ("[yolo]\nmask=0\nnum=1\nclasses=1\n", "W603"),
    ("[yolo]\nmask=0\nanchors=1,1, 2,2\nclasses=1\n", "W603"),  # num: Darknet's 1
    ("[yolo]\nmask=0\nanchors=1,1\nclasses=1\n", None),
    ("[convolutional]\nbatch_normalize=2\nfilters=2\nsize=1\nactivation=linear\n", "W603"),
    ("[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\nmask=0\nanchors=1,1\n"
     "num=1\nclasses=1\n[maxpool]\nsize=2\nstride=2\n", "W603"),
    ("[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\nmask=0\nanchors=1,1\n"
     "num=1\nclasses=1\n[route]\nlayers=-2\n", None),
    ("[upsample]\nstride=-2\n", "W603"),
    ("[reorg]\nstride=2\nreverse=1\n", "W604"), ("[reorg]\nstride=2\nreverse=0\n", None),
    ("[convolutional]\nfilters=2\nsize=3\npad=1\ndilation=2\nactivation=linear\n", "W604"),
    ("[connected]\noutput=8\nactivation=linear\n[maxpool]\nsize=1\nstride=1\n", "W603"),
    ("[connected]\noutput=8\nactivation=linear\n[connected]\noutput=2\nactivation=linear\n",
     None),
])
def test_opencv_defaults_that_differ_from_darknets(section, code, tmp_path):
    """Keys left out whose OpenCV default is not Darknet's, and what OpenCV computes otherwise
    (found by fuzzing; each measured in tests/test_opencv.py)."""
    path = tmp_path / "m.cfg"
    path.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n" + section)
    assert [c for c, _ in codes(path, "opencv")] == ([code] if code else [])
    assert codes(path, "onnx") == []


def test_opencv_sam_of_two_shapes_needs_the_graph(tmp_path):
    """[sam] of a [reorg] output (32x3x3) and a 8x6x6 layer: Darknet multiplies the 288 values
    in turn, OpenCV's Eltwise refuses (measured in tests/test_opencv.py); only the build knows
    the shapes."""
    from darkcfg.lint.stages import Options, check_file

    path = tmp_path / "sam.cfg"
    path.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=8\n"
                    "size=3\nactivation=linear\n\n[convolutional]\nfilters=8\nsize=1\n"
                    "activation=linear\n\n[reorg]\nstride=2\n\n[sam]\nfrom=-3\n")
    assert codes(path, "opencv") == []
    found = [(d.code, d.line) for d in check_file(path, Options(targets=("opencv",)))]
    assert found == [("W603", 19)]
    assert "[sam] multiplies a 8x6x6 layer by a 32x3x3 one" in \
        check_file(path, Options(targets=("opencv",)))[0].message


_C4 = "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
_C2 = "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n"
_FC = "[connected]\noutput=6\nactivation=linear\n"
_C6 = "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
_YOLO = _C4 + _C6 + "[yolo]\nmask=0\nanchors=1,1\nnum=1\nclasses=1\n"


@pytest.mark.parametrize("section, code, line", [
    (_C4 + "[cost]\n[softmax]\n", "W604", 12),  # Darknet: the softmax of zeros
    (_C4 + "[cost]\n[route]\nlayers=-1\n", "W604", 12),  # only the graph resolves layers=
    (_C4 + "[cost]\n[route]\nlayers=-2\n", None, 0),
    (_C4 + "[avgpool]\n[softmax]\n[cost]\n", None, 0),
    # OpenCV counts a 4x8x8 layer before a [connected] as 256 channels (only the graph knows)
    (_C4 + _FC + "[route]\nlayers=-2\n[maxpool]\nsize=2\nstride=2\n" + _C2, "W603", 14),
    (_C4 + _FC + "[route]\nlayers=-2\n" + _FC, None, 0),
    (_C4 + "[avgpool]\n" + _FC + "[route]\nlayers=-2\n" + _C2, None, 0),
    # OpenCV's [yolo] outputs the decoded boxes, also to a layer naming it
    (_YOLO + "[route]\nlayers=-2\n" + _C6 + "[shortcut]\nfrom=-3\nactivation=linear\n",
     "W603", 26),
    (_YOLO + "[route]\nlayers=-2\n" + _C6 + "[shortcut]\nfrom=-2\nactivation=linear\n",
     None, 0),
    (_YOLO + "[route]\nlayers=-1\n", "W603", 20),
    # OpenCV's Eltwise refuses its [connected] output, (N, C), with an image
    (_C4 + "[avgpool]\n" + _FC + "[shortcut]\nfrom=-2\nactivation=linear\n", "W603", 15),
    (_C4 + "[avgpool]\n" + _FC + "[dropout]\n[shortcut]\nfrom=-2\nactivation=linear\n",
     None, 0),
    # OpenCV sizes a [connected] after a [scale_channels] by the scales (1x1), not the 8x8 map
    (_C4 + "[avgpool]\n[scale_channels]\nfrom=-2\n" + _C2 + _FC, "W603", 12),
    (_C4 + "[avgpool]\n[scale_channels]\nfrom=-2\n[avgpool]\n" + _FC, None, 0),
    (_C4 + "[avgpool]\n[route]\nlayers=-2\n" + _FC, "W603", 12),  # (the same for a [route])
    (_C4 + "[avgpool]\n" + _FC + "[route]\nlayers=-2,-1\n", "W603", 15),  # Concat, as Eltwise
])
def test_opencv_layers_reading_what_opencv_outputs_otherwise(section, code, line, tmp_path):
    """A layer reading a [cost] (Darknet: zeros at inference; OpenCV: its input), the one after
    it or one naming it in layers=/from=; a [route] to the layer before a [connected], then a
    [convolutional]; a layer naming a [yolo] (OpenCV: the decoded boxes); a [shortcut] of a
    [connected] output and an image; a [connected] after a [scale_channels] or [route] of a larger
    map (measured in tests/test_opencv.py)."""
    from darkcfg.lint.stages import Options, check_file

    path = tmp_path / "m.cfg"
    path.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n" + section)
    found = [(d.code, d.line) for d in check_file(path, Options(targets=("opencv",)))
             if d.code.startswith("W60")]
    assert found == ([(code, line)] if code else [])


def test_a_cfg_of_no_layers_is_checked_for_every_target(tmp_path):
    """`[net]` alone (fuzzing's minimised flat net): the shape rules' zip of the layers with
    their inputs was one longer than the layers, a ValueError reported as E300 'a darkcfg
    bug' by `check --target opencv|onnx|tensorrt`."""
    from darkcfg.lint.stages import Options, check_file

    path = tmp_path / "empty.cfg"
    path.write_text("[net]\ninputs=256\n")
    for target in ("onnx", "tensorrt"):
        assert check_file(path, Options(targets=(target,))) == []
    assert [d.code for d in check_file(path, Options(targets=("opencv",)))] == ["W603"]


def test_recurrent_sections_for_onnx(tmp_path):
    path = cfg(tmp_path, """
        [rnn]
        output=8
        hidden=8
        """)
    assert [c for c, _ in codes(path, "onnx")] == ["W601"]
    assert [c for c, _ in codes(path, "opencv")] == ["W601"]


def test_command_line(tmp_path, capsys):
    path = cfg(tmp_path, """
        [convolutional]
        filters=4
        size=3
        pad=1
        activation=gelu
        """)
    assert main(["--no-build", "--target", "opencv", str(path)]) == 0  # warnings only
    out = capsys.readouterr().out
    assert "warning[W602]" in out and "activation=gelu" in out
    assert main(["--no-build", "--strict", "--target", "opencv", str(path)]) == 1
    capsys.readouterr()
    assert main(["--no-build", str(path)]) == 0  # without --target: nothing about runtimes
    assert "W602" not in capsys.readouterr().out


TREE_TAIL = """
    [convolutional]
    filters=8
    size=1
    activation=linear

    [region]
    classes=3
    coords=4
    num=1
    anchors=1,1
    softmax=1
    tree=h.tree
    """


@pytest.mark.parametrize("tail", [TREE_TAIL, """
    [connected]
    output=6
    activation=linear

    [softmax]
    tree=h.tree
    """])
def test_an_absent_tree_file_is_the_exports_error(tmp_path, capsys, monkeypatch, tail):
    """yolo9000 (tree=data/9k.tree) passed `check --target onnx` away from a Darknet checkout,
    and `darkcfg export` then stopped on the absent hierarchy file: the check reports the
    export's own E901 (exit 2, as export's), at the same place; with the file both pass."""
    monkeypatch.chdir(tmp_path)
    path = cfg(tmp_path, tail)
    line = path.read_text().splitlines().index("tree=h.tree") + 1
    for target in ("onnx", "tensorrt"):
        assert main(["--target", target, str(path)]) == 2
        out = capsys.readouterr().out
        assert f"{path}:{line}:6: error[E901]: " in out and "cannot open the hierarchy file " \
            "'h.tree'" in out and "help: run from the folder that holds it" in out, out
    assert main(["--target", "opencv", str(path)]) == 0  # OpenCV reads the cfg, not the export
    assert main([str(path)]) == 0 and "E901" not in capsys.readouterr().out  # it builds
    if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        return
    from darkcfg.cli.export import main as export

    assert export([str(path), "--out", "m.onnx"]) == 2
    assert f"{path}:{line}:6: error[E901]: cannot open the hierarchy file 'h.tree'" in \
        capsys.readouterr().err
    (tmp_path / "h.tree").write_text("a -1\nb -1\nc -1\n" if "region" in tail else
                                     "a -1\nb -1\nc 0\nd 0\ne 0\nf 0\n")
    assert main(["--target", "onnx", str(path)]) == 0
    capsys.readouterr()
    assert export([str(path), "--out", "m.onnx"]) == 0, capsys.readouterr().err


def test_torch_free():
    model = str(ROOT / "cfg" / "yolov4-tiny.cfg")
    code = ("import sys; from darkcfg.lint.targets import check_target; "
            "from darkcfg.lint.cli import main; "
            f"main(['--no-build', '--target', 'opencv', {model!r}]);"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


def _opencv_loads(tmp_path, body: str) -> bool:
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Darknet importer (OpenCV 5 removed it)")
    path = tmp_path / "one.cfg"
    path.write_text(BASE + body)
    try:
        cv2.dnn.readNetFromDarknet(str(path))
        return True
    except cv2.error:
        return False


EXTRA = {"route": "layers=-1", "shortcut": "from=-2", "scale_channels": "from=-2",
         "sam": "from=-2", "yolo": "mask=0\nanchors=1,1\nnum=1\nclasses=1",
         "region": "anchors=1,1\nnum=1\nclasses=1", "connected": "output=2",
         "crop": "crop_width=4\ncrop_height=4", "convolutional": "filters=4\nsize=1"}


def test_opencv_lists_agree_with_opencv(tmp_path):
    """The rules' data against the installed OpenCV: every section and activation darkcfg
    knows, one at a time after a [convolutional]."""
    pytest.importorskip("cv2")
    for section in sorted(SECTIONS):
        if section == "net":
            continue
        body = f"\n[convolutional]\nfilters=4\nsize=3\npad=1\n\n[{section}]\n" + \
            EXTRA.get(section, "") + "\n"
        assert _opencv_loads(tmp_path, body) == (section in OPENCV_SECTIONS), section
    for activation in ACTIVATIONS:
        body = f"\n[convolutional]\nfilters=4\nsize=3\npad=1\nactivation={activation}\n"
        assert _opencv_loads(tmp_path, body) == (activation in OPENCV_ACTIVATIONS), activation
