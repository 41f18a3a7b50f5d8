"""builders: cfg blocks -> a plain nn.Module graph (Network)."""

from .graph import LayerInfo, Network, build
from .layer import Layer
from .registry import SECTION_BUILDERS, BuildContext, NetInfo, Shape, register, register_section

__all__ = ["SECTION_BUILDERS", "BuildContext", "Layer", "LayerInfo", "NetInfo", "Network",
           "Shape", "build", "register", "register_section"]
