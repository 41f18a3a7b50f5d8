"""bench/profile_train.py runs (it broke once unnoticed when the heads' loss began to return
(loss, stats)): one tiny iteration, float32 and --amp, every phase and operator group printed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("profile_train",
                                                  ROOT / "bench" / "profile_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("amp", [False, True])
def test_profile_one_tiny_iteration(capsys, amp):
    bench = load_bench()
    argv = ["--cfg", str(ROOT / "cfg" / "yolov3-tiny.cfg"), "--size", "64", "--batch", "2",
            "--iterations", "1", "--threads", "1"] + (["--amp"] if amp else [])
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the bench sets it for the whole process
    out = capsys.readouterr().out
    for phase in ("forward", "loss", "backward", "optimizer"):
        assert f"phase {phase}" in out
    assert "conv backward" in out and "yolov3-tiny.cfg 64x64 batch 2" in out
