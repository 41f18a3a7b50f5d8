"""Differential fuzzing of what darkcfg writes for other runtimes: random small cfgs (mutated by
test_fuzz_build's strategies) that `check --target onnx` passes export (`darkcfg export`'s
library function) to an ONNX file whose onnxruntime outputs equal the network's forward; those
that `check --target opencv` passes without W601-W604 give OpenCV's Darknet importer
(`cv2.dnn.readNetFromDarknet`) darkcfg's cfg and .weights, and OpenCV's outputs equal darkcfg's.
Where a runtime cannot do what Darknet does, the target check must say so before anyone exports.

DARKCFG_FUZZ_EXAMPLES=500 for a longer hunt (the slow tests draw that many, default 40; the fast
ones a tenth, at least 6)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_build import alarm, example, exercise, forward, section_mutated, value_mutated

from cfgparse.errors import ERROR
from darkcfg.lint.stages import Options, check_file

# small networks of the sections both runtimes take, at 8-32 px (an ONNX export is seconds)
DETECTOR = """[net]
width=16
height=16
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=mish
[convolutional]
filters=8
size=1
stride=1
pad=1
activation=logistic
[shortcut]
from=-2
activation=linear
[route]
layers=-1,-3
[upsample]
stride=2
[convolutional]
filters=18
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=2,3, 4,5, 6,7
classes=1
num=3
"""
CLASSIFIER = """[net]
width=16
height=16
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=swish
[maxpool]
size=2
stride=1
[convolutional]
filters=8
size=1
groups=2
activation=relu
[sam]
from=-2
[reorg]
stride=2
[avgpool]
[connected]
output=5
activation=linear
[softmax]
"""
SEEDS = [DETECTOR, CLASSIFIER]
CFGS = st.one_of(value_mutated(SEEDS), section_mutated(SEEDS))
SIZES = st.tuples(st.sampled_from([8, 16, 17, 32]), st.sampled_from([8, 16, 31]),
                  st.just((16, 16)))

EXAMPLES = int(os.environ.get("DARKCFG_FUZZ_EXAMPLES", "40"))  # (the suite's time: ~1 s each)
FAST = settings(max_examples=max(EXAMPLES // 10, 6), deadline=None, database=None,
                derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                         HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=EXAMPLES)
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="pip install 'darkcfg[export]'")
ONNX_TOLERANCE = 1e-4  # as tests/test_export.py
OPENCV_TOLERANCE = 1e-4  # as tests/test_opencv.py
SECONDS = 120  # one example, all steps


def warned(path: Path, target: str) -> str | None:
    """The first error or W601-W604 of `check --target` on the cfg, else None. (And W202, a
    key given twice: Darknet takes the first value, OpenCV's importer the last, measured.)"""
    codes = ("W601", "W602", "W603", "W604") + (("W202",) if target == "opencv" else ())
    for d in check_file(path, Options(targets=(target,))):
        if d.severity == ERROR or d.code in codes:
            return d.code
    return None


def finite_outputs(net, x) -> list | None:
    out = forward(net, x)
    return out if out is not None and all(torch.isfinite(t).all() for t in out) else None


def onnx_agrees(net, other, folder: Path) -> str:
    """The ONNX export of a cfg `check --target onnx` passes succeeds (its own onnxruntime check
    included), and onnxruntime's outputs equal the network's forward (the fast path too)."""
    from darkcfg.export.onnx import example_input, export, max_rel_error, onnx_session, run_onnx

    code = warned(folder / "small.cfg", "onnx")
    if code is not None:
        return f"target {code}"
    net.eval()
    x = example_input(net, max(net.info.time_steps, 1))
    if finite_outputs(net, x) is None:
        return "no finite outputs"
    export(net, folder / "m.onnx")  # a CfgError here fails the test: check passed the cfg
    got = run_onnx(onnx_session(folder / "m.onnx"), x)
    assert max_rel_error(got, forward(net, x)) <= ONNX_TOLERANCE
    return "exported"


def opencv_agrees(net, other, folder: Path) -> str:
    """OpenCV reads darkcfg's cfg and .weights (batch-norm fields away from their defaults) of
    a cfg `check --target opencv` passes, and computes darkcfg's outputs."""
    from test_opencv import compare, opencv_net, perturb_normalization

    code = warned(folder / "small.cfg", "opencv")
    if code is not None:
        return f"target {code}"
    net.eval()
    perturb_normalization(net)
    x = example(net)
    if finite_outputs(net, x) is None:
        return "no finite outputs"
    from builders.weights import save_weights

    save_weights(net, folder / "w.weights")
    err = compare(net, opencv_net(folder / "small.cfg", folder / "w.weights"), x)
    assert err <= OPENCV_TOLERANCE, f"OpenCV vs darkcfg: max rel. error {err:.2e}"
    return "matched"


def differ(text: str, sizes, tmp_path_factory, then) -> str:
    folder = tmp_path_factory.mktemp("fx")
    torch.manual_seed(0)
    with alarm(SECONDS), contextlib.redirect_stderr(io.StringIO()):
        reached = exercise(text, sizes, folder, then)
    shutil.rmtree(folder)  # (weights and models of every example filled the disk; a failed
    return reached  # one's stays)


def opencv():
    cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless<5'")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Darknet importer")


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_the_seeds_reach_both_comparisons(seed, tmp_path_factory):
    """What the fuzzing mutates gets to the end of each comparison."""
    opencv()
    if HAVE_ONNX:
        assert differ(SEEDS[seed], (16, 16, (16, 16)), tmp_path_factory, onnx_agrees) == \
            "exported"
    assert differ(SEEDS[seed], (16, 16, (16, 16)), tmp_path_factory, opencv_agrees) == "matched"


@needs_onnx
@FAST
@given(text=CFGS, sizes=SIZES)
def test_random_cfgs_export_to_onnx_with_the_same_outputs(text, sizes, tmp_path_factory):
    differ(text, sizes, tmp_path_factory, onnx_agrees)


@FAST
@given(text=CFGS, sizes=SIZES)
def test_random_cfgs_run_the_same_in_opencv(text, sizes, tmp_path_factory):
    opencv()
    differ(text, sizes, tmp_path_factory, opencv_agrees)


@pytest.mark.slow  # minutes: up to 100 ONNX exports (about a third of the draws export)
@needs_onnx
@SLOW
@given(text=CFGS, sizes=SIZES)
def test_more_random_cfgs_export_to_onnx_with_the_same_outputs(text, sizes, tmp_path_factory):
    differ(text, sizes, tmp_path_factory, onnx_agrees)


@pytest.mark.slow
@SLOW
@given(text=CFGS, sizes=SIZES)
def test_more_random_cfgs_run_the_same_in_opencv(text, sizes, tmp_path_factory):
    opencv()
    differ(text, sizes, tmp_path_factory, opencv_agrees)
