"""The compiler's deployable outputs: ONNX (through torch.onnx's dynamo exporter, checked with
onnxruntime) and torch.export programs (.pt2, checked by reloading).

    from darkcfg.export.onnx import export
    report = export(net, "yolov4.onnx", opset=18, dynamic_batch=True)
    report.max_rel_error      # onnxruntime vs PyTorch on a random input

The graph's outputs are the Network's (the output layers' tensors, in layer order), named
`layer_<index>_<type>`; with `decode=True` they are the detection heads' decoded boxes,
objectness and class scores instead (`darkcfg.detect.decode.head_predictions`), NMS left to
the caller.

onnx, onnxscript and onnxruntime are optional (`pip install 'darkcfg[export]'`); torch.export
needs nothing beyond torch.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from builders.atomic import check_writable, is_torch_write_failure, staged_file, write_error
from builders.graph import Network
from cfgparse import CfgError, Diagnostic
from cfgparse.errors import printable

EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
DECODED_NAMES = ("boxes", "objectness", "class_scores")


class ExportError(CfgError):
    """An export that cannot be done or does not reproduce PyTorch's outputs (exit status 2)."""


def failed(message: str, path: str, hint: str = "", code: str = "E904") -> ExportError:
    """The error an export raises when the network cannot be written in that form (E904)."""
    return ExportError(Diagnostic(code, message, path, hint=hint))


#: What --int8 imports beyond EXPORT_PACKAGES (the quantizer's shape inference needs sympy)
INT8_MODULES = ("onnxruntime.quantization", "onnxruntime.quantization.shape_inference")


def require_onnx_packages(path: str = "<command line>", int8: bool = False) -> None:
    """Raise a clear error (no traceback) naming what to install when an ONNX package is
    missing, or installed but broken (its import fails: a wheel for another Python or a
    missing shared library); `int8`: onnxruntime's quantization tools too."""
    import importlib

    missing, broken = [], []
    for name in EXPORT_PACKAGES + (INT8_MODULES if int8 else ()):
        if any(name.startswith(f.split(" ")[0] + ".") for f in missing + broken):
            continue  # its package is already named
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            (missing if exc.name == name else broken).append(f"{name} ({exc})")
        except Exception as exc:  # noqa: BLE001 - any failure of the import itself
            broken.append(f"{name} ({type(exc).__name__}: {exc})")
    if missing or broken:
        what = "; ".join([*(f"{m.split(' ')[0]} is not installed" for m in missing),
                          *(f"{b} does not import" for b in broken)])
        raise failed(f"ONNX export needs onnx, onnxscript and onnxruntime: {what}", path,
                     hint="pip install 'darkcfg[export]' (or: pip install onnx onnxscript "
                     "onnxruntime); reinstall a package that does not import", code="E905")


def parse_input_size(text: str | None) -> list[str]:
    """`--input-size WxH` as [net] overrides (`width=W`, `height=H`)."""
    if text is None:
        return []
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise failed(f"--input-size must be WxH with positive integers, got '{text}'",
                     "<command line>", hint="e.g. --input-size 416x416")
    return [f"width={int(parts[0])}", f"height={int(parts[1])}"]


def output_names(net: Network, decode: bool = False) -> list[str]:
    """`layer_<index>_<type>` for each output of Network.forward, in its order."""
    if decode:
        return list(DECODED_NAMES)
    return [f"layer_{i}_{net.meta[i].type}" for i in net.output_indices]


class Exportable(nn.Module):
    """`net` with a tuple of outputs (what exporters take); `decode=True`: the detection heads'
    decoded (boxes, objectness, class_scores) instead."""

    def __init__(self, net: Network, decode: bool = False) -> None:
        super().__init__()
        self.net, self.decode = net, decode
        if decode:
            from darkcfg.detect.decode import head_predictions  # noqa: F401  (fail early when it is absent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.net(x)
        if not self.decode:
            return tuple(outputs)
        from darkcfg.detect.decode import head_predictions

        by_layer = dict(zip(self.net.output_indices, outputs, strict=True))
        return tuple(head_predictions(self.net, by_layer))


