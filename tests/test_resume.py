"""Exact resume: a run killed with SIGKILL and resumed ends with the same bytes as one that was
never interrupted; SIGTERM saves and exits cleanly. Real subprocesses, real signals."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def command(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--out", str(out),
            "--no-progress", "--checkpoint-every", "3", "--valid-every", "20", *extra]


def rows(out: Path) -> list[dict]:
    path = out / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_rows(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(rows(out)) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before iteration {n}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run made no progress")
        time.sleep(0.02)


@pytest.fixture
def cfg(tmp_path, tiny_classifier) -> Path:
    # BN, dropout and random augmentations: everything that draws from an RNG or depends on the
    # sample order has to come back exactly
    return tiny_classifier.write(tmp_path / "resume.cfg", batch=8, max_batches=40, burn_in=4,
                                 angle=10, exposure=1.3, second_conv=False, dropout=0.3,
                                 cost=False)


# The CPU as it trains by default; CUDA with --deterministic (without it, cuDNN autotuning and
# atomic-add reductions make two runs differ in the last bits: seen on an H200)
DEVICES = [("--device", "cpu"),
           # loader processes: each restarts the sample stream at the checkpoint's iteration
           pytest.param(("--device", "cpu", "--workers", "2"), marks=pytest.mark.slow),
           # bfloat16 autocast and channels-last (its native kernels where built)
           pytest.param(("--device", "cpu", "--amp"), marks=pytest.mark.slow),
           pytest.param(("--device", "cuda", "--deterministic"),
                        marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                 reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", DEVICES, ids=["cpu", "cpu-workers", "cpu-amp", "cuda"])
def test_sigkill_then_resume_is_byte_identical(cfg, tmp_path, device):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = start(command(cfg, killed, *device))
    wait_for_rows(proc, killed, 8)  # past the checkpoint at iteration 6
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "resume_final.weights").exists(), "killed too late to test anything"
    done = len(rows(killed))
    reference = start(command(cfg, straight, *device))  # the two finish side by side
    resumed = start(command(cfg, killed, *device, "--resume"))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    assert "resuming from" in err
    at = int(err.split("at iteration ")[1].split()[0])
    assert 6 <= at <= done and at % 3 == 0
    final = (straight / "resume_final.weights").read_bytes()
    assert (killed / "resume_final.weights").read_bytes() == final
    assert (killed / "resume_best.weights").read_bytes() == \
        (straight / "resume_best.weights").read_bytes()
    # the log is continuous: rows after the checkpoint were dropped and redone identically
    keys = ("iteration", "loss", "avg_loss", "lr", "val_top1")
    assert [[r[k] for k in keys] for r in rows(killed)] == \
        [[r[k] for k in keys] for r in rows(straight)]


def test_sigterm_saves_and_exits_cleanly(cfg, tmp_path):
    out = tmp_path / "run"
    proc = start(command(cfg, out, "--set", "max_batches=100000", "--checkpoint-every", "1000"))
    wait_for_rows(proc, out, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == int(rows(out)[-1]["iteration"]) >= 3
    assert (out / "resume_last.weights").exists()
    # and the run continues from there
    more = subprocess.run(command(cfg, out, "--resume", "--set",
                                  f"max_batches={state['iteration'] + 2}"),
                          cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert more.returncode == 0, more.stderr
    assert int(rows(out)[-1]["iteration"]) == state["iteration"] + 2


def test_deterministic_sets_torch_up_and_changes_no_cpu_bits(tmp_path, tiny_classifier,
                                                            monkeypatch):
    """--deterministic turns on torch's deterministic kernels, no cuDNN autotuning and cuBLAS's
    fixed workspace; the CPU was deterministic already, so its weights stay the same bits."""
    from darkcfg.cli import main

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg = tiny_classifier.write(tmp_path / "d.cfg", batch=8, max_batches=6, burn_in=2,
                                angle=10, exposure=1.3, second_conv=False, dropout=0.3,
                                cost=False)
    common = [str(cfg), "--train", "--device", "cpu", "--no-progress", "--valid-every", "0"]
    try:
        assert main([*common, "--out", str(tmp_path / "a"), "--deterministic"]) == 0
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "d_final.weights").read_bytes() == \
        (tmp_path / "b" / "d_final.weights").read_bytes()
