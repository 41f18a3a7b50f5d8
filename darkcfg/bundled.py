"""The cfg files darkcfg ships (a checkout's cfg/, which darkcfg/cfg links to; a wheel holds
the files): the README's `cfg/yolov3-tiny.cfg` must work after `pip install`, where no cfg/
folder is at hand. No torch: the linter's layer may use it."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from cfgparse import CfgError, Diagnostic
from cfgparse.errors import printable
from darkcfg.console import say

FOLDER = Path(__file__).with_name("cfg")


def shipped_names() -> list[str]:
    """The file names of the shipped cfgs (and the CSV of linear_regression.cfg)."""
    try:
        return sorted(os.listdir(FOLDER))
    except OSError:  # a package installed without its data: nothing is shipped
        return []


def shipped_cfg(arg: str) -> str | None:
    """The path of the shipped copy that `arg` names (`yolov3-tiny.cfg` or `cfg/yolov3-tiny.cfg`),
    or None: a file at `arg` itself, or any other name, is taken as written."""
    if isinstance(arg, os.PathLike):
        arg = os.fspath(arg)
    if not isinstance(arg, str) or os.path.lexists(arg):
        return None
    folder, _, name = arg.replace(os.sep, "/").rpartition("/")
    if folder not in ("", "cfg", "./cfg") or name not in shipped_names():
        return None
    return str(FOLDER / name)


def docs_folder() -> Path | None:
    """The folder holding README.md and docs/: a checkout's root, or where the wheel put them
    ({prefix}/share/doc/darkcfg, setup.cfg's data_files); None when neither is there."""
    root = Path(__file__).resolve().parents[1]
    if (root / "README.md").is_file() and (root / "docs" / "commands.md").is_file():
        return root
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("darkcfg").files or []
    except PackageNotFoundError:
        return None
    for file in files:
        if file.as_posix().endswith("share/doc/darkcfg/README.md"):
            folder = Path(file.locate()).resolve().parent
            return folder if (folder / "docs" / "commands.md").is_file() else None
    return None


_said: set[str] = set()


def resolve_cfg(arg):
    """`arg`, or the shipped cfg it names when there is no such file (see shipped_cfg), said
    once on stderr: a run in the wrong folder should not take the stock cfg unnoticed."""
    shipped = shipped_cfg(arg)
    if not shipped:
        return arg
    if shipped not in _said:
        _said.add(shipped)
        say(f"cfg: {arg} is darkcfg's shipped {shipped} (no such file here)")
    return shipped


def resolve_model_cfg(arg):
    """resolve_cfg for a command's CFG argument; a missing name close to a shipped cfg's
    (`yolov4-tiny`, `yolov4_tiny.cfg`) is E901 with that name as the hint, not the bare
    "cannot read" (`--data digits` goes through resolve_cfg alone: it names a data set)."""
    resolved = resolve_cfg(arg)
    if resolved is not arg or not isinstance(arg, str) or "\n" in arg or os.path.lexists(arg):
        return resolved
    folder, _, name = arg.replace(os.sep, "/").rpartition("/")
    if folder not in ("", "cfg", "./cfg"):
        return resolved
    cfgs = [n for n in shipped_names() if n.endswith(".cfg")]
    near = [name + ".cfg"] if name + ".cfg" in cfgs else \
        difflib.get_close_matches(name, cfgs, n=1, cutoff=0.8)
    if near:
        raise CfgError(Diagnostic(
            "E901", f"cannot read '{printable(arg)}': No such file or directory", arg,
            hint=f"did you mean '{folder + '/' if folder else ''}{near[0]}'? (a cfg darkcfg "
                 "ships, taken by that name where no such file is)"))
    return resolved
