"""darkcfg.train.allocator: a CPU training process keeps freed memory mapped, so the big tensors
each step frees and allocates again do not fault their pages in every iteration."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import resource
import torch
from darkcfg.train.allocator import keep_freed_memory
applied = keep_freed_memory()
def step():  # big tensors made, touched and freed, as a training step does
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    made = [torch.ones(n << 18) for n in (48, 64, 80)]  # MB, over glibc's mmap threshold
    made.append(made[0] * 2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del made
    return after - before
print(int(applied), *[step() for _ in range(8)])
"""
PAGES = ((48 + 64 + 80 + 48) << 20) // 4096  # the pages one step touches


def glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018 - the lookup is the test
    except (AttributeError, OSError):
        return False
    return True


def faults(keep: str) -> tuple[int, list[int]]:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ,
                                                       "DARKCFG_KEEP_MEMORY": keep})
    assert done.returncode == 0, done.stderr
    applied, *counts = map(int, done.stdout.split())
    return applied, counts


@pytest.mark.skipif(not glibc(), reason="glibc's mallopt only")
def test_freed_big_tensors_come_back_without_page_faults():
    """With the setting, the big tensors of the later steps reuse mapped pages (few faults once
    the freed blocks have merged); without it (DARKCFG_KEEP_MEMORY=0), every step faults every
    page in again."""
    applied, kept = faults("1")
    off, fresh = faults("0")
    assert applied == 1 and off == 0
    assert min(fresh[2:]) > PAGES // 2  # each 4 kB page faulted in (fewer with huge pages)
    assert min(kept[-3:]) < PAGES // 10, kept


def test_the_setting_is_applied_once_per_process():
    from darkcfg.train import allocator

    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() == first  # once per process, the same answer
    assert first == (glibc() and os.environ.get("DARKCFG_KEEP_MEMORY") != "0")


@pytest.mark.parametrize("extra, kept", [((), True), (("--force",), False),
                                         (("--max-memory", None), False)])
def test_a_run_keeps_freed_memory_only_with_room_for_it(tmp_path, monkeypatch, tiny_classifier,
                                                        extra, kept):
    """`darkcfg train` on the CPU keeps freed memory when twice the checker's estimate fits the
    memory limit; not under --force (no estimate), nor when the limit is tight."""
    import torch

    from darkcfg.cli import main
    from darkcfg.train import session

    calls = []
    monkeypatch.setattr(session, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = tiny_classifier.write(tmp_path / "tiny.cfg", max_batches=2)
    if extra == ("--max-memory", None):  # just above the estimate: it fits, but not twice over
        need, _ = session.check_memory(
            session.RunOptions(cfg_path=str(cfg), name="tiny", out=tmp_path),
            torch.device("cpu"))
        extra = ("--max-memory", str(int(need * 1.5)))
    code = main(["train", str(cfg), "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "run"), *extra])
    assert code == 0
    assert bool(calls) == kept
