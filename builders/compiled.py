"""What a forward pre-hook runs outside the graph under torch.compile: imported only there
(torch._dynamo is loaded then; `import builders` does not load it, ~2 s)."""

from __future__ import annotations

import torch


@torch.compiler.disable
def check_size(net, x: torch.Tensor, collect) -> None:
    """Raise the InputError `net.forward` raises for `x`, an input of another size than the
    cfg's, before the compiler traces it: its TorchRuntimeError said nothing of the cfg's size.
    (Disabled: the meta run is not traced.)"""
    error = net._size_error(x, collect)
    if error is not None:
        raise error