def example_input(net: Network, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A reproducible random input of the network's [net] size."""
    shape = net.input_shape
    dims = (shape.c, shape.h, shape.w) if shape.c * shape.h * shape.w else (shape.size,)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *dims, generator=g)


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (0 when both are zero), as the oracle tests measure it."""
    ours, ref = torch.as_tensor(ours).double(), torch.as_tensor(ref).double()
    if ours.shape != ref.shape:
        return float("inf")
    diff = float((ours - ref).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def max_rel_error(ours: Sequence, refs: Sequence) -> float:
    if len(ours) != len(refs):
        return float("inf")
    return max((rel_error(a, b) for a, b in zip(ours, refs, strict=True)), default=0.0)


def _dynamic_shapes(dynamic_batch: bool, net: Network | None = None):
    if not dynamic_batch:
        return None
    if net is not None and net.info.time_steps > 1:
        from darkcfg.lint.targets import RECURRENT

        if any(meta.type in RECURRENT for meta in net.meta):
            # the exporter proves the batch a multiple of time_steps and gives up (E904 after
            # pages of guard logs)
            raise failed(f"a recurrent network's batch is time_steps x sequences "
                         f"({net.info.time_steps} x N, step-major): it cannot be dynamic",
                         "<command line>", code="E100",
                         hint="export without --dynamic-batch (the batch is then time_steps "
                         "images) or with --set time_steps=1; --int8 needs a dynamic batch")
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


@contextlib.contextmanager
def quiet_exporter():
    """The exporters print progress and warnings meant for their developers, and log pages of
    guard tracebacks (torch._guards, at ERROR) before a failure darkcfg reports in one line."""
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        logging.disable(before)


def keeps_modes(export_function):
    """`export_function(net, ...)` exports in eval mode, then gives every module of `net` back
    the training flag it had (a caller's model in training stayed in eval mode: its dropout off,
    its batch-norm statistics frozen, silently)."""

    @functools.wraps(export_function)
    def exported(net, *args, **kwargs):
        modes = [(module, module.training) for module in net.modules()] \
            if isinstance(net, nn.Module) else []
        try:
            return export_function(net, *args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training

    return exported


@keeps_modes
def export_program(net: Network, x: torch.Tensor, dynamic_batch: bool = False,
                   decode: bool = False) -> torch.export.ExportedProgram:
    """A torch.export of the network in eval mode (batch dimension dynamic if asked;
    `x` must then have a batch of at least 2, so that the exporter does not specialise it)."""
    net.eval()
    module = Exportable(net, decode)
    dynamic = _dynamic_shapes(dynamic_batch, net)
    try:
        with quiet_exporter():
            # non-strict: tracing the Python itself is 2-4x faster than dynamo's strict capture
            # (yolov3 1.7 s against 6 s) and gave the same ONNX graph, node for node
            return torch.export.export(module, (x,), dynamic_shapes=dynamic, strict=False)
    except Exception as exc:  # the exporter's own errors are long; keep the first line
        raise exporter_failure("torch.export", exc, module, x, "<export>") from None


def exporter_failure(what: str, exc: Exception, module: nn.Module, x: torch.Tensor,
                     path: str) -> CfgError:
    """The error to show for an exporter's failure: the network's own located error when
    running it eagerly raises one (dynamo reports a layer's CfgError, e.g. a missing [region]
    tree= file, only as "Observed exception"), else the exporter's first line (E904)."""
    try:
        with torch.no_grad():
            module(x)
    except CfgError as located:
        return located
    except Exception:  # noqa: BLE001 - the exporter's message says more
        pass
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return failed(f"{what} failed: {type(exc).__name__}: {first}", path,
                  hint="report the cfg: every darkcfg layer is meant to export")


