"""Detection metrics: mAP@0.5 exactly as `darknet detector map` computes it (src/detector.c
validate_detector_map),
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
from dataclasses import asdict, dataclass, field, replace

import torch
from torchvision.ops import box_convert

from builders.boxes import box_iou

# What `detector map` and training's -map use (src/detector.c test_detector; src/detector.c
# validate_detector_map).
MAP_DETECTION_THRESH = 0.005  # get_network_boxes threshold for mAP
MAP_NMS_THRESH = 0.45
MAP_IOU_THRESH = 0.5
MAP_CONF_THRESH = 0.25  # precision/recall/F1/avg IoU are counted above this
MAP_POINTS = (0, 11, 101)  # 0 = all-point (VOC2010+), 11 = VOC2007, 101 = COCO-style at one IoU
COCO_MAX_DETS = 100  # COCOeval's largest maxDets, the one its AP uses


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
        """Ground truth from a Darknet truth tensor (M, 5) `[cx, cy, w, h, class]`; rows from the
        first without width are padding. (Darknet's training truth ends at its first x == 0,
        AlexeyAB src/detector.c, src/yolo_layer.c #16; a validation label may have x == 0, a
        box on the left edge that `validate_detector_map` scores, but never w == 0: such a label
        is left out when read.)"""
        truth = torch.as_tensor(truth, dtype=torch.float64).reshape(-1, 5)
        empty = (truth[:, 2] == 0).nonzero()
        if len(empty):
            truth = truth[: int(empty[0])]
        return ImageBoxes.of(truth[:, :4], truth[:, 4].round())


def entries_from_probs(boxes, probs, size=None) -> ImageBoxes:
    """Darknet's detections (K boxes, (K, C) class probabilities, zeros where NMS or the threshold
    removed them) as mAP entries: one per (box, class) with prob > 0, in box order then class
    order (the order `validate_detector_map` appends them)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    probs = torch.as_tensor(probs, dtype=torch.float64)
    probs = probs.reshape(len(boxes), probs.shape[-1] if probs.dim() else 0)
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


def average_precision(tp, truths: int, points: int = 0) -> float:
    """AP of one class from its entries' TP flags in descending-score order (§7 step 5)."""
    if points < 0 or points == 1:
        raise ValueError(f"map points must be 0 (all-point) or > 1, got {points}")
    hits = torch.as_tensor(tp, dtype=torch.float64).reshape(-1)
    if truths <= 0 or not len(hits):
        return 0.0
    tp_sum = hits.cumsum(0)
    precision = tp_sum / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    recall = tp_sum / truths
    # max precision at this rank or later: the monotone envelope
    envelope = precision.flip(0).cummax(0).values.flip(0)
    if points == 0:
        previous = torch.cat([recall.new_zeros(1), recall[:-1]])
        return float(((recall - previous) * envelope).sum())
    # Darknet's levels `point * 1.0 / (points - 1)`; the first rank reaching each one
    levels = torch.tensor([point / (points - 1) for point in range(points)], dtype=torch.float64)
    first = torch.searchsorted(recall, levels)  # recall never decreases
    reached = first < len(recall)
    return float(envelope[first[reached]].sum()) / points


def _first_claims(keys: torch.Tensor) -> torch.Tensor:
    """True where an entry is the first, in order, with its key (keys < 0: never)."""
    out = torch.zeros(len(keys), dtype=torch.bool)
    valid = keys >= 0
    if not valid.any():
        return out
    position = torch.arange(len(keys))
    k = keys[valid]
    first = torch.full((int(k.max()) + 1,), len(keys), dtype=torch.long)
    first = first.scatter_reduce(0, k, position[valid], "amin")
    out[valid] = first[k] == position[valid]
    return out


def _check_classes(detections, truths, classes: int) -> None:
    """ValueError for detections without scores or a class outside 0..classes-1 (the first
    image's, truth before detections)."""
    every = [c for det, gt in zip(detections, truths, strict=True) for c in (gt.classes,
                                                                            det.classes)]
    every = _cat([c.reshape(-1) for c in every], (0,), torch.long)
    if all(det.scores is not None for det in detections) and \
            (not len(every) or (int(every.min()) >= 0 and int(every.max()) < classes)):
        return
    for det, gt in zip(detections, truths, strict=True):  # the first image at fault's error
        for what, c in (("truth", gt.classes), ("detection", det.classes)):
            if len(c) and (int(c.min()) < 0 or int(c.max()) >= classes):
                bad = int(c.max()) if int(c.max()) >= classes else int(c.min())
                raise ValueError(f"{what} class {bad} outside 0..{classes - 1}")
        if det.scores is None:
            raise ValueError("detections need scores")


