"""`darkcfg anchors CFG [--data SRC] [--classes K] [--num N] [--size WxH] [--write] [--seed S]
[--plot PNG]`: anchors fitted to a detector's training labels (Darknet's `detector
calc_anchors`, see darkcfg.data.detection.anchors), printed in cfg syntax with their average
IoU and that of the cfg's current anchors; --write puts them into the cfg's heads and re-checks
it."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from cfgparse import CfgError, Diagnostic
from cfgparse.errors import ERROR, WARNING
from cfgparse.usage import CommandParser
from darkcfg.cli.common import (
    parse_wxh,
    refuse_overwriting_inputs,
    refuse_plot_over_images,
    require_png,
)
from darkcfg.console import warn


def arg_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="darkcfg anchors",
        description="Fit anchors to a detector's training labels (Darknet's calc_anchors: "
        "k-means on the boxes' w,h at the net size with the distance 1 - IoU).")
    p.add_argument("cfg", help="the detector's .cfg")
    p.add_argument("--data", default=None, metavar="SRC",
                   help="the detection data (what --train --data takes; default: the embedded "
                   "set)")
    p.add_argument("--classes", type=int, default=None, metavar="K",
                   help="the embedded set's objects from the network's first K classes (what "
                   "--train --classes takes; default min(classes, 8))")
    p.add_argument("--num", type=int, default=None, metavar="N",
                   help="how many anchors (default: the cfg's num)")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="the size the boxes are scaled to (default: the net size; a [region] "
                   "head: its grid, since its anchors are in cells)")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means starts (0)")
    p.add_argument("--restarts", type=int, default=10, metavar="R",
                   help="k-means++ starts besides Darknet's random one (10)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="the scatter plot (default: runs/<cfg-name>/anchors.png)")
    p.add_argument("--write", action="store_true",
                   help="put the anchors into the cfg's heads (num, masks and the filters "
                   "before each head too when N changes), keeping every other byte")
    return p


def main(argv: list[str]) -> int:
    """Errors reach darkcfg.cli's one handler (located diagnostics, exit 2)."""
    return run(arg_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from builders.atomic import check_editable, check_writable
    from darkcfg.bundled import resolve_model_cfg, shipped_cfg
    from darkcfg.data.detection import anchors as fit
    from darkcfg.model import build_network

    fit.check_restarts(args.restarts)  # before the build and the data read
    shipped = shipped_cfg(args.cfg)
    if shipped and args.write:  # never edit the installed package's copy
        raise CfgError(Diagnostic("E100", f"--write would edit darkcfg's own {args.cfg} "
                                  f"({shipped})", "--write",
                                  hint=f"copy it and name the copy: cp {shipped} "
                                  f"my-{Path(shipped).name}"))
    args.cfg = resolve_model_cfg(args.cfg)  # said first, so that a failure below names it too
    net, _, _ = build_network(args.cfg, [], "alexeyab", args.seed, device="meta")
    heads = anchored_heads(net)
    if not heads:
        raise CfgError(Diagnostic("E300", f"'{args.cfg}' has no head with anchors", args.cfg,
                                  hint="anchors are for [yolo], [Gaussian_yolo] and [region]"))
    first = net.meta[heads[0]]
    num = first.block.int("num")
    current = current_anchors(first.block)
    k = args.num if args.num is not None else num
    from cfgparse.rules import MASKED_HEADS

    masked = sum(net.meta[i].type in MASKED_HEADS for i in heads)
    if k < 1 or (args.write and k < masked):  # each [yolo] head's mask needs an anchor
        raise CfgError(Diagnostic(
            "E100", f"--num {k}: " + ("at least one anchor" if k < 1 else
                                      f"{masked} heads with masks need at least {masked} "
                                      "anchors (one each)"), "--num",
            hint=f"give --num {max(masked, 1)} or more"))
    from cfgparse.rules import CELL_ANCHORED_HEADS

    region = first.type in CELL_ANCHORED_HEADS
    if args.size:
        width, height = parse_wxh("--size", args.size)
    elif region:  # [region] anchors are in grid cells (Darknet users run calc_anchors -width 13)
        width, height = first.input.w, first.input.h
    else:
        width, height = net.input_shape.w, net.input_shape.h
    # the outputs' places before the (slow) read of the data and the fit
    plot = Path(args.plot) if args.plot else Path("runs") / Path(args.cfg).stem / "anchors.png"
    refuse_overwriting_inputs({"--plot": plot}, {"the cfg": args.cfg, "the --data file": args.data})
    require_png("--plot", plot)
    check_writable(plot, "--plot")
    if args.write:  # the edited cfg is written beside the file a link points at
        check_editable(Path(args.cfg).resolve(), "the cfg (--write)")
    relative, description, images = fit.data_boxes(net, args.data, args.seed, args.classes)
    refuse_plot_over_images("--plot", plot, images)
    boxes, dropped = fit.scaled(relative, width, height)
    print(f"data: {description}", file=sys.stderr)
    if dropped:
        warn(f"{dropped} box(es) with no width or height left out")
    result = fit.fit_anchors(boxes, k, width, args.seed, args.restarts)
    print(f"{len(boxes)} boxes at {width}x{height}, {k} anchors: k-means with 1 - IoU, "
          f"{result.starts} starts from seed {args.seed}", file=sys.stderr)
    print(fit.anchors_text(result.anchors, width))
    now = fit.average_iou(boxes, current[:num]) if len(current) else 0.0
    print(f"avg IoU = {100 * result.avg_iou:.2f} % (these anchors), "
          f"{100 * now:.2f} % (the cfg's {num} current ones), "
          f"{100 * result.darknet_avg_iou:.2f} % (Darknet's calc_anchors algorithm, "
          "same seed)")
    fit.plot_anchors(plot, boxes, result.anchors, current[:num] if len(current) else None,
                     f"{Path(args.cfg).name}: {len(boxes)} boxes, {k} anchors, "
                     f"avg IoU {100 * result.avg_iou:.1f}% (now {100 * now:.1f}%)")
    print(f"wrote {plot}", file=sys.stderr)
    if args.write:
        write_anchors(args.cfg, net, heads, result.anchors, width)
    return 0


def anchored_heads(net) -> list[int]:
    from cfgparse.rules import ANCHORED_HEADS

    return [i for i, m in enumerate(net.meta) if m.type in ANCHORED_HEADS]


def current_anchors(block) -> np.ndarray:
    from cfgparse.rules import anchor_pairs, value

    listed = value(block, "anchors")
    if not listed:
        return np.zeros((0, 2))
    num = int(value(block, "num") or 1)
    pairs = anchor_pairs(listed if isinstance(listed, list) else [listed], num)
    return np.asarray(pairs, np.float64).reshape(-1, 2)


def write_anchors(cfg_path: str, net, heads: list[int], anchors: np.ndarray, width: int) -> None:
    """Edit the cfg file in place: anchors (and num, masks, the feeding filters when the count
    changes) in every anchored head; the new text is linted before it replaces the file."""
    from builders.atomic import check_editable, locked_for_edit

    path = Path(cfg_path)
    if path.suffix.lower() in (".yaml", ".yml"):
        raise CfgError(Diagnostic("E901", "--write edits .cfg text, not YAML", cfg_path,
                                  hint="copy the printed anchors into the YAML by hand"))
    target = path.resolve()  # through a link to the file it names (see below)
    # read, edit, check and replace under a lock on the cfg: a second --write at the same
    # time waits and then edits this one's result (its own edit is not lost either)
    with locked_for_edit(target, "the cfg (--write)") as data:
        check_editable(target, "the cfg (--write)")  # made read-only since the start?
        changes = _write_locked(data, target, cfg_path, net, heads, anchors, width)
    edited = len({(id(b), key) for b, key, _ in changes})
    print(f"wrote {cfg_path}: {edited} value(s) in {len(heads)} head(s) "
          f"(checked: no errors)", file=sys.stderr)


def _write_locked(data: bytes, target: Path, cfg_path: str, net, heads: list[int],
                  anchors: np.ndarray, width: int) -> list:
    """write_anchors' edit of the cfg bytes `data` (read under its lock), checked, written to
    `target`; returns the changes."""
    from builders.atomic import atomic_write
    from cfgparse import edit, parse_text
    from cfgparse.rules import MASKED_HEADS, as_list, head_input, value
    from darkcfg.data.detection.anchors import cfg_anchors_value, split_masks

    bom = data.startswith(b"\xef\xbb\xbf")  # parse_text reads the text without it
    text = data[3 if bom else 0:].decode()
    blocks = list(parse_text(text, str(Path(cfg_path))))
    k = len(anchors)
    strides = [net.input_shape.w / max(net.meta[i].input.w, 1) for i in heads]
    masks = split_masks(k, strides)
    changes = []
    for head, mask in zip(heads, masks, strict=True):
        block = blocks[head + 1]  # blocks[0] is [net]
        num = int(value(block, "num") or 1)
        changes.append((block, "anchors", cfg_anchors_value(anchors, width)))
        if num == k:
            continue
        changes.append((block, "num", str(k)))
        if block.type not in MASKED_HEADS:
            continue
        need = head_input(block)
        changes.append((block, "mask", ",".join(map(str, mask))))
        new_need = head_input(block.with_values(mask=mask, num=k)).count
        feeding = blocks[head] if head >= 1 else None  # the layer just before the head
        if (feeding is not None and feeding.type == need.feeding_section
                and value(feeding, need.feeding_key) == need.count and new_need != need.count):
            changes.append((feeding, need.feeding_key, str(new_need)))
        elif new_need != need.count:
            warn(block.diagnostic(
                "W304", f"[{block.name}] now needs {new_need} input channels (len(mask)="
                f"{len(as_list(mask))}), and the layer before it is not the "
                f"[{need.feeding_section}] that sets them", "mask", severity=WARNING,
                hint=f"set {need.feeding_key}={new_need} in the layer that feeds it"))
    new_text = edit(text, changes)
    problems = lint_text(new_text, Path(cfg_path))
    if problems:
        for d in problems:
            print(d.format(), file=sys.stderr)
        raise CfgError(Diagnostic("E300", f"not written: '{cfg_path}' would not check clean "
                                  "with these anchors", cfg_path,
                                  hint="fix the problems above (or use the printed anchors "
                                  "by hand)"))
    # to the file a link names (an atomic rename onto the link would replace the link and
    # leave the cfg it points at as it was)
    atomic_write(target, (b"\xef\xbb\xbf" if bom else b"") + new_text.encode(), sweep=True)
    return changes


def lint_text(text: str, path: Path) -> list[Diagnostic]:
    """`darkcfg check`'s errors for `text` as if it were `path` (linted from a temp file)."""
    import glob
    import tempfile

    from builders.atomic import hold, remove_abandoned, temp_prefix
    from darkcfg.lint.stages import check_file

    # beside the cfg (its relative paths resolve the same); what a killed --write left goes
    prefix = temp_prefix(path.name, ".cfg")
    remove_abandoned(path.parent, f"{glob.escape(prefix)}*.cfg")
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".cfg", dir=path.parent)
    hold(fd)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            found = check_file(tmp)
    finally:
        os.unlink(tmp)
    return [dataclasses.replace(d, path=str(path)) for d in found if d.severity == ERROR]
