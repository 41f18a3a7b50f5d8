"""What every data source shares: errors, the splits a source returns, and the one conversion of
a decoded image (PIL or tensor) into the uint8 CHW tensor the loaders carry."""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from builders.atomic import atomic_open, atomic_write
from cfgparse import CfgError, Diagnostic
from cfgparse.errors import WARNING
from darkcfg.console import warn


class DataError(Exception):
    """A data problem found while loading (possibly in a worker): the runner prints it, exit 2.
    A plain-string exception, so it survives the trip back from DataLoader workers."""


def data_error(message: str, where: str, hint: str = "", code: str = "E901") -> CfgError:
    return CfgError(Diagnostic(code, message, where, hint=hint))


def check_classes_option(classes: int | None, spec) -> None:
    """`--classes N` picks N of the network's classes for the embedded data; any other data
    brings its own classes. Every task's data dispatch asks here."""
    if classes is not None and spec is not None:  # a usage error, as check_classes_count's
        raise CfgError(Diagnostic("E100", "--classes is for the embedded dataset", "--classes",
                                  hint="leave --classes out: the classes of --data come from "
                                  "the data"))


def check_classes_count(classes: int | None, count: int, has: str) -> None:
    """`--classes N` of the embedded data: 1..count of the network's classes. A usage error (E100
    at --classes, as `train --classes 0` is), not a problem of the data: `has` says what the
    network has ("detects 80 classes")."""
    if classes is not None and not 1 <= classes <= count:
        raise CfgError(Diagnostic("E100", f"--classes {classes}: the network {has}", "--classes",
                                  hint=f"use --classes 1..{count} (or leave it out)"))


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset | None
    names: list[str]  # class names (empty for regression)
    description: str
    backup: str | None = None  # a .data file's backup directory
    augment: bool = True  # image data takes [net] augmentations
    in_memory: bool = False  # samples cost no decoding (the loader needs no helper process)
    top: int | None = None  # a .data file's top=: predict's default count (Darknet's)


