"""Native CPU kernels (`native_kernels.c`), compiled on first use: mish and the Winograd
transforms (builders.winograd) for the inference fast path; the resize of the bytes read, the
[yolo] decode, the DIoU NMS and the printed objects for `detect`; the colour jitter, and the 2x2
max-pool and batch-norm + activation (float32 NCHW, and `--amp`'s bfloat16 channels-last) for
training. Each replaces torch ops that cost more than their work on the CPU, and is tested
against them.

torch has no fused mish that is fast on the CPU, and mish is a tenth of yolov4's inference time
in torch ops. The C file is compiled once per machine with the system C compiler (`$CC`, else
cc, gcc or clang; `-O3 -march=native -fopenmp`, or without -fopenmp where that fails) into a
cache folder (`$DARKCFG_CACHE`, else `~/.cache/darkcfg`, else -- no home folder -- a per-user
`darkcfg-<uid>` under the temp folder), named by a hash of the source, the flags, the compiler and
the CPU, and loaded with ctypes. Compiling takes well under a second.

A shared library runs code when loaded, so the cache is guarded: the folder is created 0700 and
used only if it is a real folder owned by this user that nobody else can write (else a fresh
private temp folder is used); the compiling process stores the library's SHA-256 beside it, and a
library is loaded only through a descriptor whose content matched that hash (else rebuilt).

Nothing depends on it: without a compiler, on a read-only disk, or with `DARKCFG_NATIVE=0`, the
torch-op versions run instead (the same values to ~1e-6); `status()` says which, and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

from builders.atomic import atomic_write
from cfgparse import CfgError

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    if os.environ.get("DARKCFG_CACHE"):
        return Path(os.environ["DARKCFG_CACHE"])
    try:
        return Path.home() / ".cache" / "darkcfg"
    except RuntimeError:  # no home directory (some containers): per user, never a shared name
        return Path(tempfile.gettempdir()) / f"darkcfg-{_uid()}"


def _uid() -> int | str:
    return os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")


def private_dir(folder: Path) -> Path:
    """`folder`, created 0700, after checking nobody else could have put files in it: a real
    folder (not a link), owned by this user, not writable by group or others. OSError if not."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{folder} is not a folder")
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise PermissionError(f"{folder} is not private to this user (owner {info.st_uid}, "
                              f"mode {stat.S_IMODE(info.st_mode):o})")
    return folder


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _open_verified(library: Path) -> int | None:
    """A read-only descriptor of `library` whose bytes match the hash its compiling process
    stored beside it, or None (missing, unreadable, foreign or altered: rebuild it)."""
    try:
        expected = _digest_path(library).read_text().strip()
        fd = os.open(library, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    info = os.fstat(fd)
    digest = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    owned = not hasattr(os, "getuid") or (info.st_uid == os.getuid() and
                                          not info.st_mode & 0o022)
    if digest.hexdigest() != expected or not owned:
        os.close(fd)
        return None
    return fd


_loaded_names: set[str] = set()  # the descriptor paths libraries were loaded through


def _cdll(library: Path, fd: int) -> ctypes.CDLL:
    """Load the very file that was verified: through its descriptor where the system names
    descriptors as paths (so a rename in between cannot swap it), else by path. The dynamic
    loader hands back an object already loaded under the same name, so a descriptor number
    that served an earlier load (a second build in one process: other flags, a rebuilt source)
    is first duplicated to one that did not."""
    spare = []
    try:
        while f"/proc/self/fd/{fd}" in _loaded_names:
            spare.append(fd)
            fd = os.dup(fd)
        via_fd = f"/proc/self/fd/{fd}"
        if not Path(via_fd).exists():
            return ctypes.CDLL(str(library))
        _loaded_names.add(via_fd)
        return ctypes.CDLL(via_fd)
    finally:
        for number in [*spare, fd]:
            os.close(number)


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
        if not os.path.getsize(tmp):  # `CC=/bin/true` "succeeds" and writes nothing
            raise subprocess.SubprocessError(f"{cc} exited 0 but wrote no library")
        os.chmod(tmp, 0o700)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        # the hash first: a library never sits under its real name without its hash
        atomic_write(_digest_path(target), digest + "\n", parents=False)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cached_build(cc: str, name: str) -> tuple[Path, int, bool]:
    """The verified library `name` (path, open descriptor), built if needed: in the cache
    folder; else (no home, a read-only or foreign one) in a per-user folder under the temp
    dir; else in a fresh temp folder that the caller removes once the library is loaded
    (True: every process would otherwise leave a folder behind)."""
    places = [cache_dir, lambda: Path(tempfile.gettempdir()) / f"darkcfg-{_uid()}"]
    for place in places:
        try:
            target = private_dir(place()) / name
            fd = _open_verified(target)
            if fd is None:
                _build(cc, target)
                fd = _open_verified(target)
            if fd is not None:
                return target, fd, False
        except (OSError, CfgError):  # not private or not writable: the next place
            continue
    target = Path(tempfile.mkdtemp(prefix="darkcfg-")) / name
    try:
        _build(cc, target)
        fd = _open_verified(target)
        if fd is None:
            raise OSError(f"{target} does not match the hash stored when it was compiled")
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    return target, fd, True


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
        name = f"kernels-{key}.so"
        target, fd, throwaway = _cached_build(cc, name)
        try:
            lib = _cdll(target, fd)
        finally:
            if throwaway:  # loaded (mapped) already: the file is no longer needed
                shutil.rmtree(target.parent, ignore_errors=True)
        for old in target.parent.glob("kernels-*.so*"):  # builds of earlier sources, once
            if not old.name.startswith(name):            # this one has loaded
                old.unlink(missing_ok=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        _state["why"] = f"could not build {SOURCE.name} with {cc}: " \
                        f"{(detail.strip().splitlines() or [str(exc)])[-1]}"
        return None
    lib.darkcfg_mish_inplace.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.darkcfg_mish_inplace.restype = None
    lib.darkcfg_hsv_shift_u8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_float, ctypes.c_float, ctypes.c_float,
                                         ctypes.c_float]
    lib.darkcfg_hsv_shift_u8.restype = None
    lib.darkcfg_distort_u8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_float, ctypes.c_float, ctypes.c_float]
    lib.darkcfg_distort_u8.restype = None
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.darkcfg_bn_act_forward.argtypes = [p] * 7 + [i64] * 3 + [f32, f32, ctypes.c_int]
    lib.darkcfg_bn_act_backward.argtypes = [p] * 9 + [i64] * 3 + [f32, ctypes.c_int]
    lib.darkcfg_bn_act_forward.restype = lib.darkcfg_bn_act_backward.restype = None
    lib.darkcfg_bn_act_forward_nhwc_bf16.argtypes = [p] * 7 + [i64] * 2 + [f32, f32,
                                                                          ctypes.c_int]
    lib.darkcfg_bn_act_backward_nhwc_bf16.argtypes = [p] * 9 + [i64] * 2 + [f32, ctypes.c_int]
    lib.darkcfg_bn_act_forward_nhwc_bf16.restype = ctypes.c_int
    lib.darkcfg_bn_act_backward_nhwc_bf16.restype = ctypes.c_int
    for name in ("darkcfg_maxpool2x2_forward", "darkcfg_maxpool2x2_backward"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                       ctypes.c_int]
        getattr(lib, name).restype = None
    for name in ("darkcfg_maxpool2x2_forward_nhwc_bf16", "darkcfg_maxpool2x2_backward_nhwc_bf16"):
        getattr(lib, name).argtypes = [p] * 3 + [i64] * 4 + [ctypes.c_int]
        getattr(lib, name).restype = None
    lib.darkcfg_maxpool2x2_nhwc.argtypes = [p] * 2 + [i64] * 4 + [ctypes.c_int]
    lib.darkcfg_maxpool2x2_nhwc.restype = None
    lib.darkcfg_resize_u8.argtypes = [p] + [i64] * 6 + [p] + [i64] * 4 + [ctypes.c_int]
    lib.darkcfg_resize_u8.restype = ctypes.c_int
    lib.darkcfg_greedy_nms.argtypes = [p, p, p, i64, i64, f32, ctypes.c_double, i64, p]
    lib.darkcfg_greedy_nms.restype = ctypes.c_int
    lib.darkcfg_yolo_emit.argtypes = [p] + [i64] * 7 + [p, f32, f32, ctypes.c_int, f32, i64,
                                                        p, p]
    lib.darkcfg_yolo_emit.restype = i64
    lib.darkcfg_found_objects.argtypes = [p, p, i64, i64, f32, ctypes.c_double,
                                          ctypes.c_double, i64, p, p, p]
    lib.darkcfg_found_objects.restype = i64
    lib.darkcfg_wino43_input.argtypes = [p, i64, p] + [i64] * 9 + [ctypes.c_int]
    lib.darkcfg_wino43_input.restype = None
    lib.darkcfg_wino43_output.argtypes = [p, p, p, p] + [i64] * 8 + [ctypes.c_int, f32,
                                                                    ctypes.c_int]
    lib.darkcfg_wino43_output.restype = None
    lib.darkcfg_wino23_input.argtypes = lib.darkcfg_wino43_input.argtypes
    lib.darkcfg_wino23_input.restype = None
    lib.darkcfg_wino23_output.argtypes = lib.darkcfg_wino43_output.argtypes
    lib.darkcfg_wino23_output.restype = None
    lib.darkcfg_pointwise.argtypes = [p, i64, i64, i64, p, p, p, p, i64, i64, ctypes.c_int,
                                      f32, ctypes.c_int]
    lib.darkcfg_pointwise.restype = None
    lib.darkcfg_pointwise_batch.argtypes = [i64, p, i64, i64, p, p, i64, ctypes.c_int]
    lib.darkcfg_pointwise_batch.restype = None
    lib.darkcfg_conv_gather.argtypes = [p] + [i64] * 5 + [p, i64, p, p, p] + [i64] * 4 + [
        ctypes.c_int, f32, ctypes.c_int]
    lib.darkcfg_conv_gather.restype = None
    lib.darkcfg_pointwise_available.restype = ctypes.c_int
    vector = ("scalar", "AVX2", "AVX-512")[lib.darkcfg_kernels_vectorized()]
    _state["why"] = f"{target} ({vector})"
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on the first call; None when they cannot be had."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """'native: <library> (AVX-512|AVX2|scalar)' or 'torch ops: <why not native>'."""
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


def hsv_shift_u8(image: torch.Tensor, hue_add: float, dsat: float, dexp: float,
                 hue_to_sector: float) -> torch.Tensor | None:
    """The colour jitter of darkcfg.data.detection.augment.hsv_shift on a contiguous uint8
    (3, H, W) CPU tensor, into a new tensor; None (nothing done) without the native kernels.
    The float arguments are the float32 values the torch version computes with."""
    lib = library()
    if lib is None:
        return None
    out = torch.empty_like(image)
    lib.darkcfg_hsv_shift_u8(image.data_ptr(), out.data_ptr(), image.shape[1] * image.shape[2],
                             hue_add, dsat, dexp, hue_to_sector)
    return out


def distort_u8(image: torch.Tensor, dhue: float, dsat: float, dexp: float
               ) -> torch.Tensor | None:
    """darkcfg.data.augment.distort_image on a contiguous uint8 (3, H, W) CPU tensor, rounded
    back to bytes, into a new tensor; None (nothing done) without the native kernels."""
    lib = library()
    if lib is None:
        return None
    out = torch.empty_like(image)
    lib.darkcfg_distort_u8(image.data_ptr(), out.data_ptr(), image.shape[1] * image.shape[2],
                           dhue, dsat, dexp)
    return out


def maxpool2x2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """2x2 stride-2 max-pool of a contiguous NCHW float32 CPU tensor: (values, which window
    position 0..3 held the maximum, uint8); None (nothing done) without the native kernels."""
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    y = x.new_empty((n, c, h // 2, w // 2))
    which = torch.empty(y.shape, dtype=torch.uint8)
    lib.darkcfg_maxpool2x2_forward(x.data_ptr(), y.data_ptr(), which.data_ptr(), n * c, h, w,
                                   torch.get_num_threads())
    return y, which


def maxpool2x2_channels_last(x: torch.Tensor) -> torch.Tensor | None:
    """2x2 stride-2 max-pool of a channels-last float32 CPU map in inference (no window
    positions kept): a channels-last result; None (nothing done) without the native kernels."""
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    y = torch.empty((n, c, h // 2, w // 2), memory_format=torch.channels_last)
    lib.darkcfg_maxpool2x2_nhwc(x.data_ptr(), y.data_ptr(), n, h, w, c, torch.get_num_threads())
    return y


def maxpool2x2_backward(grad: torch.Tensor, which: torch.Tensor, shape: torch.Size
                        ) -> torch.Tensor:
    """The input gradient of `maxpool2x2` (the library is loaded: the forward ran)."""
    grad = grad.contiguous()
    out = grad.new_empty(shape)
    n, c, h, w = shape
    library().darkcfg_maxpool2x2_backward(grad.data_ptr(), which.data_ptr(), out.data_ptr(),
                                          n * c, h, w, torch.get_num_threads())
    return out


def maxpool2x2_bf16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`maxpool2x2` of a channels-last bfloat16 tensor (`takes_bf16`): (values, channels-last
    bfloat16; which window position held the maximum, uint8 in the same layout); None (nothing
    done) without the kernels."""
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    y = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, memory_format=torch.channels_last)
    which = torch.empty(y.shape, dtype=torch.uint8, memory_format=torch.channels_last)
    lib.darkcfg_maxpool2x2_forward_nhwc_bf16(x.data_ptr(), y.data_ptr(), which.data_ptr(), n, h,
                                             w, c, torch.get_num_threads())
    return y, which


