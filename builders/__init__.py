"""builders: cfg blocks -> a plain nn.Module graph (Network).

The names below load on first use, so that the torch-free modules of this package
(`builders.memory`, `builders.plan`) import without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .graph import InputError, LayerInfo, Network, build
    from .layer import Layer
    from .registry import SECTION_BUILDERS, BuildContext, NetInfo, Shape, register, register_section

__all__ = ["SECTION_BUILDERS", "BuildContext", "InputError", "Layer", "LayerInfo", "NetInfo",
           "Network", "Shape", "build", "register", "register_section"]


def __getattr__(name: str) -> Any:
    if name in ("InputError", "LayerInfo", "Network", "build"):
        from . import graph as module
    elif name == "Layer":
        from . import layer as module
    elif name in ("SECTION_BUILDERS", "BuildContext", "NetInfo", "Shape", "register",
                  "register_section"):
        from . import registry as module
    else:
        raise AttributeError(f"module 'builders' has no attribute {name!r}")
    return getattr(module, name)
