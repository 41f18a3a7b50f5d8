"""One file through the checker's stages, each run only when the ones before it found no error
(a later stage would mostly repeat the first error in other words):

1. parse: syntax and schema (E1xx, E2xx, W2xx; `cfgparse.parser`);
2. block rules (`darkcfg.lint.block_rules`, no torch);
3. graph rules (`darkcfg.lint.graph_rules`, a meta-device build; skipped by --no-build).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

from builders.memory import DEFAULT_MAX_MEMORY
from cfgparse import CfgError, Diagnostic, parse
from cfgparse.errors import ERROR
from darkcfg.lint.block_rules import check_blocks


@dataclasses.dataclass
class Options:
    build: bool = True
    max_memory: int = DEFAULT_MAX_MEMORY
    flavor: str | None = None  # None: accept both forks' keys; build with AlexeyAB's rules
    targets: tuple[str, ...] = ()  # deployment runtimes to check against (darkcfg.lint.targets)


#: the FILE argument that reads the cfg from stdin (as ruff and flake8 take it), and its name
STDIN, STDIN_NAME = "-", "<stdin>"


def check_file(path: str | Path, options: Options | None = None,
               source: bytes | None = None) -> list[Diagnostic]:
    """All findings for one file, sorted by position; never raises for bad input. `source`:
    the cfg's bytes, already read (stdin), with `path` the name diagnostics give it."""
    options = options or Options()
    # `darkcfg check "$MODELS"` with MODELS unset: not the working folder
    if source is None and not str(path):
        return [Diagnostic("E901", "cannot read '': the path is empty", "<path>",
                           hint="name a cfg file or folder (is a shell variable empty?)")]
    try:
        blocks = parse(Path(path) if source is None else source,
                       path=None if source is None else str(path), flavor=options.flavor)
    except CfgError as exc:
        return ordered(exc.diagnostics if source is not None else
                       pointing_to_shipped(exc.diagnostics, str(path)))
    found = list(blocks.warnings) + check_blocks(blocks)
    if options.targets:
        from darkcfg.lint.targets import check_target

        for target in options.targets:
            found += check_target(blocks, target)
    if options.build and not any(d.severity == ERROR for d in found):
        from darkcfg.lint.graph_rules import check_graph  # torch only when the graph is checked

        found += check_graph(blocks, flavor=options.flavor or "alexeyab",
                             max_memory=options.max_memory, targets=options.targets)
    return ordered(dedupe(found))


def pointing_to_shipped(found: Sequence[Diagnostic], path: str) -> list[Diagnostic]:
    """`found`, its E901 saying where darkcfg's own copy of a missing `path` is (the docs'
    `check cfg/digits.cfg` away from a checkout): not linted in its place, as a moved cfg must
    not pass CI as the stock one."""
    from darkcfg.bundled import shipped_cfg

    shipped = shipped_cfg(path)
    if not shipped:
        return list(found)
    hint = (f"no such file here; darkcfg ships {shipped}, which check does not take in its "
            f"place: to lint it, cp {shipped} {Path(shipped).name}")
    return [dataclasses.replace(d, hint=hint) if d.code == "E901" else d for d in found]


def dedupe(found: Sequence[Diagnostic]) -> list[Diagnostic]:
    """One diagnostic per place and code; an unknown key (W201) is not also a key no builder
    reads (W301)."""
    unknown_keys = {(d.path, d.line, d.column) for d in found if d.code == "W201"}
    seen: set = set()
    out = []
    for d in found:
        key = (d.path, d.line, d.column, d.code)
        if key in seen or (d.code == "W301" and key[:3] in unknown_keys):
            continue
        seen.add(key)
        out.append(d)
    return out


def ordered(found: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(found, key=lambda d: (d.line, d.column, d.code))
