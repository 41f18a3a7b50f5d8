"""Helpers for comparing with real Darknet outputs in ../shared/darknet/oracle (see its README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "darknet"
ORACLE = SHARED / "oracle"
CACHE = Path(__file__).resolve().parents[1] / ".oracle_cache"  # generated .weights (gitignored)


def require_oracle() -> Path:
    if not ORACLE.is_dir():
        pytest.skip("../shared/darknet/oracle is not available")
    return ORACLE


def weights_file(name: str, calibrated: bool = False) -> Path:
    """Generate (once) the deterministic .weights the oracle used, with its make_weights.py."""
    require_oracle()
    CACHE.mkdir(exist_ok=True)
    suffix = ".calibrated.weights" if calibrated else ".weights"
    out = CACHE / f"{name}{suffix}"
    if not out.exists():
        shapes = json.loads((ORACLE / "cfg" / f"{name}.shapes.json").read_text())
        size = 20 + 4 * int(shapes["total_weight_floats"])
        free = shutil.disk_usage(CACHE).free
        if free < size + 256 * 2**20:  # a full disk would fail mid-write: say so instead
            pytest.skip(f"{name}: {size / 2**20:.0f} MiB of oracle weights do not fit in the "
                        f"{free / 2**20:.0f} MiB free under {CACHE}")
        tmp = f"{out}.{os.getpid()}.tmp"  # per process: pytest-xdist workers may race here
        cmd = [sys.executable, str(ORACLE / "make_weights.py"),
               str(ORACLE / "cfg" / f"{name}.shapes.json"), tmp]
        if calibrated:
            cmd += ["--bn-stats", str(ORACLE / "weights" / f"{name}.bnstats.json")]
        subprocess.run(cmd, check=True, capture_output=True)
        os.replace(tmp, out)
    return out


def oracle_input(name: str) -> np.ndarray:
    """The network input as (1, C, H, W) float32."""
    index = json.loads((ORACLE / "out" / name / "index.json").read_text())
    c, h, w = index["input_shape_chw"]
    return np.fromfile(ORACLE / "input" / f"{name}.f32", "<f4").reshape(1, c, h, w)


def oracle_outputs(name: str, calibrated: bool = False) -> dict[int, np.ndarray]:
    """{layer index: flat float32 output} for every shipped layer."""
    folder = ORACLE / ("out-calibrated" if calibrated else "out") / name
    index = json.loads((folder / "index.json").read_text())
    return {layer["idx"]: np.fromfile(folder / layer["file"], "<f4")
            for layer in index["layers"] if layer.get("file")}


def oracle_index(name: str, calibrated: bool = False) -> dict:
    folder = ORACLE / ("out-calibrated" if calibrated else "out") / name
    return json.loads((folder / "index.json").read_text())


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    assert ours.shape == ref.shape, f"size {ours.size} != Darknet's {ref.size}"
    scale = max(float(np.abs(ref).max()), 1e-30)
    return float(np.abs(ours - ref).max()) / scale


def run_network(name: str, calibrated: bool = False, flavor: str | None = None):
    """Build oracle/cfg/NAME.cfg, load the oracle weights, run the oracle input in eval mode.
    Returns {layer index: flat Darknet-order output (numpy)} for every layer."""
    import torch

    from builders import build
    from builders.weights import load_weights

    require_oracle()
    if flavor is None:
        index = oracle_index(name)
        flavor = "pjreddie" if "pjreddie" in index.get("engine", "").lower() else "alexeyab"
    net = build(ORACLE / "cfg" / f"{name}.cfg", flavor=flavor)
    load_weights(net, weights_file(name, calibrated))
    net.eval()
    x = torch.from_numpy(oracle_input(name))
    with torch.no_grad():
        outs = net(x, collect=range(len(net.layers)))
    return {i: net.layers[i].darknet_output(y)[0].numpy() for i, y in outs.items()}
