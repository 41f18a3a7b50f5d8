"""Checkpoints for --resume, written atomically (builders.atomic: temp file + fsync + rename), so
a kill at any moment leaves either the previous checkpoint or the new one, never a torn file;
and --weights loading (Darknet .weights or a torch state_dict).

A checkpoint is torch.save's bytes and a SHA-256 trailer (builders.atomic.atomic_write_checked):
a bit flipped on disk or in a copy is an E901 error at --resume, not a run that silently goes on
from wrong numbers. Checkpoints of earlier versions (no trailer) still load."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from builders.atomic import atomic_write_checked, read_checked
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
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_checked(path, buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CfgError(Diagnostic("E901", f"no checkpoint to resume from: '{path}' does not exist",
                                  str(path), hint="run --train first (or without --resume), or "
                                  "pass the --out folder of the run to resume"))
    payload = read_checked(path, "checkpoint")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling problem means a file we cannot use
        raise CfgError(Diagnostic("E901", f"cannot read checkpoint '{path}': {exc}", str(path),
                                  hint="delete it to start over")) from None


