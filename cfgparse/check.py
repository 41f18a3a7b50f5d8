"""`darkcfg check`: lint Darknet cfg files for CI.

    python -m cfgparse check [--format text|json|github|sarif] [--strict] [--no-build]
                             [--max-memory SIZE] [--flavor alexeyab|pjreddie] [--jobs N]
                             FILE|DIR ...

Three stages per file, each run only when the previous one found no error (a later stage would
mostly repeat the earlier error in other words):

1. parse: syntax and schema (E1xx, E2xx, W2xx; `cfgparse.parser`);
2. block rules (this module, no torch): [net] training settings, layer references, detection
   heads against their anchors and the conv that feeds them, classes across heads;
3. graph rules (`builders.check_graph`, skipped by --no-build): a build on the meta device
   (shapes, no memory), input-shape compatibility, positive output sizes, unread keys, and the
   memory estimate.

Exit status: 0 clean, 1 findings (errors; warnings too with --strict), 2 usage or I/O error.
The rule codes are stable; the README (Checking cfg files) lists each with an example.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from . import schema
from .blocks import Block, Option
from .errors import CODES, ERROR, WARNING, CfgError, Diagnostic
from .parser import parse

DEFAULT_MAX_MEMORY = 4 * 2**30
FORMATS = ("text", "json", "github", "sarif")
IO_CODES = frozenset({"E901"})  # findings that mean "could not check", not "the cfg is wrong"

# Sections whose keys name earlier layers, and the keys (Darknet's negative-relative rule).
REFERENCE_KEYS = {
    "route": ("layers",),
    "shortcut": ("from",),
    "sam": ("from",),
    "scale_channels": ("from",),
    "convolutional": ("share_index",),
}
REQUIRED_REFERENCES = {("route", "layers"), ("shortcut", "from"), ("sam", "from"),
                       ("scale_channels", "from")}
DETECTION_HEADS = ("yolo", "Gaussian_yolo", "region", "detection")


# -- stage 2: rules on the parsed blocks ---------------------------------------------------------

def value(block: Block, key: str) -> Any:
    """The typed value of `key`, or its schema default; unlike the Block getters this does not
    mark the key as read, so the build's "darkcfg ignores" report stays about the builders."""
    opt = block.options.get(key)
    if opt is not None:
        return opt.value
    spec = schema.key_spec(block.type, key)
    return None if spec is None else spec.default


def as_list(v: Any) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def item_diagnostic(block: Block, key: str, item: int, code: str, message: str, hint: str = "",
                    severity: str = ERROR) -> Diagnostic:
    """A diagnostic on the `item`-th comma-separated entry of a list value (e.g. one route index)
    rather than on the whole value."""
    opt = block.options.get(key)
    if opt is None or not opt.source or not opt.value_column:
        return block.diagnostic(code, message, key, hint, severity)
    column, width = item_span(opt, item)
    return Diagnostic(code, message, block.path, opt.line, column, severity, hint, opt.source,
                      width)


def item_span(opt: Option, item: int) -> tuple[int, int]:
    """1-based column and width of the `item`-th comma-separated entry of an option's value in its
    source line (Darknet drops spaces, so commas are what separate entries)."""
    src = opt.source
    i = opt.value_column - 1
    seen = 0
    while seen < item and i < len(src):
        if src[i] == ",":
            seen += 1
        i += 1
    while i < len(src) and src[i] in " \t":
        i += 1
    end = i
    while end < len(src) and src[end] != ",":
        end += 1
    text = src[i:end].rstrip()
    return i + 1, max(len(text), 1)


def check_blocks(blocks: Sequence[Block]) -> list[Diagnostic]:
    """Every block rule over a parsed cfg; never raises for bad input."""
    found: list[Diagnostic] = []
    if not blocks:
        return found
    net = blocks[0] if blocks[0].type == "net" else None
    layers = list(blocks[1:]) if net is not None else list(blocks)
    if net is not None:
        found += net_rules(net)
    for block in layers:
        found += reference_rules(block)
    found += head_rules(layers)
    return found


