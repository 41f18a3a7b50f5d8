"""bench/gpu.py --smoke: the GPU benchmark's code path, run on CPU at tiny size so it keeps
working between the (rare) runs on a GPU machine. Timings are printed, never asserted."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_smoke_prints_the_table():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    row = re.search(r"^fp32\s+channels_last\s+eager\s+([\d.]+)/s\s+([\d.]+)/s\s+([\d.]+)", out,
                    re.M)
    assert row, out
    tv, dk, ratio = map(float, row.groups())
    assert tv > 0 and dk > 0
    # the table prints img/s with one decimal: the ratio must lie within that rounding
    assert (dk - 0.05) / (tv + 0.05) - 0.001 <= ratio <= (dk + 0.05) / max(tv - 0.05, 1e-9) + 0.001
    assert re.search(r"real data .*loader alone [\d.]+ img/s, loader \+ step [\d.]+ img/s", out)


def test_gpu_detect_bench_smoke_prints_training_and_inference_rows():
    """bench/gpu_detect.py --smoke: yolov4-tiny's training step (the detection task, every
    precision and format) and inference at batch 1 and 8, on CPU at 64x64."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_detect.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for precision in ("fp32", "bf16"):
        for fmt in ("nchw", "channels_last"):
            row = re.search(rf"^{precision}\s+{fmt}\s+eager\s+([\d.]+)$", out, re.M)
            assert row and float(row.group(1)) > 0, out
        for batch in (1, 8):
            row = re.search(rf"^{precision}\s+{batch}\s+([\d.]+)\s+([\d.]+)$", out, re.M)
            assert row and min(map(float, row.groups())) > 0, out
    assert "371 FPS on a GTX 1080 Ti" in out
