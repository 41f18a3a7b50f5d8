"""The one atomic file writer: weights, checkpoints, charts, settings and metrics all go through
it, so a crash, a kill or a full disk never leaves a truncated file under the real name. Also
the one folder walk (`files_under`: a data set's images, detect's inputs, check's cfgs)."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fnmatch
import glob
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cfgparse import CfgError, Diagnostic


@contextmanager
def atomic_open(path: str | os.PathLike, parents: bool = False,
                sweep: bool = False) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` only once it is completely written and synced: a temp
    file beside `path`, fsynced, renamed over it, and the folder synced. With `parents`, missing
    folders are created; otherwise a missing folder is an E901 error. The temp file is locked
    while it is written; with `sweep`, the temp files of `path` that a killed writer left are
    removed first (`remove_abandoned`: for one-file outputs, not a folder of many)."""
    target = Path(path)
    if target.is_dir():
        raise CfgError(Diagnostic("E901", f"cannot write '{target}': it is a folder", str(target),
                                  hint="name a file, not a folder"))
    refuse_special(target, f"'{target}'")
    if parents:
        ensure_folder(target.parent)
    prefix = temp_prefix(target.name, ".tmp")
    if sweep:
        remove_abandoned(target.parent, f"{glob.escape(prefix)}*.tmp")
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise write_error(target, exc) from None
    hold(fd)
    try:
        os.chmod(tmp, _mode_for(target))  # mkstemp makes the file private; ours should not be
        _keep_owner(tmp, target)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) or is_torch_write_failure(exc):
            raise write_error(target, exc, started=True) from None
        raise
    _sync_rename(target.parent)


#: the folders whose renames a `synced_together` block syncs at its end (None: outside one)
_PENDING: contextvars.ContextVar[set[Path] | None] = contextvars.ContextVar(
    "darkcfg_pending_folder_syncs", default=None)


@contextmanager
def synced_together() -> Iterator[None]:
    """Make the many files written inside the block durable with one fsync each: every
    `atomic_open` still syncs its bytes before its rename (a crash leaves the old file or the
    whole new one, never a part), but the folders the renames happened in are synced once
    each when the block ends, not once a file (the folder fsync was half of `data convert`'s
    time). A name written in the block may be the old file after a crash until the block ends."""
    if _PENDING.get() is not None:  # an outer block syncs them
        yield
        return
    pending: set[Path] = set()
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
        for folder in sorted(pending):
            sync_folder(folder)


def _sync_rename(folder: Path) -> None:
    """Make a rename in `folder` durable now, or at the end of the `synced_together` block."""
    pending = _PENDING.get()
    if pending is None:
        sync_folder(folder)
    else:
        pending.add(folder)


def is_torch_write_failure(exc: BaseException) -> bool:
    """torch.save reports a failed write (a full disk, a quota) as a RuntimeError from its zip
    writer (caffe2/serialize/inline_container.cc), not as an OSError."""
    return isinstance(exc, RuntimeError) and ("inline_container" in str(exc)
                                              or "file write failed" in str(exc))


def write_error(target: str | os.PathLike, exc: BaseException, started: bool = False,
                what: str = "") -> CfgError:
    """A failed write as one located diagnostic: what could not be written, where, why, and (once
    a temp file was started) that the file under the real name is untouched."""
    target = Path(target)
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left" in str(exc):
        why, hint = "no space left on the device", "free some space (or write elsewhere)"
    elif code == errno.EDQUOT:
        why, hint = "disk quota exceeded", "free some space (or write elsewhere)"
    elif code == errno.EFBIG:
        why, hint = ("the file would be larger than this process may write (a file size limit: "
                     "ulimit -f, or the file system's largest file, FAT32's 4 GiB)",
                     "raise the limit (ulimit -f unlimited) or write to a file system that "
                     "takes files this large")
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why, hint = "permission denied", "write to a folder you may write to"
    elif code == errno.ENOENT:
        why, hint = "its folder does not exist", "create the folder first, or name another one"
    elif code == errno.ENOTDIR:
        why, hint = "a part of the path is a file, not a folder", "name a path inside a folder"
    elif code == errno.EISDIR:
        why, hint = "it is a folder", "name a file, not a folder"
    elif isinstance(exc, OSError):
        why, hint = exc.strerror or str(exc), "check that the folder exists and is writable"
    else:
        why, hint = str(exc).strip().splitlines()[-1], "free some space (or write elsewhere)"
    kept = ""
    if started:
        kept = ("; the previous file is intact" if target.exists()
                else "; nothing was written under that name")
    return CfgError(Diagnostic("E901", f"cannot write {what or repr(str(target))}: {why}{kept}",
                               str(target), hint=hint))