@dataclass
class ExportReport:
    """What an export wrote: the file, its format, the output names, the largest relative error
    of the check run against the network, the ONNX opset and metadata; `str()` is the line
    the command prints."""

    path: str
    format: str  # "onnx" or "pt2"
    outputs: list[str]
    max_rel_error: float
    opset: int | None = None
    metadata: dict = field(default_factory=dict)
    allowed: float = 0.0  # over the default only for XNOR nets (float32_sensitivity)

    def __str__(self) -> str:
        what = f"ONNX opset {self.opset}" if self.format == "onnx" else "torch.export program"
        check = "onnxruntime" if self.format == "onnx" else "the reloaded program"
        text = (f"wrote {self.path} ({what}; outputs {', '.join(self.outputs)}); "
                f"{check} vs PyTorch on a random input: max rel. error {self.max_rel_error:.2e}")
        if "nms_rule" in self.metadata:  # an image-to-boxes graph: which NMS it runs
            text += (f"; NMS in the graph: {self.metadata['nms_rule']} at {self.metadata['nms']}, "
                     f"thresh {self.metadata['thresh']}, equal to darkcfg's on its candidates")
        if self.allowed > 1e-4:
            text += (f" (XNOR layers take sign(x): PyTorch's own float32 and float64 outputs "
                     f"differ by {self.allowed / 2:.2e}, so up to {self.allowed:.2e} is allowed)")
        return text


def cfg_name(net: Network, name: str, out: Path) -> str:
    """The metadata's `cfg`: the name given (the command line's cfg file name), else the file
    the network was built from, else (cfg text) the output's stem."""
    if name:
        return name
    built_from = net.net_block.path
    return out.stem if built_from.startswith("<") else Path(built_from).name


def metadata(net: Network, name: str, decode: bool) -> dict[str, str]:
    from importlib import metadata as importlib_metadata

    try:
        version = importlib_metadata.version("darkcfg")
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    heads = [layer for layer in net.layers if hasattr(layer, "classes")]
    shape = net.input_shape
    return {
        "darkcfg_version": version,
        "cfg": printable(name),  # (protobuf takes only UTF-8: other bytes were a traceback)
        "input_size": f"{shape.w}x{shape.h}x{shape.c}" if shape.c * shape.h * shape.w
        else str(shape.size),
        "classes": str(heads[0].classes if heads else _classifier_outputs(net)),
        "flavor": net.info.flavor,
        "outputs": ",".join(output_names(net, decode)),
        "decoded": "1" if decode else "0",
    }


def _classifier_outputs(net: Network) -> int:
    last = net.shapes[net.output_indices[-1]] if net.output_indices else None
    return last.size if last is not None else 0


