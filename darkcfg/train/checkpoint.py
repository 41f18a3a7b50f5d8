"""Checkpoints for --resume, written atomically (builders.atomic: temp file + fsync + rename), so
a kill at any moment leaves either the previous checkpoint or the new one, never a torn file;
and --weights loading (Darknet .weights or a torch state_dict).

A checkpoint is torch.save's bytes and a SHA-256 trailer (builders.atomic.atomic_write_checked):
a bit flipped on disk or in a copy is an E901 error at --resume, not a run that silently goes on
from wrong numbers. Checkpoints of earlier versions (no trailer) still load."""

from __future__ import annotations

import io
import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from builders.atomic import atomic_write_checked, read_checked
from cfgparse import CfgError, Diagnostic
from darkcfg.model import load_torch_payload


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
    _restore(states, torch.set_rng_state, np.random.set_state, random.setstate)
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _restore(states: dict, torch_set, numpy_set, python_set) -> None:
    torch_set(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    numpy_set((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    python_set((version, tuple(internal), gauss))


def rng_damaged(states: dict) -> bool:
    """Whether set_rng_states would fail on `states`: tried on generators of their own, so a
    damaged checkpoint is refused before the run writes anything (it was a traceback after
    the run's settings were written)."""
    try:
        _restore(states, torch.Generator().set_state, np.random.RandomState().set_state,
                 random.Random().setstate)
    except Exception:  # noqa: BLE001 - any of the three readers' errors: damaged
        return True
    cuda = states.get("cuda", [])
    return not (isinstance(cuda, list) and all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_checked(path, buffer.getbuffer())


FORMAT = "darkcfg-checkpoint-1"  # what RunLog.checkpoint writes beside the trainer's state


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A darkcfg checkpoint: `path` is the checkpoint.pt or the run folder holding it. Anything
    else (a .weights file, a damaged or foreign file) is a located E901."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        path = path / "checkpoint.pt"
    if not path.is_file():
        folder = path if path.is_dir() else path.parent
        # a run stopped before its first checkpoint: a fresh --train there is refused too
        started = path.name in ("checkpoint.pt", folder.name) and \
            (folder / "metrics.csv").is_file()
        raise CfgError(Diagnostic("E901", f"no checkpoint to resume from: '{path}' "
                                  + ("holds no checkpoint.pt" if path.is_dir()
                                     else "is not a regular file (a pipe or a device)"
                                     if path.exists() else "does not exist"),
                                  str(path), hint=f"the run in '{folder}' stopped before its "
                                  "first checkpoint, so there is nothing to resume: start a new "
                                  "run with --out NEW_FOLDER (without --resume), or delete the "
                                  "folder" if started else "run --train first (or without "
                                  "--resume), or pass the --out folder of the run to resume"))
    payload = read_checked(path, "checkpoint")
    weights = ("it looks like Darknet .weights: start a new run from them with --weights "
               "(--resume takes a run folder or its checkpoint.pt)")
    if not payload:
        raise CfgError(Diagnostic("E901", f"'{path}' is empty (0 bytes): no checkpoint darkcfg "
                                  "wrote (it writes them whole)", str(path),
                                  hint="use an intact copy, or start a new run (--weights with "
                                  "the run's _last.weights keeps its weights)"))
    if path.suffix.lower() == ".weights" or not payload.startswith(b"PK"):
        raise CfgError(Diagnostic("E901", f"'{path}' is not a darkcfg checkpoint (not a torch "
                                  "file)", str(path), hint=weights if path.suffix.lower() ==
                                  ".weights" else "pass the checkpoint.pt of a darkcfg run"))
    state = load_torch_payload(payload, path, "checkpoint",
                               "it is damaged or not a darkcfg checkpoint: use an intact copy, "
                               "or start a new run (--weights with the run's _last.weights keeps "
                               "its weights)")
    return state


def format_problem(state) -> str:
    """What is wrong with a loaded checkpoint's own fields (the run's bookkeeping; the trainer
    checks its part, darkcfg.train.loop.Trainer.checkpoint_problem); '' when nothing."""
    if not isinstance(state, dict):
        return "it holds no checkpoint"
    if state.get("format", FORMAT) != FORMAT:
        return f"its format is {state.get('format')!r}, not {FORMAT!r}"
    rng = state.get("rng")
    if not isinstance(rng, list) or not rng or not all(
            isinstance(r, dict) and {"torch", "numpy", "python"} <= set(r)
            and not rng_damaged(r) for r in rng):
        return "its random generator states ('rng') are missing or damaged"
    log = state.get("log")
    if log is not None and not (isinstance(log, dict) and {"avg_loss", "best"} <= set(log)
                                and _finite(log["avg_loss"])
                                and (log["best"] is None or _finite(log["best"]))):
        return "its log state ('log') is damaged"
    return ""