def maxpool2x2_backward_bf16(grad: torch.Tensor, which: torch.Tensor, shape: torch.Size
                             ) -> torch.Tensor:
    """The input gradient of `maxpool2x2_bf16` (channels-last bfloat16)."""
    grad = grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    n, c, h, w = shape
    out = torch.empty(shape, dtype=torch.bfloat16, memory_format=torch.channels_last)
    library().darkcfg_maxpool2x2_backward_nhwc_bf16(grad.data_ptr(), which.data_ptr(),
                                                    out.data_ptr(), n, h, w, c,
                                                    torch.get_num_threads())
    return out


def bn_act_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   slope: float) -> tuple[torch.Tensor, ...] | None:
    """Training batch-norm + leaky/relu/linear of a contiguous NCHW float32 CPU tensor: (output,
    batch mean, 1/sqrt(biased var + eps), unbiased var); None without the native kernels."""
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    y = torch.empty_like(x)
    mean, invstd, var = (x.new_empty(c) for _ in range(3))
    lib.darkcfg_bn_act_forward(x.data_ptr(), y.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                               mean.data_ptr(), invstd.data_ptr(), var.data_ptr(), n, c, h * w,
                               eps, slope, torch.get_num_threads())
    return y, mean, invstd, var


def bn_act_backward(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, slope: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d input, d weight, d bias) of `bn_act_forward` (the library is loaded)."""
    grad = grad.contiguous()
    n, c, h, w = x.shape
    dx, dw, db = torch.empty_like(x), x.new_empty(c), x.new_empty(c)
    library().darkcfg_bn_act_backward(x.data_ptr(), grad.data_ptr(), weight.data_ptr(),
                                      bias.data_ptr(), mean.data_ptr(), invstd.data_ptr(),
                                      dx.data_ptr(), dw.data_ptr(), db.data_ptr(), n, c, h * w,
                                      slope, torch.get_num_threads())
    return dx, dw, db


def bn_act_forward_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        slope: float) -> tuple[torch.Tensor, ...] | None:
    """`bn_act_forward` of a channels-last bfloat16 tensor (`takes_bf16`) with float32 weight
    and bias: (output (bfloat16, channels-last), batch mean, 1/sqrt(biased var + eps), unbiased
    var), the statistics float32; None (nothing done) without the kernels."""
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean, invstd, var = (torch.empty(c) for _ in range(3))
    if not lib.darkcfg_bn_act_forward_nhwc_bf16(
            x.data_ptr(), y.data_ptr(), weight.data_ptr(), bias.data_ptr(), mean.data_ptr(),
            invstd.data_ptr(), var.data_ptr(), n * h * w, c, eps, slope,
            torch.get_num_threads()):
        raise MemoryError("bn_act_forward_bf16: out of memory")
    return y, mean, invstd, var


def bn_act_backward_bf16(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                         slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d input (bfloat16, channels-last), d weight, d bias) of `bn_act_forward_bf16`."""
    grad = grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    dw, db = torch.empty(c), torch.empty(c)
    if not library().darkcfg_bn_act_backward_nhwc_bf16(
            x.data_ptr(), grad.data_ptr(), weight.data_ptr(), bias.data_ptr(), mean.data_ptr(),
            invstd.data_ptr(), dx.data_ptr(), dw.data_ptr(), db.data_ptr(), n * h * w, c, slope,
            torch.get_num_threads()):
        raise MemoryError("bn_act_backward_bf16: out of memory")
    return dx, dw, db