@contextlib.contextmanager
def write_failures(path: Path):
    """A full disk (or a quota) while the exporter writes the temp file: a located error; the
    file under the real name is untouched (the temp file is removed by the caller)."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc, started=True) from None
    except RuntimeError as exc:
        if is_torch_write_failure(exc):
            raise write_error(path, exc, started=True) from None
        raise


def check_output(path: str | os.PathLike, flag: str = "--export") -> Path:
    """Before any slow work: `path` can be written, and its folder exists (an export creates
    no folders: a mistyped folder is refused, not made)."""
    path = check_writable(path, flag)
    if not path.parent.is_dir():
        raise write_error(path, FileNotFoundError(errno.ENOENT, "No such file or directory"),
                          what=f"{flag} '{path}'")
    return path


@keeps_modes
def export_onnx(net: Network, path: str | os.PathLike, *, opset: int | None = None,
                dynamic_batch: bool = False, decode: bool = False, name: str = "",
                check: bool = True, tolerance: float = 1e-4,
                program: torch.export.ExportedProgram | None = None,
                flag: str = "--export") -> ExportReport:
    """Export to ONNX (dynamo exporter), add metadata, run it once in onnxruntime (CPU) on a
    random input and compare with PyTorch; an error over `tolerance` is an ExportError (the
    file is not kept)."""
    require_onnx_packages(str(path))
    path = Path(path)
    program, x = _program_and_input(net, program, dynamic_batch, decode)
    names = output_names(net, decode)
    try:
        with quiet_exporter():
            # the exporter writes its native opset; older ones are converted below
            onnx_program = torch.onnx.export(program, (x,), dynamo=True, input_names=["images"],
                                             output_names=names, verbose=False,
                                             **({} if opset is None else
                                                {"opset_version": max(opset, 18)}))
    except Exception as exc:
        raise exporter_failure("ONNX export", exc, Exportable(net, decode).eval(), x,
                               str(path)) from None
    meta = metadata(net, cfg_name(net, name, path), decode)
    onnx_program.model.metadata_props.update(meta)
    if dynamic_batch:
        name_batch_dim(onnx_program.model)
    native = onnx_program.model.opset_imports.get("", 18)
    with staged_file(path, flag) as tmp:
        with write_failures(path):
            onnx_program.save(tmp)
        opset_used = native
        if opset is not None and opset != native:
            opset_used = convert_opset(tmp, opset, str(path))
        err = check_onnx(tmp, net, x, decode) if check else 0.0
        allowed = tolerance
        if check and err > tolerance and binarizes(net):
            # sign(x) flips where float rounding moves x across 0: PyTorch's own float32 and
            # float64 outputs differ as much, so that is the yardstick
            allowed = max(tolerance, 2 * float32_sensitivity(net, x, decode))
        if err > allowed:
            raise failed(f"onnxruntime's outputs differ from PyTorch's: max rel. error {err:.2e} "
                         f"(allowed {allowed:g})", str(path),
                         hint="report the cfg; the file was not written")
    return ExportReport(str(path), "onnx", names, err, opset_used, meta, allowed)


def name_batch_dim(model) -> None:
    """Call the dynamic first dimension of the inputs and outputs `batch` (the exporter
    names it after its internal symbol, e.g. `s77`)."""
    import onnx_ir as ir

    for value in [*model.graph.inputs, *model.graph.outputs]:
        shape = value.shape
        if shape is not None and len(shape) and isinstance(shape[0], ir.SymbolicDim):
            value.shape = ir.Shape(["batch", *list(shape)[1:]])


# ops whose versions after 15 only accept more tensor types: the converter lacks some of their
# down-adapters (e.g. ConstantOfShape 20 -> 19), and the float graphs here need none
_TYPES_ONLY = {"ConstantOfShape", "Reshape", "Shape", "Size", "Identity"}
_REDUCE_18 = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSumSquare"}


def convert_opset(path: str | os.PathLike, opset: int, shown: str | None = None) -> int:
    """Rewrite the ONNX file at `path` to `opset` with onnx's version converter (`shown`: the
    name errors give, the output's rather than its temp file's).

    The converter has no 18 -> 17 adapter for Pad, although a Pad-18 without its optional
    `axes` input means exactly what Pad-13 does, nor some for ops whose new versions only
    widen their types: such nodes are set aside under a private domain while the rest is
    converted, then put back (onnx's checker and onnxruntime then check the result)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    parked = []
    if opset >= 15:
        for node in model.graph.node:
            if node.domain == "" and (node.op_type in _TYPES_ONLY or (
                    node.op_type == "Pad" and len(node.input) <= 3)):
                node.domain = "darkcfg.parked"
                parked.append(node)
        if parked:
            model.opset_import.append(onnx.helper.make_opsetid("darkcfg.parked", 1))
    try:
        with quiet_exporter():
            converted = version_converter.convert_version(model, opset)
    except Exception as exc:
        raise failed(f"cannot convert the ONNX graph to opset {opset}: {exc}",
                     shown or str(path),
                     hint="use the exporter's opset (leave out --opset) or --opset 18") from None
    for node in converted.graph.node:
        if node.domain == "darkcfg.parked":
            node.domain = ""
        elif opset < 18 and node.op_type in _REDUCE_18 and node.domain == "":
            # the converter moves `axes` to an attribute but leaves this opset-18 attribute
            # behind; its default (0) is the older opsets' only behaviour
            kept = [a for a in node.attribute
                    if not (a.name == "noop_with_empty_axes" and a.i == 0)]
            del node.attribute[:]
            node.attribute.extend(kept)
    kept = [o for o in converted.opset_import if o.domain != "darkcfg.parked"]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(path))
    return opset


