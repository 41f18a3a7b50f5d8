"""The corpus cfgs at a small input size, and the export/emit checks the tests and
bench/export_corpus.py run on them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "darknet"
CORPUS = SHARED / "corpus"
SIZES = (32, 64, 128, 256)  # the first at which a cfg builds is used
MAX_TIME_STEPS = 4  # recurrent cfgs (576 steps in the corpus) are checked with fewer steps


def corpus_cfgs() -> list[Path]:
    return sorted(CORPUS.glob("*/*.cfg"))


def flavor_of(path: Path) -> str:
    return "pjreddie" if path.parent.name == "pjreddie" else "alexeyab"


def build_small(path: Path, seed: int = 0):
    """(network in eval mode, size) at the smallest of SIZES it builds at (square), else at
    the cfg's own size, with at most MAX_TIME_STEPS time steps; raises the last CfgError if
    none builds."""
    from builders import build
    from cfgparse import CfgError, parse

    blocks = list(parse(path, flavor=flavor_of(path)))
    net_block = blocks[0]
    if net_block.int("time_steps") > MAX_TIME_STEPS:
        net_block = net_block.with_values(time_steps=str(MAX_TIME_STEPS))
    error = None
    sizes = [s for s in SIZES] if net_block.int("width") * net_block.int("height") else [None]
    for size in sizes + [None]:
        b = net_block if size is None else net_block.with_values(width=str(size),
                                                                 height=str(size))
        torch.manual_seed(seed)
        try:
            return build([b, *blocks[1:]], flavor=flavor_of(path)).eval(), size
        except CfgError as exc:
            error = exc
    raise error


def load_emitted(source: str, path: Path):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    return module


def check_emit(net, folder: Path, name: str) -> float:
    """Emit, import, load the network's state_dict (darkcfg keys), compare at batch 2 with the
    graph's plain path (its CPU eval fast path folds BN and fuses oneDNN ops: ~1e-6 apart)."""
    net.use_fast_inference(False)
    from darkcfg.export.emit import emit_module
    from darkcfg.export.onnx import example_input, max_rel_error

    module = load_emitted(emit_module(net, name), folder / f"{_ident(name)}.py")
    emitted = module.Net().eval()
    emitted.load_state_dict(net.state_dict())
    x = example_input(net, 2 * max(net.info.time_steps, 1), seed=1)
    with torch.no_grad():
        return max_rel_error(emitted(x), net(x))


def _ident(name: str) -> str:
    return "m_" + "".join(c if c.isalnum() else "_" for c in name)
