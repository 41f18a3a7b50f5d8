"""Section plugins from installed packages: the `darkcfg.sections` entry-point group.

Each entry point names a module (or an object in one) whose import registers sections with
`builders.register_section`. The group is loaded once, lazily, the first time a section name is
not known (so a cfg of built-in sections never imports a plugin). A plugin that fails to import is
an E206 error naming its package and entry point.

`DARKCFG_PLUGINS=mod1,mod2` also imports those modules (a project's own sections, not installed as
a package: the module must be importable, e.g. from the current folder or PYTHONPATH). The
current folder is searched last, after the standard library and installed packages, so a stray
`colorsys.py` (or any other module name) in the working folder never shadows them.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata

from .errors import CfgError, Diagnostic

GROUP = "darkcfg.sections"
ENV = "DARKCFG_PLUGINS"
_loaded = False


def load_plugins() -> bool:
    """Import every entry point of the group (once per process). True on the call that loaded."""
    global _loaded
    if _loaded:
        return False
    _loaded = True  # set first: a plugin's own imports may ask for sections again
    for name in filter(None, (n.strip() for n in os.environ.get(ENV, "").split(","))):
        if "" not in sys.path and os.getcwd() not in sys.path:
            # last, not first: the working folder may hold files named like stdlib modules
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise CfgError(Diagnostic(
                "E206", f"section plugin module '{name}' (from {ENV}) failed to import: "
                f"{type(exc).__name__}: {exc}",
                hint=f"check {ENV} and that '{name}' is importable from here")) from None
    for entry in metadata.entry_points(group=GROUP):
        try:
            entry.load()
        except Exception as exc:  # any failure inside the plugin's import is the plugin's
            package = entry.dist.name if entry.dist is not None else "an unknown package"
            raise CfgError(Diagnostic(
                "E206", f"section plugin '{entry.name} = {entry.value}' of package "
                f"'{package}' failed to import: {type(exc).__name__}: {exc}",
                hint=f"fix or reinstall '{package}' (pip install --force-reinstall {package}), "
                "or uninstall it")) from None
    return True
