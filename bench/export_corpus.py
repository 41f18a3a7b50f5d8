"""Export every corpus cfg (../shared/darknet/corpus) at a small input size with random weights:
ONNX (dynamic batch, checked with onnxruntime <= 1e-4 rel.), torch.export (.pt2, reloaded and
compared) and the emitted module (== the graph's outputs, <= 1e-6). Prints one line per cfg
and the counts (they go in the README's Export section). Slow: ~10-40 s per cfg on a CPU.

    python bench/export_corpus.py [--opset 18] [--only NAME ...] [--no-onnx] [--no-emit]
                                  [--reverse]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from corpus_export import CORPUS, build_small, check_emit, corpus_cfgs  # noqa: E402

from darkcfg.export.onnx import (  # noqa: E402
    example_input,
    export_onnx,
    export_program,
    export_pt2,
)


def one(path: Path, folder: Path, opset: int | None, onnx: bool, emit: bool) -> dict:
    name = f"{path.parent.name}/{path.stem}"
    row: dict = {"name": name}
    start = time.perf_counter()
    try:
        net, size = build_small(path)
    except Exception as exc:  # a cfg that does not build is not an export failure
        row["skip"] = f"does not build: {str(exc).splitlines()[0]}"
        return row
    row["size"] = size or net.input_shape.w
    stages = []
    if emit:
        stages.append(("emit", lambda: check_emit(net, folder, name)))
    if onnx:
        def both():
            x = example_input(net, 2 * max(net.info.time_steps, 1))
            program = export_program(net, x, dynamic_batch=net.info.time_steps <= 1)
            t0 = time.perf_counter()
            pt2 = export_pt2(net, folder / "m.pt2", program=program,
                             dynamic_batch=net.info.time_steps <= 1)
            row["pt2_s"] = time.perf_counter() - t0
            rep = export_onnx(net, folder / "m.onnx", opset=opset, program=program,
                              dynamic_batch=net.info.time_steps <= 1)
            import onnx as onnx_pkg

            ops = Counter(n.op_type for n in onnx_pkg.load(str(folder / "m.onnx")).graph.node)
            row["space_to_depth"] = ops.get("SpaceToDepth", 0)
            row["allowed"] = max(rep.allowed, 1e-4)  # XNOR nets: float32's own sensitivity
            return max(pt2.max_rel_error, rep.max_rel_error)
        stages.append(("onnx+pt2", both))
    for stage, fn in stages:
        t0 = time.perf_counter()
        try:
            row[stage] = fn()
        except Exception as exc:
            text = str(exc).strip().splitlines()
            row[stage] = f"FAIL {type(exc).__name__}: {text[0][:160] if text else ''}"
        row[f"{stage}_s"] = time.perf_counter() - t0
    row["total_s"] = time.perf_counter() - start
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None,
                    help="cfgs whose name contains one of these (FORK/NAME: exactly that one)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--no-emit", action="store_true")
    ap.add_argument("--reverse", action="store_true",
                    help="last cfg first (a second process can start from the other end)")
    args = ap.parse_args(argv)
    files = corpus_cfgs()
    if not files:
        print(f"no corpus at {CORPUS}")
        return 0
    if args.only:
        def wanted(name: str) -> bool:  # "fork/name" is exact, anything else a substring
            return any(name == o if "/" in o else o in name for o in args.only)

        files = [f for f in files if wanted(f"{f.parent.name}/{f.stem}")]
    if args.reverse:
        files = files[::-1]
    torch.set_num_threads(1)
    counts: Counter = Counter()
    failures = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            row = one(path, Path(tmp), args.opset, not args.no_onnx, not args.no_emit)
            if "skip" in row:
                counts["skipped"] += 1
                print(f"SKIP {row['name']}: {row['skip']}", flush=True)
                continue
            parts = []
            for stage, limit in (("emit", 1e-6), ("onnx+pt2", 1e-4)):
                if stage not in row:
                    continue
                value = row[stage]
                if stage == "onnx+pt2":
                    limit = row.get("allowed", limit)
                ok = isinstance(value, float) and value <= limit
                counts[f"{stage} ok" if ok else f"{stage} failed"] += 1
                if not ok:
                    failures.append((row["name"], stage, value))
                shown = f"{value:.1e}" if isinstance(value, float) else value
                parts.append(f"{stage} {shown} ({row[stage + '_s']:.1f}s)")
            if row.get("space_to_depth"):
                parts.append(f"SpaceToDepth x{row['space_to_depth']}")
            print(f"{row['name']} @{row['size']}: " + ", ".join(parts), flush=True)
    total = time.perf_counter() - start
    print(f"\n{len(files)} cfgs in {total:.0f}s: " + ", ".join(f"{k} {v}" for k, v in
                                                          sorted(counts.items())))
    for name, stage, value in failures:
        print(f"  {name} {stage}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
