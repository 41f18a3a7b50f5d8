"""The one atomic file writer: weights, checkpoints, charts, settings and metrics all go through
it, so a crash, a kill or a full disk never leaves a truncated file under the real name."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cfgparse import CfgError, Diagnostic


@contextmanager
def atomic_open(path: str | os.PathLike, parents: bool = False) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` only once it is completely written and synced: a temp
    file beside `path`, fsynced, renamed over it, and the folder synced. With `parents`, missing
    folders are created; otherwise a missing folder is an E901 error."""
    target = Path(path)
    if parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise CfgError(Diagnostic("E901", f"cannot write '{target}': {exc.strerror or exc}",
                                  str(target),
                                  hint="check that the folder exists and is writable")) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; ours should not be
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str, parents: bool = True) -> None:
    """Write `data` (text as UTF-8) to `path` atomically, creating missing folders."""
    with atomic_open(path, parents=parents) as f:
        f.write(data.encode() if isinstance(data, str) else data)


# A checked file (checkpoints) ends with one line `#darkcfg-sha256:<hex>`: the SHA-256 of every
# byte before it. Readers that ignore trailing bytes (torch.load's zip reader) still read it.
CHECKSUM_TRAILER = b"\n#darkcfg-sha256:"
CHECKSUM_SIZE = len(CHECKSUM_TRAILER) + 64 + 1  # the marker, the hex digest, a newline


def atomic_write_checked(path: str | os.PathLike, data: bytes | memoryview,
                         parents: bool = True) -> None:
    """`atomic_write` of `data` followed by its SHA-256 trailer."""
    digest = hashlib.sha256(data).hexdigest().encode()
    with atomic_open(path, parents=parents) as f:
        f.write(data)
        f.write(CHECKSUM_TRAILER + digest + b"\n")


def read_checked(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of `path` before its checksum trailer, verified (E901 when they do not match);
    a file without a trailer (written before checksums, or by another program) as it is."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CfgError(Diagnostic("E901", f"cannot read {what} '{path}': {exc.strerror or exc}",
                                  str(path))) from None
    tail = data[-CHECKSUM_SIZE:]
    if len(data) < CHECKSUM_SIZE or not tail.startswith(CHECKSUM_TRAILER):
        return data
    payload, expected = data[:-CHECKSUM_SIZE], tail[len(CHECKSUM_TRAILER):-1]
    if hashlib.sha256(payload).hexdigest().encode() != expected:
        raise CfgError(Diagnostic(
            "E901", f"{what} '{path}' is corrupt: its content does not match the SHA-256 stored "
            "when it was written (a byte changed on disk or in a copy)", str(path),
            hint="use an intact copy, or start over from the run's _last.weights with --weights "
            "and a new --out"))
    return payload


def remove_stale_temps(folder: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Delete the temp files `atomic_open` left in `folder` when its process was killed mid-write
    (`.NAME.XXXXXXXX.tmp`; only for the given NAMEs when `names` is given). Call it where no
    other process writes the same files (a run folder at the start of the run)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        name = tmp.name[1:-4].rpartition(".")[0]
        if names is not None and not any(fnmatch.fnmatch(name, n) for n in names):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable too (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