def hidden(name: str) -> bool:
    """A dot name: macOS's `._x.jpg` Finder metadata and `.DS_Store`, `.ipynb_checkpoints`,
    `.git` are no part of a data set (a shell glob and ultralytics' listing pass them over)."""
    return name.startswith(".")


def files_under(folder: Path, unreadable: list[OSError] | None = None) -> list[Path]:
    """Every file below `folder` but hidden ones, through linked folders too (a data set's
    `images -> /data/..` link; Path.rglob does not follow them), each real folder once (a link
    loop ends). A folder that cannot be listed is passed over, its error appended to
    `unreadable` when given (the caller can say which files it could not see)."""
    seen: set[str] = set()
    files: list[Path] = []
    onerror = unreadable.append if unreadable is not None else None
    for root, dirs, names in os.walk(folder, followlinks=True, onerror=onerror):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not hidden(d)]
        files += [Path(root) / n for n in names if not hidden(n)]
    return files


def ensure_folder(folder: str | os.PathLike, flag: str = "") -> Path:
    """Create `folder` (and its parents) for output; a file in the way, a missing permission or a
    full disk is a located E901 naming the folder (and the flag that chose it)."""
    folder = Path(folder)
    named = _output_folder_named(folder, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc, what=named) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CfgError(Diagnostic("E901", f"cannot write to {named}: permission denied",
                                  str(folder), hint="name a folder you may write to"))
    return folder


FOLDER_LOCK = ".darkcfg.lock"


def hold_folder(out: str | os.PathLike, flag: str = "--out"):
    """An exclusive lock on the output folder `out` for this process (a POSIX record lock on
    OUT/.darkcfg.lock: owned by this process alone, so forked loader workers do not inherit it
    and a killed run frees it at once): a second run (train or detect) started into the same
    folder at the same moment is refused instead of both mixing their files (and one sweeping
    the other's temp files away). Creates the folder. Returns the FolderLock: keep a reference
    while writing; `release_unused()` undoes it for a run refused before it wrote anything."""
    import fcntl

    made_folders = folders_to_make(out)
    made_lock = not (Path(out) / FOLDER_LOCK).exists()
    out = ensure_folder(out, flag)
    try:
        handle = open(out / FOLDER_LOCK, "a+")  # noqa: SIM115 - held while the outputs are written
    except OSError as exc:
        raise CfgError(Diagnostic("E901", f"cannot lock the output folder '{out}': "
                                  f"{exc.strerror or exc}", str(out),
                                  hint="name a folder you may write to")) from None
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise CfgError(Diagnostic(
            "E901", f"another darkcfg run (process {holder}) is writing to '{out}'", str(out),
            hint=f"wait for it, or give this run another {flag}")) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return FolderLock(handle, made_folders, made_lock)


def folders_to_make(folder: str | os.PathLike) -> list[Path]:
    """The folders that creating `folder` makes (it and its missing parents), deepest first."""
    made, folder = [], Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    return made


