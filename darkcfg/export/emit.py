"""Emit a built Network as one readable, self-contained PyTorch file (imports only torch).

    from darkcfg.export.emit import emit_module, write_module
    source = emit_module(net, name="yolov4-tiny.cfg")   # the text of model.py
    write_module(net, "model.py")

The file defines `class Net(nn.Module)` with one named submodule per torch module of each layer
(`self.conv_0 = nn.Conv2d(...)`, `self.bn_0`, `self.act_0`), a straight-line `forward` (routes
and shortcuts are `torch.cat` and additions of named variables) returning what
`Network.forward` returns, `load_darknet_weights(net, path)`, and a load_state_dict hook that
maps a darkcfg state_dict (`layers.<i>.<path>`) onto its names.

There is no per-section code here. Each layer describes itself (`Layer.emit(ctx)`); the default,
used by every built-in layer, traces the layer's own forward with torch.fx at the sizes it was
built for (Python-side branches on shapes are resolved then; the batch dimension stays
symbolic), keeps torch.nn modules as named submodules, and simplifies what only the generic
graph needs (reshapes to the shape a tensor already has, full slices, identities, one-part
concatenations). A plugin layer made of torch modules and torch functions emits the same way;
one that needs something else overrides `emit`.
"""

from __future__ import annotations

import builtins
import keyword
import math
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from builders.graph import Network

LINE = 100  # the project's ruff line length; the emitted file keeps to it


class EmitError(Exception):
    """A layer whose forward cannot be written as plain torch code."""


# -- tracing one layer ----------------------------------------------------------------------------

def _is_torch_module(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn") and not isinstance(
        m, nn.Sequential | nn.ModuleList | nn.ModuleDict)


class _ConcreteProxy(fx.Proxy):
    """A proxy that answers dtype/device/ndim (and dim()) from the traced example, so that
    Python code such as `torch.finfo(x.dtype)` or `if x.dim() == 4` traces."""

    def __getattr__(self, name: str):
        if name in ("dtype", "device", "ndim", "is_cuda"):
            return getattr(self.node.meta["vals"][0], name)
        if name == "dim":
            ndim = self.node.meta["vals"][0].dim()
            return lambda: ndim
        return super().__getattr__(name)

    def __len__(self) -> int:
        lengths = {len(v) for v in self.node.meta["vals"]}
        if len(lengths) != 1:
            raise EmitError("the forward takes the length of the batch dimension")
        return lengths.pop()


class _Tracer(fx.Tracer):
    """fx tracing that also runs every node on two examples (batch 1 and batch 2), so that
    branches on sizes take the built network's path and constants are told from batch sizes."""

    def __init__(self, root: nn.Module, examples: list[list]):
        super().__init__()
        self.examples = examples  # per example: the layer's inputs
        self.placeholders = 0
        self.root_module = root
        # looked up before tracing: fx patches module attribute access while it traces
        self.tensors = dict(_state(root))
        self.unpatched = (nn.Module.__getattr__, nn.Module.__call__)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if m is self.root_module or qualname == "inner":
            return False
        return _is_torch_module(m) or hasattr(m, "emitted")

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind == "output":
            return node
        patched = (nn.Module.__getattr__, nn.Module.__call__)
        nn.Module.__getattr__, nn.Module.__call__ = self.unpatched
        try:
            node.meta["vals"] = self._run(node, kind, target)
        finally:
            nn.Module.__getattr__, nn.Module.__call__ = patched
        if kind == "placeholder":
            self.placeholders += 1
        return node

    def _run(self, node: fx.Node, kind: str, target) -> list:
        vals = []
        for e in range(len(self.examples)):
            def val(a, e=e):
                return a.meta["vals"][e]
            a = fx.node.map_arg(node.args, val)
            k = fx.node.map_arg(node.kwargs, val)
            if kind == "placeholder":
                v = self.examples[e][self.placeholders]
            elif kind == "get_attr":
                v = self.tensors[target]
            elif kind == "call_module":
                v = self.root_module.get_submodule(target)(*_clone(a), **k)
            elif kind == "call_function":
                v = target(*a, **k)
            else:
                v = getattr(a[0], target)(*a[1:], **k)
            vals.append(v)
        return vals

    def to_bool(self, obj: fx.Proxy) -> bool:
        values = {bool(v) for v in obj.node.meta["vals"]}
        if len(values) != 1:
            raise EmitError("the forward branches on the batch size")
        return values.pop()

    def iter(self, obj: fx.Proxy):
        lengths = {len(v) for v in obj.node.meta["vals"]}
        if len(lengths) != 1:
            raise EmitError("the forward iterates over the batch dimension")
        return iter([obj[i] for i in range(lengths.pop())])


