"""The one atomic file writer: weights, checkpoints, charts, settings and metrics all go through
it, so a crash, a kill or a full disk never leaves a truncated file under the real name."""

from __future__ import annotations

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
