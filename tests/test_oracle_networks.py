"""Whole networks against real Darknet (../shared/darknet/oracle): every shipped layer output,
for the spec and the calibrated weights, within the tolerances the oracle README gives; every
other layer coarsely through the stats Darknet recorded. (The unit cfgs `u_*`, one layer type
each, are the layer families' tests.)

Weights are generated once into .oracle_cache/ by the oracle's own make_weights.py."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import (
    ORACLE,
    oracle_index,
    oracle_input,
    oracle_outputs,
    rel_err,
    run_network,
    weights_file,
)

from builders import build
from builders.weights import load_weights
from cfgparse import CfgError
from darkcfg.export.dump import dump_outputs

SPEC_TOLERANCE = 1e-4
# calibrated: the README's conditioning (perturbation response 1.4e-3 for yolov4)
CALIBRATED_TOLERANCE = {"yolov4": 2e-3}
# stats of layers Darknet did not ship: a coarse check (float32 drift accumulates in deep nets)
STATS_TOLERANCE = 1e-3

# Darknet's CPU activation bugs, src/activations.c #2: on CPU, Darknet's activate() has no case for
# these activations, so any
# layer but [convolutional] (and [shortcut] for swish/mish) outputs zeros with them, and
# [convolutional] does with relu6. We implement the intended formulas, so such layers cannot match
# Darknet's dump. No other §11 item makes Darknet's output differ from its intended formula.
ZERO_ON_CPU = {"relu6", "mish", "swish", "hard_mish", "normalize_channels",
               "normalize_channels_softmax", "normalize_channels_softmax_maxval"}
# The layers excluded from the comparison for that reason, per target: none of the networks
# uses such a layer (test_darknet_cpu_bug_exclusions checks this list against the cfgs).
EXCLUDED: dict[str, dict[int, str]] = {}


def _targets(calibrated: bool) -> list:
    folder = ORACLE / ("out-calibrated" if calibrated else "out")
    if not folder.is_dir():
        return [pytest.param(None, id="no-oracle")]
    return [pytest.param(p.name, id=p.name) for p in sorted(folder.iterdir())
            if (p / "index.json").exists() and not p.name.startswith("u_")]


def _compare(name: str, calibrated: bool, tolerance: float) -> None:
    if name is None:
        pytest.skip("../shared/darknet/oracle is not available")
    ours = run_network(name, calibrated)
    refs = oracle_outputs(name, calibrated)
    excluded = EXCLUDED.get(name, {})
    errors = {i: rel_err(ours[i], ref) for i, ref in refs.items() if i not in excluded}
    assert errors, "no shipped layer to compare"
    bad = {i: f"{e:.2e}" for i, e in errors.items() if not e < tolerance}
    assert not bad, f"layers over rel.err {tolerance:g}: {bad}"

    # unshipped layers: Darknet's recorded min / max / mean |x|
    for layer in oracle_index(name, calibrated)["layers"]:
        i = layer["idx"]
        if layer.get("file") or i in excluded:
            continue
        stats, got = layer["stats"], ours[i]
        assert got.size == layer["count"], f"layer {i}: size {got.size} != {layer['count']}"
        scale = max(abs(stats["min"]), abs(stats["max"]), 1e-30)
        for key, value in (("min", got.min()), ("max", got.max()),
                           ("absmean", np.abs(got).mean())):
            assert abs(float(value) - stats[key]) <= STATS_TOLERANCE * scale, \
                f"layer {i} ({layer['type']}): {key} {float(value):.6g} != {stats[key]:.6g}"


@pytest.mark.parametrize("name", _targets(calibrated=False))
def test_spec_weights_outputs_equal_darknet(name):
    _compare(name, False, SPEC_TOLERANCE)


@pytest.mark.parametrize("name", _targets(calibrated=True))
def test_calibrated_weights_outputs_equal_darknet(name):
    _compare(name, True, CALIBRATED_TOLERANCE.get(name, SPEC_TOLERANCE))


def _zero_on_cpu(net) -> dict[int, str]:
    """The layers §11 #2 zeroes on Darknet's CPU build, from the built network's blocks."""
    found = {}
    for meta in net.meta:
        act = meta.block.get("activation")
        if act not in ZERO_ON_CPU:
            continue
        implemented = (meta.type == "convolutional" and act != "relu6") or (
            meta.type == "shortcut" and act in ("swish", "mish"))
        if not implemented:
            found[meta.index] = f"[{meta.type}] activation={act}"
    return found