def _clone(args):
    """Module calls on the examples must not overwrite an earlier node's example (in-place
    activations)."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _same(vals) -> bool:
    first = vals[0]
    return all(type(v) is type(first) and v == first for v in vals[1:])


def _scalar(v) -> bool:
    if isinstance(v, bool | int | float) or v is None:
        return True
    return isinstance(v, tuple | list | torch.Size) and all(_scalar(x) for x in v)


def trace(layer: nn.Module, examples: list[list]) -> tuple[fx.Graph, str]:
    """The layer's forward as a simplified fx graph, specialised to its example inputs (one
    list of inputs per example), and the path prefix of the layer's own modules in it."""
    n = len(examples[0])
    root, prefix = (layer, "") if _signature_fits(layer, n) else (_bound(layer, n), "inner.")
    graph = _Tracer(root, examples).trace(root)
    _strip_identity_modules(graph, root)
    _simplify(graph)
    return graph, prefix


def _signature_fits(layer: nn.Module, n: int) -> bool:
    import inspect

    params = list(inspect.signature(layer.forward).parameters.values())
    plain = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(plain) == n and not any(p.kind == p.VAR_POSITIONAL for p in params)


_BOUND: dict[int, type] = {}


def _bound(layer: nn.Module, n: int) -> nn.Module:
    """`layer` under a module whose forward takes exactly n positional inputs (fx traces the
    signature, and cannot trace `*refs`)."""
    if n not in _BOUND:
        args = ", ".join(f"a{k}" for k in range(n))
        namespace: dict = {}
        exec(f"def forward(self, {args}):\n    return self.inner({args})", namespace)
        _BOUND[n] = type(f"_Bound{n}", (nn.Module,), {"forward": namespace["forward"]})
    wrapper = _BOUND[n]()
    wrapper.inner = layer
    return wrapper


_VIEWS = {"reshape", "view", "flatten", "contiguous", "squeeze", "unsqueeze"}


def _tensor_vals(node) -> list:
    return node.meta.get("vals", []) if isinstance(node, fx.Node) else []


def _simplify(graph: fx.Graph) -> None:
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op in ("placeholder", "output") or not node.users:
                continue
            vals = node.meta.get("vals", [])
            # sizes that do not depend on the batch become literals
            if vals and _scalar(vals[0]) and _same(vals) and node.op != "get_attr":
                const = vals[0]
                if isinstance(const, torch.Size):
                    const = tuple(const)
                for user in list(node.users):
                    user.args = fx.node.map_arg(user.args, lambda a, n=node, c=const: c if a is n
                                                else a)
                    user.kwargs = fx.node.map_arg(user.kwargs, lambda a, n=node, c=const: c
                                                  if a is n else a)
                changed = True
                continue
            source = _passthrough(node)
            if source is not None:
                node.replace_all_uses_with(source)
                changed = True
        for node in reversed(list(graph.nodes)):  # dead code (fx's own needs a GraphModule)
            if node.op not in ("placeholder", "output") and not node.users:
                graph.erase_node(node)


