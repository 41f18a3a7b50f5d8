"""Detection metrics: mAP@0.5 exactly as `darknet detector map` computes it (DETECTION.md §7),
the per-class AP table, precision/recall/F1 and average IoU at a confidence threshold, and COCO
mAP@[.5:.95] through pycocotools (the reference COCO API; optional extra `detect`).

Inputs are per image: detections (boxes, scores, classes) after NMS and ground truths (boxes,
classes). Boxes are `(cx, cy, w, h)`, relative to the image (0..1) as Darknet's labels and its
`detector map` boxes are; IoU does not change under the per-axis scaling to pixels.

A detection is one (box, score, class) entry: Darknet turns each post-NMS box into one entry per
class with prob > 0, `entries_from_probs` does the same for a (K, C) probability matrix."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torchvision.ops import box_convert, box_iou

# What `detector map` and training's -map use (DETECTION.md §1.7, §7).
MAP_DETECTION_THRESH = 0.005  # get_network_boxes threshold for mAP
MAP_NMS_THRESH = 0.45
MAP_IOU_THRESH = 0.5
MAP_CONF_THRESH = 0.25  # precision/recall/F1/avg IoU are counted above this
MAP_POINTS = (0, 11, 101)  # 0 = all-point (VOC2010+), 11 = VOC2007, 101 = COCO-style at one IoU


@dataclass(frozen=True)
class ImageBoxes:
    """One image's boxes: (K, 4) relative cx,cy,w,h; classes (K,) ints; scores (K,) for
    detections (None for ground truth). `difficult` (truth only): boxes of Darknet's `difficult`
    list, detections matching only one of them are dropped from AP."""

    boxes: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor | None = None
    difficult: torch.Tensor | None = None  # (D, 5) [cx, cy, w, h, class]
    size: tuple[int, int] | None = None  # (width, height) in pixels, for COCO's area ranges

    @staticmethod
    def of(boxes, classes, scores=None, difficult=None, size=None) -> ImageBoxes:
        boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
        if scores is not None:
            scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
            if len(scores) != len(boxes):
                raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        if len(classes) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(classes)} classes")
        if difficult is not None:
            difficult = torch.as_tensor(difficult, dtype=torch.float64).reshape(-1, 5)
        return ImageBoxes(boxes, classes, scores, difficult, size)

    @staticmethod
    def from_labels(labels) -> ImageBoxes:
        """Ground truth from YOLO label rows (M, 5) `[class, cx, cy, w, h]` (a label file's
        order)."""
        labels = torch.as_tensor(labels, dtype=torch.float64).reshape(-1, 5)
        return ImageBoxes.of(labels[:, 1:], labels[:, 0].round())

    @staticmethod
    def from_truth(truth) -> ImageBoxes:
        """Ground truth from a Darknet truth tensor (M, 5) `[cx, cy, w, h, class]`; rows after the
        first with x == 0 are padding (DETECTION.md §9 #16)."""
        truth = torch.as_tensor(truth, dtype=torch.float64).reshape(-1, 5)
        empty = (truth[:, 0] == 0).nonzero()
        if len(empty):
            truth = truth[: int(empty[0])]
        return ImageBoxes.of(truth[:, :4], truth[:, 4].round())


def entries_from_probs(boxes, probs, size=None) -> ImageBoxes:
    """Darknet's detections (K boxes, (K, C) class probabilities, zeros where NMS or the threshold
    removed them) as mAP entries: one per (box, class) with prob > 0, in box order then class
    order (the order `validate_detector_map` appends them)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    probs = torch.as_tensor(probs, dtype=torch.float64)
    probs = probs.reshape(len(boxes), -1)
    box_index, class_index = (probs > 0).nonzero(as_tuple=True)  # row-major: box, then class
    return ImageBoxes(boxes[box_index], class_index, probs[box_index, class_index], None, size)


@dataclass
class ClassResult:
    name: str
    ap: float
    truths: int
    tp: int  # at conf_thresh, as Darknet prints them
    fp: int


@dataclass
class DetectionMetrics:
    map50: float  # Darknet-style mAP at iou_thresh (a fraction)
    per_class: list[ClassResult]
    precision: float
    recall: float
    f1: float
    avg_iou: float
    tp: int
    fp: int
    fn: int
    iou_thresh: float = MAP_IOU_THRESH
    conf_thresh: float = MAP_CONF_THRESH
    map_points: int = 0
    map50_95: float | None = None  # COCO mAP@[.5:.95] (pycocotools)
    coco_map50: float | None = None
    detection_thresh: float = MAP_DETECTION_THRESH
    nms_thresh: float = MAP_NMS_THRESH
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The `--valid --format json` object."""
        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "per_class": {c.name: c.ap for c in self.per_class},
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "avg_iou": self.avg_iou,
            "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "thresholds": {
                "detection": self.detection_thresh,
                "nms": self.nms_thresh,
                "iou": self.iou_thresh,
                "conf": self.conf_thresh,
                "map_points": self.map_points,
            },
            "per_class_detail": [asdict(c) for c in self.per_class],
            **self.extra,
        }

    def table(self) -> str:
        """Darknet's `detector map` report as a table."""
        width = max([4, *(len(c.name) for c in self.per_class)])
        points = {0: "all-point", 11: "11-point", 101: "101-point"}.get(self.map_points,
                                                                         f"{self.map_points}-point")
        lines = [f"{'id':>3}  {'name':<{width}}  {'AP':>7}  {'TP':>6}  {'FP':>6}  {'truths':>6}"]
        for i, c in enumerate(self.per_class):
            lines.append(f"{i:>3}  {c.name:<{width}}  {100 * c.ap:6.2f}%  {c.tp:>6}  {c.fp:>6}  "
                         f"{c.truths:>6}")
        lines.append(f"for conf_thresh = {self.conf_thresh:.2f}, precision = {self.precision:.2f},"
                     f" recall = {self.recall:.2f}, F1-score = {self.f1:.2f}")
        lines.append(f"for conf_thresh = {self.conf_thresh:.2f}, TP = {self.tp}, FP = {self.fp}, "
                     f"FN = {self.fn}, average IoU = {100 * self.avg_iou:.2f} %")
        lines.append(f"IoU threshold = {100 * self.iou_thresh:.0f} %, used {points} AP")
        lines.append(f"mean average precision (mAP@{self.iou_thresh:.2f}) = {self.map50:.6f}, "
                     f"or {100 * self.map50:.2f} %")
        if self.map50_95 is not None:
            lines.append(f"COCO mAP@[.5:.95] (pycocotools) = {self.map50_95:.6f}, "
                         f"AP50 = {self.coco_map50:.6f}")
        return "\n".join(lines)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return box_iou(box_convert(a, "cxcywh", "xyxy"), box_convert(b, "cxcywh", "xyxy"))


