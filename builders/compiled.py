"""What a forward pre-hook runs outside the graph under torch.compile: imported only there
(torch._dynamo is loaded then; `import builders` does not load it, ~2 s)."""

from __future__ import annotations

import torch


@torch.compiler.disable
def check_size(net, x: torch.Tensor | None, collect, skip=None) -> None:
    """Raise the InputError `net.forward` raises for `x`, an input of another size than the
    cfg's (None: none), before the compiler traces it: its TorchRuntimeError said nothing of
    the cfg's size. `skip`: a function whose frame the compiler runs as it is from now on,
    what it calls still traced (its code only: torch._dynamo.decorators.skip also marks the
    function disabled, which torch.export then refuses to inline)."""
    if skip is not None:
        try:
            from torch._dynamo.eval_frame import skip_code
        except ImportError:  # pragma: no cover (a torch without it: traced, a little slower)
            pass
        else:
            skip_code(skip.__code__)
    error = None if x is None else net._size_error(x, collect)
    if error is not None:
        raise error
