"""Checkpoints for --resume, written atomically (builders.atomic: temp file + fsync + rename), so
a kill at any moment leaves either the previous checkpoint or the new one, never a torn file;
and --weights loading (Darknet .weights or a torch state_dict)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from builders.atomic import atomic_open
from cfgparse import CfgError, Diagnostic


def rng_states() -> dict:
    """Every RNG the run draws from, as tensors and plain tuples (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    with atomic_open(path, parents=True) as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CfgError(Diagnostic("E901", f"no checkpoint to resume from: '{path}' does not exist",
                                  str(path), hint="run --train first (or without --resume), or "
                                  "pass the --out folder of the run to resume"))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling problem means a file we cannot use
        raise CfgError(Diagnostic("E901", f"cannot read checkpoint '{path}': {exc}", str(path),
                                  hint="delete it to start over")) from None


# -- --weights: Darknet .weights or a torch state_dict ---------------------------------------------
def is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive; Darknet .weights start with three small int32s."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def load_any_weights(net, path: str | os.PathLike, cutoff: int | None = None) -> str:
    """Load Darknet .weights (partial files with `cutoff`) or a torch state_dict / darkcfg
    checkpoint (non-strictly: tensors whose name and shape match). Returns a one-line report."""
    path = Path(path)
    if not path.is_file():
        raise CfgError(Diagnostic("E901", f"weights file '{path}' does not exist", str(path),
                                  hint="check the path"))
    if not is_torch_file(path):
        from builders.weights import load_weights

        info = load_weights(net, path, cutoff=cutoff) if cutoff is not None else \
            load_weights(net, path)
        upto = f" (first {cutoff} layers)" if cutoff is not None else ""
        return (f"loaded Darknet weights {path}{upto}: {info.get('floats', '?')} floats, "
                f"seen={info.get('seen', 0)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CfgError(Diagnostic("E901", f"cannot read '{path}' as a torch state_dict: {exc}",
                                  str(path))) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a darkcfg checkpoint
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CfgError(Diagnostic("E901", f"'{path}' holds no state_dict", str(path)))
    own = net.state_dict()
    matched = {k: v for k, v in state.items()
               if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    wrong_shape = [k for k, v in state.items() if k in own and k not in matched]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    if not matched:
        raise CfgError(Diagnostic("E902", f"no tensor of '{path}' matches this network "
                                  f"({len(wrong_shape)} with the wrong shape, "
                                  f"{len(unexpected)} unknown names)", str(path),
                                  hint="was it saved from a network built from this cfg?"))
    net.load_state_dict(matched, strict=False)
    report = f"loaded {len(matched)}/{len(own)} tensors from {path}"
    for label, names in (("missing", missing), ("shape mismatch", wrong_shape),
                         ("unexpected", unexpected)):
        if names:
            report += f"; {label}: {len(names)} ({', '.join(names[:3])}"
            report += ", ...)" if len(names) > 3 else ")"
    return report
