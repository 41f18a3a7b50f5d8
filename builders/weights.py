"""Darknet .weights I/O (src/parser.c load_weights_upto, save_weights_upto).

A file is a header (int32 major, minor, revision, then `seen` as uint64, or uint32 for old
versions) followed by float32 arrays, layer by layer, in the order each layer's
`darknet_arrays()` lists them. This module never looks at section types: the layers say what
they store, the graph says which layers to skip (`dontload`) or to load without BN scales
(`dontloadscales`). The one layout variant, transposed [connected] matrices, is recognised by
the tensor being an `nn.Linear` weight.

Unlike Darknet, a file whose size does not match the network is an error (E902) raised before
any tensor is touched, so a network is never left half-loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cfgparse import CfgError, Diagnostic

from .atomic import atomic_open
from .graph import Network

DEFAULT_VERSION = (0, 2, 5)  # what AlexeyAB Darknet writes (pjreddie writes 0.2.0)
_FLOAT = np.dtype("<f4")


@dataclass(frozen=True)
class Header:
    version: tuple[int, int, int]
    seen: int
    size: int  # bytes: 16 (32-bit seen) or 20 (64-bit seen)

    @property
    def transposed(self) -> bool:
        """Files written with major or minor > 1000 store [connected] matrices as [in][out]."""
        major, minor, _ = self.version
        return major > 1000 or minor > 1000


def seen_is_64bit(version: Sequence[int], flavor: str = "alexeyab") -> bool:
    """AlexeyAB reads a 64-bit `seen` when major*10+minor >= 2; pjreddie also requires
    major and minor < 1000 (so its transposed files have a 32-bit `seen`)."""
    major, minor = int(version[0]), int(version[1])
    wide = major * 10 + minor >= 2
    if flavor == "pjreddie":
        wide = wide and major < 1000 and minor < 1000
    return wide


#: Above this a header's major, minor or revision is no version Darknet wrote (they are small:
#: 0.2.5, 0.1.0; the transposed-[connected] marker adds 1000): the file is something else.
VERSION_LIMIT = 10_000


def plausible_version(version: Sequence[int]) -> bool:
    return all(0 <= int(v) < VERSION_LIMIT for v in version)


def not_weights_error(path: str, version: Sequence[int], head: bytes = b"") -> CfgError:
    """A file whose first 12 bytes are no Darknet version (an .onnx, an image, a text file)."""
    # an ONNX ModelProto opens with ir_version (field 1) then producer_name (field 2)
    if path.lower().endswith(".onnx") or (head[:1] == b"\x08" and head[2:3] == b"\x12"):
        return _error("E901", f"'{path}' is an ONNX model, not Darknet .weights", path,
                      "load Darknet .weights or a torch state_dict / darkcfg checkpoint "
                      "(--weights on the command line); an ONNX file is an export: load the "
                      "weights it was exported from")
    return _error("E901", f"'{path}' is not a Darknet .weights file (implausible header: version "
                  f"{'.'.join(map(str, version))})", path,
                  "load a Darknet .weights file (it starts with a small version, e.g. "
                  "0.2.5) or a torch state_dict / darkcfg checkpoint; check which file "
                  "was given")


def read_header(data: bytes, path: str, flavor: str = "alexeyab") -> Header:
    """Parse the header at the start of `data` (at least the first 20 bytes of the file)."""
    if len(data) < 12:
        raise _error("E901", f"'{path}' is too short to be a .weights file ({len(data)} bytes)",
                     path, "a .weights file starts with a 16- or 20-byte header")
    version = tuple(int(v) for v in np.frombuffer(data[:12], "<i4"))
    wide = seen_is_64bit(version, flavor)
    size = 20 if wide else 16
    if len(data) < size and not plausible_version(version):
        raise not_weights_error(path, version, data)
    if len(data) < size:
        raise _error("E901", f"'{path}' is too short to be a .weights file ({len(data)} bytes, "
                     f"the header of version {'.'.join(map(str, version))} takes {size})", path,
                     "check that the file was copied completely")
    seen = int(np.frombuffer(data[12:size], "<u8" if wide else "<u4")[0])
    return Header(version, seen, size)  # type: ignore[arg-type]


def _error(code: str, message: str, path: str, hint: str = "") -> CfgError:
    return CfgError(Diagnostic(code, message, path, hint=hint))


def _check_network(net, what: str) -> None:
    """A TypeError naming the argument order, not an AttributeError from inside, for
    `load_weights(path, net)` and other things that are not a built network."""
    if not isinstance(net, Network):
        raise TypeError(f"{what}(net, path, ...): net is the builders.Network that build() "
                        f"returns, not {type(net).__name__}"
                        + (" (the network comes first, then the path)"
                           if isinstance(net, (str, os.PathLike)) else ""))


def _layers_upto(net: Network, cutoff: int | None, path: str) -> range:
    n = len(net.layers)
    if cutoff is None:
        return range(n)
    if cutoff < 0:
        raise _error("E203", f"cutoff must be a layer count >= 0, got {cutoff}", path,
                     f"this network has {n} layers (0..{n - 1})")
    return range(min(cutoff, n))  # like `darknet partial`, a cutoff past the end means all


def _load_plan(net: Network, layers: range) -> list[tuple[int, list[torch.Tensor]]]:
    """(layer index, tensors in file order) for the layers a load reads."""
    plan = []
    for i in layers:
        meta = net.meta[i]
        if meta.dontload:  # Darknet skips the layer without consuming bytes
            continue
        plan.append((i, net.layers[i].darknet_arrays(scales=not meta.dontloadscales)))
    return plan


def _matrices(net: Network) -> set[int]:
    """ids of the [connected] matrices (nn.Linear weights, also inside recurrent layers): the
    arrays that files with major or minor > 1000 store transposed."""
    return {id(m.weight) for m in net.modules() if isinstance(m, nn.Linear)}


def _count(plan: list[tuple[int, list[torch.Tensor]]]) -> int:
    return sum(t.numel() for _, tensors in plan for t in tensors)


def weight_floats(net: Network, cutoff: int | None = None) -> int:
    """Floats a load of this network (up to `cutoff` layers) reads."""
    return _count(_load_plan(net, _layers_upto(net, cutoff, "<network>")))


@torch.no_grad()
def load_weights(net: Network, path: str | os.PathLike, cutoff: int | None = None) -> dict:
    """Load a Darknet .weights file into `net` (the first `cutoff` layers only, if given).

    Without `cutoff` the file must hold exactly the floats the network reads. With `cutoff` it
    must hold at least those of the first `cutoff` layers; the rest (later layers, e.g. a full
    file loaded for `darknet partial`) is ignored. Sizes are checked before anything is copied.
    Returns {"version": (major, minor, revision), "seen": int, "floats": floats read}.
    A missing, unreadable or mismatched file raises CfgError (E901/E902) before any change.
    """
    _check_network(net, "load_weights")
    path = str(path)
    plan = _load_plan(net, _layers_upto(net, cutoff, path))
    expected = _count(plan)
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            header = read_header(head, path, net.info.flavor)
            actual, odd = divmod(os.fstat(f.fileno()).st_size - header.size, _FLOAT.itemsize)
            if odd or actual < expected or (cutoff is None and actual != expected):
                if not plausible_version(header.version):  # not a size problem: no weights
                    raise not_weights_error(path, header.version, head)
                _size_error(net, plan, path, header, expected, actual, odd, cutoff)
            f.seek(header.size)
            floats = np.empty(expected, _FLOAT)  # writable, so torch can share it
            if f.readinto(memoryview(floats).cast("B")) != floats.nbytes:
                raise _error("E901", f"'{path}' changed while it was read", path)
    except OSError as exc:
        raise _error("E901", f"cannot read '{path}': {exc.strerror or exc}", path,
                     "check the path and its permissions") from None
    transposed = _matrices(net) if header.transposed else set()
    pos = 0
    for _, tensors in plan:
        for t in tensors:
            n = t.numel()
            chunk = floats[pos:pos + n]
            if id(t) in transposed:  # stored [in][out]
                chunk = chunk.reshape(t.shape[1], t.shape[0]).T
            t.copy_(torch.from_numpy(chunk).view(t.shape))
            pos += n
    return {"version": header.version, "seen": header.seen, "floats": pos}


def _cutoff(n: int) -> str:
    """The cutoff option, as the library and the command line spell it."""
    return f"cutoff={n} (--cutoff {n} on the command line)"


def _size_error(net: Network, plan, path: str, header: Header, expected: int, actual: int,
                odd: int, cutoff: int | None) -> None:
    what = f"the first {cutoff} layers of this network read" if cutoff is not None else \
        "this network reads"
    version = ".".join(map(str, header.version))
    message = (f"'{path}' holds {actual} floats{f' and {odd} stray bytes' if odd else ''} after "
               f"its {header.size}-byte header (version {version}), but {what} {expected}")
    hint = ("check that the cfg matches the weights (filters, classes, batch_normalize...); "
            "to load only the first N layers of a longer file pass cutoff=N (--cutoff N on "
            "the command line)")
    if actual < expected:
        # where the file runs out tells a partial file from a wrong cfg
        start = 0
        for i, tensors in plan:
            end = start + sum(t.numel() for t in tensors)
            if start == actual:
                message += f"; it ends exactly where layer {i} begins"
                hint = (f"if it is a partial file (e.g. from `darknet partial`), load it with "
                        f"{_cutoff(i)}; otherwise check that the cfg matches the weights")
                break
            if end > actual:
                message += f"; it ends inside layer {i} ([{net.meta[i].type}])"
                hint = "check that the cfg matches the weights, and that the file is complete"
                break
            start = end
    if odd:
        # no writer leaves a part of a float: cut short or appended to, whatever the cfg says
        message += (f"; its {header.size + 4 * actual + odd} bytes are no whole number of "
                    "floats after the header")
        hint = ("the file was cut short inside a float or has bytes appended (Darknet loads "
                "what it can, darkcfg refuses a damaged file): use an intact copy")
    # fine-tuning on another class count: every layer but the last with weights fits
    last = next((i for i, tensors in reversed(plan) if tensors), None)
    if cutoff is None and not odd and last is not None and _cutoff(last) not in hint and \
            sum(t.numel() for i, tensors in plan if i < last for t in tensors) <= actual:
        hint += (f"; to fine-tune on another class count, load all but the last layer with "
                 f"weights (layer {last}, [{net.meta[last].type}], starts from its initial "
                 f"weights): {_cutoff(last)}")
    raise _error("E902", message, path, hint)


@torch.no_grad()
def save_weights(net: Network, path: str | os.PathLike, cutoff: int | None = None,
                 seen: int = 0, version: Sequence[int] = DEFAULT_VERSION) -> int:
    """Write `net` (its first `cutoff` layers, if given) as a Darknet .weights file; returns the
    number of floats written.

    Like Darknet every layer is saved in full, `dontload`/`dontloadscales` notwithstanding; pjreddie
    flavor honours its `dontsave` key. `darknet partial` (AlexeyAB) writes seen = 0, the default.
    The file is written to a temporary name, synced, then renamed over `path`.
    """
    _check_network(net, "save_weights")
    path = str(path)
    version = tuple(int(v) for v in version)
    if len(version) != 3:
        raise ValueError(f"version is (major, minor, revision), got {version!r}")
    header = Header(version, int(seen), 0)  # type: ignore[arg-type]
    wide = seen_is_64bit(version, net.info.flavor)
    limit = 2**64 if wide else 2**32
    if not 0 <= header.seen < limit:
        raise ValueError(f"seen={seen} does not fit the {'64' if wide else '32'}-bit header field")
    arrays = []
    for i in _layers_upto(net, cutoff, path):
        if net.info.flavor == "pjreddie" and net.meta[i].block.bool("dontsave"):
            continue
        arrays.extend(net.layers[i].darknet_arrays(scales=True))
    head = np.array(version, "<i4").tobytes() + np.array([header.seen],
                                                          "<u8" if wide else "<u4").tobytes()
    transposed = _matrices(net) if header.transposed else set()
    written = 0
    with atomic_open(path, sweep=True) as f:  # (what a killed save left of `path`)
        f.write(head)
        for t in arrays:
            a = t.detach().to("cpu", torch.float32)
            if id(t) in transposed:
                a = a.T
            f.write(memoryview(np.ascontiguousarray(a.numpy(), _FLOAT)).cast("B"))
            written += t.numel()
    return written