@dataclass
class FolderLock:
    """hold_folder's lock: the open lock file (closing it releases the lock), and what taking it
    created, so that a run refused before it writes can leave no trace."""

    handle: object
    made_folders: list[Path] = field(default_factory=list)  # deepest first
    made_lock: bool = False

    def release_unused(self) -> None:
        """Undo hold_folder: the lock file it created goes (unlinked while still held, so no
        other run is locking it), then the folders it created, each only if empty."""
        if self.made_lock:
            with contextlib.suppress(OSError):
                os.unlink(self.handle.name)
        self.handle.close()
        for folder in self.made_folders:
            try:
                folder.rmdir()
            except OSError:
                break


def lock_folder(out: str | os.PathLike, flag: str = "--out") -> int:
    """hold_folder for a command that forks no workers (detect): a `flock` on the folder
    itself, so nothing is left in it (flock is inherited across fork, hence not for training,
    whose killed loader workers would keep holding it). Creates the folder. Returns the
    descriptor: os.close() releases the lock."""
    import fcntl

    out = ensure_folder(out, flag)
    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CfgError(Diagnostic(
            "E901", f"another darkcfg run is writing to '{out}'", str(out),
            hint=f"wait for it, or give this run another {flag}")) from None
    return fd


def check_folder(folder: str | os.PathLike, flag: str = "") -> Path:
    """Before any slow work, without creating anything: `folder` is, or can be made, a writable
    folder. Raises a located E901 otherwise (ensure_folder creates it later)."""
    folder = Path(folder)
    named = _output_folder_named(folder, flag)
    check_creatable(folder, f"use {named}", f"write to {named}", folder)
    return folder


def _output_folder_named(folder: Path, flag: str) -> str:
    """How messages name output `folder` (chosen by `flag`); E901 where it is a file."""
    named = f"{flag} folder '{folder}'" if flag else f"folder '{folder}'"
    if folder.exists() and not folder.is_dir():
        raise CfgError(Diagnostic("E901", f"cannot use {named}: it is a file", str(folder),
                                  hint="name a folder (or a new path) for the outputs"))
    return named


def check_creatable(start: Path, use: str, write: str, path: Path) -> None:
    """The nearest existing folder at or above `start` is a folder we may write into (what
    check_folder and check_writable share)."""
    ancestor = start
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CfgError(Diagnostic("E901", f"cannot {use}: '{ancestor}' is a file, not a folder",
                                  str(path), hint="name a path inside a folder"))
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CfgError(Diagnostic("E901", f"cannot {write}: permission denied in '{ancestor}'",
                                  str(path), hint="name a folder you may write to"))


def check_writable(path: str | os.PathLike, flag: str = "") -> Path:
    """Before any slow work: `path` can be written (it is not a folder and its folder exists, or
    can be created, and is writable). Raises a located E901 otherwise."""
    path = Path(path)
    named = f"{flag} '{path}'" if flag else f"'{path}'"
    if path.is_dir():
        raise CfgError(Diagnostic("E901", f"cannot write {named}: it is a folder", str(path),
                                  hint="name a file, not a folder"))
    refuse_special(path, named)
    check_creatable(path.parent, f"write {named}", f"write {named}", path)
    return path