def resize_u8(image: torch.Tensor, out: torch.Tensor) -> bool:
    """Bytes (C, H, W), any strides (a decoder's interleaved pixels too) -> `out` (C, h, w)
    float32, a view whose rows are contiguous (a letterbox canvas's inside), as
    builders.boxes.resize_image does to image / 255; False (nothing done) without the native
    kernels or for tensors it does not take."""
    lib = library()
    if lib is None or image.dtype != torch.uint8 or image.device.type != "cpu" or \
            out.dtype != torch.float32 or out.device.type != "cpu" or out.stride(-1) != 1 or \
            image.dim() != 3 or out.dim() != 3 or image.shape[0] != out.shape[0] or \
            image.numel() == 0 or out.numel() == 0 or min(image.stride()) < 0 or \
            min(out.stride()) < 0:
        return False
    c, h, w = image.shape
    return bool(lib.darkcfg_resize_u8(image.data_ptr(), c, h, w, *image.stride(),
                                      out.data_ptr(), out.shape[1], out.shape[2],
                                      out.stride(1), out.stride(0), torch.get_num_threads()))


def greedy_nms_diou(boxes: torch.Tensor, probs: torch.Tensor, active: torch.Tensor,
                    thresh: float, beta: float, pair_budget: int = 1 << 22
                    ) -> torch.Tensor | None:
    """Which (candidate, class) probs Darknet's DIoU NMS zeroes (darkcfg.detect.decode
    `_suppressed_diou`, the same pairs): boxes (k, 4) [x, y, w, h], probs (k, c), active (k)
    bool, CPU float32; a (k, c) bool tensor, or None without the native kernels. Up to
    `pair_budget` overlapping pairs are listed once (16 bytes each), beyond that each class
    tests its own pairs."""
    lib = library()
    if lib is None or any(t.device.type != "cpu" for t in (boxes, probs, active)) or \
            probs.dim() != 2 or tuple(boxes.shape) != (probs.shape[0], 4) or \
            tuple(active.shape) != (probs.shape[0],):
        return None
    boxes = boxes.to(torch.float32).contiguous()
    probs = probs.to(torch.float32).contiguous()
    active = active.to(torch.uint8).contiguous()
    out = torch.empty(probs.shape, dtype=torch.uint8)
    k, c = probs.shape
    if not lib.darkcfg_greedy_nms(boxes.data_ptr(), probs.data_ptr(), active.data_ptr(), k, c,
                                  thresh, beta, pair_budget, out.data_ptr()):
        return None
    return out.bool()


