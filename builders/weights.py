"""Darknet .weights I/O (SEMANTICS.md §9). Minimal reader; extended by the weights work."""

from __future__ import annotations

import os

import numpy as np
import torch

from cfgparse import CfgError, Diagnostic

from .graph import Network


def read_header(data: bytes, path: str) -> tuple[tuple[int, int, int], int, int]:
    """(major, minor, revision), seen, and the offset where the floats start."""
    if len(data) < 16:
        raise CfgError(Diagnostic("E901", f"'{path}' is too short to be a .weights file "
                                  f"({len(data)} bytes)", path, hint="check the file"))
    major, minor, revision = np.frombuffer(data[:12], "<i4").tolist()
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        seen, offset = int(np.frombuffer(data[12:20], "<u8")[0]), 20
    else:
        seen, offset = int(np.frombuffer(data[12:16], "<u4")[0]), 16
    return (major, minor, revision), seen, offset


@torch.no_grad()
def load_weights(net: Network, path: str | os.PathLike) -> dict:
    path = str(path)
    data = open(path, "rb").read()
    version, seen, offset = read_header(data, path)
    floats = np.frombuffer(data, "<f4", offset=offset, count=(len(data) - offset) // 4)
    pos = 0
    for layer, meta in zip(net.layers, net.meta):
        if meta.dontload:
            continue
        for t in layer.darknet_arrays(scales=not meta.dontloadscales):
            n = t.numel()
            chunk = torch.from_numpy(floats[pos:pos + n].copy())
            if chunk.numel() != n:
                raise CfgError(Diagnostic("E901", f"'{path}' ends early at layer {meta.index}",
                                          path))
            t.copy_(chunk.view_as(t))
            pos += n
    return {"version": version, "seen": seen, "floats": pos}