def refuse_special(path: Path, named: str) -> None:
    """E901 when `path` itself is a device, a FIFO or a socket (`--out /dev/null`): a file is
    written beside it and renamed over its name, which would replace the device node (as root,
    /dev/null for every program)."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError:  # missing (the usual case) or unreadable: the write says why
        return
    kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    kind = next((k for test, k in kinds.items() if test(mode)), None)
    if kind is not None:
        raise CfgError(Diagnostic(
            "E901", f"cannot write {named}: it is {kind}, not a file (darkcfg writes a new file "
            "and renames it over the name, which would replace it)", str(path),
            hint="name a regular file"))


def atomic_write(path: str | os.PathLike, data: bytes | str, parents: bool = True,
                 sweep: bool = False) -> None:
    """Write `data` (text as UTF-8) to `path` atomically, creating missing folders."""
    with atomic_open(path, parents=parents, sweep=sweep) as f:
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
        if _cut_trailer(tail):
            raise CfgError(Diagnostic(
                "E901", f"{what} '{path}' is cut short ({len(data):,} bytes): its checksum line "
                "is incomplete, so its content cannot be verified", str(path),
                hint="use an intact copy (compare its size with the original), or start over "
                "from the run's _last.weights with --weights and a new --out"))
        return data
    payload, expected = data[:-CHECKSUM_SIZE], tail[len(CHECKSUM_TRAILER):-1]
    if hashlib.sha256(payload).hexdigest().encode() != expected:
        raise CfgError(Diagnostic(
            "E901", f"{what} '{path}' is corrupt: its content does not match the SHA-256 stored "
            "when it was written (a byte changed on disk or in a copy)", str(path),
            hint="use an intact copy, or start over from the run's _last.weights with --weights "
            "and a new --out"))
    return payload


NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def temp_prefix(name: str, suffix: str) -> str:
    """`.NAME.`, the prefix of a temp file (or folder) `.NAME.XXXXXXXX<suffix>` made beside the
    output NAME by mkstemp/mkdtemp, NAME cut so that the whole fits one file name."""
    return f".{fitting(name, 2 + 8 + len(os.fsencode(suffix)))}."


def fitting(name: str, room: int) -> str:
    """`name` cut short so that it and `room` more bytes fit one file name: the temp names made
    from an output's name (`.NAME.XXXXXXXX.tmp`) must not fail where NAME itself fits."""
    raw = os.fsencode(name)
    if len(raw) + room <= NAME_MAX:
        return name
    raw = raw[:max(NAME_MAX - room, 1)]
    lead = len(raw) - 1  # not half a UTF-8 character: drop a last one cut short
    while lead > 0 and raw[lead] & 0xC0 == 0x80 and len(raw) - lead < 4:
        lead -= 1
    size = 4 if raw[lead] >= 0xF0 else 3 if raw[lead] >= 0xE0 else 2 if raw[lead] >= 0xC0 else 1
    return os.fsdecode(raw[:lead] if len(raw) - lead < size and lead > 0 else raw)


def _cut_trailer(tail: bytes) -> bool:
    """Whether `tail` ends with the start of a checksum trailer: a copy cut inside that line
    (an archive itself never ends in one: a zip ends with its directory's fixed fields)."""
    start = tail.rfind(CHECKSUM_TRAILER[:2])
    if start < 0:
        return False
    rest = tail[start:]
    if len(rest) <= len(CHECKSUM_TRAILER):
        return CHECKSUM_TRAILER.startswith(rest)
    digest = rest[len(CHECKSUM_TRAILER):]
    return rest.startswith(CHECKSUM_TRAILER) and all(c in b"0123456789abcdef" for c in digest)


def hold(fd: int) -> int:
    """An exclusive `flock` on an open temp file or folder for as long as this process keeps
    `fd` open (the lock ends with the process, however it ends): `remove_abandoned` leaves
    it alone. Returns `fd`. Best effort: a file that cannot be locked (a link to a device
    another temp file of this process holds too) is written all the same."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def remove_abandoned(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Delete the temp files and folders matching `pattern` in `folder` that a writer killed
    outright (SIGKILL, a power cut: no cleanup ran) left behind: those no live process `hold`s.
    Links and other kinds of file are left alone."""
    import fcntl
    import shutil
    import stat

    removed = []
    for path in Path(folder).glob(pattern):
        try:
            kind = os.lstat(path).st_mode
            if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer's
            continue
        else:
            if stat.S_ISDIR(kind):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextmanager
def work_folder(prefix: str) -> Iterator[str]:
    """A private temp folder (`tempfile.mkdtemp` under $TMPDIR) for intermediate files, held
    while in use and removed after; the folders of this `prefix` that a killed process left
    are removed first (a kill leaves no cleanup)."""
    import shutil

    remove_abandoned(tempfile.gettempdir(), f"{glob.escape(prefix)}*")
    work = tempfile.mkdtemp(prefix=prefix)
    fd = hold(os.open(work, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)))
    try:
        yield work
    finally:
        os.close(fd)
        shutil.rmtree(work, ignore_errors=True)


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


