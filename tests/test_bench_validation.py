"""bench/validation.py: a detector's validation against its forward and COCO mAP against
pycocotools used the plain way, at a tiny size (the bench itself checks the two COCO numbers
equal)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_validation_bench_prints_the_ratios_and_equal_coco_numbers():
    pytest.importorskip("pycocotools")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "validation.py"), "--repeat", "1",
                           "--size", "32", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "256 images" in out and "x the forward" in out
    assert "x plain pycocotools" in out and "same numbers (" in out
