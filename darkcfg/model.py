"""Loading a model for any command: cfg + [net] overrides -> Network, weights (Darknet .weights
or a torch state_dict / checkpoint), device. Below training: summary, detect, export and the
trainer all build through here."""

from __future__ import annotations

import io
import math
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from builders.atomic import read_checked
from builders.graph import checked_device
from cfgparse import CfgError, Diagnostic, parse
from cfgparse.errors import printable
from darkcfg.bundled import resolve_model_cfg
from darkcfg.config import NetConfig, apply_overrides_to_blocks


def option_error(flag: str, message: str, hint: str = "") -> CfgError:
    """A bad option value (a flag, or the same setting given to a library function)."""
    return CfgError(Diagnostic("E100", message, flag, hint=hint))


SEED_LIMIT = 2**64  # torch.manual_seed takes 64 bits


def check_seed(seed: int) -> int:
    if not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise option_error("--seed", f"--seed {seed} is out of range",
                           f"use an integer from 0 to {SEED_LIMIT - 1}")
    return seed


def check_count(flag: str, value: int | None, what: str) -> int | None:
    """A count option (--workers, --freeze, --cutoff): None or an integer >= 0."""
    if value is not None and (not isinstance(value, int) or value < 0):
        raise option_error(flag, f"{flag} {value}: {what} cannot be negative",
                           f"use {flag} 0 or more")
    return value


def seed_everything(seed: int) -> None:
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def load_blocks(cfg_path: str, assignments: list[str]):
    return apply_overrides_to_blocks(list(parse(cfg_path)), assignments)


def build_network(cfg_path: str, assignments: list[str], flavor: str, seed: int,
                  device: str | None = None, guard: bool = True, forceable: bool = False):
    """(net, NetConfig, overrides) for a cfg path or text with `--set`-style `KEY=VALUE`
    assignments applied, the initial weights drawn from `seed`; no weights loaded, not moved to a
    device beyond `device`'s build (`ModelSpec.build()` calls it). Unless `guard` is False (a
    caller that guarded already, or --force), a network whose parameters and one image's
    feature maps do not fit the device's memory is E401 before anything is allocated; its help
    offers --force where the command has it (`forceable`)."""
    from builders import build

    blocks, overrides = load_blocks(cfg_path, assignments)
    if guard and (device is None or checked_device(device).type != "meta"):
        guard_build(blocks, flavor, device, forceable)
    seed_everything(seed)  # the initial weights depend on the seed only
    net = build(blocks, flavor=flavor, device=device)
    cfg = NetConfig.from_block(net.net_block, seed=seed)
    return net, cfg, overrides


def guard_build(blocks, flavor: str, device: str | None = None, forceable: bool = False) -> None:
    """E401 (located at the layer that needs the most) for blocks whose network would not fit
    `device` (None: the CPU), from a meta build's shapes: a small cfg claiming a huge layer
    was allocated and initialised first (the allocator's unlocated error, or the OOM killer)."""
    from builders.memory import guard_memory, meta_build, one_forward

    where = torch.device("cpu") if device is None else checked_device(device)
    meta = meta_build(blocks, flavor)
    guard_memory(meta, device_memory(where), batch=one_forward(meta), training=False,
                 forceable=forceable)


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """--device, else CUDA (this process's GPU under torchrun), else MPS, else CPU."""
    if name and name != "auto":
        return named_device(name, local_rank)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_memory(device: torch.device) -> int:
    """Bytes the device has: the GPU's memory, else the machine's physical memory, or less
    where this process may map less (`ulimit -v`/`-d`: what it has mapped already, torch's
    libraries, counts against that limit)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    page = os.sysconf("SC_PAGE_SIZE")
    return min(page * os.sysconf("SC_PHYS_PAGES"), mappable_memory(page))


def mappable_memory(page: int) -> int:
    """What RLIMIT_AS and RLIMIT_DATA leave this process to allocate (no limit: a huge number).
    Without it the memory guard passed and torch's allocator failed deep in the first layer."""
    try:
        import resource

        limits = {name: resource.getrlimit(getattr(resource, name))[0]
                  for name in ("RLIMIT_AS", "RLIMIT_DATA")}
        with open("/proc/self/statm") as fh:  # pages: total mapped, resident, shared, text,
            fields = [int(x) * page for x in fh.read().split()]  # lib, data + stack, dirty
    except (ImportError, OSError, ValueError, AttributeError):
        return 2 ** 63
    used = {"RLIMIT_AS": fields[0], "RLIMIT_DATA": fields[5] if len(fields) > 5 else 0}
    return min([max(limit - used[name], 0) for name, limit in limits.items()
                if limit != resource.RLIM_INFINITY] or [2 ** 63])


