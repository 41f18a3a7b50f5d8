"""Image to boxes in one ONNX file: `--export m.onnx --decode --nms`.

The graph takes the network input (N, C, H, W) (already at the network size: the letterbox or
resize is the caller's, so boxes are in input pixels) and returns

    boxes        (M, 4) float32  left, top, right, bottom in input pixels
    scores       (M,)   float32  Darknet's prob (objectness x class probability)
    classes      (M,)   int64
    batch_index  (M,)   int64    which image of the batch

Decoding is darkcfg's (`darkcfg.detect.decode`: each head's `predictions`, `keep` and
`threshold`, i.e. Darknet's get_network_boxes with prob = p if p > thresh else 0), traced by the
dynamo exporter. NMS is ONNX `NonMaxSuppression` appended to that graph: per class, greedy in
descending score, IoU > nms suppresses, the same rule as Darknet's do_nms_sort
(src/box.c). The thresholds are graph constants (`thresh`, `nms` are recorded in the metadata).

Where the two can differ:
- Ties: Darknet sorts with qsort (not stable), onnxruntime pops equal scores lowest index first;
  with two exactly equal scores on overlapping boxes either may survive.
- nms_kind=greedynms/diounms (yolov4, yolov4-tiny): Darknet suppresses on DIoU (src/box.c
  box_diou), which ONNX has no operator for; the graph runs IoU NMS and the export says so.
- IoU is computed from corners by onnxruntime and from centres by Darknet: pairs within ~1e-6
  of the threshold may fall either way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from builders.graph import Network
from darkcfg.export.onnx import (
    ExportReport,
    _atomic_target,
    _error,
    _quiet,
    example_input,
    metadata,
    onnx_session,
    require_onnx_packages,
)

NMS_OUTPUTS = ("boxes", "scores", "classes", "batch_index")


class DecodedProbs(nn.Module):
    """net -> (corner boxes in input pixels (N,K,4), Darknet's thresholded probs (N,K,C)),
    probs zeroed where a head does not emit the candidate or its objectness is 0 (Darknet's
    NMS skips those)."""

    def __init__(self, net: Network, thresh: float):
        super().__init__()
        self.net, self.thresh = net, float(thresh)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from darkcfg.detect.decode import _heads

        outputs = dict(zip(self.net.output_indices, self.net(x), strict=True))
        t = torch.tensor(self.thresh, dtype=torch.float32)
        w, h = x.shape[-1], x.shape[-2]
        boxes, probs = [], []
        classes = None
        for i, layer, decoding, parts in _heads(self.net, outputs, (w, h)):
            classes = classes or parts.scores.shape[-1]
            if parts.scores.shape[-1] != classes:
                raise ValueError(f"head {i} has {parts.scores.shape[-1]} classes, the first "
                                 f"{classes}")
            keep = decoding.keep(layer, parts, t)
            obj, p = decoding.threshold(layer, parts.objectness, parts.scores, t)
            active = obj != 0
            if keep is not None:
                active = active & keep
            probs.append(torch.where(active[..., None], p, 0.0))
            b = parts.boxes
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            half = b[..., 2:] / 2
            boxes.append(torch.cat([b[..., :2] - half, b[..., :2] + half], -1) * scale)
        return torch.cat(boxes, 1), torch.cat(probs, 1)


def check_decodable(net: Network) -> str:
    """The last head's nms_kind (what --detect runs); a located error for heads --detect
    cannot decode."""
    from darkcfg.detect.decode import decoding_for, head_indices

    heads = head_indices(net)
    if not heads:
        raise _error("--decode --nms needs a detection head ([yolo], [Gaussian_yolo], [region] "
                     "or [detection])", "<export>")
    for i in heads:
        fault = decoding_for(net.layers[i]).unsupported(net.layers[i])
        if fault is not None:
            raise net.meta[i].block.error("E300", fault[1], fault[0])
    last = net.layers[heads[-1]]
    return decoding_for(last).nms_kind(last)[0]


def _append_nms(model, candidates: int, thresh: float, nms: float) -> None:
    """Append NonMaxSuppression and the gathers to the exported (boxes, probs) graph."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    boxes_in, probs_in = g.output[0].name, g.output[1].name
    consts = [
        helper.make_tensor("nms_max_per_class", TensorProto.INT64, [1], [candidates]),
        helper.make_tensor("nms_iou_threshold", TensorProto.FLOAT, [1], [nms]),
        helper.make_tensor("nms_score_threshold", TensorProto.FLOAT, [1], [thresh]),
        helper.make_tensor("nms_batch_box", TensorProto.INT64, [2], [0, 2]),
        helper.make_tensor("nms_col0", TensorProto.INT64, [], [0]),
        helper.make_tensor("nms_col1", TensorProto.INT64, [], [1]),
    ]
    g.initializer.extend(consts)
    nodes = [
        helper.make_node("Transpose", [probs_in], ["nms_scores"], perm=[0, 2, 1],
                         name="nms_transpose"),
        helper.make_node("NonMaxSuppression",
                         [boxes_in, "nms_scores", "nms_max_per_class", "nms_iou_threshold",
                          "nms_score_threshold"], ["nms_selected"], center_point_box=0,
                         name="nms"),
        helper.make_node("Gather", ["nms_selected", "nms_batch_box"], ["nms_batch_box_index"],
                         axis=1, name="nms_pick_boxes"),
        helper.make_node("GatherND", [boxes_in, "nms_batch_box_index"], ["boxes"],
                         name="nms_boxes"),
        helper.make_node("GatherND", ["nms_scores", "nms_selected"], ["scores"],
                         name="nms_scores_kept"),
        helper.make_node("Gather", ["nms_selected", "nms_col1"], ["classes"], axis=1,
                         name="nms_classes"),
        helper.make_node("Gather", ["nms_selected", "nms_col0"], ["batch_index"], axis=1,
                         name="nms_batch"),
    ]
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["detections", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["detections"]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, ["detections"]),
        helper.make_tensor_value_info("batch_index", TensorProto.INT64, ["detections"]),
    ])
    onnx.checker.check_model(model)


