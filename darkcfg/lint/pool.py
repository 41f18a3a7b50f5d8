"""Many files: directories expanded, each file checked on its own (one bad file does not stop the
others), in forked worker processes when there are several."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from builders.atomic import files_under
from cfgparse import Diagnostic
from cfgparse.errors import printable
from darkcfg.lint.stages import STDIN, STDIN_NAME, Options, check_file


def expand(paths: Iterable[str], unreadable: list[Diagnostic] | None = None) -> list[str]:
    """Files as given, each once; a directory stands for the .cfg files under it (the folder
    walk: hidden names such as .git/, .venv/ or an editor's .#x.cfg left out, linked folders
    followed, each once), files only: a folder or a FIFO named x.cfg is no cfg (a FIFO would
    hang the check), a broken link is (E901). What a folder's walk cannot vouch for is an E901
    in `unreadable`: a folder with no cfg (a moved or misspelt folder must not pass CI), one
    that cannot be listed (its cfgs would go unchecked), a link to a file outside the folder
    (not read: a pull request's `x.cfg -> ~/.ssh/id_rsa` would print the key's lines in the CI
    log). `-` (stdin) is kept as it is."""
    out: dict[str, str] = {}
    for p in paths:
        found = [p]
        if p and p != STDIN and Path(p).is_dir():  # Path('') is '.': an empty argument is no folder
            found, refused = walk(p)
            if unreadable is not None:
                unreadable += refused
        for f in found:
            out.setdefault(os.path.normpath(f), f)
    return list(out.values())


def walk(folder: str) -> tuple[list[str], list[Diagnostic]]:
    """(the .cfg files of `folder` to check, sorted; the E901s of what it did not read)."""
    errors: list[OSError] = []
    root = Path(folder).resolve()
    found: list[str] = []
    refused = []
    for f in sorted(files_under(Path(folder), errors), key=str):
        if f.suffix != ".cfg" or (f.exists() and not f.is_file()):
            continue
        if f.exists() and not f.resolve().is_relative_to(root):
            refused.append(Diagnostic(
                "E901", f"not read: '{printable(str(f))}' is a link to a file outside "
                f"'{printable(folder)}'", str(f), hint="a folder's cfgs must lie inside it (a "
                "link could show any file in the log); to check that file, name it or its folder"))
            continue
        found.append(str(f))
    refused += [Diagnostic("E901", f"cannot read the folder "
                           f"'{printable(os.fsdecode(exc.filename or folder))}': "
                           f"{exc.strerror or exc}", os.fsdecode(exc.filename or folder),
                           hint="check the folder's permissions: its cfg files were not checked")
                for exc in errors]
    if not found and not refused:
        refused.append(Diagnostic("E901", f"folder '{printable(folder)}' holds no .cfg file",
                                  folder, hint="name the folder of the cfg files, or the files"))
    return found, refused


def check_paths(paths: Iterable[str], options: Options | None = None,
                jobs: int = 1, stdin: bytes | None = None) -> list[Diagnostic]:
    """Findings for every file, in order (then the E901s of the folders' walks, `expand`); a
    file that fails unexpectedly does not stop the others. With jobs > 1 the graph checks of
    several files run in forked worker processes. `stdin`: the bytes a `-` path stands for
    (read by the caller, once), checked under the name `<stdin>`."""
    options = options or Options()
    unreadable: list[Diagnostic] = []
    files = [(STDIN_NAME, stdin) if p == STDIN else (p, None)
             for p in expand(paths, unreadable)]
    jobs = min(jobs, len(files))
    if jobs > 1 and options.build and "fork" in multiprocessing.get_all_start_methods():
        from darkcfg.lint.graph_rules import prepare_workers

        prepare_workers()  # import torch and every builder once, before forking
        context = multiprocessing.get_context("fork")  # workers inherit those imports
        results = in_workers(files, options, jobs, context)
    else:
        results = [check_one(path, options, source) for path, source in files]
    return [d for found in results for d in found] + unreadable


def in_workers(files: list[tuple[str, bytes | None]], options: Options, jobs: int,
               context) -> list[list[Diagnostic]]:
    """check_one of each file in a pool of `jobs` forked processes. A worker that dies (out of
    memory, a signal) breaks the pool: the files it left unchecked are checked again, each in a
    process of its own, so the file that kills its checker is reported and the others are not
    lost (never rerun here: it would kill this process and every report with it)."""
    results: list[list[Diagnostic] | None] = [None] * len(files)
    pool = ProcessPoolExecutor(jobs, mp_context=context)
    try:
        futures = [pool.submit(check_one, path, options, source) for path, source in files]
        for i, future in enumerate(futures):
            try:
                results[i] = future.result()  # a worker's Ctrl-C comes back here: raised
            except BrokenProcessPool:
                pass
    except (BrokenProcessPool, OSError):  # broken while submitting, or no process could start
        pass
    except BaseException:  # Ctrl-C: stop now, the files not started are dropped
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [found if found is not None else alone(path, options, context, source)
            for (path, source), found in zip(files, results, strict=True)]


def alone(path: str, options: Options, context, source: bytes | None = None
          ) -> list[Diagnostic]:
    """check_one in a forked process of its own; its death is this file's finding."""
    try:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(check_one, path, options, source).result()
    except BrokenProcessPool:
        return [Diagnostic("E300", "darkcfg's process checking this file died (out of memory, "
                           "or killed by a signal)", path,
                           hint="check it alone (`darkcfg check --jobs 1 FILE`) to see why; "
                           "if it is not memory, please report it with the cfg")]
    except OSError:  # no process can start: check it here, as with --jobs 1
        return check_one(path, options, source)


def check_one(path: str, options: Options, source: bytes | None = None) -> list[Diagnostic]:
    try:
        return check_file(path, options, source)
    except Exception as exc:  # a darkcfg bug: report it as a finding and go on
        return [Diagnostic("E300", f"darkcfg failed on this file: {type(exc).__name__}: {exc}",
                           path, hint="this is a darkcfg bug; please report it with the cfg")]


def default_jobs() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
