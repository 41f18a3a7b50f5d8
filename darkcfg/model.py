"""Loading a model for any command: cfg + [net] overrides -> Network, weights (Darknet .weights
or a torch state_dict / checkpoint), device. Below training: summary, detect, export and the
trainer all build through here."""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from builders.atomic import read_checked
from cfgparse import CfgError, Diagnostic, parse
from darkcfg.config import NetConfig, apply_overrides_to_blocks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def load_blocks(cfg_path: str, assignments: list[str]):
    return apply_overrides_to_blocks(list(parse(cfg_path)), assignments)


def build_network(cfg_path: str, assignments: list[str], flavor: str, seed: int,
                  device: str | None = None):
    from builders import build

    blocks, overrides = load_blocks(cfg_path, assignments)
    seed_everything(seed)  # the initial weights depend on the seed only
    net = build(blocks, flavor=flavor, device=device)
    cfg = NetConfig.from_block(net.net_block, seed=seed)
    return net, cfg, overrides


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """--device, else CUDA (this process's GPU under torchrun), else MPS, else CPU."""
    if name and name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
        state = torch.load(io.BytesIO(read_checked(path, "weights file")), map_location="cpu",
                           weights_only=True)
    except CfgError:
        raise
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


def load_model(cfg_path: str, weights: str | os.PathLike | None = None, *,
               sets: list[str] | tuple[str, ...] = (), flavor: str = "alexeyab", seed: int = 0,
               device: str | torch.device | None = None, cutoff: int | None = None):
    """The network of `cfg_path` with `sets` applied, its weights loaded, on `device` (None: the
    best available) in eval mode. Returns (net, report): report is the weights line (or '')."""
    net, _, _ = build_network(cfg_path, list(sets), flavor, seed)
    report = load_any_weights(net, weights, cutoff) if weights else ""
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
        return net, load_any_weights(net, self.weights, self.cutoff) if self.weights else ""

    def load(self, extra_sets: list[str] | tuple[str, ...] = ()):
        """(net, report): built, its weights loaded, on the device, in eval mode."""
        return load_model(self.cfg, self.weights, sets=[*self.sets, *extra_sets],
                          flavor=self.flavor, seed=self.seed, device=self.device,
                          cutoff=self.cutoff)
