"""Network: the only loop over blocks. Builds each layer through the registry, propagates shapes,
and runs a generic forward that keeps only the outputs later layers (or the caller) need."""

from __future__ import annotations

import contextlib
import gc
import math
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from cfgparse import Block, CfgError, Diagnostic, parse, schema
from cfgparse.errors import WARNING
from cfgparse.rules import input_size_rule

from .conv import fast_path_runs
from .layer import Layer
from .plan import plan_liveness
from .registry import BuildContext, NetInfo, Shape, builder_for


@dataclass(frozen=True)
class LayerInfo:
    """Per-layer facts the graph keeps beside the module (for weights I/O, summary, training)."""

    index: int
    type: str
    block: Block
    input: Shape
    output: Shape
    sources: tuple[int, ...]
    stopbackward: int = 0
    dontload: bool = False
    dontloadscales: bool = False
    lr_scale: float = 1.0


def net_info(net: Block, flavor: str = "alexeyab") -> NetInfo:
    problem = input_size_rule(net)
    if problem is not None:
        raise CfgError(problem)
    width, height, channels = net.int("width"), net.int("height"), net.int("channels")
    image = width * height * channels
    inputs = net.int("inputs", image or None)
    return NetInfo(width, height, channels, inputs, max(net.int("batch"), 1), flavor,
                   net.int("time_steps"))


@contextlib.contextmanager
def collector_paused():
    """The cyclic garbage collector off for a block that makes many objects and no reference
    cycles: each of its full passes walks every object made so far. Building: it made building
    superlinear in the layer count; detect's printed objects: 3/4 of their time (0.27 s of
    0.35 s for 39k objects)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _too_large(block: Block, given: Shape, exc: Exception) -> CfgError:
    """E401 for a layer whose tensors torch cannot even describe (their element count overflows
    64 bits, e.g. `size=2147483647`, or an input that large), at its largest size value, not a
    traceback."""
    sizes = [o for o in block.options.values()
             if isinstance(o.value, int) and not isinstance(o.value, bool) and o.value > 1]
    key = max(sizes, key=lambda o: o.value).key if sizes else None
    return block.error(
        "E401", f"[{block.name}] is too large to build: its tensors would need more than "
        f"2^63 bytes (its input: {given.c}x{given.h}x{given.w}; "
        f"{str(exc).splitlines()[0][:120]})", key,
        hint="use smaller size/filters/output values here, or in the layers before that make "
        "its input this large")


class InputError(ValueError, RuntimeError):
    """`net(x)` was given an input the network cannot take: not (N, C, H, W) with the cfg's C,
    not floating point or not its weights' dtype, or a height and width its routes, pools or
    heads cannot run at. The message names the shape (or dtype) the network expects. A
    ValueError, and a RuntimeError as torch's own errors for these inputs were, so code catching
    either still does."""


def _where(exc: BaseException, index: int, block: Block) -> None:
    """Adds "while building layer N [name] (path:line)" to an error a builder raised: a
    plugin's bug then names its section, not only a line of the plugin."""
    if hasattr(exc, "add_note"):  # Python 3.11+ (3.10 shows the error without it)
        exc.add_note(f"while building layer {index} [{block.name}] ({block.path}:{block.line})")


def _layer_name(layer_info: LayerInfo) -> str:
    return f"layer {layer_info.index} [{layer_info.block.name}]"


