"""Image to boxes in one ONNX file: `--export m.onnx --decode --nms`.

The graph takes the network input (N, C, H, W) (already at the network size: the letterbox or
resize is the caller's, so boxes are in input pixels) and returns

    boxes        (M, 4) float32  left, top, right, bottom in input pixels
    scores       (M,)   float32  Darknet's prob (objectness x class probability)
    classes      (M,)   int64
    batch_index  (M,)   int64    which image of the batch

Decoding is darkcfg's (`darkcfg.detect.decode`: each head's `predictions`, `keep` and
`threshold`, i.e. Darknet's get_network_boxes with prob = p if p > thresh else 0), traced by the
dynamo exporter. NMS is the last head's nms_kind, appended to that graph: ONNX
`NonMaxSuppression` for the IoU kinds (per class, greedy in descending score, IoU > nms
suppresses: Darknet's do_nms_sort, src/box.c), and for greedynms/diounms Darknet's
diounms_sort built from plain ONNX ops (`_append_diou_nms`). The thresholds are graph constants
(`thresh`, `nms`, `nms_rule` are recorded in the metadata).

Where the graph and Darknet can differ:
- Ties: Darknet sorts with qsort (not stable), onnxruntime pops equal scores lowest index first;
  with two exactly equal scores on overlapping boxes either may survive.
- IoU and DIoU are computed from corners here and from centres by Darknet: pairs within ~1e-6
  of the threshold may fall either way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from builders.atomic import staged_file
from builders.graph import Network
from darkcfg.export.onnx import (
    ExportReport,
    cfg_name,
    convert_opset,
    example_input,
    exporter_failure,
    failed,
    metadata,
    name_batch_dim,
    onnx_session,
    quiet_exporter,
    require_onnx_packages,
    write_failures,
)

NMS_OUTPUTS = ("boxes", "scores", "classes", "batch_index")
#: The oldest opset the appended NMS nodes are valid in (Squeeze/Unsqueeze take axes as inputs)
NMS_MIN_OPSET = 13
#: nms_kind values Darknet runs with a DIoU test (src/box.c diounms_sort); the others are IoU
DIOU_KINDS = ("greedynms", "diounms")
DECODABLE = "--decode decodes [yolo], [Gaussian_yolo], flat [region] and [detection] heads"


class DecodedProbs(nn.Module):
    """net -> (corner boxes in input pixels (N,K,4), Darknet's thresholded probs (N,K,C)),
    probs zeroed where a head does not emit the candidate or its objectness is 0 (Darknet's
    NMS skips those)."""

    def __init__(self, net: Network, thresh: float):
        super().__init__()
        self.net, self.thresh = net, float(thresh)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from darkcfg.detect.decode import head_parts

        outputs = dict(zip(self.net.output_indices, self.net(x), strict=True))
        t = torch.tensor(self.thresh, dtype=torch.float32)
        w, h = x.shape[-1], x.shape[-2]
        boxes, probs = [], []
        classes = None
        for i, layer, decoding, parts in head_parts(self.net, outputs, (w, h)):
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


def check_decodable(net: Network) -> tuple[str, float]:
    """The last head's (nms_kind, beta_nms) (what --detect runs); a located error for heads
    --detect cannot decode."""
    from darkcfg.detect.decode import check_decodable_heads, decoding_for

    heads = check_decodable_heads(net, DECODABLE)
    if not heads:
        raise failed("--decode --nms needs a detection head ([yolo], [Gaussian_yolo], [region] "
                     "or [detection])", "<export>")
    last = net.layers[heads[-1]]
    return decoding_for(last).nms_kind(last)


def _set_nms_outputs(model) -> None:
    """The graph's outputs become NMS_OUTPUTS (the tensors of those names the NMS nodes made);
    the model is checked."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["detections", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["detections"]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, ["detections"]),
        helper.make_tensor_value_info("batch_index", TensorProto.INT64, ["detections"]),
    ])
    onnx.checker.check_model(model)