def export_image_to_boxes(net: Network, path: str | os.PathLike, *, thresh: float = 0.25,
                          nms: float = 0.45, dynamic_batch: bool = False, name: str = "",
                          check: bool = True) -> ExportReport:
    """Write the image -> (boxes, scores, classes, batch_index) ONNX model; check it in
    onnxruntime against darkcfg's own decode + NMS (`--detect`) on a random input."""
    require_onnx_packages(str(path))
    import onnx

    path = Path(path)
    if not 0 < nms <= 1:
        raise _error(f"--nms must be in (0, 1] for an NMS graph, got {nms:g}", str(path),
                     hint="e.g. --nms 0.45 (Darknet's default)")
    kind = check_decodable(net)
    if kind in ("greedynms", "diounms"):
        print(f"warning: the last head has nms_kind={kind} (DIoU); ONNX NonMaxSuppression is "
              f"IoU-based, so the graph runs Darknet's do_nms_sort rule instead", file=sys.stderr)
    net.eval()
    module = DecodedProbs(net, thresh).eval()
    x = example_input(net, 2 if dynamic_batch else 1)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(module, (x,), dynamic_shapes=dynamic, strict=True)
            onnx_program = torch.onnx.export(program, (x,), dynamo=True, input_names=["images"],
                                             output_names=["candidate_boxes", "candidate_probs"],
                                             verbose=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _error(f"ONNX export failed: {type(exc).__name__}: {first}", str(path)) from None
    meta = metadata(net, name or path.stem, True)
    meta.update({"outputs": ",".join(NMS_OUTPUTS), "thresh": f"{thresh:g}", "nms": f"{nms:g}",
                 "nms_rule": "IoU (do_nms_sort)", "boxes": "left,top,right,bottom input pixels"})
    onnx_program.model.metadata_props.update(meta)
    tmp = _atomic_target(path)
    try:
        onnx_program.save(tmp)
        model = onnx.load(tmp)
        with torch.no_grad():
            candidates = module(x)[1].shape[1]
        _append_nms(model, candidates, thresh, nms)
        onnx.save(model, tmp)
        mismatch = 0.0
        if check:
            mismatch = compare_with_detect(tmp, net, x, thresh, nms)
            # float32 in two runtimes: 1e-5 on the tiny nets, 1.1e-4 on yolov3 (106 layers);
            # a wrong graph (a box formula, an anchor) is off by 1e-2 or more
            if mismatch > NMS_CHECK_TOLERANCE:
                raise _error(f"the NMS graph's boxes differ from --detect's by {mismatch:.2e} "
                             "(relative to the input size)", str(path),
                             hint="report the cfg; the file was not written")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportReport(str(path), "onnx", list(NMS_OUTPUTS), mismatch,
                        model.opset_import[0].version, meta)


def run_image_to_boxes(session, x: torch.Tensor) -> list[list[tuple[int, float, tuple]]]:
    """Per image: [(class, score, (left, top, right, bottom))] from an NMS graph."""
    name = session.get_inputs()[0].name
    boxes, scores, classes, batch = session.run(None, {name: x.numpy()})
    out: list[list] = [[] for _ in range(x.shape[0])]
    for b, c, s, box in zip(batch.tolist(), classes.tolist(), scores.tolist(), boxes.tolist(),
                            strict=True):
        out[b].append((c, s, tuple(box)))
    return out


def detect_reference(net: Network, x: torch.Tensor, thresh: float, nms: float,
                     kind: str = "default") -> list[list[tuple[int, float, tuple]]]:
    """darkcfg's --detect on network-size inputs: [(class, score, box)] per image."""
    from darkcfg.detect.decode import detections_for_input, found_objects

    dets = detections_for_input(net, x, thresh, nms_thresh=nms, nms_kind=kind)
    w, h = x.shape[-1], x.shape[-2]
    return [[(f.class_id, f.score, f.box) for f in found_objects(d, thresh, w, h)]
            for d in dets]


def match(ours, theirs, size: tuple[int, int]) -> tuple[set, set, float]:
    """(only in ours, only in theirs, max box difference / input size) of two detection lists,
    paired within each class by the nearest box (a pair further apart than 1e-3 is no pair)."""
    import numpy as np

    scale = np.array([*size, *size], dtype=np.float64)
    left, right, worst = set(), set(), 0.0
    for c in {d[0] for d in ours} | {d[0] for d in theirs}:
        mine = [k for k, d in enumerate(ours) if d[0] == c]
        other = [j for j, d in enumerate(theirs) if d[0] == c]
        a = np.array([ours[k][2] for k in mine], dtype=np.float64).reshape(-1, 4) / scale
        b = np.array([theirs[j][2] for j in other], dtype=np.float64).reshape(-1, 4) / scale
        dist = np.abs(a[:, None] - b[None]).max(-1) if len(a) and len(b) else \
            np.full((len(a), len(b)), np.inf)
        free = np.ones(len(b), dtype=bool)
        for row, k in enumerate(mine):
            d = np.where(free, dist[row], np.inf) if len(b) else np.array([])
            j = int(d.argmin()) if len(d) else -1
            if j < 0 or d[j] > 1e-3:
                left.add(k)
            else:
                free[j] = False
                worst = max(worst, float(d[j]))
        right |= {other[j] for j in np.flatnonzero(free)}
    return left, right, worst


#: How far (relative to the input size) the NMS graph's boxes may lie from --detect's.
NMS_CHECK_TOLERANCE = 1e-3


def compare_with_detect(path, net: Network, x: torch.Tensor, thresh: float, nms: float) -> float:
    """Max box difference between the graph and --detect (IoU NMS) on x; inf if the kept sets
    differ other than by a score within 1e-4 of thresh (float rounding of the two runtimes may
    put those on either side)."""
    ours = run_image_to_boxes(onnx_session(path), x)
    theirs = detect_reference(net, x, thresh, nms)
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        only_ours, only_theirs, d = match(a, b, (x.shape[-1], x.shape[-2]))
        odd = [a[k] for k in only_ours] + [b[k] for k in only_theirs]
        if any(abs(score - thresh) > 1e-4 for _, score, _ in odd):
            return float("inf")
        worst = max(worst, d)
    return worst