def onnx_session(path: str | os.PathLike | bytes, threads: int | None = None):
    """An onnxruntime CPU session for a model file (or a serialized model's bytes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor) -> list[torch.Tensor]:
    name = session.get_inputs()[0].name
    return [torch.from_numpy(y) for y in session.run(None, {name: x.numpy()})]


@torch.no_grad()
def reference_outputs(net: Network, x: torch.Tensor, decode: bool = False) -> list[torch.Tensor]:
    """PyTorch's outputs through the plain modules: what the exporters trace. The CPU fast path
    (folded batch-norm, oneDNN-fused activations) is ~1e-6 away and tested on its own."""
    net.eval()
    fast = getattr(net, "fast_inference", True)
    net.use_fast_inference(False)
    try:
        return list(Exportable(net, decode)(x))
    finally:
        net.use_fast_inference(fast)


def binarizes(net: Network) -> bool:
    """Whether a layer takes sign(x) of its input ([convolutional] xnor=1)."""
    return any(getattr(layer, "xnor", False) for layer in net.layers)


def float32_sensitivity(net: Network, x: torch.Tensor, decode: bool = False) -> float:
    """Max rel. error of PyTorch's float32 outputs against the same network in float64: ~1e-7
    for most nets, but up to the whole value for XNOR nets, where rounding flips signs."""
    ref32 = reference_outputs(net, x, decode)
    try:
        ref64 = reference_outputs(net.double(), x.double(), decode)
    finally:
        net.float()  # float32 -> float64 -> float32 is exact: the weights are unchanged
    return max_rel_error(ref32, ref64)


def check_onnx(path: str | os.PathLike, net: Network, x: torch.Tensor,
               decode: bool = False) -> float:
    """Max rel. error of onnxruntime's outputs against PyTorch's on `x`."""
    return max_rel_error(run_onnx(onnx_session(path), x), reference_outputs(net, x, decode))


def _program_and_input(net: Network, program, dynamic_batch: bool, decode: bool):
    """The program to save (exported here unless given) and the input to check it with: the
    size it was exported for (recurrent nets take time_steps x 2 images)."""
    if program is not None and getattr(program, "example_inputs", None):
        return program, program.example_inputs[0][0]
    x = example_input(net, (2 if dynamic_batch else 1) * max(net.info.time_steps, 1))
    return program or export_program(net, x, dynamic_batch, decode), x


@keeps_modes
def export_pt2(net: Network, path: str | os.PathLike, *, dynamic_batch: bool = False,
               decode: bool = False, check: bool = True, tolerance: float = 1e-6,
               program: torch.export.ExportedProgram | None = None,
               flag: str = "--export") -> ExportReport:
    """Save a torch.export ExportedProgram; reload it and compare with the network."""
    path = Path(path)
    program, x = _program_and_input(net, program, dynamic_batch, decode)
    with staged_file(path, flag) as tmp:
        buffer = io.BytesIO()  # the zip writer aborts the process when its file fills a disk
        torch.export.save(program, buffer)
        with write_failures(path), open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
        err = 0.0
        if check:
            with torch.no_grad():
                got = torch.export.load(tmp).module()(x)
            err = max_rel_error(list(got), reference_outputs(net, x, decode))
            if err > tolerance:
                raise failed(f"the reloaded program's outputs differ from PyTorch's: max rel. "
                             f"error {err:.2e}", str(path))
    return ExportReport(str(path), "pt2", output_names(net, decode), err)


def export(net: Network, path: str | os.PathLike, *, opset: int | None = None,
           dynamic_batch: bool = False, decode: bool = False, name: str = "",
           flag: str = "--export") -> ExportReport:
    """`.onnx` -> export_onnx, `.pt2` -> export_pt2 (by the file's suffix). `flag`: the option
    that named `path`, for the errors. The network is exported in eval mode and left in the
    mode each of its modules had."""
    suffix = export_format(path)
    check_output(path, flag)  # before the (slow) export
    if suffix == ".onnx":
        return export_onnx(net, path, opset=opset, dynamic_batch=dynamic_batch, decode=decode,
                           name=name, flag=flag)
    if opset is not None:
        raise failed("--opset applies to ONNX files only", str(path),
                     hint="drop --opset, or write a .onnx file", code="E100")
    return export_pt2(net, path, dynamic_batch=dynamic_batch, decode=decode, flag=flag)


def export_format(path: str | os.PathLike) -> str:
    """'.onnx' or '.pt2', from the file's suffix; anything else is an error (E904)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".onnx", ".pt2"):
        raise failed(f"cannot tell the export format of '{path}'", str(path),
                     hint="name the file model.onnx (ONNX) or model.pt2 (torch.export)")
    return suffix