def named_device(name: str, local_rank: int = 0) -> torch.device:
    """--device NAME, checked: a device this machine has, else a located E100 (torch would fail
    later, deep inside, with a traceback). "cuda" is this process's GPU under torchrun."""
    device = checked_device(name, "--device", meta=False)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


# -- --weights: Darknet .weights or a torch state_dict ---------------------------------------------
def load_torch_payload(payload: bytes, path: Path, what: str, hint: str):
    """torch.load of a file's bytes with weights_only=True: a pickle that would run code (or
    build any object but tensors and plain containers) is refused, never run. Every failure is
    one E901 line: the refused global named, else the reader's first line."""
    # a zip archive ends with its directory's 22-byte end record (and at most a 64 KiB
    # comment): a copy cut short lacks it, or its end ('negative seek value -3079' from the
    # reader)
    end = payload.rfind(b"PK\x05\x06", max(len(payload) - 22 - 65535, 0))
    if payload.startswith(b"PK") and (end < 0 or len(payload) - end < 22):
        raise CfgError(Diagnostic("E901", f"'{path}' is cut short ({len(payload):,} bytes): "
                                  "the end of its torch archive is missing", str(path),
                                  hint=hint))
    try:
        with warnings.catch_warnings():
            # a damaged pickle's protocol byte: torch's raw UserWarning line ("please file an
            # issue"); the tensors read, or the file is the E901 below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling problem means a file we cannot use
        text = str(exc)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            name = f" ({found.group(1)})" if found else ""
            raise CfgError(Diagnostic(
                "E901", f"'{path}' holds Python objects besides tensors{name}: loading them "
                "could run code, so darkcfg does not", str(path),
                hint="re-save only the tensors from a copy you trust, e.g. "
                "torch.save(model.state_dict(), 'model.pt')")) from None
        first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise CfgError(Diagnostic("E901", f"cannot read {what} '{path}': {first}", str(path),
                                  hint=hint)) from None


def non_finite(net) -> str:
    """'' when every float of the network's weights is finite, else how many are NaN or Inf
    and the first tensor holding one (what a damaged or diverged file leaves)."""
    floats = {name: t for name, t in net.state_dict().items() if t.is_floating_point()}
    # a NaN or Inf makes its tensor's sum NaN or Inf: one reduction each, no mask (20x faster
    # on VGG-16's 138 M floats, checked at every checkpoint); a sum of finite values that
    # overflows goes on to the exact count
    sums = [t.sum().float() for t in floats.values()]
    if not sums or bool(torch.isfinite(torch.stack(sums)).all()):
        return ""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in floats.items()}
    bad = {name: n for name, n in bad.items() if n}
    if not bad:
        return ""
    total = sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())
    return f"{sum(bad.values())} of its {total} floats are NaN or Inf (first: {next(iter(bad))})"


def is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive; Darknet .weights start with three small int32s."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _is_counter(name: str) -> bool:
    """A batch-norm's `num_batches_tracked`: with Darknet's fixed momentum it changes no output,
    and state_dicts of older torch versions (or other tools) leave it out."""
    return name.rsplit(".", 1)[-1] == "num_batches_tracked"


def _names(names: list[str], shapes: dict | None = None, own: dict | None = None) -> str:
    """The first three names (with the file's and the network's shapes for a shape mismatch)."""
    def one(name):
        if shapes is None or own is None:  # (a file's key may be any object: 5, (1, 2))
            return printable(name if isinstance(name, str) else repr(name))
        return (f"{name}: {tuple(getattr(shapes[name], 'shape', ()))} in the file, "
                f"{tuple(own[name].shape)} here")
    return ", ".join(map(one, names[:3])) + (", ..." if len(names) > 3 else "")


def load_any_weights(net, path: str | os.PathLike, cutoff: int | None = None,
                     partial: bool = False) -> str:
    """Load Darknet .weights (partial files with `cutoff`) or a torch state_dict / darkcfg
    checkpoint, and return a one-line report (`read_any_weights` also says the file's `seen`).

    A torch file loads strictly, as torch's load_state_dict does: every tensor of the network
    (of its first `cutoff` layers) must be in the file with its shape, else E902 naming them.
    `partial` (--partial, transfer learning) loads the tensors whose name and shape match and
    leaves the others as they are. Names the network does not have are left out with a warning
    line in the report (they leave nothing of the network unset)."""
    return read_any_weights(net, path, cutoff, partial).report


@dataclass(frozen=True)
class LoadedWeights:
    report: str  # the one-line report (and a warning line or two)
    seen: int  # images the weights were trained on (Darknet's net->seen); 0 when not recorded