def _append_nms(model, candidates: int, thresh: float, nms: float) -> None:
    """Append NonMaxSuppression and the gathers to the exported (boxes, probs) graph."""
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
    _set_nms_outputs(model)


def _append_diou_nms(model, nms: float, beta: float) -> None:
    """Append Darknet's DIoU NMS (greedynms: beta 0.6; diounms: beta_nms) to the exported
    (boxes, probs) graph; ONNX has no operator for it, so it is built from plain ones.

    The (image, detection, class) triples with prob > 0 are the candidates, sorted by prob
    (TopK, descending). An ONNX Loop visits each (image, class) group present (Unique); in a
    group, S[j, i] = "j comes before i and box_diou(j, i) > nms", and the greedy result of
    src/box.c diounms_sort (visit in descending prob, a kept box drops the later ones it is
    similar to) is the fixed point of keep[i] = not any_j (keep[j] and S[j, i]) reached from
    "all kept" (Cluster-NMS, Zheng et al. 2021: each pass settles at least one more box), an
    inner Loop that stops when nothing changes. Memory: one group's S (its candidates squared).
    """
    from onnx import TensorProto, helper

    g = model.graph
    boxes_in, probs_in = g.output[0].name, g.output[1].name
    f, i64 = TensorProto.FLOAT, TensorProto.INT64

    def const(name, dtype, dims, values):
        g.initializer.append(helper.make_tensor(name, dtype, dims, values))

    const("dn_zero_f", f, [], [0.0])
    const("dn_one_f", f, [], [1.0])
    const("dn_half", f, [], [0.5])
    const("dn_nms", f, [], [nms])
    const("dn_beta", f, [], [beta])
    const("dn_zero_i", i64, [], [0])
    const("dn_one_i", i64, [], [1])
    const("dn_cols_nk", i64, [2], [0, 1])
    const("dn_col0", i64, [], [0])
    const("dn_col2", i64, [], [2])
    const("dn_axis0", i64, [1], [0])
    const("dn_axis1", i64, [1], [1])
    const("dn_true", TensorProto.BOOL, [], [True])
    for k, side in enumerate(("l", "t", "r", "b")):
        const(f"dn_c{side}", i64, [], [k])
    n = helper.make_node
    nodes = [
        # candidates: (image, detection, class) with prob > 0, as rows (M, 3)
        n("Greater", [probs_in, "dn_zero_f"], ["dn_pos"]),
        n("NonZero", ["dn_pos"], ["dn_nz"]),
        n("Transpose", ["dn_nz"], ["dn_idx"], perm=[1, 0]),
        n("Gather", ["dn_idx", "dn_cols_nk"], ["dn_nk"], axis=1),
        n("GatherND", [boxes_in, "dn_nk"], ["dn_cand_boxes"]),
        n("GatherND", [probs_in, "dn_idx"], ["dn_cand_scores"]),
        n("Shape", ["dn_cand_scores"], ["dn_m1"]),
        n("TopK", ["dn_cand_scores", "dn_m1"], ["dn_scores", "dn_order"], axis=0, largest=1,
          sorted=1),
        n("Gather", ["dn_cand_boxes", "dn_order"], ["dn_boxes"], axis=0),
        n("Gather", ["dn_idx", "dn_order"], ["dn_sorted_idx"], axis=0),
        n("Gather", ["dn_sorted_idx", "dn_col0"], ["dn_image"], axis=1),
        n("Gather", ["dn_sorted_idx", "dn_col2"], ["dn_class"], axis=1),
        # one group per (image, class): image * classes + class
        n("Shape", [probs_in], ["dn_pshape"]),
        n("Gather", ["dn_pshape", "dn_col2"], ["dn_classes"]),
        n("Mul", ["dn_image", "dn_classes"], ["dn_image_base"]),
        n("Add", ["dn_image_base", "dn_class"], ["dn_group"]),
        n("Unique", ["dn_group"], ["dn_groups"], sorted=1),
        n("Shape", ["dn_groups"], ["dn_u1"]),
        n("Squeeze", ["dn_u1", "dn_axis0"], ["dn_u"]),
        n("ConstantOfShape", ["dn_m1"], ["dn_keep0"],
          value=helper.make_tensor("dn_keep_value", f, [1], [1.0])),
    ]
    # -- one group: its candidates (in prob order), S, the fixed point ------------------------
    body = [
        n("Gather", ["dn_groups", "gr_u"], ["gr_g"], axis=0),
        n("Equal", ["dn_group", "gr_g"], ["gr_member"]),
        n("NonZero", ["gr_member"], ["gr_nz"]),
        n("Squeeze", ["gr_nz", "dn_axis0"], ["gr_idx"]),
        n("Gather", ["dn_boxes", "gr_idx"], ["gr_boxes"], axis=0),
    ]
    for side in ("l", "t", "r", "b"):  # (k,) corners as a column (k, 1) and a row (1, k)
        body += [n("Gather", ["gr_boxes", f"dn_c{side}"], [f"gr_{side}"], axis=1),
                 n("Unsqueeze", [f"gr_{side}", "dn_axis1"], [f"col_{side}"]),
                 n("Unsqueeze", [f"gr_{side}", "dn_axis0"], [f"row_{side}"])]
    for side in ("col", "row"):
        body += [n("Sub", [f"{side}_r", f"{side}_l"], [f"{side}_w"]),
                 n("Sub", [f"{side}_b", f"{side}_t"], [f"{side}_h"]),
                 n("Mul", [f"{side}_w", f"{side}_h"], [f"{side}_area"]),
                 n("Add", [f"{side}_l", f"{side}_r"], [f"{side}_x2"]),
                 n("Mul", [f"{side}_x2", "dn_half"], [f"{side}_cx"]),
                 n("Add", [f"{side}_t", f"{side}_b"], [f"{side}_y2"]),
                 n("Mul", [f"{side}_y2", "dn_half"], [f"{side}_cy"])]
    body += [
        # src/box.c box_iou: the overlap of the two intervals, 0 when apart or empty
        n("Min", ["col_r", "row_r"], ["p_ir"]), n("Max", ["col_l", "row_l"], ["p_il"]),
        n("Sub", ["p_ir", "p_il"], ["p_iw"]),
        n("Min", ["col_b", "row_b"], ["p_ib"]), n("Max", ["col_t", "row_t"], ["p_it"]),
        n("Sub", ["p_ib", "p_it"], ["p_ih"]),
        n("Mul", ["p_iw", "p_ih"], ["p_iwh"]),
        n("Less", ["p_iw", "dn_zero_f"], ["p_w_neg"]),
        n("Less", ["p_ih", "dn_zero_f"], ["p_h_neg"]),
        n("Or", ["p_w_neg", "p_h_neg"], ["p_apart"]),
        n("Where", ["p_apart", "dn_zero_f", "p_iwh"], ["p_inter"]),
        n("Add", ["col_area", "row_area"], ["p_areas"]),
        n("Sub", ["p_areas", "p_inter"], ["p_union"]),
        n("Div", ["p_inter", "p_union"], ["p_ratio"]),
        n("Equal", ["p_inter", "dn_zero_f"], ["p_no_inter"]),
        n("Equal", ["p_union", "dn_zero_f"], ["p_no_union"]),
        n("Or", ["p_no_inter", "p_no_union"], ["p_iou_zero"]),
        n("Where", ["p_iou_zero", "dn_zero_f", "p_ratio"], ["p_iou"]),
        # box_diou: IoU - (d²/c²)^beta, c the enclosing box's diagonal (IoU alone when c = 0)
        n("Max", ["col_r", "row_r"], ["p_er"]), n("Min", ["col_l", "row_l"], ["p_el"]),
        n("Sub", ["p_er", "p_el"], ["p_cw"]),
        n("Max", ["col_b", "row_b"], ["p_eb"]), n("Min", ["col_t", "row_t"], ["p_et"]),
        n("Sub", ["p_eb", "p_et"], ["p_ch"]),
        n("Mul", ["p_cw", "p_cw"], ["p_cw2"]), n("Mul", ["p_ch", "p_ch"], ["p_ch2"]),
        n("Add", ["p_cw2", "p_ch2"], ["p_c2"]),
        n("Sub", ["col_cx", "row_cx"], ["p_dx"]), n("Sub", ["col_cy", "row_cy"], ["p_dy"]),
        n("Mul", ["p_dx", "p_dx"], ["p_dx2"]), n("Mul", ["p_dy", "p_dy"], ["p_dy2"]),
        n("Add", ["p_dx2", "p_dy2"], ["p_d2"]),
        n("Equal", ["p_c2", "dn_zero_f"], ["p_no_c"]),
        n("Div", ["p_d2", "p_c2"], ["p_dc"]),
        n("Pow", ["p_dc", "dn_beta"], ["p_term"]),
        n("Sub", ["p_iou", "p_term"], ["p_diou_raw"]),
        n("Where", ["p_no_c", "p_iou", "p_diou_raw"], ["p_diou"]),
        # S[j, i]: j (row index of the column vector) before i, similar
        n("Greater", ["p_diou", "dn_nms"], ["p_similar"]),
        n("Shape", ["gr_idx"], ["gr_k1"]),
        n("Squeeze", ["gr_k1", "dn_axis0"], ["gr_k"]),
        n("Range", ["dn_zero_i", "gr_k", "dn_one_i"], ["gr_pos"]),
        n("Unsqueeze", ["gr_pos", "dn_axis1"], ["gr_pos_col"]),
        n("Unsqueeze", ["gr_pos", "dn_axis0"], ["gr_pos_row"]),
        n("Less", ["gr_pos_col", "gr_pos_row"], ["p_before"]),
        n("And", ["p_similar", "p_before"], ["p_s"]),
        n("Cast", ["p_s"], ["p_s_f"], to=f),
        n("ConstantOfShape", ["gr_k1"], ["gr_keep0"],
          value=helper.make_tensor("gr_keep_value", f, [1], [1.0])),
    ]
    # inner loop: keep' = 1 where no kept j is similar, i.e. keep @ S == 0 (a product, not a
    # k x k temporary); stop when keep' == keep
    fixed = [
        n("Unsqueeze", ["fx_keep_in", "dn_axis0"], ["fx_keep_row"]),
        n("MatMul", ["fx_keep_row", "p_s_f"], ["fx_hits_row"]),
        n("Squeeze", ["fx_hits_row", "dn_axis0"], ["fx_hits"]),
        n("Equal", ["fx_hits", "dn_zero_f"], ["fx_free"]),
        n("Cast", ["fx_free"], ["fx_keep_out"], to=f),
        n("Equal", ["fx_keep_out", "fx_keep_in"], ["fx_same"]),
        n("Cast", ["fx_same"], ["fx_same_f"], to=f),
        n("ReduceMin", ["fx_same_f"], ["fx_all_same"], keepdims=0),
        n("Less", ["fx_all_same", "dn_one_f"], ["fx_changed"]),
    ]
    fixed_graph = helper.make_graph(
        fixed, "cluster_nms_pass",
        [helper.make_tensor_value_info("fx_i", i64, []),
         helper.make_tensor_value_info("fx_cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("fx_keep_in", f, ["K"])],
        [helper.make_tensor_value_info("fx_changed", TensorProto.BOOL, []),
         helper.make_tensor_value_info("fx_keep_out", f, ["K"])])
    body += [
        n("Add", ["gr_k", "dn_one_i"], ["gr_passes"]),  # a group of k settles within k passes
        n("Loop", ["gr_passes", "dn_true", "gr_keep0"], ["gr_keep"], body=fixed_graph),
        n("ScatterElements", ["gr_keep_in", "gr_idx", "gr_keep"], ["gr_keep_out"], axis=0),
        n("Identity", ["gr_cond_in"], ["gr_cond_out"]),
    ]
    body_graph = helper.make_graph(
        body, "diou_nms_group",
        [helper.make_tensor_value_info("gr_u", i64, []),
         helper.make_tensor_value_info("gr_cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("gr_keep_in", f, ["M"])],
        [helper.make_tensor_value_info("gr_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("gr_keep_out", f, ["M"])])
    nodes += [
        n("Loop", ["dn_u", "dn_true", "dn_keep0"], ["dn_keep"], body=body_graph,
          name="diou_nms"),
        n("NonZero", ["dn_keep"], ["dn_kept_nz"]),
        n("Squeeze", ["dn_kept_nz", "dn_axis0"], ["dn_kept"]),
        n("Gather", ["dn_boxes", "dn_kept"], ["boxes"], axis=0),
        n("Gather", ["dn_scores", "dn_kept"], ["scores"], axis=0),
        n("Gather", ["dn_class", "dn_kept"], ["classes"], axis=0),
        n("Gather", ["dn_image", "dn_kept"], ["batch_index"], axis=0),
    ]
    g.node.extend(nodes)
    _set_nms_outputs(model)


def export_image_to_boxes(net: Network, path: str | os.PathLike, *, thresh: float = 0.25,
                          nms: float = 0.45, dynamic_batch: bool = False, name: str = "",
                          check: bool = True, opset: int | None = None,
                          flag: str = "--export") -> ExportReport:
    """Write the image -> (boxes, scores, classes, batch_index) ONNX model (converted to
    `opset` when given, as export_onnx does); check it in onnxruntime against darkcfg's own
    decode + NMS (`--detect`) on a random input. `flag`: the option that named `path`."""
    require_onnx_packages(str(path))
    import onnx

    path = Path(path)
    if not 0 <= thresh <= 1:  # NaN fails too
        raise failed(f"--thresh must be in [0, 1] for an NMS graph, got {thresh:g}", str(path),
                     hint="e.g. --thresh 0.25 (Darknet's default)", code="E100")
    if not 0 < nms <= 1:
        raise failed(f"--nms must be in (0, 1] for an NMS graph, got {nms:g}", str(path),
                     hint="e.g. --nms 0.45 (Darknet's default)", code="E100")
    if opset is not None and opset < NMS_MIN_OPSET:
        raise failed(f"--opset {opset}: the NMS graph needs opset {NMS_MIN_OPSET} or later",
                     str(path), hint="e.g. --opset 17, or leave it out", code="E100")
    kind, beta = check_decodable(net)
    from darkcfg.detect.decode import net_letter_box

    diou = kind in DIOU_KINDS
    beta = 0.6 if kind == "greedynms" else beta  # src/box.c box_diou's fixed power
    net.eval()
    module = DecodedProbs(net, thresh).eval()
    x = example_input(net, 2 if dynamic_batch else 1)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.export.export(module, (x,), dynamic_shapes=dynamic, strict=False)
            onnx_program = torch.onnx.export(program, (x,), dynamo=True, input_names=["images"],
                                             output_names=["candidate_boxes", "candidate_probs"],
                                             verbose=False)
    except Exception as exc:
        raise exporter_failure("ONNX export", exc, module, x, str(path)) from None
    meta = metadata(net, cfg_name(net, name, path), True)
    meta.update({"outputs": ",".join(NMS_OUTPUTS), "thresh": f"{thresh:g}", "nms": f"{nms:g}",
                 "nms_rule": f"DIoU, beta {beta:g} ({kind}: diounms_sort)" if diou else
                 "IoU (do_nms_sort)", "boxes": "left,top,right,bottom input pixels",
                 # how the caller makes the input (and undoes it): docs/deploy.md's snippet
                 "letter_box": "1" if net_letter_box(net) else "0"})
    onnx_program.model.metadata_props.update(meta)
    if dynamic_batch:
        name_batch_dim(onnx_program.model)  # `batch`, as the plain export's (not `s6`)
    with staged_file(path, flag) as tmp:
        with write_failures(path):  # a full disk is a located error here too
            onnx_program.save(tmp)
        if opset is not None and opset != onnx_program.model.opset_imports.get("", 18):
            # the exporter's candidate graph is converted; the NMS nodes appended next are
            # written in a form every opset from 13 on reads (Squeeze's axes as an input)
            with write_failures(path):
                convert_opset(tmp, opset, str(path))
        model = onnx.load(tmp)
        with torch.no_grad():
            candidates = module(x)[1].shape[1]
        if diou:
            _append_diou_nms(model, nms, beta)
        else:
            _append_nms(model, candidates, thresh, nms)
        with write_failures(path):
            onnx.save(model, tmp)
        mismatch = 0.0
        if check:
            mismatch, why = check_nms_graph(model, module, x, thresh, nms, kind, beta)
            # float32 in two runtimes: 1e-5 on the tiny nets, 1.1e-4 on yolov3 (106 layers);
            # a wrong graph (a box formula, an anchor) is off by 1e-2 or more
            if why or mismatch > NMS_CHECK_TOLERANCE:
                raise failed(why or f"the NMS graph's candidate boxes differ from darkcfg's by "
                             f"{mismatch:.2e} (relative to the input size)", str(path),
                             hint="report the cfg; the file was not written")
    default = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return ExportReport(str(path), "onnx", list(NMS_OUTPUTS), mismatch, default, meta)


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


def match(ours, theirs, size: tuple[int, int],
          tolerance: float = 1e-3) -> tuple[set, set, float]:
    """(only in ours, only in theirs, max box difference / input size) of two detection lists,
    paired within each class by the nearest box (a pair further apart than `tolerance` is no
    pair; ties to the first). Only boxes whose left edges lie within reach are compared (sorted
    by that edge): yolov3 at thresh 0.005 keeps ~17k (class, box) pairs an image, and the
    export's check compared every pair of a class (seconds; a class of all of them, an
    untrained net's, would be gigabytes)."""
    import numpy as np

    scale = np.array([*size, *size], dtype=np.float64)
    left, right, worst = set(), set(), 0.0
    mine_of: dict[int, list[int]] = {}
    other_of: dict[int, list[int]] = {}
    for k, d in enumerate(ours):
        mine_of.setdefault(d[0], []).append(k)
    for j, d in enumerate(theirs):
        other_of.setdefault(d[0], []).append(j)
    for c in mine_of.keys() | other_of.keys():
        mine, other = mine_of.get(c, []), other_of.get(c, [])
        a = np.array([ours[k][2] for k in mine], dtype=np.float64).reshape(-1, 4) / scale
        b = np.array([theirs[j][2] for j in other], dtype=np.float64).reshape(-1, 4) / scale
        free = np.ones(len(b), dtype=bool)
        order = np.argsort(b[:, 0], kind="stable")
        edges = b[order, 0]
        reach = 2 * tolerance  # (a window wider than the test below: no rounding at its border)
        low = np.searchsorted(edges, a[:, 0] - reach, "left")
        high = np.searchsorted(edges, a[:, 0] + reach, "right")
        for row, k in enumerate(mine):
            near = order[low[row]:high[row]]
            near = near[free[near]]
            dist = np.abs(b[near] - a[row]).max(-1) if near.size else near
            if not near.size or dist.min() > tolerance:
                left.add(k)
                continue
            best = dist.min()
            j = int(near[dist == best].min())  # (the first of equally near ones)
            free[j] = False
            worst = max(worst, float(best))
        right |= {other[j] for j in np.flatnonzero(free)}
    return left, right, worst


#: How far (relative to the input size) the NMS graph's boxes may lie from --detect's.
NMS_CHECK_TOLERANCE = 1e-3


def check_nms_graph(model, module: DecodedProbs, x: torch.Tensor, thresh: float, nms: float,
                    kind: str, beta: float) -> tuple[float, str]:
    """The export's own check, in two parts that cannot blur into each other: (1) the graph's
    candidates (its decoding, run in onnxruntime) against darkcfg's on x: the largest box
    difference relative to the input size is returned, and a prob more than 1e-4 apart (or on
    the other side of thresh by more than 1e-4) is a failure; (2) the graph's NMS against
    darkcfg's NMS of `kind` (the code `--detect` runs) on those very candidates: the kept
    (class, box) sets must be equal. Comparing NMS on the same floats keeps near-ties (an
    untrained net's many almost equal scores) from counting as graph errors. Returns
    (max box difference, why it failed or "")."""
    import numpy as np
    from onnx import TensorProto, helper

    probe = type(model)()
    probe.CopyFrom(model)
    probe.graph.output.extend([
        helper.make_tensor_value_info("candidate_boxes", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("candidate_probs", TensorProto.FLOAT, None)])
    session = onnx_session(probe.SerializeToString())
    boxes, scores, classes, batch, cand_boxes, cand_probs = session.run(
        None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref_boxes, ref_probs = (t.numpy() for t in module(x))
    size = float(max(x.shape[-1], x.shape[-2]))
    scale = np.maximum(size, np.abs(ref_boxes))  # untrained nets: boxes far larger than the input
    worst = float((np.abs(cand_boxes - ref_boxes) / scale).max(initial=0.0))
    both = (cand_probs > 0) & (ref_probs > 0)
    if both.any() and float(np.abs(cand_probs - ref_probs)[both].max()) > 1e-4:
        return worst, "the NMS graph's candidate probs differ from darkcfg's by more than 1e-4"
    one = (cand_probs > 0) != (ref_probs > 0)
    sides = np.maximum(cand_probs, ref_probs)[one]
    if sides.size and float(np.abs(sides - thresh).max()) > 1e-4:
        return worst, ("the NMS graph keeps a candidate darkcfg's decoding drops at thresh "
                       f"{thresh:g}, or the reverse")
    graph = [[] for _ in range(x.shape[0])]
    for b, c, s, box in zip(batch.tolist(), classes.tolist(), scores.tolist(), boxes.tolist(),
                            strict=True):
        graph[b].append((c, s, tuple(box)))
    ours = nms_of_candidates(torch.from_numpy(cand_boxes), torch.from_numpy(cand_probs), nms,
                             kind, beta)
    for k, (a, b) in enumerate(zip(graph, ours, strict=True)):
        only_graph, only_ours, _ = match(a, b, (x.shape[-1], x.shape[-2]))
        if only_graph or only_ours:
            return worst, (f"the NMS graph keeps {len(a)} (class, box) pairs of image {k}, "
                           f"darkcfg's {kind} NMS on the same candidates {len(b)} "
                           f"({len(only_graph)} only in the graph, {len(only_ours)} only in "
                           "darkcfg's)")
    return worst, ""


def nms_of_candidates(boxes: torch.Tensor, probs: torch.Tensor, nms_thresh: float, kind: str,
                      beta: float) -> list[list[tuple[int, float, tuple]]]:
    """darkcfg's NMS (`darkcfg.detect.decode.nms`, what --detect runs) on a graph's candidates:
    corner boxes (N, K, 4) and thresholded probs (N, K, C) -> per image [(class, score, box)]."""
    from builders.boxes import xyxy_to_cxcywh
    from darkcfg.detect.decode import Detections
    from darkcfg.detect.decode import nms as darknet_nms

    out = []
    for b, p in zip(boxes, probs, strict=True):
        centre = xyxy_to_cxcywh(b)
        active = (p > 0).any(1).float()  # Darknet's NMS skips objectness 0
        k = torch.arange(len(b))
        kept = darknet_nms(Detections(centre, active, p, torch.zeros_like(k), k, kind, beta),
                           nms_thresh)
        pairs = torch.nonzero(kept.probs > 0).tolist()
        out.append([(c, float(kept.probs[i, c]), tuple(b[i].tolist())) for i, c in pairs])
    return out
