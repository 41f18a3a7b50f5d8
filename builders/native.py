"""Native CPU kernels for the inference fast path (`native_kernels.c`), compiled on first use.

torch has no fused mish that is fast on the CPU, and mish is a tenth of yolov4's inference time
in torch ops. The C file is compiled once per machine with the system C compiler (`$CC`, else
cc, gcc or clang; `-O3 -march=native -fopenmp`, or without -fopenmp where that fails) into a
cache folder (`$DARKCFG_CACHE`, else `~/.cache/darkcfg`), named by a hash of the source, the
flags, the compiler and the CPU, and loaded with ctypes. Compiling takes well under a second.

Nothing depends on it: without a compiler, on a read-only disk, or with `DARKCFG_NATIVE=0`, the
torch-op versions run instead (the same values to ~1e-6); `status()` says which, and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    if os.environ.get("DARKCFG_CACHE"):
        return Path(os.environ["DARKCFG_CACHE"])
    try:
        return Path.home() / ".cache" / "darkcfg"
    except RuntimeError:  # no home directory (some containers)
        return Path(tempfile.gettempdir()) / "darkcfg-cache"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name.split()[0]
    return None


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines()[:40]
            if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(keep)


def _build(cc: str, target: Path) -> None:
    """Compile into a temp file beside `target`, then rename it: a concurrent or interrupted
    build never leaves a half-written library under the real name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        try:
            subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], check=True,
                           capture_output=True, timeout=120)
        except subprocess.CalledProcessError:
            # e.g. clang without libomp: single-threaded, still faster than the torch ops
            serial = [f for f in FLAGS if f != "-fopenmp"]
            subprocess.run([cc, *serial, str(SOURCE), "-o", tmp], check=True,
                           capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    if os.environ.get("DARKCFG_NATIVE", "1") == "0":
        _state["why"] = "disabled by DARKCFG_NATIVE=0"
        return None
    cc = _compiler()
    if cc is None:
        _state["why"] = "no C compiler found (set CC)"
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version,
                                        _cpu_id()]).encode()).hexdigest()[:16]
        target = cache_dir() / f"kernels-{key}.so"
        if not target.exists():
            try:
                _build(cc, target)
            except OSError:  # cache folder not writable: build in a private temp folder
                target = Path(tempfile.mkdtemp(prefix="darkcfg-")) / target.name
                _build(cc, target)
            for old in target.parent.glob("kernels-*.so"):  # builds of earlier sources
                if old != target:
                    old.unlink(missing_ok=True)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        _state["why"] = f"could not build {SOURCE.name} with {cc}: " \
                        f"{(detail.strip().splitlines() or [str(exc)])[-1]}"
        return None
    lib.darkcfg_mish_inplace.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.darkcfg_mish_inplace.restype = None
    _state["why"] = f"{target} ({'AVX2' if lib.darkcfg_kernels_vectorized() else 'scalar'})"
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on the first call; None when they cannot be had."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """'native: <library> (AVX2|scalar)' or 'torch ops: <why not native>'."""
    lib = library()
    return f"{'native' if lib is not None else 'torch ops'}: {_state['why']}"


def mish_inplace(flat: torch.Tensor) -> bool:
    """Mish over a dense 1-D CPU float32 tensor, in place; False (nothing done) when the native
    kernels are unavailable."""
    lib = library()
    if lib is None:
        return False
    lib.darkcfg_mish_inplace(flat.data_ptr(), flat.numel(), torch.get_num_threads())
    return True