def yolo_emitted(y: torch.Tensor, n: int, entries: int, box: int, step: int,
                 anchors: torch.Tensor, net_w: float, net_h: float, new_coords: bool,
                 thresh: float, guess: int = 64) -> tuple[torch.Tensor, ...] | None:
    """The candidates a [yolo] head emits, decoded (builders/heads/yolo.py YoloDecoding.emitted,
    the same values): (image (K,), index (K,), boxes (K, 4), objectness (K,), scores (K, C)) of
    the head output y (N, n * entries, H, W); None (nothing done) without the native kernels
    or for a tensor they do not take (`takes`)."""
    if not takes(y) or anchors.shape != (n, 2):
        return None
    anchors = anchors.to(torch.float32).contiguous()
    classes = entries - 1 - box
    cap = guess
    while True:  # two buffers: each tensor made costs more than the kernel's work
        where, rows = torch.empty(2, cap, dtype=torch.int64), torch.empty(cap, 5 + classes)
        found = library().darkcfg_yolo_emit(
            y.data_ptr(), y.shape[0], n, entries, y.shape[2], y.shape[3], box, step,
            anchors.data_ptr(), net_w, net_h, int(new_coords), thresh, cap, where.data_ptr(),
            rows.data_ptr())
        if found <= cap:
            rows = rows[:found]
            return where[0, :found], where[1, :found], rows[:, :4], rows[:, 4], rows[:, 5:]
        cap = found