def _passthrough(node: fx.Node) -> fx.Node | None:
    """The input `node` merely hands on (same values, same shape), or None."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    src = node.args[0]
    ins, outs = _tensor_vals(src), node.meta.get("vals", [])
    if not ins or not all(isinstance(v, torch.Tensor) for v in ins + outs):
        return None
    same_shape = all(a.shape == b.shape for a, b in zip(ins, outs, strict=True))
    if node.op == "call_method" and node.target in _VIEWS and same_shape:
        if node.target == "contiguous" and not all(v.is_contiguous() for v in ins):
            return None
        return src
    if node.op == "call_function" and node.target in (torch.reshape, torch.flatten) \
            and same_shape:
        return src
    if node.op == "call_function" and node.target is operator.getitem and same_shape:
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        if all(isinstance(s, slice) and s.step in (None, 1) and s.start in (None, 0)
               for s in index):
            return src
    return None


# -- code generation ------------------------------------------------------------------------------

_INFIX = {operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
          operator.floordiv: "//", operator.mod: "%", operator.pow: "**", operator.matmul: "@",
          operator.gt: ">", operator.lt: "<", operator.ge: ">=", operator.le: "<=",
          operator.eq: "==", operator.ne: "!=", operator.and_: "&", operator.or_: "|"}
_PREFIX = {operator.neg: "-", operator.invert: "~"}


def function_name(fn) -> str:
    """`F.x`, `torch.x` or `torch.nn.functional.x`-style name of a torch function."""
    name = getattr(fn, "__name__", "")
    if name and getattr(F, name, None) is fn:
        return f"F.{name}"
    if name and getattr(torch, name, None) is fn:
        return f"torch.{name}"
    if name and getattr(torch.special, name, None) is fn:
        return f"torch.special.{name}"
    if name and getattr(builtins, name, None) is fn:
        return name
    if name and getattr(math, name, None) is fn:
        raise EmitError(f"math.{name} on a tensor")
    qualified = fx.node._get_qualified_name(fn)
    if qualified.startswith("torch.") and "._" not in qualified:
        return qualified
    raise EmitError(f"{qualified} is not a torch function")


def literal(v) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return 'float("inf")' if v > 0 else '-float("inf")'
        if math.isnan(v):
            return 'float("nan")'
        return repr(v)
    if isinstance(v, bool | int | str) or v is None or v is Ellipsis:
        return "..." if v is Ellipsis else repr(v)
    if isinstance(v, torch.dtype | torch.memory_format | torch.layout):
        return str(v)
    if isinstance(v, torch.device):
        return f'torch.device("{v}")'
    if isinstance(v, torch.Size):
        return literal(tuple(v))
    if isinstance(v, tuple):
        inner = ", ".join(literal(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, list):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if isinstance(v, slice):
        return f"slice({literal(v.start)}, {literal(v.stop)}, {literal(v.step)})"
    raise EmitError(f"cannot write the constant {v!r} as code")


@dataclass
class _Expr:
    text: str
    atom: bool  # no parentheses needed as an operand


class _LayerWriter:
    """Writes one traced layer's nodes as statements and one result expression."""

    def __init__(self, ctx: EmitContext, graph: fx.Graph, layer: nn.Module, inputs: list[str],
                 prefix: str = ""):
        self.ctx, self.graph, self.layer, self.inputs = ctx, graph, layer, inputs
        self.prefix = prefix
        self.exprs: dict[fx.Node, _Expr] = {}
        self.count = 0

    def arg(self, a) -> str:
        if isinstance(a, fx.Node):
            return self.exprs[a].text
        if isinstance(a, tuple | list):
            inner = ", ".join(self.arg(x) for x in a)
            if isinstance(a, list):
                return f"[{inner}]"
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, slice):
            return f"slice({self.arg(a.start)}, {self.arg(a.stop)}, {self.arg(a.step)})"
        return literal(a)

    def operand(self, a) -> str:
        if isinstance(a, fx.Node) and not self.exprs[a].atom:
            return f"({self.exprs[a].text})"
        text = self.arg(a)
        return f"({text})" if text.startswith("-") else text

    def index(self, idx) -> str:
        items = idx if isinstance(idx, tuple) else (idx,)
        parts = []
        for s in items:
            if isinstance(s, slice):
                start = "" if s.start is None else self.arg(s.start)
                stop = "" if s.stop is None else self.arg(s.stop)
                parts.append(f"{start}:{stop}" + ("" if s.step is None else f":{self.arg(s.step)}"))
            else:
                parts.append(self.arg(s))
        text = ", ".join(parts)
        return text + "," if isinstance(idx, tuple) and len(idx) == 1 else text

    def call_args(self, args, kwargs) -> str:
        parts = [self.arg(a) for a in args] + [f"{k}={self.arg(v)}" for k, v in kwargs.items()]
        return ", ".join(parts)

    def expression(self, node: fx.Node) -> _Expr:
        op, target = node.op, node.target
        if op in ("get_attr", "call_module") and self.prefix:
            target = target.removeprefix(self.prefix)
        if op == "get_attr":
            return _Expr(self.ctx.attribute(self.layer, target), True)
        if op == "call_module":
            name = self.ctx.submodule(self.layer, target, node)
            return _Expr(f"{name}({self.call_args(node.args, node.kwargs)})", True)
        if op == "call_method":
            return _Expr(f"{self.operand(node.args[0])}.{target}"
                         f"({self.call_args(node.args[1:], node.kwargs)})", True)
        if target is operator.getitem:
            return _Expr(f"{self.operand(node.args[0])}[{self.index(node.args[1])}]", True)
        if target is builtins.getattr:
            return _Expr(f"{self.operand(node.args[0])}.{node.args[1]}", True)
        if target in _INFIX and not node.kwargs:
            a, b = node.args
            return _Expr(f"{self.operand(a)} {_INFIX[target]} {self.operand(b)}", False)
        if target in _PREFIX:
            return _Expr(f"{_PREFIX[target]}{self.operand(node.args[0])}", False)
        return _Expr(f"{function_name(target)}({self.call_args(node.args, node.kwargs)})", True)

    def write(self, var: str) -> tuple[list[str], str]:
        lines: list[str] = []
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        for node, name in zip(placeholders, self.inputs, strict=True):
            self.exprs[node] = _Expr(name, True)
        result = "None"
        for node in self.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                result = self.arg(node.args[0])
                break
            expr = self.expression(node)
            user = next(iter(node.users)) if len(node.users) == 1 else None
            inline = node.op == "get_attr" or (user is not None and (
                len(expr.text) <= 60 or user.op == "output"))
            if inline:
                self.exprs[node] = expr
            else:
                self.count += 1
                name = f"{var}_{self.count}"
                lines.append(f"{name} = {expr.text}")
                self.exprs[node] = _Expr(name, True)
        return lines, result