def net_rules(net: Block) -> list[Diagnostic]:
    """[net]: an input size, whole mini-batches, a learning-rate schedule Darknet can run."""
    out: list[Diagnostic] = []
    width, height, channels = value(net, "width"), value(net, "height"), value(net, "channels")
    if not (width * height * channels) and not value(net, "inputs"):
        out.append(net.diagnostic("E305", "[net] gives no input size",
                                  hint="set width, height and channels (or inputs for flat data)"))
    batch, subdivisions = value(net, "batch"), value(net, "subdivisions")
    if subdivisions > batch:
        out.append(net.diagnostic(
            "E305", f"subdivisions={subdivisions} is larger than batch={batch}: each step would "
            "train on 0 images", "subdivisions",
            hint=f"use subdivisions <= batch, e.g. subdivisions={batch}"))
    elif batch % subdivisions:
        out.append(net.diagnostic(
            "E305", f"batch={batch} is not divisible by subdivisions={subdivisions}: Darknet "
            f"trains on {batch // subdivisions * subdivisions} of the {batch} images per step",
            "subdivisions", hint="make batch a multiple of subdivisions"))

    policy = value(net, "policy")
    steps, scales = net.options.get("steps"), net.options.get("scales")
    if policy == "steps":
        for key, opt in (("steps", steps), ("scales", scales)):
            if opt is None:
                out.append(net.diagnostic(
                    "E305", f"policy=steps needs '{key}' (Darknet stops with a fatal error)",
                    "policy", hint=f"add {key}=... with one entry per learning-rate change"))
    if steps is not None and scales is not None and len(as_list(steps.value)) != len(
            as_list(scales.value)):
        n_steps, n_scales = len(as_list(steps.value)), len(as_list(scales.value))
        out.append(net.diagnostic(
            "E305", f"steps has {n_steps} entries but scales has {n_scales}", "scales",
            hint="give one scale per step (Darknet silently uses 1.0 for a missing scale and "
            "ignores extra ones)"))
    if steps is not None:
        values = as_list(steps.value)
        for i in range(1, len(values)):
            if values[i] <= values[i - 1]:
                out.append(item_diagnostic(
                    net, "steps", i, "E305",
                    f"steps must increase: {values[i]:g} comes after {values[i - 1]:g}",
                    hint="list the iterations in increasing order"))
                break
    max_batches, burn_in = value(net, "max_batches"), value(net, "burn_in")
    if max_batches and burn_in >= max_batches:
        out.append(net.diagnostic(
            "E305", f"burn_in={burn_in} is not below max_batches={max_batches}: training ends "
            "during the warm-up", "burn_in", hint="use a burn_in well below max_batches"))
    if policy == "poly" and not max_batches:
        out.append(net.diagnostic(
            "E305", "policy=poly needs max_batches > 0 (its rate is "
            "lr*(1-batch/max_batches)^power)",
            "max_batches" if "max_batches" in net else "policy",
            hint="set max_batches, or use policy=constant to train without an end"))
    if policy == "step" and value(net, "step") <= 0:
        out.append(net.diagnostic(
            "E305", f"policy=step needs step > 0 (got {value(net, 'step')}): the rate divides "
            "by it", "step" if "step" in net else "policy", hint="set step=<iterations>"))
    return out


def reference_rules(block: Block) -> list[Diagnostic]:
    """route/shortcut/sam/scale_channels (and conv share_index) name layers before this one:
    negative = relative to this layer, else absolute; Darknet reads garbage otherwise."""
    out: list[Diagnostic] = []
    index = block.index
    for key in REFERENCE_KEYS.get(block.type, ()):
        opt = block.options.get(key)
        if opt is None:
            if (block.type, key) in REQUIRED_REFERENCES:
                out.append(block.diagnostic(
                    "E301", f"[{block.name}] needs '{key}' (the layers it reads)",
                    hint=f"add {key}=-1 (the previous layer) or another layer index"))
            continue
        for item, ref in enumerate(as_list(opt.value)):
            if not isinstance(ref, int):
                continue  # the parser already reported a non-integer
            absolute = index + ref if ref < 0 else ref
            if not 0 <= absolute < index:
                where = "before it" if index else "before the first layer"
                valid = (f"use an index in 0..{index - 1} or -1..-{index}" if index
                         else "the first layer cannot refer to another layer")
                out.append(item_diagnostic(
                    block, key, item, "E301",
                    f"'{key}' refers to layer {ref} (absolute {absolute}), but layer {index} "
                    f"[{block.name}] has {index} layer{'s' if index != 1 else ''} {where}",
                    valid))
    return out