class Network(nn.Module):
    """A cfg's layers as one nn.Module (what `build` returns). `layers` holds one Layer per
    section after [net], `meta` their LayerInfo (type, block, input and output Shape, the
    layers they read), `input_shape` and `expected_input()` what `forward` takes,
    `output_indices` which layers `forward` returns, `net_block` the [net] block and `warnings`
    the build's W3xx diagnostics. `forward(x, collect=None)`; .weights I/O is
    builders.weights, the layer table builders.summary."""

    # the fast path's fusions (`_plan`); empty for a network pickled before they existed
    _adds_next: frozenset[int] = frozenset()
    _writes_into: Mapping[int, tuple[int, int]] = MappingProxyType({})

    def __init__(self, blocks: Sequence[Block], *, flavor: str = "alexeyab",
                 device: torch.device | str | None = None):
        super().__init__()
        if not blocks or blocks[0].type != "net":
            where = blocks[0].diagnostic("E107", "the first section must be [net]") if blocks \
                else Diagnostic("E100", "no sections to build")
            raise CfgError(where)
        self.net_block: Block = blocks[0]
        self.info = net_info(self.net_block, flavor)
        first = (Shape(self.info.channels, self.info.height, self.info.width, self.info.inputs)
                 if self.info.width * self.info.height * self.info.channels
                 else Shape.flat(self.info.inputs))
        self.input_shape = first
        self.layers = nn.ModuleList()
        self.meta: list[LayerInfo] = []
        self.warnings: list[Diagnostic] = []
        shapes: list[Shape] = []
        types: list[str] = []  # grows with the layers: each builder sees 0..index-1 (linear)
        on_meta = device is not None and torch.device(device).type == "meta"
        with torch.device(device) if device is not None else contextlib.nullcontext(), \
                _skip_torch_init() if on_meta else contextlib.nullcontext(), collector_paused():
            for index, block in enumerate(blocks[1:]):
                ctx = BuildContext(index, shapes, shapes[-1] if shapes else first, self.info,
                                   types, layers=self.layers,
                                   previous=blocks[index] if index else None)
                try:
                    built = builder_for(block)(block, ctx)
                except CfgError:
                    raise
                except Exception as exc:  # a plugin's builder is user code: name its section
                    # torch's overflow: a RuntimeError, or a TypeError for a size over 2^63
                    # (a [connected] after a `padding=2147483647` pool)
                    if isinstance(exc, (RuntimeError, TypeError)) and \
                            "overflow" in str(exc).lower():
                        raise _too_large(block, ctx.input, exc) from None
                    _where(exc, index, block)
                    raise
                # a plugin's builder is user code: say what it returned, not "cannot unpack"
                module, shape = built if isinstance(built, tuple) and len(built) == 2 else \
                    (built, None)
                if not isinstance(module, Layer) or not isinstance(shape, Shape):
                    got = ", ".join(type(v).__name__ for v in (
                        built if isinstance(built, tuple) else (built,)))
                    raise TypeError(f"the builder of [{block.type}] returned ({got}); a builder "
                                    "returns (Layer, Shape), e.g. `return layer, ctx.input`")
                meta = LayerInfo(
                    index, block.type, block, ctx.input, shape, tuple(ctx.sources),
                    stopbackward=block.int("stopbackward"), dontload=block.bool("dontload"),
                    dontloadscales=block.bool("dontloadscales"),
                    lr_scale=block.float("learning_rate"),
                )
                block.mark_read(*schema.COMMON)  # every layer's keys: the graph's, not a builder's
                self.warnings.extend(
                    block.diagnostic("W301", f"darkcfg ignores '{o.key}' in [{block.name}]",
                                     o.key, severity=WARNING, on_value=False,
                                     hint="remove it, or see the README for supported keys")
                    for o in block.unread())
                self.warnings.extend(  # keys a head's loss reads but does not honour
                    block.diagnostic("W310", (f"'{key}' in [{block.name}] is read, not honoured: "
                                              if key else f"[{block.name}]: ") + why,
                                     key, severity=WARNING, on_value=False,
                                     hint="remove it, or see the README (detection losses)")
                    for key, why in getattr(module, "unhonoured_keys", ()))
                self.layers.append(module)
                self.meta.append(meta)
                shapes.append(shape)
                types.append(block.type)
        self.shapes = shapes
        n = len(self.layers)
        outputs = [i for i, m in enumerate(self.layers) if m.is_output]
        if n and n - 1 not in outputs:
            outputs.append(n - 1)
        self.output_indices: list[int] = outputs
        self._sources = [m.sources for m in self.meta]
        self._plan(outputs)
        self.fast_inference = True
        self.register_forward_pre_hook(_compiled_size_check, with_kwargs=True)

    def use_fast_inference(self, enabled: bool = True) -> Network:
        """Select (default) or turn off the inference fast path that eval mode without autograd
        takes on CPU (builders.conv `inference_forward`: folded batch-norm, fused activations,
        channels-last). Off, every layer runs its plain modules, as in training."""
        self.fast_inference = enabled
        for module in self.modules():
            if module is not self and hasattr(module, "fast_inference"):
                module.fast_inference = enabled
        return self

    def _plan(self, keep: Iterable[int]) -> None:
        """Which outputs to hold on to, and when each can be dropped (builders.plan, which the
        memory estimate's peak uses too)."""
        self.liveness = plan_liveness(self._sources, keep)
        self._store, self._free_after = self.liveness.store, self.liveness.free_after
        # the fast path's fused residuals: layer i adds the [shortcut] after it in its kernel
        # (one pass over memory less), where nothing else reads layer i's own output
        self._adds_next = frozenset(
            i for i in range(len(self.layers) - 1)
            if self.layers[i].fusable and self.layers[i + 1].adds_only
            and i not in self._store)
        # and its concatenations in place: each layer a [route] concatenates writes its output
        # into its channels of the route's output (other readers get that view)
        writes_into: dict[int, tuple[int, int]] = {}  # layer -> (route, its first channel)
        for r, layer in enumerate(self.layers):
            srcs = self._sources[r]
            if layer.concatenates is None or len(set(srcs)) != len(srcs) or not all(
                    self.layers[j].fusable and j not in writes_into for j in srcs):
                continue
            first = 0
            for j, channels in zip(srcs, layer.concatenates, strict=True):
                writes_into[j] = (r, first)
                first += channels
        self._writes_into = writes_into

    def expected_input(self) -> str:
        """The input `forward` takes, as text: '(N, 3, 416, 416)' (H and W: the cfg's size; other
        sizes run where every layer can take them)."""
        s = self.input_shape
        return f"(N, {s.c}, {s.h}, {s.w})" if s.c * s.h * s.w else f"(N, {s.size})"

    def _check_input(self, x) -> None:
        """InputError (TypeError for a non-tensor) naming the expected shape, before a layer
        deep inside fails on it with torch's message."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the network takes a torch.Tensor of shape {self.expected_input()}, "
                            f"not {type(x).__module__}.{type(x).__qualname__}"
                            + (" (torch.from_numpy(x))" if hasattr(x, "__array__") else ""))
        s = self.input_shape
        if s.c * s.h * s.w and (x.dim() != 4 or x.shape[1] != s.c):
            hint = ""
            if x.dim() == 3 and x.shape[0] == s.c:
                hint = "; add the batch dimension: x[None] or x.unsqueeze(0)"
            elif x.dim() == 4 and x.shape[3] == s.c:
                hint = "; channels last? x.permute(0, 3, 1, 2)"
            raise InputError(f"the network takes input of shape {self.expected_input()} "
                             f"(batch, channels, height, width), got {tuple(x.shape)}{hint}")
        if not s.c * s.h * s.w and (x.dim() == 0 or math.prod(x.shape[1:]) != s.size):
            raise InputError(f"the network takes input of shape {self.expected_input()} "
                             f"([net] inputs={s.size} per item), got {tuple(x.shape)}"
                             + ("; add the batch dimension: x[None]"
                                if x.dim() >= 1 and x.numel() == s.size else ""))
        if not x.is_floating_point():
            raise InputError(f"the network takes floating-point input, got {x.dtype}"
                             + (" (image bytes: x.float() / 255)" if x.dtype == torch.uint8
                                else " (x.float())"))

    def _check_collect(self, wanted: list[int]) -> None:
        n = len(self.layers)
        for i in wanted:
            try:
                inside = 0 <= operator.index(i) < n
            except TypeError:
                inside = False
            if not inside:
                raise IndexError(f"collect={wanted}: {i!r} is not a layer index of this network "
                                 f"(0..{n - 1}, counted from 0 as in the summary; the last "
                                 f"layer is len(net.layers) - 1)")

    def _input_dtype_error(self, x: torch.Tensor, exc: RuntimeError) -> InputError | None:
        """A layer failed on a floating-point input of another dtype than the weights' (numpy's
        float64, a half tensor): say which dtype the network takes, or None. Asked only after
        torch failed, so autocast and dtype-free layers are never refused."""
        want = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        if want is None or x.dtype == want or "type" not in str(exc).lower():
            return None
        fix = "x.float()" if want == torch.float32 else f"x.to({want})"
        return InputError(f"the network takes {want} input (its weights' dtype), got {x.dtype} "
                          f"({fix})")

    def _input_size_error(self, x: torch.Tensor, i: int, exc: RuntimeError) -> InputError | None:
        """A layer failed on an input of another height or width than the cfg's: say so (the
        usual cause: a size the routes, pools or heads cannot take), or None to let the
        original error through."""
        s = self.input_shape
        if isinstance(exc, (InputError, torch.OutOfMemoryError)) or not s.c * s.h * s.w or \
                x.dim() != 4 or tuple(x.shape[2:]) == (s.h, s.w):
            return None
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else \
            type(exc).__name__
        if "size" not in first.lower() and "shape" not in first.lower():
            return None  # not about sizes (e.g. a CUDA error in multi-scale training): as it is
        return InputError(
            f"{_layer_name(self.meta[i])} cannot run on a {x.shape[3]}x{x.shape[2]} (WxH) input: "
            f"{first}. The cfg's input is {self.expected_input()}: use that size, or another "
            "that every stride of the network divides")

    def _size_error(self, x: torch.Tensor, collect) -> InputError | None:
        """The InputError `forward` raises for x's size, found by running it on the meta device
        (shapes only, no values; once per batch and size): None where it runs, or fails for
        a reason other than its size (as under torch.compile before: the compiler says)."""
        if collect is not None and not hasattr(collect, "__len__"):
            return None  # (an iterator: reading it here would empty it for forward)
        key = (tuple(x.shape), None if collect is None else tuple(collect))
        tried = self.__dict__.setdefault("_sizes_tried", {})
        if key not in tried:
            from torch.func import functional_call

            tried[key] = None  # (the call below comes back through the hook)
            state = {name: torch.empty_like(t, device="meta") for name, t in
                     [*self.named_parameters(), *self.named_buffers()]}
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    functional_call(self, state, (torch.empty_like(x, device="meta"),),
                                    {"collect": collect}, strict=True)
            except InputError as exc:
                tried[key] = str(exc)
            except Exception:  # noqa: BLE001 (not the size's fault: the compiled run says)
                pass
        return InputError(tried[key]) if tried[key] is not None else None

    def forward(self, x: torch.Tensor, collect: Iterable[int] | None = None):
        """Run the network on x of shape (N, C, H, W) (`expected_input()`: the cfg's channels;
        H and W the cfg's or another size every layer can take; (N, inputs) for a flat [net]
        inputs=). Returns the output layers' tensors (a list, in layer order); with `collect`,
        a dict {index: tensor} of those layers instead (indices from 0, as in the summary).
        An input the network cannot take raises InputError naming the expected shape."""
        self._check_input(x)
        wanted = None if collect is None else list(collect)
        if wanted is not None:
            self._check_collect(wanted)
        store = self._store if wanted is None else self._store | set(wanted)
        # with `collect`, layers after the last wanted one are not run (e.g. the training step
        # asks for the loss layer's input: the [softmax]/[cost] after it would be wasted work)
        stop = len(self.layers) - 1 if wanted is None else max(wanted, default=-1)
        saved: dict[int, torch.Tensor] = {}
        # fast path: convolutions hand channels-last tensors on; a layer that may not take them
        # gets NCHW ones (a no-op for tensors that already are)
        fast = fast_path_runs(self, x)
        fusing = fast and wanted is None
        adds_next = self._adds_next if fusing else frozenset()
        writes_into = self._writes_into if fusing else {}
        done = -1  # a [shortcut] its layer before already added
        given = x
        concatenated: dict[int, torch.Tensor] = {}  # [route] -> its output, filled in place
        i = 0
        try:
            for i, layer in enumerate(self.layers):
                if i > stop:
                    break
                if i in writes_into:
                    x = self._into_concatenation(i, layer, x, concatenated)
                elif i in adds_next:
                    x = layer(x, residual=saved[self._sources[i + 1][0]])
                    done = i + 1
                elif i in concatenated:
                    x = concatenated.pop(i)
                elif i != done:
                    srcs = self._sources[i]
                    refs = [saved[j] for j in srcs]
                    if fast and not layer.channels_last_ok:
                        x, refs = x.contiguous(), [r.contiguous() for r in refs]
                    x = layer(x, *refs) if srcs else layer(x)
                if i in store:
                    saved[i] = x
                for j in self._free_after[i]:
                    if wanted is None or j not in wanted:
                        del saved[j]
        except RuntimeError as exc:
            error = self._input_dtype_error(given, exc) or self._input_size_error(given, i, exc)
            if error is None:
                raise
            raise error from exc
        if wanted is not None:
            return {i: saved[i].contiguous() if fast else saved[i] for i in wanted}
        return [saved[i].contiguous() if fast else saved[i] for i in self.output_indices]

    def _into_concatenation(self, i: int, layer: Layer, x: torch.Tensor,
                            concatenated: dict[int, torch.Tensor]) -> torch.Tensor:
        """Runs layer i, which writes its output into its channels of the [route] output that
        `concatenated` holds (made by the first of the route's layers to run); returns that
        view."""
        route, first = self._writes_into[i]
        n, _, h, w = x.shape
        h, w = layer.output_size(h, w)
        whole = concatenated.get(route)
        if whole is None:
            whole = concatenated[route] = torch.empty(
                n, self.shapes[route].c, h, w, memory_format=torch.channels_last)
        elif tuple(whole.shape[2:]) != (h, w):  # an input size the route's layers disagree on:
            # torch.cat's error, which forward turns into the InputError naming the size
            raise RuntimeError(f"Sizes of tensors must match except in dimension 1: the [route] "
                               f"(layer {route}) has {whole.shape[3]}x{whole.shape[2]} (WxH), "
                               f"this layer gives {w}x{h}")
        return layer(x, out=whole[:, first:first + self.shapes[i].c])

    # -- conveniences ---------------------------------------------------------------------------
    @property
    def blocks(self) -> list[Block]:
        """The cfg's blocks, [net] first, as built."""
        return [self.net_block] + [m.block for m in self.meta]

    @property
    def loss_layers(self) -> list[int]:
        """Every layer whose `loss` trains this network (layer i's loss reads layer i-1's output),
        in layer order; the network's loss is their sum (darkcfg.train.tasks). Empty: nothing to
        train."""
        return [i for i, layer in enumerate(self.layers) if layer.takes_loss]

    def num_weight_floats(self) -> int:
        """The floats a .weights file holds for this network (after its header)."""
        return sum(t.numel() for layer in self.layers for t in layer.darknet_arrays())

    def bflops(self) -> float:
        """Darknet's BFLOPs of one forward pass of one image at the cfg's size."""
        return sum(float(layer.bflops) for layer in self.layers)


def _compiled_size_check(net: Network, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: under torch.compile the InputError of a size the layers cannot take
    (forward catches torch's error from the layer that fails) never came: the compiler fails
    first, tracing, with its own TorchRuntimeError. There a size other than the cfg's is tried
    first, eagerly on the meta device (builders.compiled), outside the graph: torch runs a
    module's hooks before the frame it compiles, and the compiler never traces this one's
    (`_untraced`), so the graph is the same (fullgraph=True too) and a compiled call costs a
    comparison. Inline checks only: a function of ours it called would be a frame the compiler
    traces."""
    if torch.compiler.is_compiling():
        return  # traced: inlined by torch.export (strict), or a torch without the skip
    if _compile_callback is None or _compile_callback() in (None, False):
        return  # eager (torch's own test for a compiled region): forward says it itself
    x = args[0] if args else kwargs.get("x")
    s = net.input_shape
    if isinstance(x, torch.Tensor) and s.c * s.h * s.w > 0 and x.dim() == 4 and \
            x.shape[1] == s.c and tuple(x.shape[2:]) != (s.h, s.w) and x.is_floating_point():
        from .compiled import check_size

        check_size(net, x, args[1] if len(args) > 1 else kwargs.get("collect"))


def _untraced(function) -> None:
    """Have the compiler run `function`'s frame as it is, never traced (what it calls is still
    seen), through torch's C hooks: `torch._dynamo`'s own helpers would load it (~2 s) at
    import. Private torch API: where it is missing the function is traced (and returns)."""
    try:
        from torch._C._dynamo.eval_frame import (
            _FrameAction,
            _FrameExecStrategy,
            set_code_exec_strategy,
        )
        set_code_exec_strategy(function.__code__,
                               _FrameExecStrategy(_FrameAction.SKIP, _FrameAction.DEFAULT))
    except Exception:  # noqa: BLE001 (an older or newer torch: the check is lost, not the import)
        return


try:  # (private, as torch.compiler has no public test for "in a compiled call")
    from torch._C._dynamo.eval_frame import get_eval_frame_callback as _compile_callback
except Exception:  # noqa: BLE001 (pragma: no cover)
    _compile_callback = None
_untraced(_compiled_size_check)


@contextlib.contextmanager
def _skip_torch_init():
    """Meta tensors hold no values, so torch's own reset_parameters only cost time (~40% of a
    corpus-wide meta build). Skipped for torch's modules only, during a meta build."""
    classes = [nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.Linear]
    saved = [(cls, cls.__dict__["reset_parameters"]) for cls in classes
             if "reset_parameters" in cls.__dict__]
    for cls, _ in saved:
        cls.reset_parameters = _no_reset
    try:
        yield
    finally:
        for cls, method in saved:
            cls.reset_parameters = method


def _no_reset(self) -> None:
    return None


def checked_device(device: torch.device | str, option: str = "device",
                   meta: bool = True) -> torch.device:
    """`device` as a torch.device this machine has (cpu, cuda, cuda:N, mps; `meta` when `meta`),
    else an E100 located at `option` ("--device" for the command line, "device" for build()):
    torch would fail later, deep inside, with its own error. "cuda" stays unnumbered."""
    cli = option.startswith("-")

    def spelled(value: str) -> str:
        return f"{option} {value}" if cli else f"{option}={value!r}"

    leave_out = "or leave it out for the best available" if cli else "or leave it out for the CPU"
    usable = (f"use {option} cpu, cuda, cuda:N or mps" if cli else
              f"use {option}='cpu', 'cuda', 'cuda:N' or 'mps'") + f", {leave_out}"
    on_cpu = f"use {spelled('cpu')} (or leave it out)"
    name = str(device)
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise CfgError(Diagnostic("E100", f"unknown device {name!r}", option,
                                  hint=usable)) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()  # 0 without a driver; initialises nothing
        if count == 0:
            raise CfgError(Diagnostic("E100", f"{spelled(name)}: this machine has no CUDA GPU "
                                      "(or no driver for it)", option, hint=on_cpu))
        if device.index is not None and device.index >= count:
            raise CfgError(Diagnostic("E100", f"{spelled(name)}: this machine has {count} CUDA "
                                      f"GPU(s), numbered 0..{count - 1}", option, hint=usable))
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CfgError(Diagnostic("E100", f"{spelled('mps')}: Apple's MPS is not available "
                                      "here", option, hint=on_cpu))
        return device
    if device.type != "cpu" and not (meta and device.type == "meta"):
        raise CfgError(Diagnostic("E100", f"{spelled(name)}: darkcfg runs on cpu, cuda or mps"
                                  + (" (and builds on meta)" if meta else ""), option,
                                  hint=usable))
    return device


def build(source: str | os.PathLike | Sequence[Block], *, device: torch.device | str | None = None,
          flavor: str = "alexeyab") -> Network:
    """A Network from a cfg/yaml path (str or Path), cfg text or bytes, or blocks (parsed, from
    YAML or a preset). A bad path or cfg raises cfgparse.CfgError (its str() the located
    diagnostic); `device="meta"` builds shapes only, allocating nothing; a device this machine
    does not have (cuda without a GPU, cuda:7 with fewer, mps off Apple) is CfgError E100.

    `flavor="pjreddie"` selects the few formulas where pjreddie's Darknet differs from AlexeyAB's
    (BN epsilon, [batchnorm] weights, [region] layout, ...; pjreddie-only keys, marked [pj] in
    cfgparse.schema)."""
    if flavor not in ("alexeyab", "pjreddie"):
        raise ValueError(f"flavor must be 'alexeyab' or 'pjreddie', not {flavor!r}")
    if device is not None:
        device = checked_device(device)
    blocks = source if isinstance(source, Sequence) and \
        not isinstance(source, (str, bytes, bytearray)) else \
        parse(source, flavor=flavor)
    return Network(list(blocks), flavor=flavor, device=device)