# -- the emit context ----------------------------------------------------------------------------

def _identifier(text: str) -> str:
    text = re.sub(r"\W", "_", text).strip("_") or "m"
    return f"m_{text}" if text[0].isdigit() or keyword.iskeyword(text) else text


@dataclass
class EmitContext:
    """What a layer's `emit` may use: its index, input variable names (the previous output,
    then the referenced layers'), examples of them, and ways to register submodules, raw
    parameters and helper classes of the emitted Net."""

    net: Network
    index: int = 0
    inputs: list[str] = field(default_factory=list)
    examples: list[list] = field(default_factory=list)  # [batch-1 inputs, batch-2 inputs]
    init: list[str] = field(default_factory=list)
    helpers: dict[str, str] = field(default_factory=dict)
    key_map: dict[str, str] = field(default_factory=dict)  # darkcfg state_dict -> Net's
    tensor_names: dict[int, str] = field(default_factory=dict)  # id(param/buffer) -> Net key
    statements: list[str] = field(default_factory=list)
    _used: set = field(default_factory=set)
    _modules: dict = field(default_factory=dict)  # (layer id, path) -> self.name

    # names -------------------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        name = f"{_identifier(base)}_{self.index}"
        k = 1
        while name in self._used:
            k += 1
            name = f"{_identifier(base)}{k}_{self.index}"
        self._used.add(name)
        return name

    def _darkcfg_prefix(self, path: str) -> str:
        return f"layers.{self.index}." + (f"{path}." if path else "")

    def submodule(self, layer: nn.Module, path: str, node: fx.Node | None = None) -> str:
        """`self.<name>` for the torch module at `path` in `layer` (registered once)."""
        key = (id(layer), path)
        if key in self._modules:
            return self._modules[key]
        module = layer.get_submodule(path)
        ndim = None
        if node is not None and node.args and isinstance(node.args[0], fx.Node):
            vals = node.args[0].meta.get("vals", [])
            ndim = vals[0].dim() if vals and isinstance(vals[0], torch.Tensor) else None
        ctor = module.emitted(self, ndim) if hasattr(module, "emitted") else torch_constructor(
            module)
        parts = path.split(".")
        siblings = {p.split(".")[-1] for (lid, p) in self._modules if lid == id(layer)}
        base = parts[-1] if parts[-1] not in siblings else "_".join(parts)
        name = self._name(base)
        self.init.append(f"self.{name} = {ctor}")
        self._modules[key] = f"self.{name}"
        for pname, tensor in _state(module):
            self._record(tensor, f"{self._darkcfg_prefix(path)}{pname}", f"{name}.{pname}")
        return f"self.{name}"

    def attribute(self, layer: nn.Module, target: str) -> str:
        """`self.<...>` for a parameter or buffer the layer's forward reads directly."""
        owner_path, _, leaf = target.rpartition(".")
        key = (id(layer), owner_path)
        if owner_path and key in self._modules:
            return f"{self._modules[key]}.{leaf}"
        tensor = _attr(layer, target)
        if not isinstance(tensor, torch.Tensor):
            raise EmitError(f"attribute {target} is not a tensor")
        if id(tensor) in self.tensor_names and (id(layer), target) in self._modules:
            return self._modules[(id(layer), target)]
        name = self._name(target.replace(".", "_"))
        shape = ", ".join(str(s) for s in tensor.shape)
        shared = self.tensor_names.get(id(tensor))
        if shared is not None and isinstance(tensor, nn.Parameter):  # share_index: tie
            self.init.append(f"self.{name} = self.{shared}")
            self.key_map[f"layers.{self.index}.{target}"] = name
            self._modules[(id(layer), target)] = f"self.{name}"
            return f"self.{name}"
        if isinstance(tensor, nn.Parameter):
            grad = "" if tensor.requires_grad else ", requires_grad=False"
            self.init.append(f"self.{name} = nn.Parameter(torch.zeros({shape}){grad})")
        else:
            self.init.append(f'self.register_buffer("{name}", torch.zeros({shape}))')
        self._modules[(id(layer), target)] = f"self.{name}"
        self._record(tensor, f"layers.{self.index}.{target}", name)
        return f"self.{name}"

    def _record(self, tensor: torch.Tensor, darkcfg_key: str, net_key: str) -> None:
        self.key_map[darkcfg_key] = net_key
        first = self.tensor_names.get(id(tensor))
        if first is None:
            self.tensor_names[id(tensor)] = net_key
        elif isinstance(tensor, nn.Parameter):  # shared weights (share_index): tie them
            self.init.append(f"self.{net_key} = self.{first}")

    def helper(self, name: str, source: str) -> str:
        """Add a helper class or function at the top of the file (once per name)."""
        self.helpers.setdefault(name, source)
        return name

    def helper_class(self, module: nn.Module, name: str) -> str:
        """A parameterless module traced into `class <name>(nn.Module)` at the top of the file."""
        if name not in self.helpers:
            graph, prefix = trace(module, [[torch.randn(1, 3, 4, 4)], [torch.randn(2, 3, 4, 4)]])
            sub = EmitContext(self.net)
            lines, result = _LayerWriter(sub, graph, module, ["x"], prefix).write("y")
            if sub.init:
                raise EmitError(f"{type(module).__name__} holds state")
            body = "\n".join(f"        {line}" for line in lines + [f"return {result}"])
            self.helper(name, f"class {name}(nn.Module):\n    def forward(self, x):\n{body}\n")
        return name

    # the default emission ------------------------------------------------------------------------
    def traced(self, layer: nn.Module) -> str:
        """The layer's forward traced and written out (the default `Layer.emit`)."""
        graph, prefix = trace(layer, self.examples)
        lines, result = _LayerWriter(self, graph, layer, self.inputs, prefix).write(
            f"x{self.index}")
        self.statements.extend(lines)
        return result


