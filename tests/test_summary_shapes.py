"""Every cfg real Darknet parsed (../shared/darknet/shapes) builds on the meta device with
Darknet's per-layer output shapes, weight float count and BFLOPs; plus the summary's structure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders import build
from builders.summary import summary_json, summary_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "darknet"
SHAPES = SHARED / "shapes"
# folder -> the Darknet whose formulas the dump shows
FOLDERS = {"alexeyab": "alexeyab", "pjreddie": "alexeyab", "pjreddie-native": "pjreddie",
           "alexeyab-failed-via-pjreddie": "pjreddie"}
BFLOPS_TOLERANCE = 0.005


def _dumps() -> list:
    if not SHAPES.is_dir():
        return [pytest.param(None, id="no-shared-darknet")]
    return [pytest.param(path, id=f"{path.parent.name}/{path.stem}")
            for folder in FOLDERS for path in sorted((SHAPES / folder).glob("*.json"))
            if not path.name.startswith("_")]


@pytest.mark.parametrize("path", _dumps())
def test_shapes_weights_bflops_equal_darknet(path):
    if path is None:
        pytest.skip("../shared/darknet/shapes is not available")
    dump = json.loads(path.read_text())
    net = build((path.parent / dump["cfg"]).resolve(), device="meta",
                flavor=FOLDERS[path.parent.name])
    layers = dump["layers"]
    assert len(net.layers) == len(layers), "layer count"
    ours = [(s.c, s.h, s.w, s.size) for s in net.shapes]
    theirs = [(d["out_c"], d["out_h"], d["out_w"], d["outputs"]) for d in layers]
    wrong = [(i, layers[i]["type"], o, t) for i, (o, t) in enumerate(zip(ours, theirs,
                                                                        strict=True)) if o != t]
    assert not wrong, f"(index, type, ours c/h/w/outputs, Darknet's): {wrong[:5]}"

    floats = [sum(t.numel() for t in layer.darknet_arrays()) for layer in net.layers]
    wrong = [(i, layers[i]["type"], f, d["weight_floats"])
             for i, (f, d) in enumerate(zip(floats, layers, strict=True))
             if f != d["weight_floats"]]
    assert not wrong, f"(index, type, our weight floats, Darknet's): {wrong[:5]}"
    assert net.num_weight_floats() == dump["total_weight_floats"]

    if "total_bflops" in dump:  # AlexeyAB's total: every layer
        ours_bf, theirs_bf = net.bflops(), dump["total_bflops"]
        field, counted = "bflops", range(len(layers))
    else:  # pjreddie prints convolutional layers only
        counted = [i for i, d in enumerate(layers) if d["type"] == "convolutional"]
        ours_bf = sum(float(net.layers[i].bflops) for i in counted)
        theirs_bf, field = dump["total_conv_bflops"], "conv_bflops"
    detail = [(i, layers[i]["type"], round(float(net.layers[i].bflops), 6), layers[i].get(field))
              for i in counted
              if abs(float(net.layers[i].bflops) - layers[i].get(field, 0)) > 1e-6]
    assert ours_bf == pytest.approx(theirs_bf, rel=BFLOPS_TOLERANCE, abs=1e-6), \
        f"(index, type, ours, Darknet's) where they differ: {detail[:8]}"


# -- the summary itself ---------------------------------------------------------------------------

SMALL = """
[net]
width=16
height=12
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
batch_normalize=1
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=5
activation=linear

[softmax]
"""


def test_summary_json_has_exactly_the_contract_fields():
    net = build(SMALL, device="meta")
    info = summary_json(net)
    assert set(info) == {"layers", "params", "weight_floats", "bflops"}
    assert [set(layer) for layer in info["layers"]] == \
        [{"index", "type", "output", "outputs", "params", "bflops"}] * 4
    assert [layer["type"] for layer in info["layers"]] == \
        ["convolutional", "maxpool", "connected", "softmax"]
    assert [layer["index"] for layer in info["layers"]] == [0, 1, 2, 3]
    # Darknet's out_c, out_h, out_w; softmax reports only a flat size
    assert [layer["output"] for layer in info["layers"]] == \
        [[8, 6, 8], [8, 3, 4], [5, 1, 1], [0, 0, 0]]
    assert [layer["outputs"] for layer in info["layers"]] == [384, 96, 5, 5]
    conv_params = 8 * 3 * 3 * 3 + 8 + 8  # weights, BN bias (Darknet's biases), BN scales
    connected_params = 96 * 5 + 5
    assert [layer["params"] for layer in info["layers"]] == [conv_params, 0, connected_params, 0]
    assert info["params"] == conv_params + connected_params
    assert info["weight_floats"] == conv_params + 16 + connected_params  # + rolling mean/var
    assert info["bflops"] == pytest.approx(sum(layer["bflops"] for layer in info["layers"]))
    assert info["layers"][0]["bflops"] == pytest.approx(2 * 8 * 27 * 6 * 8 / 1e9)
    json.dumps(info)  # serialisable as is


def test_summary_text_lists_every_layer_and_the_totals():
    net = build(SMALL, device="meta")
    text = summary_text(net)
    lines = text.splitlines()
    assert len(lines) == 1 + len(net.layers) + 1
    for word in ("layer", "type", "filters", "input", "output", "BFLOPs", "params"):
        assert word in lines[0]
    conv = lines[1].split()
    assert conv[:3] == ["0", "convolutional", "8"]
    assert "16 x  12 x    3 ->    8 x   6 x    8" in lines[1]
    assert lines[4].split()[:2] == ["3", "softmax"]
    info = summary_json(net)
    assert f"{info['params']:,} params" in lines[-1]
    assert f"{info['weight_floats']:,} weight floats" in lines[-1]
    assert f"{info['bflops']:.3f} BFLOPs" in lines[-1]


# -- the detectors shipped in cfg/ ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CORPUS = SHARED / "corpus" / "alexeyab"
# what each shipped cfg changes from its Darknet source, per its header comment
SHIPPED = {"yolov3-tiny": {"batch": 64, "subdivisions": 2}, "yolov4-tiny": {}}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_detector_is_darknets_network(name, capsys):
    import darkcfg.cli.flags as runner
    from cfgparse import parse

    path = ROOT / "cfg" / f"{name}.cfg"
    assert runner.main(["check", "--strict", str(path)]) == 0, capsys.readouterr().out
    if not (SHAPES / "alexeyab" / f"{name}.json").is_file():
        pytest.skip("../shared/darknet is not available")
    ours, source = list(parse(path)), list(parse(CORPUS / f"{name}.cfg"))
    assert len(ours) == len(source)
    assert dict(ours[0].values()) == {**dict(source[0].values()), **SHIPPED[name]}
    assert ours[1:] == source[1:]  # every layer as Darknet has it
    dump = json.loads((SHAPES / "alexeyab" / f"{name}.json").read_text())
    net = build(path, device="meta")
    assert [(s.c, s.h, s.w) for s in net.shapes] == \
        [(d["out_c"], d["out_h"], d["out_w"]) for d in dump["layers"]]
    assert net.num_weight_floats() == dump["total_weight_floats"]