def found_objects(probs: torch.Tensor, boxes: torch.Tensor, thresh: float, image_w: float,
                  image_h: float, guess: int = 256) -> tuple[list, list, list, ...] | None:
    """The pairs `detector test` prints, in its order (darkcfg.detect.decode.found_objects):
    (class ids, probs, lefts, tops, rights, bottoms) as lists, the corners in pixels; None
    (nothing done) without the native kernels or for CPU tensors it does not take (probs
    (k, c), boxes (k, 4), float32)."""
    lib = library()
    if lib is None or probs.dim() != 2 or tuple(boxes.shape) != (probs.shape[0], 4) or \
            any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (probs, boxes)):
        return None
    probs, boxes = probs.detach().contiguous(), boxes.detach().contiguous()
    cap = guess
    while True:
        cls, pairs = torch.empty(cap, dtype=torch.int64), torch.empty(5, cap,
                                                                      dtype=torch.float64)
        found = lib.darkcfg_found_objects(probs.data_ptr(), boxes.data_ptr(), probs.shape[0],
                                          probs.shape[1], thresh, image_w, image_h, cap,
                                          cls.data_ptr(), pairs[0].data_ptr(),
                                          pairs[1].data_ptr())
        if found < 0:
            return None
        if found <= cap:
            return (cls[:found].tolist(), *pairs[:, :found].tolist())
        cap = found