def _strip_identity_modules(graph: fx.Graph, root: nn.Module) -> None:
    for node in list(graph.nodes):
        if node.op == "call_module" and isinstance(root.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


def _state(module: nn.Module):
    yield from module.named_parameters(recurse=True, remove_duplicate=False)
    yield from module.named_buffers(recurse=True, remove_duplicate=False)


def torch_constructor(module: nn.Module) -> str:
    """`nn.X(...)` that rebuilds a torch.nn module (its repr, checked to round-trip)."""
    if not _is_torch_module(module):
        raise EmitError(f"{type(module).__name__} is not a torch.nn module and has no "
                        "`emitted` method")
    text = "nn." + repr(module)
    if "\n" in text:
        raise EmitError(f"{type(module).__name__} has submodules")
    try:
        # on the meta device: only the repr and the shapes are compared, and initialising a
        # big convolution's weights took most of a large net's emit (0.9 s of cspx-p7's 4 s)
        with torch.device("meta"):
            rebuilt = eval(text, {"nn": nn, "torch": torch})  # noqa: S307 - our own repr text
    except Exception as exc:
        raise EmitError(f"cannot rebuild {text}: {exc}") from None
    if repr(rebuilt) != repr(module) or [t.shape for _, t in _state(rebuilt)] != \
            [t.shape for _, t in _state(module)]:
        raise EmitError(f"{text} does not rebuild the same module")
    return text


# -- the whole file -------------------------------------------------------------------------------

def _comment(text: str, indent: str) -> list[str]:
    """A comment wrapped to the line length."""
    room = LINE - len(indent) - 4  # a word longer than a line (a long anchors list) is cut
    words = [w[i:i + room] for w in text.split() for i in range(0, len(w), room)]
    lines, line = [], indent + "#"
    for w in words:
        if len(line) + 1 + len(w) > LINE and line != indent + "#":
            lines.append(line)
            line = indent + "#  "
        line += " " + w
    lines.append(line)
    return lines


def _section_text(block) -> str:
    options = " ".join(f"{k}={o.raw}" for k, o in block.options.items())
    where = f"line {block.line}: " if block.line else ""
    return f"{where}[{block.name}] {options}".rstrip()


def wrap(line: str, limit: int = LINE) -> list[str]:
    """Split an over-long `name = call(a, b, ...)` line at its top-level commas."""
    if len(line) <= limit:
        return [line]
    indent = len(line) - len(line.lstrip())
    open_at = next((i for i, ch in enumerate(line) if ch in "([{"), -1)
    if open_at < 0:
        return [line]
    if line[-1] not in ")]}" or _matching(line, open_at) != len(line) - 1:
        return _wrap_operators(line, limit)  # e.g. `f(a, b).detach() + (c - d)`
    parts = _split_top_level(line[open_at + 1:-1], lambda t, i: t[i] == ",", skip=1)
    pad = " " * (indent + 4)
    if len(pad) + len(", ".join(parts)) <= limit:
        return [line[:open_at + 1], pad + ", ".join(p for p in parts if p), " " * indent +
                line[-1]]
    out = [line[:open_at + 1]]
    for p in parts:
        if p:  # a part may itself be a long call or list: wrap it, then put its comma back
            inner_lines = wrap(f"{pad}{p}", limit - 1)  # room for the comma
            out.extend(inner_lines[:-1] + [inner_lines[-1] + ","])
    out.append(" " * indent + line[-1])
    return out


def _split_top_level(text: str, cut, skip: int) -> list[str]:
    """`text` cut where `cut(text, i)` holds outside every bracket; the `skip` characters at a
    cut are dropped (a comma, or the space before an operator)."""
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and i > start and cut(text, i):
            pieces.append(text[start:i].strip())
            start = i + skip
    pieces.append(text[start:].strip())
    return pieces


def _matching(line: str, open_at: int) -> int:
    """Index of the bracket that closes the one at `open_at`."""
    depth = 0
    for i in range(open_at, len(line)):
        if line[i] in "([{":
            depth += 1
        elif line[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _wrap_operators(line: str, limit: int) -> list[str]:
    """`name = a + b` over the limit as `name = (`, one operand per line (`+ b`), `)`; a
    method chain `name = f(a).view(b)` likewise, one `.call(...)` per line."""
    indent = len(line) - len(line.lstrip())
    head, eq, rhs = line.partition(" = ")
    if not eq:
        return [line]
    pieces = _split_top_level(rhs, lambda t, i: t[i:i + 3] in (" + ", " - ", " * ", " / "),
                              skip=1)
    if len(pieces) < 2:  # a method chain instead: break before each `.call(` after a `)`
        pieces = _split_top_level(rhs, lambda t, i: t[i] == "." and t[i - 1] in ")]", skip=0)
    if len(pieces) < 2:
        return [line]
    pad = " " * (indent + 4)
    out = [f"{head} = ("]
    for piece in pieces:
        out.extend(wrap(pad + piece, limit))
    return out + [" " * indent + ")"]


_LOADER = '''

def load_darknet_weights(net: Net, path: str) -> dict:
    """Load a Darknet .weights file (header, then float32 arrays in DARKNET_ORDER)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 16:
        raise ValueError(f"{path} holds {len(data)} bytes: too short for a .weights header")
    major, minor, revision = (int(v) for v in torch.frombuffer(bytearray(data[:12]),
                                                               dtype=torch.int32))
    wide = major * 10 + minor >= 2 and (not PJREDDIE or (major < 1000 and minor < 1000))
    header = 20 if wide else 16
    body = bytearray(data[header:])
    if len(body) % 4:
        raise ValueError(f"{path}: {len(body)} bytes after the header is no whole float32s")
    # torch.frombuffer refuses an empty buffer: a network without weights reads no floats
    floats = torch.frombuffer(body, dtype=torch.float32) if body else torch.zeros(0)
    transposed = major > 1000 or minor > 1000  # such files store [connected] matrices [in][out]
    state = net.state_dict()
    names = [name for layer in DARKNET_ORDER for name in layer]
    expected = sum(state[name.split(":")[0]].numel() for name in names)
    if floats.numel() != expected:
        raise ValueError(f"{path} holds {floats.numel()} floats, this network reads {expected}")
    pos = 0
    with torch.no_grad():
        for entry in names:
            name, _, kind = entry.partition(":")
            t = state[name]
            chunk = floats[pos:pos + t.numel()]
            if kind == "flipped" or (kind == "linear" and transposed):
                chunk = chunk.reshape(-1, t.shape[0]).t()
            t.copy_(chunk.reshape(t.shape))
            pos += t.numel()
    return {"version": (major, minor, revision), "floats": pos}


def _from_darkcfg_keys(state_dict, prefix, *args):
    """load_state_dict hook: darkcfg's keys (layers.<i>.<path>) become this file's names."""
    for key in [k for k in state_dict if k.startswith(prefix + "layers.")]:
        name = DARKCFG_KEYS.get(key[len(prefix):])
        if name is not None:
            state_dict[prefix + name] = state_dict.pop(key)
'''


@torch.no_grad()
def emit_module(net: Network, name: str = "") -> str:
    """The text of a self-contained PyTorch file that rebuilds `net` (see the module doc)."""
    training = net.training
    net.eval()
    try:
        return _emit(net, name)
    finally:
        net.train(training)


def _examples(net: Network) -> list[dict[int, torch.Tensor]]:
    from darkcfg.export.onnx import example_input

    outs = []
    for batch in (1, 2):  # recurrent layers take time_steps items per sequence
        x = example_input(net, batch * max(net.info.time_steps, 1))
        collected = net(x, collect=range(len(net.layers)))
        outs.append({-1: x, **collected})
    return outs


def _emit(net: Network, name: str) -> str:
    runs = _examples(net)
    ctx = EmitContext(net)
    layers: list[tuple[list[str], list[str]]] = []  # per layer: comment, statements
    for i, layer in enumerate(net.layers):
        meta = net.meta[i]
        sources = [i - 1] + list(meta.sources)
        ctx.index = i
        ctx.inputs = [f"x{j}" if j >= 0 else "x" for j in sources]
        ctx.examples = [[run[j] for j in sources] for run in runs]
        ctx.statements = []
        ctx.init.append(f"# {i}: [{meta.block.name}]")
        try:
            result = layer.emit(ctx)
        except Exception as exc:  # tracing fails in many ways; say which layer, and why
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise EmitError(f"layer {i} [{meta.block.name}] cannot be written as torch code: "
                            f"{type(exc).__name__}: {reason}") from None
        layers.append((_comment(f"{i}: {_section_text(meta.block)}", "        "),
                       ctx.statements + [f"x{i} = {result}"]))
    outputs = ", ".join(f"x{i}" for i in net.output_indices)
    # a layer whose output nothing reads (e.g. a route ignores the previous layer) is not
    # computed: the emitted forward has no dead assignments
    needed = set(re.findall(r"\bx\d+\b", outputs))
    live = [False] * len(layers)
    for i in reversed(range(len(layers))):
        if f"x{i}" in needed:
            live[i] = True
            needed |= set(re.findall(r"\bx\d+\b", " ".join(layers[i][1])))
    forward: list[str] = []
    for (comment, statements), alive in zip(layers, live, strict=True):
        forward.extend(comment)
        if not alive:
            forward.append("        # (not computed: no later layer or output reads it)")
            continue
        for line in statements:
            forward.extend(wrap("        " + line))
    order = [_darknet_entries(net, i, ctx) for i in range(len(net.layers))]
    return _file(net, name, ctx, forward, outputs, order)


def _darknet_entries(net: Network, i: int, ctx: EmitContext) -> list[str]:
    meta = net.meta[i]
    if meta.dontload:
        return []
    linear = {id(m.weight) for m in net.layers[i].modules() if isinstance(m, nn.Linear)}
    entries = []
    for t in net.layers[i].darknet_arrays(scales=not meta.dontloadscales):
        key = ctx.tensor_names.get(id(t))
        if key is not None:
            entries.append(key + (":linear" if id(t) in linear else ""))
            continue
        base = t._base
        if base is not None and id(base) in ctx.tensor_names and t.dim() == 2 \
                and t.shape[1] == base.shape[0]:
            entries.append(ctx.tensor_names[id(base)] + ":flipped")
            continue
        raise EmitError(f"layer {i}: a .weights array is not a tensor of the emitted Net")
    return entries


def _file(net: Network, name: str, ctx: EmitContext, forward: list[str], outputs: str,
          order: list[list[str]]) -> str:
    shape = net.input_shape
    size = f"{shape.w}x{shape.h}x{shape.c}" if shape.c * shape.h * shape.w else f"{shape.size}"
    # the cfg's file name goes into the docstring: escape what would end or break the literal
    # (`a""".cfg`, `we\Nird.cfg` made a file Python cannot read)
    shown = (name or "network").replace("\\", "\\\\").replace('"', '\\"')
    head = [f'"""{shown}: emitted by darkcfg (`darkcfg CFG --emit`),',
            f"input {size}.",
            "",
            "Net().forward(x) returns the output layers' tensors, in layer order, as darkcfg's",
            "Network does. Load Darknet weights with load_darknet_weights(net, path), or a darkcfg",
            "state_dict / checkpoint['model'] with net.load_state_dict(sd) (keys are renamed by",
            'DARKCFG_KEYS)."""', "", "import torch",
            "import torch.nn.functional as F  # noqa: F401", "from torch import nn", "",
            f"PJREDDIE = {net.info.flavor == 'pjreddie'}"]
    lines = head
    for source in ctx.helpers.values():
        lines += ["", "", source.rstrip()]
    lines += ["", "", "class Net(nn.Module):", "    def __init__(self):",
              "        super().__init__()"]
    for line in ctx.init:
        lines.extend(wrap("        " + line) if not line.startswith("#") else
                     ["        " + line])
    lines.append("        self._register_load_state_dict_pre_hook(_from_darkcfg_keys)")
    lines += ["", "    def forward(self, x):"]
    lines += forward
    lines.append(f"        return [{outputs}]")
    lines += ["", "", "# .weights arrays of each layer, in file order (:linear = a [connected] "
              "matrix, :flipped", "# = stored transposed)", "DARKNET_ORDER = ["]
    for entries in order:
        if entries:
            quoted = ", ".join(f'"{e}"' for e in entries) + ("," if len(entries) == 1 else "")
            wrapped = wrap(f"    ({quoted})", LINE - 1)  # room for the comma
            lines.extend(wrapped[:-1] + [wrapped[-1] + ","])
    lines += ["]", "", "# darkcfg state_dict key -> this file's", "DARKCFG_KEYS = {"]
    for k, v in ctx.key_map.items():
        lines.append(f'    "{k}": "{v}",')
    lines.append("}")
    text = "\n".join(lines) + _LOADER
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def write_module(net: Network, path: str | os.PathLike, name: str = "",
                 flag: str = "--emit") -> str:
    """Write emit_module(net) to `path` atomically; returns a one-line report. `flag`: the
    option that named `path`, for the errors."""
    from builders.atomic import atomic_write, check_writable
    from cfgparse import CfgError, Diagnostic

    path = Path(path)
    check_writable(path, flag)
    try:
        text = emit_module(net, name or path.stem)
    except EmitError as exc:
        raise CfgError(Diagnostic("E904", str(exc), str(path),
                                  hint="give the layer an `emit` method (darkcfg.export.emit)")) \
            from None
    atomic_write(path, text, parents=False, sweep=True)
    return f"wrote {path} ({len(text.splitlines())} lines, class Net)"