def image_tensor(image, channels: int) -> torch.Tensor:
    """A PIL image or an image tensor as a contiguous uint8 (C, H, W) tensor with `channels`
    channels. PIL images decode to grey (1 channel) or RGB; a grey image is repeated to more
    channels, a colour one averaged to grey for 1 and repeated cyclically for other counts (a
    4-channel net sees R, G, B, R)."""
    if not isinstance(image, torch.Tensor):
        arr = np.asarray(eight_bit(image).convert("L" if channels == 1 else "RGB"),
                         dtype=np.uint8)
        image = torch.from_numpy(arr.copy())
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    have = image.shape[0]
    if have != channels:
        if have > 1 and channels == 1:
            image = image.float().mean(0, keepdim=True).to(image.dtype)
        else:
            image = image.repeat(-(-channels // have), 1, 1)[:channels]
    return image.contiguous()


def eight_bit(image):
    """A PIL image with 8 bits a channel. Pillow's convert() clips 16-bit grey ('I;16', and 'I'
    from 16-bit PNGs and TIFFs) at 255, which makes nearly every pixel white: scale instead, as
    a 16-bit reader would (value / 257, so 65535 -> 255). 32-bit float images ('F') are taken
    as 0..1 when they fit, else 0..255; NaN pixels are 0."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:
            scaled = arr  # an 'I' image that already holds 8-bit values
        else:
            scaled = arr / 257.0
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        # (not np.nanmax: an all-NaN picture made it print numpy's raw RuntimeWarning line)
        numbers = arr[~np.isnan(arr)]
        if numbers.size and numbers.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8),
                               "L")
    if mode == "P" and isinstance(image.info.get("transparency"), bytes):
        # the same colours as P -> RGB/L, without Pillow's UserWarning (printed with its own
        # source line) that such palette images "should be converted to RGBA"
        return image.convert("RGBA")
    return image


def open_image(path):
    """Image.open for every format Pillow reads but EPS: Pillow hands an EPS file, whatever its
    name (a hostile data set's `x.jpg`), to Ghostscript, a PostScript interpreter, wherever one
    is installed. Neither Darknet's reader reads EPS. The one way darkcfg opens an image file."""
    from PIL import Image

    return Image.open(path, formats=_readable_formats())


@functools.cache
def _readable_formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()  # every plugin registered, a third-party one (HEIF, AVIF) included
    # the common formats first, as Pillow's own open tries them: in plugin order a JPEG was
    # tried as 23 formats first, 3 of them (IM, IMT, IPTC) parsing it, half an open's time
    readable = [f for f in Image.OPEN if f != "EPS"]
    return tuple(sorted(readable, key=lambda f: f not in COMMON_FORMATS))


#: The formats Pillow's Image.open tries before all others (its `preinit` plugins).
COMMON_FORMATS = frozenset({"BMP", "DIB", "GIF", "JPEG", "PPM", "PNG"})


#: What a broken or hostile image file may raise while being opened or decoded.
def image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image, UnidentifiedImageError

    return (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError,
            SyntaxError, EOFError)


def pixel_limit() -> int | None:
    """The most pixels an image or a video frame may have: Pillow's decompression-bomb error,
    past twice its MAX_IMAGE_PIXELS (None where a user lifted it). A few bytes of GIF or H.264
    can claim a frame of 16000x16000."""
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def loader_worker_init(worker_id: int, sharing: str | None = None,
                       owner: int | None = None) -> None:
    """DataLoader worker_init_fn: loader processes ignore the stop signals (SIGTERM, SIGINT,
    SIGHUP). A stop signal sent to the whole process group (systemd, Slurm, `kill -- -PGID`,
    Ctrl-C or a closed terminal) must not kill them under the training process, which finishes
    its iteration, checkpoints and then stops them itself (and they exit on their own should it
    die). `sharing`: torch's strategy for the tensors this process hands over (loader_plan).
    `owner`: the process whose loader this is, where that is not the parent (a forkserver's
    child): this process ends when the owner does."""
    import signal

    from darkcfg.stopping import stop_signals

    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)
    sys.excepthook = functools.partial(_handover_error, sys.excepthook)
    if sharing is not None:  # the sender's strategy decides: the main process keeps its own
        import torch.multiprocessing

        torch.multiprocessing.set_sharing_strategy(sharing)
    if owner is not None and owner != os.getppid():
        _end_with(owner)


def _handover_error(hook, kind, exc, tb) -> None:
    """A loader process's sys.excepthook. multiprocessing's resource sharer (the thread that
    hands a batch's file descriptors over) reports there a process that died while it took one:
    a rank killed (kill -9, the out-of-memory killer), whose end is said by the launcher; its
    traceback came after that. Anything else goes on to `hook`."""
    import traceback

    if issubclass(kind, (ConnectionError, EOFError)) and any(
            "resource_sharer" in frame.filename for frame in traceback.extract_tb(tb)):
        return
    hook(kind, exc, tb)


def _end_with(owner: int) -> None:
    """End this process once `owner` has ended. torch's loader process watches its parent
    only, and a forkserver's child has the forkserver as parent, which lives as long as any
    process holds its "alive" pipe, its children included: a rank killed by SIGKILL (the
    out-of-memory killer) left its loader processes, forkserver and resource tracker running
    for good, holding the command's stderr open."""
    import select
    import threading
    import time

    def watch() -> None:
        try:
            handle = os.pidfd_open(owner)  # Linux 5.3+: readable once the process ends
        except (AttributeError, OSError):
            handle = None
        if handle is not None:
            select.select([handle], [], [])
        else:
            while True:
                try:
                    os.kill(owner, 0)
                except ProcessLookupError:
                    break
                except OSError:  # alive, another user's
                    pass
                time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="darkcfg-owner-watch", daemon=True).start()


# Open files the loader processes cost, per process (measured with torch 2.14, Python 3.11). With
# torch's default sharing ('file_descriptor') every tensor in flight holds a descriptor in the
# loader process, its duplicate while it is handed over and one in the main process: up to 4
# batches (prefetch_factor) of up to 4 tensors, and the process's pipes; measured 20-38.
FILES_PER_PROCESS_FD_SHARING = 40
# With 'file_system' a tensor is a named shared-memory file, open only while it is mapped: what
# stays is the process's pipes and its socket to torch's shared-memory manager; measured 6-7.
FILES_PER_PROCESS = 7
# A run has at most two loaders at once: training's (its processes stay) and a validation's.
LOADERS_AT_ONCE = 2
# What the main process opens besides (the run's lock, metrics.csv, a checkpoint being written).
FILES_SPARE = 6


def loader_plan(workers: int, limit: int, open_now: int) -> tuple[int, str | None]:
    """How many of `workers` loader processes the open-file limit `limit` leaves room for, with
    `open_now` files open, and the sharing strategy they hand batches over with (None: torch's
    default). Under a low limit torch's default strategy runs out of descriptors in the thread
    that hands a batch over, which drops the batch without a word and leaves the main process
    waiting for it for good; 'file_system' (what torch advises there) needs a descriptor only
    while it maps a batch, so a shortfall is an error where it happens. Not the default: each
    loader process then starts torch's manager process (torch_shm_manager, in its own session),
    which removes the files once their processes are gone; should it be killed too, they stay
    in /dev/shm."""
    room = limit - open_now - FILES_SPARE
    if workers * FILES_PER_PROCESS_FD_SHARING * LOADERS_AT_ONCE <= room:
        return workers, None
    return max(0, min(workers, room // (FILES_PER_PROCESS * LOADERS_AT_ONCE))), "file_system"


def _open_files() -> tuple[int, int]:
    """(the soft limit on open files, how many are open); a huge limit where there is none."""
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            count = len(os.listdir(folder)) - 1  # (less the one listdir opened)
            break
        except OSError:
            continue
    else:
        count = FILES_SPARE
    return (1 << 30 if soft == resource.RLIM_INFINITY else soft), count


def raise_open_files_limit() -> None:
    """The soft limit on open files up to the hard one (as the JVM and Go's runtime do at start):
    `ulimit -Sn 1024` with a higher hard limit is a default, not a choice. RLIM_INFINITY's hard
    limit is more than the kernel takes (fs.nr_open): 2**20 then."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):  # (a kernel below 2**20) the limit stays as it was
            pass


def loader_processes(workers: int, prefetch_factor: int | None = None,
                     persistent: bool = False) -> dict:
    """The DataLoader arguments for `workers` loader processes (`prefetch_factor` batches each
    in flight, processes kept between epochs if `persistent`): as many as the limit on open
    files leaves room for, handing batches over as it allows (loader_plan); they ignore stop
    signals (loader_worker_init) and, in a process that joined a torch.distributed group,
    start from a forkserver instead of a fork of the rank. There gloo's and DDP's threads run
    beside the main one, and a fork that lands while one of them holds CPython's thread-state
    lock leaves the child stuck inside os.fork() for good (CPython gh-112275, fixed in 3.11.10
    and 3.12; 3.12 warns on any fork of a threaded process): the rank then waits forever for
    its first batch and the other ranks in their next collective. Seen under torchrun with
    Python 3.11.7: a validation loader's process stuck so in about one run of 50 on a loaded
    host."""
    import multiprocessing.util

    import torch.distributed as dist

    options = {"num_workers": workers, "worker_init_fn": loader_worker_init}
    if workers:
        workers, sharing = _fitting_workers(workers)
        workers = _within_cores(workers)
        options["num_workers"] = workers
        if sharing is not None:
            options["worker_init_fn"] = functools.partial(loader_worker_init, sharing=sharing)
    if workers:  # (torch refuses these without loader processes)
        options.update(prefetch_factor=prefetch_factor, persistent_workers=persistent)
        # a loader process makes multiprocessing's temp folder (TMPDIR/pymp-*, a socket in it)
        # for a batch it passes over, and one killed (the out-of-memory killer, SIGBUS) left it
        # there for good; made here first, it is this process's, removed at its exit
        multiprocessing.util.get_temp_dir()
    if workers and dist.is_available() and dist.is_initialized():
        options["worker_init_fn"] = functools.partial(loader_worker_init, sharing=sharing,
                                                      owner=os.getpid())
        context = multiprocessing.get_context("forkserver")
        # the server imports torch and the data sets once, and each loader process is a fork of
        # it: unloaded, every process imported torch anew (20 s a validation on a loaded host)
        context.set_forkserver_preload(["__main__", "torch", "darkcfg.data.sampling",
                                        "darkcfg.data.detection.dataset"])
        _start_forkserver()
        options["multiprocessing_context"] = context
    return options


def _start_forkserver() -> None:
    """Start multiprocessing's forkserver (once a process) ignoring the stop signals, as the
    loader processes it forks do: it ignores only SIGINT itself, and a SIGTERM to the rank's
    process group (torch's agent stops the other ranks so when one fails; Slurm, `kill --
    -PGID`) killed it, its loader processes ended with it, and the rank said a data loader
    process had died. An ignored signal stays ignored across exec; the server ends with the
    rank all the same (its "alive" pipe closes)."""
    import multiprocessing.forkserver
    import signal
    import threading

    from darkcfg.stopping import stop_signals

    if threading.current_thread() is not threading.main_thread():
        multiprocessing.forkserver.ensure_running()  # (no signal to set off the main thread)
        return
    # (a stop signal in the instant of the start is lost: the user's second one still stops)
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stop_signals()
              if signal.getsignal(sig) is not None}  # (None: not Python's to put back)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _fitting_workers(workers: int) -> tuple[int, str | None]:
    """loader_plan under this process's limit, raised to the hard limit first where it falls
    short; fewer processes said once on stderr."""
    try:
        import resource  # noqa: F401 - POSIX only
    except ImportError:
        return workers, None
    plan = loader_plan(workers, *_open_files())
    if plan != (workers, None):
        raise_open_files_limit()
        plan = loader_plan(workers, *_open_files())
    if plan[0] < workers:
        limit = _open_files()[0]
        line = (f"{workers} loader process(es) (--workers) do not fit in the limit on open "
                f"files (ulimit -n {limit}): using {plan[0]} (raise the limit, e.g. ulimit -n "
                "4096, to use more)")
        warn(line, once=True)
    return plan


def _within_cores(workers: int) -> int:
    """At most one loader process a CPU core this process may use, fewer said once on stderr:
    more only compete for the cores (torch said so in two raw UserWarning lines), and a
    mistyped `--workers 1000` started 1000 processes, minutes before the first batch and over
    a minute more to stop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    if workers <= cores:
        return workers
    warn(f"--workers {workers}: more loader processes than the {cores} CPU core(s) this process "
         f"may use: using {cores}", once=True)
    return cores


def loader_death(exc: BaseException) -> tuple[str, str]:
    """How a DataLoader process died or failed, from what torch raised in the main process, and
    what to do about it (('', '') when `exc` is something else): its SIGCHLD handler's
    RuntimeError ('DataLoader worker (pid N) is killed by signal: Killed.', raised wherever the
    main process was, even in backward), a connection to it that broke while a batch was passed
    over (EOFError, or ConnectionResetError from multiprocessing's own code, which a kill -9 --
    the out-of-memory killer's -- leaves), or a batch that did not fit in shared memory (the
    worker's 'unable to allocate shared memory(shm)', re-raised here with its traceback)."""
    import traceback

    text = str(exc).strip()
    shm = re.search(r"unable to [^\n]*</torch_[^\n]*", text) \
        if isinstance(exc, RuntimeError) else None
    if shm:
        if "(24)" in shm.group(0):  # EMFILE: each batch in flight holds descriptors
            return (f"a data loader process could not pass a batch over ({shm.group(0)})",
                    "raise the open-file limit (ulimit -n 65536) or use fewer --workers "
                    "(--workers 0: no loader processes), then --resume")
        return (f"a data loader process could not pass a batch over: the shared memory is "
                f"full ({shm.group(0)})", _shm_hint())
    how = ""
    if isinstance(exc, RuntimeError) and text.startswith("DataLoader worker"):
        # its first sentence (SIGBUS adds torch's own advice, which the hint replaces)
        how = f"a data loader process died ({text.splitlines()[0].split('. ')[0].rstrip('. ')})"
    elif isinstance(exc, (EOFError, ConnectionError)) and any(
            "multiprocessing" in frame.filename
            for frame in traceback.extract_tb(exc.__traceback__)):
        how = f"a data loader process died (its connection broke: {text or type(exc).__name__})"
    if not how:
        return "", ""
    oom = ("a process killed by SIGKILL is most often the out-of-memory killer (see `dmesg`): "
           "give the machine more memory or use fewer --workers, then --resume")
    if "Bus error" in text:  # SIGBUS: a write past the end of a full /dev/shm
        return how, _shm_hint()
    if "Killed" not in text and 0 < _shm_total() < SMALL_SHM:
        # no signal named ('exited unexpectedly'; torch's worker said "bus error" on stderr)
        return how, f"{_shm_hint()}; or {oom}"
    return how, oom


# Docker gives a container 64 MB of /dev/shm unless told otherwise, where one batch of 64
# images of 416x416 (float32) is 133 MB
SMALL_SHM = 1 << 30


def _shm_total() -> int:
    import shutil

    try:
        return shutil.disk_usage("/dev/shm").total
    except OSError:  # no /dev/shm (macOS, Windows)
        return 0


def _shm_hint() -> str:
    from builders.memory import format_bytes

    total = _shm_total()
    here = f", {format_bytes(total)} here" if total else ""
    return (f"loader processes (--workers) pass each batch through shared memory (/dev/shm"
            f"{here}; a Docker container has 64 MB unless given more): use --workers 0, or give "
            "it more (docker run --shm-size=8g, or --ipc=host), then --resume")


def _stop_loader_processes() -> None:
    """At exit, kill the daemonic child processes still running (DataLoader processes: a
    daemonic process ends with its parent, multiprocessing's rule). A run that ends on an error
    while a loader iterator is alive (held by the error's traceback, or by a loop's frame)
    leaves them to multiprocessing's exit handler, which sends SIGTERM, which loader processes
    ignore (loader_worker_init), and then waits for them forever. Registered after that
    handler, so it runs first (atexit runs in reverse order)."""
    import multiprocessing
    import signal

    left = [p for p in multiprocessing.active_children() if p.daemon]
    if not left:
        return
    if hasattr(signal, "SIGCHLD"):  # torch's handler would report each kill as a failure
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for process in left:
        process.kill()


def _register_stop_at_exit() -> None:
    import atexit
    import multiprocessing.util  # noqa: F401 - its exit handler first, so that ours runs before

    atexit.register(_stop_loader_processes)


_register_stop_at_exit()


EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 upright; 2-8 mirrored and/or rotated


def upright(im):
    """A PIL image turned as its EXIF orientation says, as Darknet sees it: its loader
    (src/image_opencv.cpp `load_image_mat_cv`) reads with cv::imread, which applies the tag (a
    phone photo shot upright is stored sideways with the tag). Without a tag: the image itself.
    ImageOps.exif_transpose's turns, without its rewrite of the EXIF block: a damaged block
    (one field of another type) made that raise struct.error, a traceback for pixels that read."""
    from PIL import Image

    if orientation(im) == 1:
        return im
    im.load()  # (a TIFF turns itself as it loads, and drops the tag)
    turn = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}.get(orientation(im))
    return im.transpose(turn) if turn is not None else im


def orientation(im) -> int:
    """A PIL image's EXIF orientation: 1 (as stored) without the tag, or when its EXIF block
    does not read (Pillow's "not a TIFF file"), as OpenCV's reader takes it: the pixels, which
    read, were left out as an image that does not decode."""
    try:
        return im.getexif().get(EXIF_ORIENTATION, 1) or 1
    except Exception:  # noqa: BLE001 - whatever the damage, the block says nothing
        return 1


def upright_size(im) -> tuple[int, int]:
    """(width, height) of a PIL image as `upright` turns it, from the header only."""
    turned = orientation(im) in (5, 6, 7, 8)  # 90 or 270 degrees
    # Pillow's TIFF reader turns the picture itself and reports the turned size, keeping the
    # stored one as _tile_size: turn the stored size, or a TIFF's would be turned twice
    width, height = getattr(im, "_tile_size", None) or im.size
    return (height, width) if turned else (width, height)


def read_image(path: str, channels: int) -> torch.Tensor:
    """An image file as uint8 CHW (turned upright by its EXIF orientation, as Darknet reads it);
    an unreadable file is a DataError naming it."""
    from PIL import Image

    try:
        with open_image(path) as im:
            return image_tensor(upright(im), channels)
    except image_errors() as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise DataError(f"cannot read image '{path}': it has more pixels than darkcfg "
                            f"reads ({exc}); resize it (or remove it from the list)") from None
        raise DataError(f"cannot read image '{path}': {exc}") from None


def undecodable_warning(exc: DataError | OSError | str, path: str, what: str) -> str:
    """The W901 text for an image whose header reads but whose pixels do not decode (`exc`,
    from `read_image`), and what becomes of it (`what`): every reader says it so, as
    Darknet's load_image_mat_cv says "Cannot load image" and goes on."""
    return Diagnostic("W901", f"{exc} (Darknet: 'Cannot load image'): {what}", str(path),
                      severity=WARNING, hint="remove it or convert it to JPEG/PNG").format()


#: The blank picture an undecodable validation image is scored as: Darknet's load_image_cv
#: returns make_image(10, 10, channels) (zeros) when the file does not load.
BLANK_SIDE = 10


def blank_image(channels: int) -> torch.Tensor:
    return torch.zeros((channels, BLANK_SIDE, BLANK_SIDE), dtype=torch.uint8)


HEADER_THREADS = 8  # reading headers waits on the disk, not the CPU
HEADER_CHUNK = 256  # images a header-check task reads (in list order)


def check_image_headers(paths, where: str, max_listed: int = 5) -> None:
    """Open every image's header (Pillow reads the format, size and mode, not the pixels: a
    fraction of a millisecond each) before the first iteration, so a corrupt file anywhere in the
    lists is an E901 error now, not a crash hours into the run."""
    from concurrent.futures import ThreadPoolExecutor


    def problem(path: str) -> tuple[str, bool] | None:
        """What is wrong with the image, and whether it is only its permissions."""
        try:
            with open_image(path) as im:
                w, h = im.size
            return None if w > 0 and h > 0 else (f"size {w}x{h}", False)
        except Exception as exc:  # Pillow raises many kinds (OSError, DecompressionBomb, ...)
            why = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            return why, isinstance(exc, PermissionError)

    def problems(chunk: list[str]) -> list[tuple[str, str, bool]]:
        return [(p, *found) for p in chunk if (found := problem(p))]

    paths = list(paths)
    # one task per chunk: a future per image cost more than the header read (200k images:
    # 22 s of the pool's locks against 3 s of reading)
    step = HEADER_CHUNK
    chunks = [paths[i:i + step] for i in range(0, len(paths), step)]
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        bad = [entry for found in pool.map(problems, chunks) for entry in found]
    if bad:
        shown = "\n".join(f"  {p}: {why}" for p, why, _ in bad[:max_listed])
        more = f"\n  ... and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
        raise CfgError(Diagnostic(
            "E901", f"{len(bad)} of the {len(paths)} images of '{where}' cannot be read:\n"
            f"{shown}{more}", bad[0][0],
            hint="check their permissions" if all(denied for *_, denied in bad) else "remove "
            "them (or their lines in the lists) or convert them to JPEG/PNG"))


def write_image(path: str, tensor: torch.Tensor) -> None:
    """A uint8 CHW tensor as an image file, its format from the suffix (examples of the
    embedded data for tests and docs), written atomically."""
    from PIL import Image

    arr = tensor.permute(1, 2, 0).numpy()
    image = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    with atomic_open(path) as fh:
        image.save(fh, format=fmt)


def pyplot():
    """matplotlib.pyplot on the Agg backend: the plots are files, no display is opened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_figure(fig, path: str | Path, dpi: int | None = None) -> None:
    """A matplotlib figure as a PNG file, written atomically (its folders made), then closed."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **({} if dpi is None else {"dpi": dpi}))
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())


def read_array(path: str) -> np.ndarray:
    """A numeric array from a `.npy` file (`--input X.npy`): E901 for anything else (a text or
    pickled file, a folder), naming what it is."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise data_error(f"cannot read '{path}': {exc.strerror or exc}", path,
                         "save the input with numpy.save") from None
    if magic != b"\x93NUMPY":
        raise data_error(f"'{path}' is not a .npy file", path,
                         "save the input with numpy.save(path, array)")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise data_error(f"cannot read '{path}': {exc}", path,
                         "save the input with numpy.save (a numeric array)") from None
    if not np.issubdtype(array.dtype, np.number):
        raise data_error(f"'{path}' holds {array.dtype} values, not numbers", path,
                         "save a numeric array")
    return array
