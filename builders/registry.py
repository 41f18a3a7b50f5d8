"""One dispatch: section type -> builder function.

A builder is Darknet's `parse_<section>(options, size_params)` in Python:

    @register("convolutional")
    def build_conv(block: Block, ctx: BuildContext) -> tuple[nn.Module, Shape]:
        ...

It reads its keys through the block's typed getters, may ask `ctx` for the shapes of the layers it
references (`ctx.refs(block, "layers")`), and returns the module and its output shape. Anything it
cannot build raises `CfgError` located at the block or key (`block.error(...)`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from cfgparse import Block, CfgError, schema
from cfgparse.errors import did_you_mean
from cfgparse.rules import absolute_reference, missing_reference, reference_problem


class Shape(NamedTuple):
    """Darknet's out_c, out_h, out_w and outputs (flat size; softmax/cost/detection set c=h=w=0
    and only `outputs`)."""

    c: int
    h: int
    w: int
    outputs: int = -1

    @classmethod
    def chw(cls, c: int, h: int, w: int) -> Shape:
        return cls(c, h, w, c * h * w)

    @classmethod
    def flat(cls, n: int) -> Shape:
        return cls(0, 0, 0, n)

    @property
    def size(self) -> int:
        """Values per item: `outputs` when set, else c * h * w."""
        return self.outputs if self.outputs >= 0 else self.c * self.h * self.w


@dataclass
class NetInfo:
    """What builders may need from [net] (input size, batch for BN, ...)."""

    width: int
    height: int
    channels: int
    inputs: int
    batch: int = 1
    flavor: str = "alexeyab"  # "pjreddie" switches the few places where the forks differ
    time_steps: int = 1  # recurrent layers split the batch into time_steps consecutive chunks


@dataclass
class BuildContext:
    """Per-layer view of the graph under construction, handed to each builder."""

    index: int  # this layer's index
    shapes: list[Shape]  # output shapes of layers 0..index-1
    input: Shape  # the previous layer's output shape (or the network input)
    net: NetInfo
    types: list[str] = field(default_factory=list)  # section types of layers 0..index-1
    sources: list[int] = field(default_factory=list)  # extra layers this one reads
    layers: Sequence[nn.Module] = ()  # modules of layers 0..index-1 (conv share_index)
    previous: Block | None = None  # the section before this one (None for the first layer)

    def resolve(self, block: Block, key: str, ref: int, item: int = 0) -> int:
        """Darknet's rule (cfgparse.rules): negative = relative to this layer; check it exists.
        `item`: which entry of a list value `ref` is (for the error's column)."""
        problem = reference_problem(block, key, ref, self.index, item)
        if problem is not None:
            raise CfgError(problem)
        return absolute_reference(self.index, ref)

    def refs(self, block: Block, key: str) -> list[int]:
        """The absolute indices listed in `key`; recorded as this layer's extra inputs.
        The module's forward then receives them, in order, after the previous output."""
        if key not in block:
            raise CfgError(missing_reference(block, key))
        raw = block.ints(key)
        out = [self.resolve(block, key, r, item) for item, r in enumerate(raw)]
        self.sources.extend(out)
        return out

    def shape_of(self, index: int) -> Shape:
        """The output Shape of an earlier layer (absolute index)."""
        return self.shapes[index]


Builder = Callable[[Block, BuildContext], tuple[nn.Module, Shape]]
SECTION_BUILDERS: dict[str, Builder] = {}


def register(*sections: str) -> Callable[[Builder], Builder]:
    """Register a builder for canonical section names (aliases come from cfgparse.schema)."""

    def deco(fn: Builder) -> Builder:
        for name in sections:
            if schema.canonical_section(name) != name:
                raise ValueError(f"register() takes canonical section names, got {name!r}")
            SECTION_BUILDERS[name] = fn
        return fn

    return deco


# Python types a plugin's key may have -> the schema's type letters (cfgparse.schema).
_KEY_TYPES = {int: "i", float: "f", str: "s", bool: "b", list[int]: "I", list[float]: "F"}


def _key_spec(section: str, key: str, spec) -> schema.KeySpec:
    if isinstance(spec, schema.KeySpec):
        return spec
    type_, default, minimum = (tuple(spec) + (None, None))[:3] if isinstance(spec, tuple) \
        else (spec, None, None)
    if type_ not in _KEY_TYPES:
        raise TypeError(f"[{section}] key '{key}': type must be one of int, float, str, bool, "
                        f"list[int], list[float], not {type_!r}")
    if type_ is str:  # a text key's third item lists the values it may take
        return schema.KeySpec("s", default, None, tuple(minimum) if minimum else None)
    return schema.KeySpec(_KEY_TYPES[type_], default, minimum)


def register_section(name: str, builder: Builder | None = None, *,
                     keys: dict | None = None, aliases: Sequence[str] = (),
                     override: bool = False):
    """Add a user-defined section type: `builder(block, ctx) -> (Layer, Shape)`, like the
    built-in ones, and its keys `{key: (type, default, lower bound)}` (type int, float, str,
    bool, list[int] or list[float]; a default of None means required; for str, the third item
    is the tuple of allowed values, e.g. `schema.ACTIVATIONS`), which go into the schema:
    the parser types them, the linter checks them (W201 unknown key, E202/E203 bad values).

    Registering a name (or alias) twice raises ValueError unless `override=True`. Without
    `builder`, returns a decorator:

        @register_section("scaled_relu", keys={"alpha": (float, 1.0, 0)})
        def build_scaled_relu(block, ctx): ...
    """
    if builder is None:
        return lambda fn: register_section(name, fn, keys=keys, aliases=aliases,
                                           override=override)
    if not callable(builder):
        raise TypeError(f"register_section({name!r}): the builder must be a function "
                        f"(block, ctx) -> (Layer, Shape), not {type(builder).__name__}")
    for n in (name, *aliases):  # what a '[name]' header can spell (parser: no spaces, no ']')
        if not isinstance(n, str) or not n or any(c.isspace() or c in "[]" for c in n):
            raise ValueError(f"register_section: {n!r} cannot be a section name: a cfg header "
                             "[name] holds no spaces or brackets")
    _load_families()
    specs = {key: _key_spec(name, key, spec) for key, spec in (keys or {}).items()}
    taken = [n for n in (name, *aliases) if n in SECTION_BUILDERS or schema.is_section_name(n)]
    if taken and not override:
        raise ValueError(f"section [{taken[0]}] is already registered; pass override=True "
                         "to replace it")
    schema.add_section(name, specs, tuple(aliases), replace=override)
    SECTION_BUILDERS[name] = builder
    return builder


def builder_for(block: Block) -> Builder:
    _load_families()
    fn = SECTION_BUILDERS.get(block.type)
    if fn is None:
        hint = did_you_mean(block.name, SECTION_BUILDERS) or (
            "darkcfg builds: " + ", ".join(sorted(SECTION_BUILDERS)))
        raise CfgError(block.diagnostic("E300", f"darkcfg cannot build [{block.name}] layers",
                                        hint=hint))
    return fn


# The modules whose import registers builders, one per family of sections.
FAMILIES = ("conv", "pool", "dense", "routing", "heads", "recurrent", "misc", "adaptive")
_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        import importlib

        for family in FAMILIES:
            importlib.import_module(f"builders.{family}")
        _loaded = True


def registered_sections() -> list[str]:
    _load_families()
    return sorted(SECTION_BUILDERS)
