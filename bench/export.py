"""CPU inference latency of the compiler's outputs, same run: the graph (Network, eager), the
emitted module (eager and torch.compile), the torch.export program and onnxruntime, for
yolov4-tiny 416x416 and vgg16 224x224 (random weights, batch 1); ratios to the graph.

    python bench/export.py [--repeat 15] [--threads N] [--only yolov4-tiny|vgg16]

The variants run round-robin within each repeat, so a busy machine slows all alike; the median
of each is printed with its ratio to the graph's median (target: the emitted module <= 1.0x).
"graph (eager)" is the Network's plain path, the same modules the emitted file holds; the
graph's CPU fast path for eval (folded batch-norm, oneDNN-fused activations: README, *Inference
speed*) has its own row, since the emitted module and the exported programs do not take it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from builders import build  # noqa: E402
from darkcfg.export.emit import emit_module  # noqa: E402
from darkcfg.export.onnx import example_input, export_onnx, export_program  # noqa: E402

CORPUS = ROOT.parent / "shared" / "darknet" / "corpus"
MODELS = {"yolov4-tiny": (CORPUS / "alexeyab" / "yolov4-tiny.cfg", 416),
          "vgg16": (ROOT / "cfg" / "vgg16.cfg", 224)}


def variants(name: str, folder: Path) -> dict:
    from cfgparse import parse

    path, size = MODELS[name]
    blocks = list(parse(path))
    blocks[0] = blocks[0].with_values(width=str(size), height=str(size))
    torch.manual_seed(0)
    net = build(blocks).eval()
    x = example_input(net, 1)
    spec = importlib.util.spec_from_loader("emitted", loader=None)
    emitted_mod = importlib.util.module_from_spec(spec)
    exec(emit_module(net, name), emitted_mod.__dict__)  # noqa: S102 - our own generated code
    emitted = emitted_mod.Net().eval()
    emitted.load_state_dict(net.state_dict())
    compiled = torch.compile(emitted)
    program = export_program(net, x).module()
    plain = build(blocks).eval().use_fast_inference(False)
    plain.load_state_dict(net.state_dict())
    out = {"graph (eager)": lambda: plain(x), "graph (CPU fast path)": lambda: net(x),
           "emitted (eager)": lambda: emitted(x),
           "emitted (torch.compile)": lambda: compiled(x),
           "torch.export program": lambda: program(x)}
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        from darkcfg.export.onnx import onnx_session

        export_onnx(net, folder / f"{name}.onnx")
        session = onnx_session(folder / f"{name}.onnx")
        feed = {session.get_inputs()[0].name: x.numpy()}
        out["onnxruntime (CPU)"] = lambda: session.run(None, feed)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", choices=sorted(MODELS), default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in [args.only] if args.only else list(MODELS):
            if not MODELS[name][0].exists():
                print(f"{name}: {MODELS[name][0]} not found")
                continue
            runs = variants(name, Path(tmp))
            for fn in runs.values():  # warm-up (compilation, allocator)
                fn()
                fn()
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeat):
                for key, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
            base = statistics.median(times["graph (eager)"])
            print(f"\n{name} {MODELS[name][1]}x{MODELS[name][1]}, batch 1, median of "
                  f"{args.repeat}:")
            for key, ts in times.items():
                med = statistics.median(ts)
                print(f"  {key:26s} {med * 1e3:8.1f} ms  {med / base:5.2f}x  "
                      f"(min {min(ts) * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