def head_channels(block: Block) -> tuple[int, str] | None:
    """Channels a detection head needs from the layer before it, with the formula in words."""
    classes = value(block, "classes")
    if block.type in ("yolo", "Gaussian_yolo"):
        n = len(as_list(value(block, "mask"))) or value(block, "num")
        extra = 9 if block.type == "Gaussian_yolo" else 5
        return n * (classes + extra), f"len(mask)={n} x (classes={classes} + {extra})"
    if block.type == "region":
        num, coords = value(block, "num"), value(block, "coords")
        return num * (coords + 1 + classes), (
            f"num={num} x (coords={coords} + 1 + classes={classes})")
    return None


def detection_inputs(block: Block) -> tuple[int, str]:
    side, coords, num, classes = (value(block, k) for k in ("side", "coords", "num", "classes"))
    return side * side * ((1 + coords) * num + classes), (
        f"side={side}^2 x ((1 + coords={coords}) x num={num} + classes={classes})")


def head_rules(layers: Sequence[Block]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    first_head: Block | None = None
    for i, block in enumerate(layers):
        if block.type not in DETECTION_HEADS:
            continue
        out += anchor_rules(block)
        prev = layers[i - 1] if i else None
        out += feeding_layer_rule(block, prev)
        if first_head is None:
            first_head = block
        elif value(block, "classes") != value(first_head, "classes"):
            out.append(block.diagnostic(
                "W302", f"classes={value(block, 'classes')} here but "
                f"classes={value(first_head, 'classes')} in the [{first_head.name}] at line "
                f"{first_head.line}", "classes" if "classes" in block else None,
                hint="every detection head of a network predicts the same classes",
                severity=WARNING))
    return out


def anchor_rules(block: Block) -> list[Diagnostic]:
    """[yolo]/[Gaussian_yolo]/[region]: anchors are w,h pairs, num of them; mask picks some."""
    out: list[Diagnostic] = []
    if block.type == "detection":
        return out
    num = value(block, "num")
    anchors = as_list(value(block, "anchors")) if "anchors" in block else None
    if anchors is not None and len(anchors) != 2 * num:
        if len(anchors) > 2 * num:
            effect = f"Darknet reads the first {2 * num} values and ignores the rest"
            fix = f"set num={len(anchors) // 2} or drop the extra values"
        else:
            effect = f"Darknet uses 0.5 for the {2 * num - len(anchors)} missing values"
            fix = f"give {2 * num} values"
        if _merged_numbers(block.options["anchors"]):
            fix += "; Darknet deletes spaces, so two numbers without a comma between them merge"
        out.append(block.diagnostic(
            "W304", f"anchors has {len(anchors)} values but num={num} needs {2 * num} "
            f"({num} w,h pairs): {effect}", "anchors", hint=fix, severity=WARNING))
    if block.type == "region" or "mask" not in block:
        return out
    # Darknet keeps num pairs (0.5 where anchors is short); pairs listed beyond num are what a
    # mask index >= num means, though Darknet reads past its array for them
    listed = (len(anchors) + 1) // 2 if anchors is not None else 0  # a lone w gets h=0.5
    available = max(num, listed)
    mask = as_list(value(block, "mask"))
    bad = [i for i, m in enumerate(mask) if not 0 <= m < available]
    beyond = [i for i, m in enumerate(mask) if num <= m < available]
    if bad:
        out.append(item_diagnostic(
            block, "mask", bad[0], "E304",
            f"mask index {mask[bad[0]]} has no anchor: num={num} and anchors lists {listed} "
            f"pairs (indices 0..{available - 1})", "use anchor indices 0..num-1, or add anchors"))
    elif beyond:
        out.append(item_diagnostic(
            block, "mask", beyond[0], "W304",
            f"mask uses anchor{'s' if len(beyond) > 1 else ''} "
            f"{','.join(str(mask[i]) for i in beyond)}, not below num={num}: Darknet keeps "
            "only num anchor pairs and reads past them", f"set num={available}", WARNING))
    return out


def _merged_numbers(opt: Option) -> bool:
    """Whether the written value has two numbers separated only by spaces ('61,45  61,45')."""
    text = opt.source[opt.value_column - 1:] if opt.source else ""
    return re.search(r"[\d.]\s+[\d.]", text.split("#", 1)[0]) is not None


def feeding_layer_rule(head: Block, prev: Block | None) -> list[Diagnostic]:
    """The conv (or connected) right before a head must produce exactly what the head decodes.
    Other feeding layers are checked on shapes after the build."""
    if prev is None:
        return []
    if head.type == "detection":
        if prev.type != "connected":
            return []
        need, formula = detection_inputs(head)
        have = value(prev, "output")
        key, noun = "output", "output"
    else:
        if prev.type != "convolutional":
            return []
        need, formula = head_channels(head)
        have = value(prev, "filters")
        key, noun = "filters", "filters"
    if have == need:
        return []
    return [prev.diagnostic(
        "E304", f"{noun}={have}, but the [{head.name}] at line {head.line} needs "
        f"{noun}={need} = {formula}", key,
        hint=f"set {noun}={need} here (or change the [{head.name}] settings)")]


# -- the driver ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Options:
    build: bool = True
    max_memory: int = DEFAULT_MAX_MEMORY
    flavor: str | None = None  # None: accept both forks' keys; build with AlexeyAB's rules


def check_file(path: str | Path, options: Options | None = None) -> list[Diagnostic]:
    """All findings for one file, sorted by position; never raises for bad input."""
    options = options or Options()
    try:
        blocks = parse(Path(path), flavor=options.flavor)
    except CfgError as exc:
        return ordered(exc.diagnostics)
    found = list(blocks.warnings) + check_blocks(blocks)
    if options.build and not any(d.severity == ERROR for d in found):
        from builders.check_graph import check_graph  # torch only when the graph is checked

        found += check_graph(blocks, flavor=options.flavor or "alexeyab",
                             max_memory=options.max_memory)
    return ordered(dedupe(found))


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


def expand(paths: Iterable[str]) -> list[str]:
    """Files as given; a directory stands for the .cfg files under it."""
    out: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            out += sorted(str(f) for f in Path(p).rglob("*.cfg"))
        else:
            out.append(p)
    return out


def check_paths(paths: Iterable[str], options: Options | None = None,
                jobs: int = 1) -> list[Diagnostic]:
    """Findings for every file, in order; a file that fails unexpectedly does not stop the
    others. With jobs > 1 the graph checks of several files run in forked worker processes."""
    options = options or Options()
    files = expand(paths)
    jobs = min(jobs, len(files))
    if jobs > 1 and options.build and "fork" in multiprocessing.get_all_start_methods():
        from builders.check_graph import prepare_workers

        prepare_workers()  # import torch and every builder once, before forking
        context = multiprocessing.get_context("fork")  # workers inherit those imports
        try:
            with ProcessPoolExecutor(jobs, mp_context=context) as pool:
                return [d for found in pool.map(check_one, files, [options] * len(files))
                        for d in found]
        except BrokenProcessPool:  # a worker died (out of memory, a signal): go on serially
            pass
    return [d for path in files for d in check_one(path, options)]


def check_one(path: str, options: Options) -> list[Diagnostic]:
    try:
        return check_file(path, options)
    except Exception as exc:  # a darkcfg bug: report it as a finding and go on
        return [Diagnostic("E300", f"darkcfg failed on this file: {type(exc).__name__}: {exc}",
                           path, hint="this is a darkcfg bug; please report it with the cfg")]


def default_jobs() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- output formats ------------------------------------------------------------------------------

def format_text(found: Sequence[Diagnostic], n_files: int) -> str:
    parts = [d.format() if d.line else _file_level(d) for d in found]
    errors = sum(d.severity == ERROR for d in found)
    warnings = len(found) - errors
    parts.append(f"{n_files} file{'s' if n_files != 1 else ''} checked: "
                 f"{errors} error{'s' if errors != 1 else ''}, "
                 f"{warnings} warning{'s' if warnings != 1 else ''}")
    return "\n\n".join(parts)


def _file_level(d: Diagnostic) -> str:
    """A finding about the whole file (no line to show)."""
    return f"{d.path}: {d.severity}[{d.code}]: {d.message}" + (
        f"\nhelp: {d.hint}" if d.hint else "")


def format_json(found: Sequence[Diagnostic]) -> str:
    return json.dumps([d.to_dict() for d in found], indent=2)


def _github_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def format_github(found: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands: each finding becomes an annotation on the file."""
    lines = []
    for d in found:
        props = [f"file={_github_escape(d.path, True)}"]
        if d.line:
            props += [f"line={d.line}", f"col={max(d.column, 1)}"]
        props.append(f"title={d.code}")
        message = d.message + (f"\nhelp: {d.hint}" if d.hint else "")
        level = "error" if d.severity == ERROR else "warning"
        lines.append(f"::{level} {','.join(props)}::{_github_escape(message)}")
    return "\n".join(lines)


def _artifact_uri(path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        return p.as_uri()
    return urllib.parse.quote(p.as_posix())


def sarif_log(found: Sequence[Diagnostic]) -> dict:
    """A SARIF 2.1.0 log (GitHub code scanning reads it); every code is a rule."""
    codes = list(CODES)
    index = {c: i for i, c in enumerate(codes)}
    rules = [{
        "id": code,
        "name": _rule_name(CODES[code]),
        "shortDescription": {"text": CODES[code]},
        "defaultConfiguration": {"level": "warning" if code.startswith("W") else "error"},
    } for code in codes]
    results = []
    for d in found:
        location: dict = {"artifactLocation": {"uri": _artifact_uri(d.path)}}
        if d.line:
            location["region"] = {"startLine": d.line, "startColumn": max(d.column, 1),
                                  "endColumn": max(d.column, 1) + max(d.span, 1)}
        result = {
            "ruleId": d.code,
            "level": "error" if d.severity == ERROR else "warning",
            "message": {"text": d.message + (f" (help: {d.hint})" if d.hint else "")},
            "locations": [{"physicalLocation": location}],
        }
        if d.code in index:
            result["ruleIndex"] = index[d.code]
        results.append(result)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "darkcfg", "version": _version(), "rules": rules}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }


def _rule_name(description: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", description)
    return "".join(w[:1].upper() + w[1:] for w in words) or "Rule"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("darkcfg")
    except Exception:  # not installed (running from a checkout)
        return "0"


# -- command line --------------------------------------------------------------------------------

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GiB', '8gb', '1000000' -> bytes (binary units: 1G = 2**30)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"invalid size '{text}' (use e.g. 4G, 512M, 1.5GiB or a number of bytes)")
    number, unit = float(m.group(1)), m.group(2).lower()
    size = int(number * 1024 ** " kmgt".index(unit or " "))
    if size <= 0:
        raise argparse.ArgumentTypeError(f"--max-memory must be positive, got '{text}'")
    return size


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cfgparse check",
        description="Check Darknet .cfg files: syntax, schema, graph (meta-device build) and "
        "memory. Exit 0 clean, 1 findings, 2 usage or I/O error.")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="cfg files (a directory stands for the .cfg files under it)")
    p.add_argument("--format", choices=FORMATS, default="text", help="output format")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--no-build", action="store_true",
                   help="syntax, schema and block rules only (no torch, no graph checks)")
    p.add_argument("--max-memory", type=parse_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                   help="memory limit for the estimate (default 4G; e.g. 8G, 512M)")
    p.add_argument("--jobs", "-j", type=int, default=0, metavar="N",
                   help="check files in N processes (default: one per CPU)")
    p.add_argument("--flavor", choices=("alexeyab", "pjreddie"), default=None,
                   help="check against one Darknet fork: warn about keys and sections only the "
                   "other fork reads, and judge shortcuts as this fork does (default: accept "
                   "both forks' keys, AlexeyAB's shapes)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return int(exc.code or 0)
    if not args.files:
        parser.print_usage(sys.stderr)
        print("error: no files to check", file=sys.stderr)
        return 2
    options = Options(build=not args.no_build, max_memory=args.max_memory, flavor=args.flavor)
    files = expand(args.files)
    found = check_paths(files, options, args.jobs if args.jobs > 0 else default_jobs())
    if args.strict:
        found = [dataclasses.replace(d, severity=ERROR) if d.severity == WARNING else d
                 for d in found]
    if args.format != "text":  # the machine formats keep stdout parseable; say it here too
        for d in found:
            if d.code in IO_CODES:
                print(f"darkcfg check: {d.message}", file=sys.stderr)
    report = {"text": lambda: format_text(found, len(files)), "json": lambda: format_json(found),
              "github": lambda: format_github(found),
              "sarif": lambda: json.dumps(sarif_log(found), indent=2)}[args.format]()
    try:
        if report:
            sys.stdout.write(report + "\n")
            sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader left early; the exit status still counts
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if any(d.code in IO_CODES for d in found):
        return 2
    return 1 if any(d.severity == ERROR for d in found) else 0


if __name__ == "__main__":
    sys.exit(main())
