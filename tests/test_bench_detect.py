"""bench/detect.py: `--detect` end to end against the bare forward, both regimes, at a tiny
size (the code path bench/gpu_session.sh runs on a GPU with --device cuda)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_detect_bench_prints_both_regimes_and_the_ratio():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "detect.py"), "--repeat", "1",
                           "--size", "96", "--image", "photo", "--threads", "1",
                           "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "batch 1, cpu" in out and "dense" in out and "typical" in out
    assert "end to end" in out and "x the forward" in out
