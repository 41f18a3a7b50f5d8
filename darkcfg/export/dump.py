"""--dump-outputs: layer outputs in Darknet's memory order, for layer-by-layer comparison with
Darknet's own `l.output` buffers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from builders.graph import Network
from builders.weights import atomic_open
from cfgparse import CfgError, Diagnostic


def _check_input(net: Network, x: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):  # from Python: the tensor a forward takes, as the .npy's array
        x = x.detach().cpu().numpy()
    shape = net.input_shape
    spatial = shape.c * shape.h * shape.w > 0
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[0] < 1:
        got = getattr(x, "shape", type(x).__name__)
        # a flat-input network ([net] inputs=, no width/height/channels) takes (N, inputs, 1, 1):
        # the hint said (N, 0, 0, 0), a shape no array can have and this check refuses
        want = (shape.c, shape.h, shape.w) if spatial else (shape.size, 1, 1)
        raise CfgError(Diagnostic("E302", f"the input must be an (N, C, H, W) array, got {got}",
                                  where, hint=f"save a float32 array of shape (N, "
                                  f"{', '.join(map(str, want))}) with numpy.save"))
    if (spatial and tuple(x.shape[1:]) != (shape.c, shape.h, shape.w)) or (
            not spatial and int(np.prod(x.shape[1:])) != shape.size):
        want = f"(N, {shape.c}, {shape.h}, {shape.w})" if spatial else \
            f"(N, C, H, W) with C*H*W = {shape.size}"
        raise CfgError(Diagnostic("E302", f"the input has shape {tuple(x.shape)}, but [net] "
                                  f"takes {want}", where,
                                  hint="resize the input, or set width/height/channels in [net]"))
    if not np.issubdtype(x.dtype, np.floating):
        raise CfgError(Diagnostic("E202", f"the input must hold floats, not {x.dtype}", where,
                                  hint="convert it with x.astype(numpy.float32)"))
    return torch.from_numpy(np.ascontiguousarray(x, np.float32))


@torch.no_grad()
def dump_outputs(net: Network, x: np.ndarray | torch.Tensor, out_path: str | os.PathLike,
                 all_layers: bool = False, input_name: str = "<input>") -> list[int]:
    """Eval-mode forward of `x` (N, C, H, W), a numpy array or a tensor; writes an .npz
    holding `layer{index}` (N, count) for every output layer (and the last layer), or every
    layer with `all_layers`, each flattened as Darknet lays out that layer's output buffer.
    Returns the indices written."""
    xt = _check_input(net, x, input_name)
    indices = list(range(len(net.layers))) if all_layers else list(net.output_indices)
    device = next((p.device for p in net.parameters()), None) or \
        next((b.device for b in net.buffers()), torch.device("cpu"))
    was_training = net.training
    net.eval()
    try:
        outputs = net(xt.to(device), collect=indices)
    finally:
        net.train(was_training)
    arrays = {f"layer{i}": net.layers[i].darknet_output(outputs[i]).float().cpu().numpy()
              for i in indices}
    _write_npz(Path(out_path), arrays)
    return indices


def _write_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    # through a file object, so that numpy does not append '.npz' to the name
    with atomic_open(target, sweep=True) as f:
        np.savez(f, **arrays)
