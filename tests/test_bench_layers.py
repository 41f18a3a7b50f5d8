"""bench/layers.py runs: a small yolov4-tiny's per-layer profile, grouped, with every group's share
and the slowest layers listed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_layer_profile_of_a_small_net(capsys):
    spec = importlib.util.spec_from_file_location("bench_layers", ROOT / "bench" / "layers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--cfg", str(ROOT / "cfg" / "yolov4-tiny.cfg"), "--size", "64",
                           "--repeat", "1", "--top", "3", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.startswith("yolov4-tiny 64x64: forward")
    shares = [float(m) for m in re.findall(r"\s(\d+\.\d)%", out)]
    assert abs(sum(shares) - 100) < 1  # every layer in one group
    for group in ("conv 3x3", "conv 1x1", "route", "yolohead"):
        assert group in out
    assert "the 3 slowest layers:" in out