@contextmanager
def staged_file(path: str | os.PathLike, flag: str = "") -> Iterator[str]:
    """A temp file beside `path` for a library that writes by path (the ONNX and torch.export
    writers) to write and the caller to check: published onto `path` when the block ends
    without an error, removed in every case where it does not (a failed check, a full disk,
    Ctrl-C): `path` is either the old file or the whole new one."""
    path = Path(path)
    check_writable(path, flag)
    prefix = temp_prefix(path.name, path.suffix)
    remove_abandoned(path.parent, f"{glob.escape(prefix)}*{glob.escape(path.suffix)}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    hold(fd)  # open (and locked) until the end: the library writes the same file by its path
    try:
        yield tmp
        publish(tmp, path)
    finally:
        os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give a complete temp file (written by a library that takes a path: the ONNX and
    torch.export writers) its final name as `atomic_open` does: the mode a new file gets
    (mkstemp's is private), its bytes synced, the rename, the folder synced. A failure is a
    located E901 naming `target`."""
    try:
        os.chmod(tmp, _mode_for(Path(target)))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        raise write_error(target, exc, started=True) from None
    _sync_rename(Path(target).parent)


def _mode_for(target: Path) -> int:
    """The permissions a rewritten file keeps (a private cfg stays private), or a new file's."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _keep_owner(tmp: str, target: Path) -> None:
    """A rewritten file keeps its owner and group where this process may give them (root
    editing a user's cfg; a group the user is in); a new file, or where that is not allowed,
    is this process's."""
    try:
        st = target.stat()
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            os.chown(tmp, st.st_uid if os.getuid() == 0 else -1, st.st_gid)
    except (OSError, AttributeError):  # missing, not allowed, or no chown (Windows)
        pass


def check_editable(path: str | os.PathLike, flag: str = "") -> Path:
    """check_writable, and for an existing file that it is not read-only: an atomic rewrite
    renames a new file over the name, which the folder's permission allows whatever the file's
    own mode says (root's os.access too), so a read-only file is refused here (E901)."""
    path = check_writable(path, flag)
    named = f"{flag} '{path}'" if flag else f"'{path}'"
    try:
        mode = path.stat().st_mode
    except OSError:
        return path
    if not mode & 0o222 or not os.access(path, os.W_OK):
        raise CfgError(Diagnostic(
            "E901", f"cannot write {named}: the file is read-only", str(path),
            hint=f"make it writable (chmod u+w '{path}') to let darkcfg edit it, or copy the "
            "printed values into it by hand"))
    return path


@contextmanager
def locked_for_edit(path: str | os.PathLike, flag: str = "", wait_s: float = 60.0
                    ) -> Iterator[bytes]:
    """The bytes of `path`, read under an exclusive `flock` on the file that stays held until
    the block ends: an edit that reads, changes and `atomic_write`s the file inside the block
    is never lost to a second darkcfg doing the same at once (the second waits, up to
    `wait_s` seconds, then reads the first one's result: the lock is taken again when the name
    points at another file by then)."""
    import fcntl
    import time

    path = Path(path)
    named = f"{flag} '{path}'" if flag else f"'{path}'"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise CfgError(Diagnostic("E901", f"cannot read {named}: {exc.strerror or exc}",
                                      str(path), hint="check the path and its permissions")) \
                from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise CfgError(Diagnostic(
                            "E901", f"cannot edit {named}: another process has been editing it "
                            f"for {wait_s:.0f} s", str(path),
                            hint="wait for it to finish, then run this again")) from None
                    time.sleep(0.05)
            now, held = os.stat(path), os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # replaced while this one waited: lock the file the name holds now
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        yield b"".join(chunks)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
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
