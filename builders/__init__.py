"""builders: cfg blocks -> a plain nn.Module graph (Network).

    build(source, device=None, flavor="alexeyab")  a cfg path, cfg text or blocks -> Network
    Network          the nn.Module: net(x) on x of shape net.expected_input(); .layers, .meta
    InputError       what net(x) raises for an input it cannot take (names the expected shape)
    Layer            the base class of every layer (a section of your own subclasses it)
    register_section(name, builder, keys=...)  a section type of your own (docs/extending.md)
    register         the built-in sections' decorator (no schema keys)
    Shape, NetInfo, BuildContext, LayerInfo    what a builder sees and what the graph keeps
    SECTION_BUILDERS the registry: section name -> builder

More in the modules: builders.weights (Darknet .weights), builders.summary (the layer table),
builders.memory (the memory estimate), builders.boxes (IoU, letterbox, resize), builders.heads
(detection heads). These names load on first use, so that the torch-free modules of this
package (`builders.memory`, `builders.plan`) import without torch."""

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


def __dir__() -> list[str]:
    """The lazily loaded names too, for dir() and tab completion."""
    return sorted(set(globals()) | set(__all__))