@pytest.mark.parametrize("name", _targets(calibrated=False))
def test_darknet_cpu_bug_exclusions(name):
    """EXCLUDED names exactly the layers of each target that Darknet's CPU bug zeroes."""
    if name is None:
        pytest.skip("../shared/darknet/oracle is not available")
    flavor = "pjreddie" if "pjreddie" in oracle_index(name)["engine"].lower() else "alexeyab"
    net = build(ORACLE / "cfg" / f"{name}.cfg", device="meta", flavor=flavor)
    assert _zero_on_cpu(net) == EXCLUDED.get(name, {})


def test_the_bug_rule_finds_affected_layers():
    """The rule above on a cfg that has them (so an empty EXCLUDED is a finding, not a blind
    spot): [activation] mish and [connected] swish are zeroed; conv mish and conv relu are not."""
    text = ("[net]\nwidth=4\nheight=4\nchannels=2\n\n[activation]\nactivation=mish\n\n"
            "[convolutional]\nfilters=2\nactivation=mish\n\n[convolutional]\nfilters=2\n"
            "activation=relu6\n\n[convolutional]\nfilters=2\nactivation=relu\n\n"
            "[connected]\noutput=3\nactivation=swish\n")
    assert _zero_on_cpu(build(text, device="meta")) == {
        0: "[activation] activation=mish", 2: "[convolutional] activation=relu6",
        4: "[connected] activation=swish"}


def test_dump_outputs_equal_darknet(tmp_path):
    """--dump-outputs: the output layers (or every layer) in Darknet's memory order."""
    name = "yolov3-tiny"  # every layer shipped, two [yolo] heads
    if not (ORACLE / "out" / name).is_dir():
        pytest.skip("../shared/darknet/oracle is not available")
    net = build(ORACLE / "cfg" / f"{name}.cfg")
    load_weights(net, weights_file(name))
    refs = oracle_outputs(name)
    x = np.concatenate([oracle_input(name)] * 2)  # a batch of two: each item dumped alike
    written = dump_outputs(net, x, tmp_path / "out.npz")
    assert written == [16, 23] and net.training  # the heads (the last is one); mode restored
    with np.load(tmp_path / "out.npz") as dump:
        assert sorted(dump.files) == ["layer16", "layer23"]
        for i in written:
            assert dump[f"layer{i}"].shape == (2, refs[i].size)
            for item in dump[f"layer{i}"]:
                assert rel_err(item, refs[i]) < SPEC_TOLERANCE
    path = tmp_path / "all"  # no .npz suffix: numpy must not add one
    assert dump_outputs(net, x[:1], path, all_layers=True) == list(range(len(net.layers)))
    with np.load(path) as dump:
        errors = {i: rel_err(dump[f"layer{i}"][0], ref) for i, ref in refs.items()}
    assert max(errors.values()) < SPEC_TOLERANCE, errors


def test_dump_outputs_rejects_bad_input(tmp_path):
    net = build("[net]\nwidth=4\nheight=3\nchannels=2\n\n[maxpool]\nsize=2\nstride=2\n")
    for bad in (np.zeros((1, 2, 4, 3), np.float32), np.zeros((2, 3, 4), np.float32),
                np.zeros((1, 2, 3, 4), np.int64)):
        with pytest.raises(CfgError):
            dump_outputs(net, bad, tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())
    ok = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    assert dump_outputs(net, ok, tmp_path / "x.npz") == [0]
    with np.load(tmp_path / "x.npz") as dump:  # 2 x 2 x 2: Darknet pads the odd height
        assert dump["layer0"].tolist() == [[5, 7, 9, 11, 17, 19, 21, 23]]