def average_precision(tp: Sequence[bool], truths: int, points: int = 0) -> float:
    """AP of one class from its entries' TP flags in descending-score order (§7 step 5)."""
    if points < 0 or points == 1:
        raise ValueError(f"map points must be 0 (all-point) or > 1, got {points}")
    if truths <= 0 or not len(tp):
        return 0.0
    hits = torch.as_tensor(list(tp), dtype=torch.float64)
    tp_sum = hits.cumsum(0)
    fp_sum = (1 - hits).cumsum(0)
    precision = tp_sum / (tp_sum + fp_sum)
    recall = tp_sum / truths
    # max precision at this rank or later: the monotone envelope
    envelope = precision.flip(0).cummax(0).values.flip(0)
    if points == 0:
        previous = torch.cat([recall.new_zeros(1), recall[:-1]])
        return float(((recall - previous) * envelope).sum())
    total = 0.0
    for point in range(points):
        level = point / (points - 1)  # Darknet's `point * 1.0 / (points - 1)`
        reached = (recall >= level).nonzero()
        total += float(envelope[int(reached[0])]) if len(reached) else 0.0
    return total / points


def darknet_map(detections: Sequence[ImageBoxes], truths: Sequence[ImageBoxes],
                names: Sequence[str], iou_thresh: float = MAP_IOU_THRESH,
                conf_thresh: float = MAP_CONF_THRESH, map_points: int = 0) -> DetectionMetrics:
    """`validate_detector_map` steps 2-6 (DETECTION.md §7) on post-NMS detections.

    Per entry: its truth is the same-class truth of largest IoU if that IoU > iou_thresh. Ranked
    over all images by score (stable: ties keep image then entry order), an entry is TP if its
    truth is not taken yet; a duplicate of a taken truth is FP (no fall-back to a 2nd-best truth).
    mAP is the mean over all `names` (classes without truth count 0)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists but {len(truths)} truth lists")
    classes = len(names)
    truth_count = [0] * classes
    class_tp = [0] * classes
    class_fp = [0] * classes
    tp_thresh = fp_thresh = 0
    iou_sum = 0.0
    scores: list[float] = []
    entry_class: list[int] = []
    entry_truth: list[int] = []  # global truth index, -1 if none
    offset = 0
    for det, gt in zip(detections, truths, strict=True):
        for c in gt.classes.tolist():
            if not 0 <= c < classes:
                raise ValueError(f"truth class {c} outside 0..{classes - 1}")
            truth_count[c] += 1
        if det.scores is None:
            raise ValueError("detections need scores")
        ious = _iou(det.boxes, gt.boxes) if len(det.boxes) and len(gt.boxes) else None
        same = (det.classes[:, None] == gt.classes[None, :]) if ious is not None else None
        hard = None
        if gt.difficult is not None and len(gt.difficult) and len(det.boxes):
            hard_iou = _iou(det.boxes, gt.difficult[:, :4])
            hard_same = det.classes[:, None] == gt.difficult[None, :, 4].round().long()
            hard = ((hard_iou > iou_thresh) & hard_same).any(1)
        claimed: list[int] = []  # this image's entries' truths, in entry order (step 3)
        for i, (c, p) in enumerate(zip(det.classes.tolist(), det.scores.tolist(), strict=True)):
            if not 0 <= c < classes:
                raise ValueError(f"detection class {c} outside 0..{classes - 1}")
            if p <= 0:
                continue
            truth, best = -1, 0.0
            if ious is not None:
                row = torch.where(same[i], ious[i], torch.zeros_like(ious[i]))
                j = int(row.argmax())  # first of equal maxima, like Darknet's `>` scan
                best = float(row[j])
                if best > iou_thresh:
                    truth = offset + j
            dropped = truth < 0 and hard is not None and bool(hard[i])
            if p > conf_thresh:
                if truth >= 0 and truth not in claimed:
                    tp_thresh += 1
                    class_tp[c] += 1
                    iou_sum += best
                else:
                    fp_thresh += 1
                    class_fp[c] += 1
            claimed.append(truth)
            if not dropped:
                scores.append(p)
                entry_class.append(c)
                entry_truth.append(truth)
        offset += len(gt.boxes)

    order = torch.sort(torch.tensor(scores, dtype=torch.float64), descending=True,
                       stable=True).indices.tolist()
    taken: set[int] = set()
    flags: list[list[bool]] = [[] for _ in range(classes)]
    for k in order:
        truth = entry_truth[k]
        hit = truth >= 0 and truth not in taken
        if hit:
            taken.add(truth)
        flags[entry_class[k]].append(hit)
    per_class = [ClassResult(str(names[c]), average_precision(flags[c], truth_count[c], map_points),
                             truth_count[c], class_tp[c], class_fp[c]) for c in range(classes)]
    total_truth = sum(truth_count)
    precision = tp_thresh / (tp_thresh + fp_thresh) if tp_thresh + fp_thresh else 0.0
    recall = tp_thresh / total_truth if total_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    avg_iou = iou_sum / (tp_thresh + fp_thresh) if tp_thresh + fp_thresh else 0.0
    mean_ap = sum(c.ap for c in per_class) / classes if classes else 0.0
    return DetectionMetrics(mean_ap, per_class, precision, recall, f1, avg_iou, tp_thresh,
                            fp_thresh, total_truth - tp_thresh, iou_thresh, conf_thresh,
                            map_points)


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:  # optional extra
        raise ImportError("COCO mAP@[.5:.95] needs pycocotools: pip install 'darkcfg[detect]' "
                          "(or pip install pycocotools), or pass --no-coco") from err
    return COCO, COCOeval


def coco_map(detections: Sequence[ImageBoxes], truths: Sequence[ImageBoxes],
             classes: int) -> tuple[float, float]:
    """(mAP@[.5:.95], AP50) from pycocotools' COCOeval (bbox, all areas, maxDets 100). Classes
    without truth are left out of the mean (COCO's rule; Darknet counts them 0). 0 when there is
    no truth or no detection at all."""
    COCO, COCOeval = _pycocotools()
    images, annotations, results = [], [], []
    for image_id, (det, gt) in enumerate(zip(detections, truths, strict=True), start=1):
        width, height = gt.size or det.size or (1, 1)
        images.append({"id": image_id, "width": width, "height": height})
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        for box, c in zip((_xywh(gt.boxes) * scale).tolist(), gt.classes.tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(c) + 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
        if det.scores is None:
            raise ValueError("detections need scores")
        for box, c, p in zip((_xywh(det.boxes) * scale).tolist(), det.classes.tolist(),
                             det.scores.tolist(), strict=True):
            if p > 0:
                results.append({"image_id": image_id, "category_id": int(c) + 1, "bbox": box,
                                "score": p})
    if not annotations or not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt_api = COCO()
        gt_api.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": c + 1, "name": str(c)} for c in range(classes)]}
        gt_api.createIndex()
        dt_api = gt_api.loadRes(results)
        evaluator = COCOeval(gt_api, dt_api, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class] all areas, 100
    return _mean_valid(precision), _mean_valid(precision[0])


def _mean_valid(values) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def _xywh(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xywh")


def evaluate(detections: Sequence[ImageBoxes], truths: Sequence[ImageBoxes], names: Sequence[str],
             iou_thresh: float = MAP_IOU_THRESH, conf_thresh: float = MAP_CONF_THRESH,
             map_points: int = 0, coco: bool = True) -> DetectionMetrics:
    """Darknet-style metrics, plus COCO mAP@[.5:.95] and AP50 when `coco`."""
    metrics = darknet_map(detections, truths, names, iou_thresh, conf_thresh, map_points)
    if coco:
        metrics.map50_95, metrics.coco_map50 = coco_map(detections, truths, len(names))
    return metrics