def _cat(tensors, empty_shape, dtype) -> torch.Tensor:
    return torch.cat(tensors) if tensors else torch.zeros(empty_shape, dtype=dtype)


def _stacked(parts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parts (image index, boxes (K, 4), classes (K,), flag) concatenated in order: (each row's
    image index, boxes, classes, each row's flag)."""
    if not parts:
        return (torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, dtype=torch.float64),
                torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    counts = torch.tensor([len(boxes) for _, boxes, _, _ in parts])
    index = torch.tensor([i for i, _, _, _ in parts])
    flags = torch.tensor([flag for _, _, _, flag in parts])
    return (index.repeat_interleave(counts),
            torch.cat([boxes.reshape(-1, 4) for _, boxes, _, _ in parts]),
            torch.cat([cls.reshape(-1) for _, _, cls, _ in parts]).long(),
            flags.repeat_interleave(counts))


def _own_image_pairs(images: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(entry, other) index pairs: each entry (of image `images[entry]`) with each of its
    image's `counts[image]` others, numbered across images in image order; entry-major."""
    counts = torch.tensor(counts, dtype=torch.long)
    offsets = torch.cumsum(counts, 0) - counts
    per_entry = counts[images] if len(counts) else images
    entry = torch.arange(len(images)).repeat_interleave(per_entry)
    block_start = torch.cumsum(per_entry, 0) - per_entry
    other = offsets[images].repeat_interleave(per_entry) + \
        torch.arange(len(entry)) - block_start.repeat_interleave(per_entry)
    return entry, other


def darknet_map(detections: Sequence[ImageBoxes], truths: Sequence[ImageBoxes],
                names: Sequence[str], iou_thresh: float = MAP_IOU_THRESH,
                conf_thresh: float = MAP_CONF_THRESH, map_points: int = 0) -> DetectionMetrics:
    """`validate_detector_map` steps 2-6 (src/detector.c validate_detector_map) on post-NMS
    detections.

    Per entry: its truth is the same-class truth of largest IoU if that IoU > iou_thresh. Ranked
    over all images by score (stable: ties keep image then entry order), an entry is TP if its
    truth is not taken yet; a duplicate of a taken truth is FP (no fall-back to a 2nd-best truth).
    mAP is the mean over all `names` (classes without truth count 0)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists but {len(truths)} truth lists")
    classes = len(names)
    _check_classes(detections, truths, classes)
    # every image at once (a few small ops per image cost more than their work: an untrained
    # network's validation has hundreds of entries an image); entries and truths concatenated
    # in image order, each entry paired with its own image's truths only
    image, boxes, cls, _ = _stacked([(i, det.boxes, det.classes, 0)
                                     for i, det in enumerate(detections)])
    scores = _cat([det.scores.reshape(-1) for det in detections], (0,), torch.float64)
    live = scores > 0
    image, boxes, cls, scores = image[live], boxes[live], cls[live], scores[live]
    _, truth_boxes, truth_classes, _ = _stacked([(i, gt.boxes, gt.classes, 0)
                                                for i, gt in enumerate(truths)])
    truth_count = torch.bincount(truth_classes, minlength=classes)
    # per entry: the same-class truth of largest IoU (the first of equal maxima, as Darknet's
    # `>` scan), its global index where that IoU > iou_thresh
    entry, which = _own_image_pairs(image, [len(gt.boxes) for gt in truths])
    same = cls[entry] == truth_classes[which]  # another class's truth counts IoU 0
    entry, which = entry[same], which[same]
    ious = box_iou(boxes[entry], truth_boxes[which])
    best = torch.zeros(len(boxes), dtype=torch.float64).scatter_reduce(
        0, entry, ious, "amax", include_self=False)
    best[entry[ious.isnan()]] = torch.nan  # (max propagates NaN)
    first = torch.full((len(boxes),), len(truth_boxes), dtype=torch.long).scatter_reduce(
        0, entry, torch.where(ious == best[entry], which, len(truth_boxes)), "amin")
    truth = torch.where(best > iou_thresh, first, -1)
    # conf_thresh statistics in entry order: TP if no earlier entry claimed the truth (truths
    # of different images are different keys, so this is per image)
    above = scores > conf_thresh
    tp = above & _first_claims(truth)
    fp = above & ~tp
    class_tp = torch.bincount(cls[tp], minlength=classes)
    class_fp = torch.bincount(cls[fp], minlength=classes)
    # summed per image, then over images: the order (and so the rounding) of the sum
    tp_images = torch.bincount(image[tp], minlength=len(detections)).tolist()
    iou_sum = 0.0
    for part in best[tp].split(tp_images):
        iou_sum += float(part.sum())
    keep = torch.ones(len(boxes), dtype=torch.bool)
    hard = [gt.difficult.reshape(-1, 5) if gt.difficult is not None else
            torch.zeros(0, 5, dtype=torch.float64) for gt in truths]
    if any(len(h) for h in hard):  # only a difficult object matched: dropped
        entry, which = _own_image_pairs(image, [len(h) for h in hard])
        hard = torch.cat(hard)
        matched = (box_iou(boxes[entry], hard[which, :4]) > iou_thresh) & \
            (cls[entry] == hard[which, 4].round().long())
        near_hard = torch.zeros(len(boxes), dtype=torch.bool)
        near_hard[entry[matched]] = True
        keep = (truth >= 0) | ~near_hard
    entry_class, entry_truth, scores = cls[keep], truth[keep], scores[keep]

    order = torch.sort(scores, descending=True, stable=True).indices
    hit = _first_claims(entry_truth[order])  # ranked: a truth is taken by its first entry
    ranked_class = entry_class[order]
    per_class = [ClassResult(str(names[c]),
                             average_precision(hit[ranked_class == c], int(truth_count[c]),
                                               map_points),
                             int(truth_count[c]), int(class_tp[c]), int(class_fp[c]))
                 for c in range(classes)]
    total_truth = int(truth_count.sum())
    tp_thresh, fp_thresh = int(class_tp.sum()), int(class_fp.sum())
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
                          "(or pip install pycocotools)") from err
    return COCO, COCOeval


def coco_available() -> bool:
    """Whether pycocotools (the optional `detect` extra) can be imported. Without it, training
    and --valid report Darknet's metrics (mAP@0.5, precision, recall, F1, IoU: no library
    needed) and leave COCO mAP@[.5:.95] out."""
    try:
        _pycocotools()
    except ImportError:
        return False
    return True


def coco_map(detections: Sequence[ImageBoxes], truths: Sequence[ImageBoxes],
             classes: int) -> tuple[float, float]:
    """(mAP@[.5:.95], AP50) from pycocotools' COCOeval (bbox, all areas, maxDets 100). Classes
    without truth are left out of the mean (COCO's rule; Darknet counts them 0). 0 when there is
    no truth or no detection at all."""
    COCO, COCOeval = _pycocotools()
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists but {len(truths)} truth lists")
    if any(det.scores is None for det in detections):
        raise ValueError("detections need scores")
    sizes = [gt.size or det.size or (1, 1) for det, gt in zip(detections, truths, strict=True)]
    images = [{"id": i, "width": w, "height": h} for i, (w, h) in enumerate(sizes, start=1)]
    scale = torch.tensor([[w, h, w, h] for w, h in sizes], dtype=torch.float64).reshape(-1, 4)
    # all images' boxes in one conversion and one tolist (per image, the small tensor ops cost
    # more than their work). Per image: its truths, then the objects not to score as COCO's
    # crowd regions (COCOeval ignores what matches them); COCOeval breaks IoU ties in this order
    truth_parts = []
    for i, gt in enumerate(truths):
        truth_parts.append((i, gt.boxes, gt.classes, 0))
        if gt.difficult is not None and len(gt.difficult):
            truth_parts.append((i, gt.difficult[:, :4], gt.difficult[:, 4].round(), 1))
    image, boxes, cls, crowd = _stacked(truth_parts)
    annotations = [{"id": n, "image_id": i + 1, "category_id": c + 1, "bbox": box,
                    "area": box[2] * box[3], "iscrowd": k}
                   for n, (i, c, box, k) in enumerate(zip(
                       image.tolist(), cls.tolist(), (_xywh(boxes) * scale[image]).tolist(),
                       crowd.tolist(), strict=True), start=1)]
    image, boxes, cls, _ = _stacked([(i, det.boxes, det.classes, 0)
                                     for i, det in enumerate(detections)])
    scores = _cat([det.scores.reshape(-1) for det in detections], (0,), torch.float64)
    top = _top_per_class(scores, cls, COCO_MAX_DETS, image)
    image = image[top]
    # the fields COCO.loadRes adds to a bbox result, given here: its polygon of each box
    # (unused by a bbox evaluation) cost more than the rest of it
    results = [{"id": n, "image_id": i + 1, "category_id": c + 1, "bbox": box, "score": p,
                "area": box[2] * box[3], "iscrowd": 0}
               for n, (i, c, box, p) in enumerate(zip(
                   image.tolist(), cls[top].tolist(), (_xywh(boxes[top]) * scale[image]).tolist(),
                   scores[top].tolist(), strict=True), start=1)]
    if not annotations or not results:
        return 0.0, 0.0
    categories = [{"id": c + 1, "name": str(c)} for c in range(classes)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt_api, dt_api = COCO(), COCO()
        for api, boxes in ((gt_api, annotations), (dt_api, results)):
            api.dataset = {"images": images, "annotations": boxes, "categories": categories}
            api.createIndex()
        evaluator = COCOeval(gt_api, dt_api, "bbox")
        # only what is read below: COCOeval evaluates each area range and accumulates each
        # maxDets on its own, so the others (3/4 of evaluate, 11/12 of accumulate) change nothing
        params = evaluator.params
        everywhere = params.areaRngLbl.index("all")
        params.areaRng, params.areaRngLbl = [params.areaRng[everywhere]], ["all"]
        params.maxDets = [COCO_MAX_DETS]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class] all areas, 100
    return _mean_valid(precision), _mean_valid(precision[0])


def _top_per_class(scores: torch.Tensor, classes: torch.Tensor, k: int,
                   images: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the k best entries with score > 0 of each class (of each image, when
    `images` gives each entry's), in entry order; ties keep entry order. COCOeval looks at no
    more than maxDets per image and class, the first of its stable (mergesort) sort by score,
    so cutting the rest is the same result at a fraction of the cost for an untrained
    network's thousands of boxes."""
    live = torch.nonzero(scores > 0).flatten()
    order = live[torch.sort(scores[live], descending=True, stable=True).indices]
    order = order[torch.sort(classes[order], stable=True).indices]
    if images is not None:
        order = order[torch.sort(images[order], stable=True).indices]
    cls = classes[order]
    first = torch.ones(len(order), dtype=torch.bool)  # where an (image, class) group starts
    first[1:] = cls[1:] != cls[:-1]
    if images is not None:
        image = images[order]
        first[1:] |= image[1:] != image[:-1]
    position = torch.arange(len(order))
    start = torch.where(first, position, 0).cummax(0).values
    return order[position - start < k].sort().values


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



# -- a network on a validation split --------------------------------------------------------------
@torch.no_grad()
def network_detections(net, loader, device, classes: int | None = None, dist=None
                       ) -> tuple[list[ImageBoxes], list[ImageBoxes]]:
    """(detections, truths) per validation image, the way `validate_detector_map` gets them:
    the batches of `DetectionEval` (images at the network size, truth relative to the original
    image, original sizes), `get_network_boxes` at thresh 0.005 (letterbox undone when [net]
    letter_box=1), NMS 0.45 of the last head's `nms_kind`. `classes`: score only the first
    `classes` classes (the data's; NMS is per class, so the others change nothing for them).
    Under DDP each rank runs its share and every rank gets all images (rank-interleaved)."""
    from darkcfg.detect.decode import decode, head_indices, net_letter_box, nms, run_heads

    heads = head_indices(net)
    letter = net_letter_box(net)
    was_training = net.training
    net.eval()
    detections, truths = [], []
    try:
        for images, truth, sizes, *hard in loader:  # hard: objects not scored, if any
            x = images.to(device, non_blocking=True)
            outputs = run_heads(net, x, heads)
            found = decode(net, outputs, MAP_DETECTION_THRESH, image_size=sizes.tolist(),
                           letter_box=letter, input_size=(x.shape[-1], x.shape[-2]))
            if classes is not None:
                found = [replace(d, probs=d.probs[:, :classes]) for d in found]
            found = nms(found, MAP_NMS_THRESH)
            difficult = hard[0] if hard else [None] * len(found)
            for dets, rows, size, dif in zip(found, truth, sizes.tolist(), difficult,
                                             strict=True):
                size = (int(size[0]), int(size[1]))
                detections.append(entries_from_probs(dets.boxes.cpu(), dets.probs.cpu(), size))
                gt = ImageBoxes.from_truth(rows)
                if dif is not None:
                    dif = dif[dif[:, 2] > 0].double()  # zero rows: padding
                truths.append(ImageBoxes(gt.boxes, gt.classes, None, dif, size))
    finally:
        net.train(was_training)
    if dist is not None and dist.enabled:
        import torch.distributed as tdist

        parts: list = [None] * dist.world
        tdist.all_gather_object(parts, (detections, truths))
        detections = [d for part in parts for d in part[0]]
        truths = [t for part in parts for t in part[1]]
    return detections, truths
