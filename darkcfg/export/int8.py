"""Calibrated INT8 ONNX: static QDQ quantization with onnxruntime's tools, and what it costs.

    from darkcfg.export.int8 import Int8Options, export_int8, open_int8_data
    data = open_int8_data(net, cfg, source=None, seed=0, calib_images=64)
    report = export_int8(net, "m.int8.onnx", data, Int8Options(keep_fp32="auto"))
    print(report)      # mAP@0.5 (detectors) or top-1 (classifiers), fp32 vs INT8, latency

How: the fp32 graph is exported as by `--export` (dynamic batch), its activation ranges are
calibrated once (MinMax) on N images of the source's *training* split, each preprocessed the way
the network sees it at inference (`letterbox_image` with [net] letter_box=1, else
`resize_image`, as Darknet's `detector map`; classifiers: the evaluation resize/crop), and
quantized to QDQ with per-channel int8 weights and uint8 activations (U8S8: the pair
onnxruntime's x86 kernels run fastest with VNNI). The images are decoded as the calibrator
asks for them (`CalibrationImages`, one to a run): the memory is one image whatever N. The
calibration ranges are cached, so each further quantization (sensitivity, keep-fp32 search)
costs no calibration.

Sensitivity of a layer = the relative error of the network outputs when only that layer's Conv is
quantized (everything else fp32), measured on calibration images. `keep_fp32=N` leaves the N most
sensitive layers in fp32; `keep_fp32="auto"` adds them one by one until the validation metric is
within `bound` of fp32 (default 1 point: mAP@0.5 or top-1, in percentage points), at most
`max_auto` layers.

The metric is the validation split's: mAP@0.5 as `detector map` computes it (thresh 0.005, NMS
0.45, darkcfg.detect.metrics) for detectors, top-1 for classifiers. Latency: best of `repeats`
runs of onnxruntime (CPU, all threads) at each batch size.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from builders.atomic import staged_file, work_folder
from builders.graph import Network
from cfgparse import CfgError, Diagnostic
from darkcfg.console import warn
from darkcfg.export.onnx import (
    cfg_name,
    check_output,
    export_onnx,
    failed,
    keeps_modes,
    onnx_session,
    quiet_exporter,
    reference_outputs,
    require_onnx_packages,
    write_failures,
)

#: Default bound of `keep_fp32="auto"`: at most this many points of mAP@0.5 / top-1 lost.
DEFAULT_BOUND = 1.0
#: Images whose outputs measure each layer's sensitivity.
SENSITIVITY_IMAGES = 8
#: Calibration images read and run together: what the calibration holds, whatever their number
#: (1: the least memory; 1024 images of 128x128 took as long as 8 to a run, 2.4-5.6 s against
#: 4.8, and +15 MiB of peak RSS against +48).
CALIBRATION_BATCH = 1


def _failed(message: str, path: str, hint: str = "", code: str = "E901") -> CfgError:
    """Calibration data that cannot serve (E901), or an INT8 option that cannot (E100)."""
    return CfgError(Diagnostic(code, message, path, hint=hint))


# -- data -----------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """A validation split and how to score a runner on it. `run(x)` -> the network's outputs
    (in `Network.output_indices` order) for a batch x (N, C, H, W)."""

    metric: str  # "mAP@0.5" or "top-1"
    score: Callable[[Callable[[torch.Tensor], list[torch.Tensor]]], float]
    images: int
    split: str = "validation"  # "training": the data has no validation split (Darknet's map)


@dataclass
class Int8Data:
    calibration: CalibrationImages  # the network inputs, decoded one at a time when read
    evaluation: Evaluation
    description: str


class CalibrationImages:
    """`count` images spread over `dataset` (a training split), made into network inputs
    (C, H, W) float32 by `image_of`, decoded when read and not kept: iterating yields them one
    at a time, so the calibration holds one image whatever `count` (stacked, 8192 images of
    416x416 were 17 GB); `images[:k]` stacks the first k (the sensitivity probe, the latency
    input), reading them again.

    An image whose pixels do not decode is a W901 (said once) and the next one of the split
    takes its place, as in training; which image serves each pick is settled on the first read
    and kept (indices only), so every pass reads the same images. The first pick is settled
    here: none decoding is E901 at `where` before any work. `len()` is exact once a pass has
    read them all (the calibration's); until then it is the number planned (`count`, or the
    split's size when smaller), an upper bound."""

    def __init__(self, dataset, count: int, image_of: Callable, where: str = "--calibrate"):
        asked, count = count, min(count, len(dataset))
        if count <= 0:
            raise _failed("no images to calibrate with", where,
                          hint="give a data source with training images")
        if count < asked:
            warn(f"{asked} calibration images asked (--calib-images), but the training "
                 f"split of '{where}' holds {count}: calibrating on all {count}")
        self.dataset, self.image_of, self.where = dataset, image_of, where
        # spread over the split, not its first images (a sorted folder starts with one class)
        self.picks = [int(p) for p in np.linspace(0, len(dataset) - 1, count).round()]
        self._at: list[int | None] = []  # the dataset index serving each pick settled so far
        self._used: set[int] = set()
        self._bad: set[int] = set()
        self._last = ""
        if self._settle(0)[0] is None:
            raise _failed(f"cannot calibrate: not one training image decodes ({self._last})",
                          where, hint="fix or remove the images named above")

    def _decode(self, at: int) -> torch.Tensor:
        return self.image_of(self.dataset[at]).float()

    def _settle(self, pick: int) -> tuple[int | None, torch.Tensor | None]:
        """The image serving pick number `pick` (the next unsettled one): its own, or the next
        unused one of the split that decodes; (None, None) when none is left."""
        import re

        from darkcfg.data import DataError
        from darkcfg.data.base import undecodable_warning

        n = len(self.dataset)
        for step in range(n):
            at = (self.picks[pick] + step) % n
            if at in self._used or at in self._bad:
                continue
            try:
                image = self._decode(at)
            except DataError as exc:  # (a detection split says its own W901 first)
                self._bad.add(at)
                text = str(exc).strip()
                last = self._last = text.splitlines()[-1] if text else repr(exc)
                if "none of the" not in last:
                    named = re.search(r"'([^']+)'", last)
                    warn(undecodable_warning(last, named.group(1) if named else self.where,
                                             "left out of the calibration; the next image "
                                             "takes its place"))
                continue
            self._used.add(at)
            self._at.append(at)
            return at, image
        self._at.append(None)
        return None, None

    def __iter__(self):
        for pick in range(len(self.picks)):
            if pick < len(self._at):
                at = self._at[pick]
                if at is not None:
                    yield self._decode(at)  # settled (decoded) before: read again
                continue
            at, image = self._settle(pick)
            if at is not None:
                yield image
                del image  # not kept while the reader runs the next one

    def __len__(self) -> int:
        if len(self._at) == len(self.picks):
            return sum(at is not None for at in self._at)
        return len(self.picks)

    def __getitem__(self, key: slice) -> torch.Tensor:
        """`images[:k]`: the first k images stacked (N, C, H, W), read again."""
        if not isinstance(key, slice) or (key.step or 1) < 1:
            raise TypeError("CalibrationImages takes a forward slice, e.g. images[:8]")
        wanted = range(*key.indices(len(self)))
        found = []
        for i, image in enumerate(self):
            if i >= wanted.stop:
                break
            if i in wanted:
                found.append(image)
        return torch.stack(found) if found else torch.empty(0)


def open_int8_data(net: Network, cfg, source: str | None, seed: int, calib_images: int,
                   classes: int | None = None, batch: int = 8) -> Int8Data:
    """Calibration images and the validation evaluation from a --data-style source (None: the
    embedded set). `cfg` is the network's NetConfig."""
    from darkcfg.detect.decode import head_indices

    if head_indices(net):
        return _detection_data(net, source, seed, calib_images, classes, batch)
    return _classifier_data(net, cfg, source, seed, calib_images, classes, batch)


def _detection_data(net, source, seed, count, classes, batch) -> Int8Data:
    from darkcfg.data.detection.dataset import DetectionEval, collate, detection_datasets

    splits = detection_datasets(net, source, seed, classes, multiscale=False)
    if splits.val is None or not len(splits.val):
        raise _failed(f"{splits.description} has no validation split", source or "--calibrate",
                     hint="add a valid= list to the .data file")
    view = DetectionEval(splits.train.source, splits.settings)
    calibration = CalibrationImages(view, count, lambda sample: sample[0], source or "embedded")
    names = splits.names
    loader = torch.utils.data.DataLoader(splits.val, batch_size=batch, collate_fn=collate)
    split = "validation"
    val_paths = getattr(splits.val.source, "paths", None)
    if val_paths is not None and list(val_paths) == list(splits.train.source.paths):
        # a .data without valid= (or whose valid= is the train list) is scored on its
        # training images, as Darknet's `detector map` does: the very images INT8 was
        # calibrated on flatter it, so say so
        split = "training"
        warn(f"'{source}' has no separate validation split (no valid=, or valid= is the "
             "train list): fp32 and INT8 are scored on the training images, the ones INT8 "
             "was calibrated on; add a valid= list of other images for a fair score")

    def score(run) -> float:
        return detection_map(net, run, loader, names)

    return Int8Data(calibration, Evaluation("mAP@0.5", score, len(splits.val), split),
                    splits.description)


def detection_map(net: Network, run, loader, names: Sequence[str]) -> float:
    """mAP@0.5 in percent of `run`'s outputs over a DetectionEval loader, as `detector map`."""
    from darkcfg.detect.decode import decode, net_letter_box, nms
    from darkcfg.detect.metrics import (
        MAP_DETECTION_THRESH,
        MAP_NMS_THRESH,
        ImageBoxes,
        darknet_map,
        entries_from_probs,
    )

    letter = net_letter_box(net)
    outputs_at = net.output_indices
    detections, truths = [], []
    for images, truth, sizes in loader:
        outs = dict(zip(outputs_at, run(images), strict=True))
        found = decode(net, outs, MAP_DETECTION_THRESH, image_size=sizes.tolist(),
                       letter_box=letter, input_size=(images.shape[-1], images.shape[-2]))
        found = nms([_first_classes(d, len(names)) for d in found], MAP_NMS_THRESH)
        for dets, rows, size in zip(found, truth, sizes.tolist(), strict=True):
            size = (int(size[0]), int(size[1]))
            detections.append(entries_from_probs(dets.boxes, dets.probs, size))
            gt = ImageBoxes.from_truth(rows)
            truths.append(ImageBoxes(gt.boxes, gt.classes, None, None, size))
    return 100.0 * darknet_map(detections, truths, names).map50


def _first_classes(dets, classes: int):
    from dataclasses import replace

    return replace(dets, probs=dets.probs[:, :classes])


def _classifier_data(net, cfg, source, seed, count, classes, batch) -> Int8Data:
    from darkcfg.data import Augment, ImageFiles, embedded_shapes, open_images

    shape = net.input_shape
    inputs = (shape.c, shape.h, shape.w)
    if not shape.c * shape.h * shape.w:
        raise _failed("INT8 calibration needs an image network", "--int8",
                     hint="quantize image classifiers and detectors", code="E100")
    outputs = net.shapes[net.output_indices[-1]].size
    splits = (embedded_shapes(inputs, outputs, seed, classes) if source is None
              else open_images(source, inputs, seed))
    if splits.val is None or not len(splits.val):
        raise _failed(f"{splits.description} has no validation split", source or "--calibrate",
                     hint="add a val/ folder")
    view = Augment(cfg, train=False)

    def image_of(sample):
        image = view(sample[0])
        return image.float().div(255) if image.dtype == torch.uint8 else image.float()

    train = splits.train
    if isinstance(train, ImageFiles):  # an undecodable image raises: the calibration takes
        train = train.raising()        # the next unused one and says it left this one out
    calibration = CalibrationImages(train, count, image_of, source or "embedded")
    val = splits.val  # (an undecodable image is a blank one of its class: W901, as `valid`)

    def score(run) -> float:
        hits = total = 0
        for start in range(0, len(val), batch):
            samples = [val[i] for i in range(start, min(start + batch, len(val)))]
            x = torch.stack([image_of(s) for s in samples])
            y = torch.tensor([int(s[1]) for s in samples])
            logits = run(x)[-1].reshape(len(samples), -1)
            hits += int((logits.argmax(1) == y).sum())
            total += len(samples)
        return 100.0 * hits / max(total, 1)

    return Int8Data(calibration, Evaluation("top-1", score, len(val)), splits.description)


# -- quantization ---------------------------------------------------------------------------------


def _reader(images: Iterable[torch.Tensor], batch: int = 1, name: str = "images"):
    """onnxruntime's calibration reader over `images` (C, H, W): `batch` of them at a time,
    read when onnxruntime asks and let go after. (The MinMax ranges are per tensor, reduced
    over the batch axis too: the same as one image at a time, in fewer runs.)"""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(images)

        def get_next(self):
            chunk = list(itertools.islice(self.items, batch))
            return {name: torch.stack(chunk).numpy()} if chunk else None

    return Reader()


def layer_of(node) -> int | None:
    """The darkcfg layer index a node of the exported graph comes from (the exporter records
    the module path, `net.layers.<i>...`, in the node's `pkg.torch.onnx.name_scopes`)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            for scope in prop.value.replace("'", " ").replace(",", " ").split():
                if scope.startswith("net.layers."):
                    index = scope.split(".")[2]
                    if index.isdigit():
                        return int(index)
    return None


def quantizable_layers(path: str | os.PathLike) -> dict[str, int | None]:
    """{Conv/Gemm/MatMul node name: its darkcfg layer} of an ONNX file: what INT8 changes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {n.name: layer_of(n) for n in model.graph.node if n.op_type in QUANTIZED_OPS}


#: What INT8 quantizes: the ops with weights (and their inputs); the rest stays fp32.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@contextlib.contextmanager
def onnxruntime_failures(step: str, shown: str):
    """onnxruntime's quantization tools (or its session on their output) raising: a located
    E904 naming the step and onnxruntime's first line, not a traceback; the output is not
    written (an existing file under its name is kept). Ctrl-C, a full disk (OSError, located by
    the command's handler), memory exhaustion and a calibration image that no longer decodes
    (DataError, read while onnxruntime asks for it) pass through."""
    from darkcfg.data import DataError

    try:
        yield
    except (OSError, MemoryError, CfgError, DataError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever onnxruntime raises, said in one line
        first = next((li.strip() for li in str(exc).splitlines() if li.strip()), "")
        try:
            import onnxruntime

            version = f" {onnxruntime.__version__}"
        except Exception:  # noqa: BLE001 - only for the message
            version = ""
        raise failed(f"INT8 {step} failed in onnxruntime{version}: {type(exc).__name__}"
                     f"{': ' + first if first else ''}", shown,
                     hint="nothing was written (an existing file is kept); export fp32 without "
                     "--int8, or report the cfg with this message") from None


class Quantizer:
    """One fp32 ONNX file, calibrated once; `quantize(out, exclude)` then only rewrites.
    onnxruntime's failures are E904 at `shown` (the output's name)."""

    def __init__(self, fp32_path: str | os.PathLike, workdir: str,
                 calibration: Iterable[torch.Tensor] | None = None, shown: str = ""):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.workdir = Path(workdir)
        self.shown = shown or str(fp32_path)
        self.source = self.workdir / "fp32.prep.onnx"
        with quiet_exporter(), onnxruntime_failures("pre-processing", self.shown):
            quant_pre_process(str(fp32_path), str(self.source), skip_symbolic_shape=True)
        self.cache = self.workdir / "ranges.json"
        self.layers = quantizable_layers(self.source)
        if calibration is not None:
            self.calibrate(calibration)

    def calibrate(self, calibration: Iterable[torch.Tensor], batch: int = CALIBRATION_BATCH
                  ) -> None:
        """Measure (and cache) the activation ranges: the slow part, once. `calibration`
        yields (C, H, W) inputs, read one at a time (onnxruntime's MinMax calibrator keeps
        only each tensor's min and max per run, not the images), `batch` to a run. PyTorch
        decodes them on one thread meanwhile: the calibration session's threads hold the
        cores (on 2 cores, 256 images of 128x128 read in between runs of 8 took 11.2 s with
        PyTorch's 2 threads, 2.4 s with one, as long as the runs alone)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with onnxruntime_failures("calibration", self.shown):
                self._quantize(self.workdir / "calibrated.onnx", [],
                               _reader(calibration, batch))
        finally:
            torch.set_num_threads(threads)

    def _quantize(self, out: Path, exclude: Sequence[str], reader=None) -> None:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        with quiet_exporter():
            quantize_static(str(self.source), str(out), reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                            # only the layers with weights: with every op quantized (maxpool,
                            # upsample, concat, the activations) a trained yolov3-tiny's outputs
                            # were off by 0.70 (relative L2) and mAP@0.5 fell 84 -> 20; with
                            # these alone, 0.097
                            op_types_to_quantize=list(QUANTIZED_OPS),
                            calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=str(self.cache))

    def quantize(self, out: str | os.PathLike, exclude: Sequence[str] = ()) -> Path:
        out = Path(out)
        with onnxruntime_failures("quantization", self.shown):
            self._quantize(out, exclude)
        return out

    def only(self, node: str) -> Path:
        """A model with only `node` quantized (for its sensitivity)."""
        out = self.workdir / "one.onnx"
        return self.quantize(out, [n for n in self.layers if n != node])


def runner(path: str | os.PathLike, threads: int | None = None, shown: str = ""):
    """A callable x -> list of outputs (torch) through an onnxruntime session on `path` (a
    session onnxruntime refuses to open: E904 at `shown`)."""
    with onnxruntime_failures("model loading", shown or str(path)):
        session = onnx_session(path, threads)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(y) for y in session.run(None, {name: x.numpy()})]

    run.session = session
    return run


def l2_error(ours: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """||ours - reference|| / ||reference|| over all outputs together: unlike the max error it
    does not saturate on the one worst element, so layers rank apart."""
    a = torch.cat([t.double().flatten() for t in ours])
    b = torch.cat([t.double().flatten() for t in reference])
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@dataclass
class Sensitivity:
    node: str
    layer: int | None
    error: float  # relative L2 error of the outputs with only this layer quantized


def sensitivities(quantizer: Quantizer, x: torch.Tensor, reference: list[torch.Tensor]
                  ) -> list[Sensitivity]:
    """Every quantizable layer's sensitivity, most sensitive first."""
    found = []
    for node, layer in quantizer.layers.items():
        err = l2_error(runner(quantizer.only(node), shown=quantizer.shown)(x), reference)
        found.append(Sensitivity(node, layer, err))
    return sorted(found, key=lambda s: -s.error)


def latency(run, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Best-of-`repeats` seconds of one call (the least disturbed run on a shared machine)."""
    for _ in range(warmup):
        run(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        best = min(best, time.perf_counter() - start)
    return best


# -- the command ----------------------------------------------------------------------------------


@dataclass
class Int8Options:
    keep_fp32: int | str = 0  # N most sensitive layers kept fp32, or "auto"
    bound: float = DEFAULT_BOUND  # "auto": points of the metric allowed to be lost
    max_auto: int = 8  # "auto": at most this many layers kept fp32
    batches: tuple[int, ...] = (1, 8)  # latency batch sizes
    repeats: int = 10
    name: str = ""
    threads: int | None = None
    opset: int | None = None  # the fp32 graph's opset (None: the exporter's); 13 or later
    flag: str = "--export"  # the option that named the output, for the errors


@dataclass
class Int8Report:
    path: str
    metric: str
    fp32: float
    int8: float
    kept_fp32: list[Sensitivity]
    sensitivity: list[Sensitivity]
    latency_fp32: dict[int, float]
    latency_int8: dict[int, float]
    output_error: float  # relative L2 error of INT8 vs fp32 outputs on calibration images
    correlation: float  # Pearson correlation of all INT8 vs fp32 outputs
    images: int
    calibration_images: int
    auto: bool = False
    bound: float = DEFAULT_BOUND
    tried: list[tuple[int, float]] = field(default_factory=list)  # auto: (kept, metric)
    probe_images: int = SENSITIVITY_IMAGES  # the images output_error was measured on
    split: str = "validation"  # the images `images` counts ("training": no validation split)

    def __str__(self) -> str:
        lines = [f"wrote {self.path} (INT8 QDQ, per-channel int8 weights, uint8 activations; "
                 f"calibrated on {_images(self.calibration_images)})"]
        lines.append(f"INT8 (onnxruntime) vs PyTorch's fp32 network on "
                     f"{_images(self.probe_images, 'calibration ')}: relative L2 "
                     f"error {self.output_error:.4f}, correlation {self.correlation:.4f}")
        lines.append(f"{self.metric} on {_images(self.images, self.split + ' ')}"
                     f"{' (no separate validation split)' if self.split != 'validation' else ''}"
                     ": fp32 "
                     f"(onnxruntime) {self.fp32:.2f}, INT8 {self.int8:.2f} "
                     f"({self.int8 - self.fp32:+.2f})")
        for batch in sorted(self.latency_fp32):
            f, q = self.latency_fp32[batch], self.latency_int8[batch]
            lines.append(f"latency batch {batch}: fp32 {1e3 * f:.2f} ms, INT8 {1e3 * q:.2f} ms "
                         f"({f / q:.2f}x)")
        top = ", ".join(f"{_where(s)} {s.error:.3f}" for s in self.sensitivity[:5])
        if top:
            lines.append("most sensitive layers (relative L2 output error with only that "
                         f"layer INT8): {top}")
        if self.auto:
            tried = ", ".join(f"{k} fp32: {m:.2f}" for k, m in self.tried)
            lines.append(f"--keep-fp32 auto (bound {self.bound:g} points): {tried}")
        if self.kept_fp32:
            lines.append("kept in fp32: " + ", ".join(_where(s) for s in self.kept_fp32))
        return "\n".join(lines)


def _images(count: int, kind: str = "") -> str:
    return f"{count} {kind}image{'s' if count != 1 else ''}"


def _where(s: Sensitivity) -> str:
    return f"layer {s.layer}" if s.layer is not None else s.node


def _correlation(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    x = torch.cat([t.double().flatten() for t in a])
    y = torch.cat([t.double().flatten() for t in b])
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


@keeps_modes
def export_int8(net: Network, path: str | os.PathLike, data: Int8Data,
                options: Int8Options | None = None) -> Int8Report:
    """Write a calibrated INT8 QDQ ONNX model to `path` (atomically), checked in onnxruntime,
    with its accuracy and latency against the fp32 graph."""
    options = options or Int8Options()
    require_onnx_packages(str(path), int8=True)
    path = Path(path)
    net.eval()
    check_output(path, options.flag)  # before the export and the calibration
    auto = options.keep_fp32 == "auto"
    want = int(options.keep_fp32) if not auto else 0
    if want < 0:
        raise _failed(f"--keep-fp32 must be >= 0 or 'auto', not {want}", "--keep-fp32",
                     code="E100")
    with work_folder("darkcfg-int8-") as work:  # (and what a killed export left)
        fp32 = Path(work) / "fp32.onnx"
        export_onnx(net, fp32, dynamic_batch=True, name=cfg_name(net, options.name, path),
                    opset=options.opset)
        quantizer = Quantizer(fp32, work, shown=str(path))
        if not quantizer.layers:
            raise _failed("the network has no Conv/Gemm layer to quantize", str(path))
        if want >= len(quantizer.layers):
            # every layer in fp32 would be an fp32 model labelled INT8
            count = len(quantizer.layers)
            raise _failed(f"--keep-fp32 {want}: the network has {count} quantizable "
                         f"layer{'s' if count != 1 else ''} ({'/'.join(QUANTIZED_OPS)}); "
                         "keeping them all in fp32 leaves nothing in INT8", "--keep-fp32",
                         hint=f"use 0 to {count - 1}, or 'auto'" if count > 1 else
                         "use 0, or 'auto'", code="E100")
        quantizer.calibrate(data.calibration)  # read one image at a time
        probe = data.calibration[:SENSITIVITY_IMAGES]  # the first few, read again
        reference = reference_outputs(net, probe)
        fp32_run = runner(fp32, options.threads)
        fp32_score = data.evaluation.score(fp32_run)
        ranked = sensitivities(quantizer, probe, reference)
        tried = []
        candidate = Path(work) / "int8.onnx"
        kept = ranked[:want]
        while True:
            quantizer.quantize(candidate, [s.node for s in kept])
            int8_run = runner(candidate, options.threads, str(path))
            int8_score = data.evaluation.score(int8_run)
            tried.append((len(kept), int8_score))
            if not auto or fp32_score - int8_score <= options.bound or \
                    len(kept) >= min(options.max_auto, len(ranked)):
                break
            kept = ranked[:len(kept) + 1]
        got = int8_run(probe)
        err = l2_error(got, reference)
        corr = _correlation(got, reference)
        lat32, lat8 = {}, {}
        for batch in options.batches:
            x = probe[:1].expand(batch, -1, -1, -1).contiguous()
            # alternate the two so that a load spike on a shared machine hits both alike
            a, b = [], []
            for _ in range(3):
                a.append(latency(fp32_run, x, max(options.repeats // 3, 1)))
                b.append(latency(int8_run, x, max(options.repeats // 3, 1)))
            lat32[batch], lat8[batch] = min(a), min(b)
        _write_with_metadata(candidate, path, net, kept, data, options.flag)
    return Int8Report(str(path), data.evaluation.metric, fp32_score, int8_score, kept, ranked,
                      lat32, lat8, err, corr, data.evaluation.images, len(data.calibration),
                      auto, options.bound, tried, len(probe), data.evaluation.split)


def _write_with_metadata(candidate: Path, path: Path, net: Network, kept, data: Int8Data,
                         flag: str = "--export") -> None:
    import onnx

    model = onnx.load(str(candidate))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({"quantization": "int8 QDQ per-channel (onnxruntime.quantization)",
                  "calibration_images": str(len(data.calibration)),
                  "kept_fp32_layers": ",".join(str(s.layer) for s in kept)})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with staged_file(path, flag) as tmp, write_failures(path):
        onnx.save(model, tmp)


def parse_keep_fp32(text: str | None) -> int | str:
    """--keep-fp32 N or auto."""
    if text is None:
        return 0
    if text == "auto":
        return "auto"
    if text.isascii() and text.isdigit():
        return int(text)
    raise _failed(f"--keep-fp32 takes a number of layers or 'auto', not '{text}'",
                 "<command line>", hint="e.g. --keep-fp32 2 or --keep-fp32 auto", code="E100")