def read_any_weights(net, path: str | os.PathLike, cutoff: int | None = None,
                     partial: bool = False) -> LoadedWeights:
    """`load_any_weights`, with the `seen` count the file records: a .weights header's, a
    darkcfg checkpoint's `images_seen` (iterations x batch, as Darknet counts), else 0."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is not a regular file (a pipe or a " \
            "device)" if path.exists() else "does not exist"
        raise CfgError(Diagnostic("E901", f"weights file '{path}' {what}", str(path),
                                  hint="name the .weights (or .pt) file itself"
                                  if path.is_dir() else "check the path"))
    if not is_torch_file(path):
        from builders.weights import load_weights

        if partial:  # it loads tensors by name; a .weights file is read layer by layer
            raise CfgError(Diagnostic(
                "E100", f"--partial is for a torch state_dict or checkpoint; '{path}' is Darknet "
                ".weights", "--partial", hint="load the first N layers of a .weights file with "
                "--cutoff N"))

        info = load_weights(net, path, cutoff=cutoff) if cutoff is not None else \
            load_weights(net, path)
        upto = f" (first {cutoff} layers)" if cutoff is not None else ""
        seen = int(info.get("seen", 0))
        return LoadedWeights(with_non_finite(
            net, path, f"loaded Darknet weights {path}{upto}: {info.get('floats', '?')} floats, "
            f"seen={seen}"), seen)
    state = load_torch_payload(read_checked(path, "weights file"), path, "torch file",
                               "it is damaged or cut short: use an intact copy")
    kind, seen = "a torch state_dict", 0
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        recorded = state.get("images_seen")
        if type(recorded) is int and 0 <= recorded < 2**64:  # (the header's field)
            seen = recorded
        state, kind = state["model"], "a darkcfg checkpoint: its weights only"
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if path.suffix.lower() == ".weights":  # named like Darknet's: say which file it really is
        kind += ", not Darknet .weights"
    if not isinstance(state, dict):
        raise CfgError(Diagnostic("E901", f"'{path}' holds no state_dict", str(path)))
    own = net.state_dict()
    if cutoff is not None:  # as for .weights: the first `cutoff` layers (it was ignored)
        def first(names):
            return {k: v for k, v in names.items() if _layer_of(k) < cutoff}
        own, state = first(own), first(state)
    matched = {k: v for k, v in state.items()
               if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    for name, value in matched.items():
        odd, dtype = _odd_tensor(value, own[name])
        if odd:  # torch's copy_ took a complex tensor's real part (a UserWarning), cast ints
            # and bools, and raised a RuntimeError for a quantized or sparse one
            raise CfgError(Diagnostic("E901", f"'{path}' holds {printable(name)} as {dtype} "
                                      "values: the network's weights are real floating-point "
                                      "numbers", str(path), hint=_ODD_HINT[odd]))
    wrong_shape = [k for k, v in state.items() if k in own and k not in matched]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not _is_counter(k)]
    if not matched:
        raise CfgError(Diagnostic("E902", f"no tensor of '{path}' matches this network "
                                  f"({len(wrong_shape)} with the wrong shape, "
                                  f"{len(unexpected)} unknown names)", str(path),
                                  hint="was it saved from a network built from this cfg?"))
    if (missing or wrong_shape) and not partial:
        parts = [f"{len(wrong_shape)} of another shape ({_names(wrong_shape, state, own)})"
                 if wrong_shape else "", f"{len(missing)} missing ({_names(missing)})"
                 if missing else ""]
        raise CfgError(Diagnostic(
            "E902", f"'{path}' leaves {len(missing) + len(wrong_shape)} of the network's "
            f"{len(own)} tensors unfilled: {'; '.join(p for p in parts if p)}", str(path),
            hint="was it saved from a network of this cfg with the same --set values (e.g. "
            "classes=)? To load just the matching tensors and start the others from their "
            "initial weights (transfer learning), add --partial"))
    net.load_state_dict(matched, strict=False)
    report = f"loaded {len(matched)}/{len(own)} tensors from {path} ({kind})"
    report += f" (first {cutoff} layers)" if cutoff is not None else ""
    for label, names in (("missing", missing), ("shape mismatch", wrong_shape)):
        if names:  # (--partial)
            report += f"; {label}: {len(names)} ({_names(names)})"
    counters = [k for k in own if k not in state and _is_counter(k)]
    if counters:
        report += f"; not in the file: {len(counters)} batch-norm num_batches_tracked (no " \
            "output depends on them)"
    if unexpected:
        report += (f"\nwarning: '{path}' holds {len(unexpected)} tensor(s) this network does "
                   f"not have, left out: {_names(unexpected)}")
    return LoadedWeights(with_non_finite(net, path, report), seen)


def _odd_tensor(value: torch.Tensor, own: torch.Tensor) -> tuple[str, str]:
    """(kind, dtype) of a file's tensor that does not load into `own` as its values, ('', '')
    for one that does: a sparse or quantized tensor, a complex one, or for a floating-point
    weight an integer or bool one (float64 and float16 are rounded, as torch does)."""
    dtype = str(value.dtype).removeprefix("torch.")
    if value.layout != torch.strided:
        return "sparse", f"sparse {dtype}"
    if value.is_quantized:
        return "quantized", dtype
    if value.is_complex():
        return "complex", dtype
    if own.is_floating_point() and not value.is_floating_point():
        return "integer", dtype
    return "", ""


_ODD_HINT = {
    "complex": "torch would keep only the real part: save the real tensors you mean "
               "(t.real) from a copy you trust",
    "integer": "integers where a float weight goes (a quantized export's int8 values?): load "
               "the float weights it was made from",
    "quantized": "save its float values (t.dequantize()) and load those",
    "sparse": "save it dense (t.to_dense()) and load that"}


def with_non_finite(net, path: Path, report: str) -> str:
    """The load report, and a warning line when the loaded weights hold NaN or Inf (Darknet
    loads them as well; every output is then NaN. Training refuses them, up front)."""
    bad = non_finite(net)
    return f"{report}\nwarning: '{path}': {bad}: the outputs will be NaN" if bad else report


def _layer_of(name: str) -> float:
    """The layer index of a Network state_dict name ('layers.5.unit.linear.weight' -> 5); inf
    for a name outside the layers."""
    parts = name.split(".") if isinstance(name, str) else []  # (a file's key: any object)
    return int(parts[1]) if len(parts) > 2 and parts[0] == "layers" and parts[1].isascii() \
        and parts[1].isdigit() else math.inf


def load_model(cfg_path: str, weights: str | os.PathLike | None = None, *,
               sets: list[str] | tuple[str, ...] = (), flavor: str = "alexeyab", seed: int = 0,
               device: str | torch.device | None = None, cutoff: int | None = None,
               partial: bool = False):
    """The network of `cfg_path` with `sets` applied, its weights loaded, on `device` (None: the
    best available) in eval mode. Returns (net, report): report is the weights line (or '')."""
    net, _, _ = build_network(cfg_path, list(sets), flavor, seed)
    report = load_any_weights(net, weights, cutoff, partial) if weights else ""
    where = device if isinstance(device, torch.device) else pick_device(device)
    return net.to(where).eval(), report


@dataclass(frozen=True)
class ModelSpec:
    """Which model a command runs: the cfg, its `--set` overrides, whose formulas (`flavor`), the
    seed of the initial weights, the weights to load (the first `cutoff` layers) and the device
    (None: the best available). Every command's typed options hold one."""

    cfg: str
    sets: tuple[str, ...] = ()
    flavor: str = "alexeyab"
    seed: int = 0
    weights: str | None = None
    cutoff: int | None = None
    device: str | None = None
    partial: bool = False  # a torch state_dict may leave tensors unfilled (--partial)

    def __post_init__(self) -> None:
        """Values no command can use are refused here, whichever command built the spec."""
        if isinstance(self.sets, str):  # one override, not its characters
            object.__setattr__(self, "sets", (self.sets,))
        object.__setattr__(self, "cfg", resolve_model_cfg(self.cfg))  # `yolov3-tiny.cfg` anywhere
        check_seed(self.seed)
        check_count("--cutoff", self.cutoff, "the number of layers")
        if self.device and self.device != "auto":
            named_device(self.device)  # a device this machine does not have

    @property
    def name(self) -> str:
        """The cfg's file name without its extension: runs/<name>, <name>_final.weights."""
        return Path(self.cfg).stem

    def build(self, extra_sets: list[str] | tuple[str, ...] = (), device: str | None = None):
        """The network with the initial weights of `seed` (no weights loaded, not moved)."""
        return build_network(self.cfg, [*self.sets, *extra_sets], self.flavor, self.seed,
                             device=device)[0]

    def with_weights(self, extra_sets: list[str] | tuple[str, ...] = ()):
        """(net, report): built on the CPU, `weights` loaded when given (report: '' if not),
        left in training mode where it is (for conversion and export)."""
        net = self.build(extra_sets)
        return net, (load_any_weights(net, self.weights, self.cutoff, self.partial)
                     if self.weights else "")

    def load(self, extra_sets: list[str] | tuple[str, ...] = ()):
        """(net, report): built, its weights loaded, on the device, in eval mode."""
        return load_model(self.cfg, self.weights, sets=[*self.sets, *extra_sets],
                          flavor=self.flavor, seed=self.seed, device=self.device,
                          cutoff=self.cutoff, partial=self.partial)