SWITCHES = ("DARKCFG_NATIVE", "DARKCFG_WINOGRAD", "DARKCFG_POINTWISE")  # "0" turns one off


def switches() -> tuple:
    """The off-switches' current values (SWITCHES) and whether the kernels are loaded: what a
    remembered choice of kernel for a shape depends on besides the shape (builders.conv
    `_fast_plan`)."""
    return (*map(os.environ.get, SWITCHES), library() is not None)


def torch_ops_needed() -> bool:
    """Whether something is watching that needs torch's own ops rather than a kernel behind
    ctypes or a oneDNN cache: a tracer, the compiler, an exporter, or CPU autocast."""
    return torch.is_autocast_enabled("cpu") or _graph_capture()


def eager_inference(x: torch.Tensor) -> bool:
    """Whether `x` is a plain tensor outside autograd with nothing recording the ops (no tracer,
    compiler, exporter, fx proxy or autocast): where a layer may compute its inference result
    another way than its plain ops (in place, through views)."""
    return (type(x) is torch.Tensor and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch_ops_needed())


def _graph_capture() -> bool:
    """A tracer, the compiler or an exporter is recording the ops."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


def takes_bf16(x: torch.Tensor) -> bool:
    """Whether the bfloat16 channels-last kernels may run on `x` (`--amp` training on the CPU):
    a plain 4-D bfloat16 CPU tensor, channels-last contiguous, nothing recording the ops
    (autocast is what makes such tensors), and the library built."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.bfloat16
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and x.numel() > 0 and not _graph_capture() and library() is not None)


def takes(x: torch.Tensor) -> bool:
    """Whether the NCHW kernels here may run on `x`: a plain contiguous 4-D float32 CPU tensor,
    nothing watching (`torch_ops_needed`), and the library built."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous() and x.numel() > 0
            and not torch_ops_needed() and library() is not None)
