"""The C allocator of a CPU training process: keep freed memory for reuse.

A training step frees and allocates the same large tensors every iteration. glibc's malloc
serves each allocation over its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it
when freed, so every iteration faults the pages of its big activations in again (yolov3-tiny
416, batch 16: an 88 MB tensor costs 25 ms of page faults on first touch, ~1/4 of an `--amp`
step). Serving everything from the heap and never trimming it keeps those pages mapped: the
same steps ran 1.08-1.35x faster (docs/training-parity.md), the peak resident memory 1-38%
higher, so darkcfg.train.session applies it only with room for that (twice the memory
checker's estimate within the limit, not under --force). jemalloc or tcmalloc (LD_PRELOAD) do
the same; this needs no install.
"""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: list[bool] = []


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to take every allocation from the heap (M_MMAP_MAX 0) and never hand
    freed heap back to the system (M_TRIM_THRESHOLD at its maximum). Once per process; returns
    whether it applies (False off glibc, or with DARKCFG_KEEP_MEMORY=0)."""
    if _applied:
        return _applied[0]
    ok = False
    if os.environ.get("DARKCFG_KEEP_MEMORY", "1") != "0":
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (AttributeError, OSError):  # not glibc (musl, macOS, Windows)
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    _applied.append(ok)
    return ok
