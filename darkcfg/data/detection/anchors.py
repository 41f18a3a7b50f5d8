"""Anchors for a detector's data: Darknet's `detector calc_anchors`, done better and seeded.

Darknet (AlexeyAB, src/detector.c calc_anchors with src/matrix.c do_kmeans): every training
label's w,h times the net width/height; k-means with the distance 1 - IoU of two boxes that share
a corner; the k starting centres are k boxes drawn at random (random_centers, srand(time(0)), so
two runs differ); then up to 1000 rounds of assign-to-nearest (kmeans_expectation, first nearest
on ties) and centre = mean w,h of its boxes (kmeans_maximization, an empty cluster keeps its old
centre); the centres are sorted by area and printed as `anchors = %3.0f,%3.0f, ...` (%2.4f when
the width is 32 or less), with the average over boxes of the best IoU.

darkcfg keeps the data, the distance and the update, and changes the start: k-means++ seeding
with the same 1 - IoU distance (each new centre drawn with probability proportional to its
squared distance from the nearest chosen one), several restarts, plus one start exactly as
Darknet draws it, all from one seed; the result with the best average IoU of the *printed*
(rounded) anchors wins. So it is deterministic, and never worse than Darknet's algorithm run
with the same random draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfgparse import CfgError, Diagnostic

MAX_ROUNDS = 1000  # Darknet's do_kmeans cap


def corner_iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, k) IoU of w,h boxes and w,h anchors aligned at a corner (Darknet's matrix.c dist)."""
    b = np.asarray(boxes, np.float64)[:, None, :]
    a = np.asarray(anchors, np.float64)[None, :, :]
    inter = np.minimum(b[..., 0], a[..., 0]) * np.minimum(b[..., 1], a[..., 1])
    return inter / (b[..., 0] * b[..., 1] + a[..., 0] * a[..., 1] - inter)


def average_iou(boxes: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the IoU with the best-matching anchor (calc_anchors' `avg IoU`)."""
    if len(boxes) == 0 or len(anchors) == 0:
        return 0.0
    return float(corner_iou(boxes, anchors).max(1).mean())


def sort_by_area(anchors: np.ndarray) -> np.ndarray:
    """Smallest area first (anchors_data_comparator); ties by width, stably."""
    a = np.asarray(anchors, np.float64)
    return a[np.lexsort((a[:, 0], a[:, 0] * a[:, 1]))]


def _lloyd(boxes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Darknet's k-means rounds from `centres`: nearest by 1 - IoU, mean update, an empty
    cluster (or a zero mean) keeps its old centre; stops when no box changes cluster."""
    centres = centres.copy()
    k = len(centres)
    assigned = np.zeros(len(boxes), np.int64)  # Darknet's calloc'ed assignments
    if k == 1:
        centres = _means(boxes, assigned, centres)
    for _ in range(MAX_ROUNDS):
        nearest = corner_iou(boxes, centres).argmax(1)  # first best, as the strict '<' in C
        if np.array_equal(nearest, assigned):
            break
        assigned = nearest
        centres = _means(boxes, assigned, centres)
    return centres


def _means(boxes: np.ndarray, assigned: np.ndarray, old: np.ndarray) -> np.ndarray:
    k = len(old)
    counts = np.bincount(assigned, minlength=k).astype(np.float64)
    sums = np.stack([np.bincount(assigned, boxes[:, j], minlength=k) for j in range(2)], 1)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    return np.where(means == 0, old, means)


def darknet_start(boxes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """random_centers: k boxes drawn uniformly (with replacement, as rand() % rows)."""
    return boxes[rng.integers(len(boxes), size=k)].copy()


def kmeans_pp_start(boxes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding under the 1 - IoU distance."""
    chosen = [int(rng.integers(len(boxes)))]
    nearest = 1.0 - corner_iou(boxes, boxes[chosen])[:, 0]
    for _ in range(1, k):
        weight = nearest ** 2
        total = weight.sum()
        pick = int(rng.choice(len(boxes), p=weight / total)) if total > 0 else \
            int(rng.integers(len(boxes)))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - corner_iou(boxes, boxes[[pick]])[:, 0])
    return boxes[chosen].copy()


def darknet_kmeans(boxes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Darknet's calc_anchors k-means (one random start), seeded; sorted by area."""
    rng = np.random.default_rng(seed)
    return sort_by_area(_lloyd(boxes, darknet_start(boxes, k, rng)))


def printed(anchors: np.ndarray, width: int) -> np.ndarray:
    """The anchors as Darknet prints them (%3.0f, or %2.4f for a net width <= 32)."""
    digits = 0 if width > 32 else 4
    return np.array([[float(f"{v:.{digits}f}") for v in pair] for pair in anchors])


def anchors_text(anchors: np.ndarray, width: int) -> str:
    """`anchors = ...` as calc_anchors prints it (its anchors.txt content after '= ')."""
    fmt = "{:3.0f},{:3.0f}" if width > 32 else "{:2.4f},{:2.4f}"
    return "anchors = " + ", ".join(fmt.format(w, h) for w, h in anchors)


def cfg_anchors_value(anchors: np.ndarray, width: int) -> str:
    """The value written into a cfg: the printed numbers, without the column padding."""
    digits = 0 if width > 32 else 4
    return ", ".join(f"{w:.{digits}f},{h:.{digits}f}" for w, h in anchors)


@dataclass
class AnchorFit:
    anchors: np.ndarray  # (k, 2) as printed, sorted by area
    avg_iou: float  # of `anchors` over the boxes
    darknet_anchors: np.ndarray  # Darknet's algorithm with the same seed (one of the starts)
    darknet_avg_iou: float
    starts: int


def check_restarts(restarts: int) -> None:
    """E100 for a negative --restarts (the command calls it before reading the data)."""
    if restarts < 0:
        raise CfgError(Diagnostic("E100", f"--restarts {restarts}: cannot be negative",
                                  "--restarts", hint="--restarts 0 runs Darknet's own start "
                                  "only; the default is 10 k-means++ starts besides it"))
    if restarts > MAX_RESTARTS:  # (2**64 + 1 ran k-means for ever, deaf to Ctrl-C)
        raise CfgError(Diagnostic("E100", f"--restarts {restarts}: at most {MAX_RESTARTS}",
                                  "--restarts", hint="each start is a k-means over every box; "
                                  "the default is 10"))


#: --restarts above this is refused: 1000 starts take seconds on a few thousand boxes
MAX_RESTARTS = 1000


def fit_anchors(boxes: np.ndarray, k: int, width: int, seed: int = 0, restarts: int = 10
                ) -> AnchorFit:
    """The k anchors (pixel w,h at the net size; `boxes` (n, 2) likewise) with the best average
    IoU among `restarts` k-means++ starts and Darknet's own random start, all seeded by `seed`.
    Ranks by the average IoU of the anchors as printed (what a cfg will hold)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2)
    if k < 1:
        raise CfgError(Diagnostic("E901", f"--num {k}: need at least one anchor", "--num",
                                  hint="--num N with N >= 1 (e.g. 9 for yolov3, 6 for tiny)"))
    check_restarts(restarts)
    if len(boxes) < k:
        raise CfgError(Diagnostic("E901", f"{len(boxes)} labelled box(es) cannot make {k} "
                                  "anchors", "--data",
                                  hint="use a smaller --num or data with more labels"))
    rng = np.random.default_rng(seed)
    darknet = printed(darknet_kmeans(boxes, k, seed), width)
    best, best_iou = darknet, average_iou(boxes, darknet)
    darknet_iou = best_iou
    for _ in range(restarts):
        found = printed(sort_by_area(_lloyd(boxes, kmeans_pp_start(boxes, k, rng))), width)
        iou = average_iou(boxes, found)
        if iou > best_iou:
            best, best_iou = found, iou
    return AnchorFit(sort_by_area(best), best_iou, darknet, darknet_iou, restarts + 1)


# -- the boxes of a detection data set ------------------------------------------------------------
EMBEDDED_IMAGES = 1024  # the embedded set is generated: enough boxes (~2500) for k-means


def data_boxes(net, source: str | None, seed: int = 0, classes: int | None = None
               ) -> tuple[np.ndarray, str, list[str]]:
    """Relative w,h (n, 2) of every training label of `source` (anything --data takes for a
    detector; None: the embedded set, of `classes` classes), through
    darkcfg.data.detection.dataset's entry point, its one-line description, and the image
    files read (none for the embedded set)."""
    from darkcfg.data.detection.dataset import detection_datasets

    splits = detection_datasets(net, source, seed, classes,
                                train_size=EMBEDDED_IMAGES if source is None else 0)
    images = splits.train.source
    labels = getattr(images, "labels", None)
    if labels is not None:  # files: the labels were read (and checked) already
        per_image = labels.boxes
    else:
        per_image = [images[i][1] for i in range(len(images))]
    rows = [np.asarray(b, np.float64).reshape(-1, 5) for b in per_image]
    boxes = np.concatenate(rows) if rows else np.zeros((0, 5))
    files = [*getattr(images, "paths", []), *getattr(splits.val.source, "paths", [])] \
        if splits.val is not None else list(getattr(images, "paths", []))
    return boxes[:, 2:4], splits.description, files


def scaled(relative_wh: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int]:
    """Boxes in pixels at the net size (calc_anchors: w * width, h * height); boxes with no area
    are left out (returned: how many)."""
    wh = np.asarray(relative_wh, np.float64) * [width, height]
    keep = (wh[:, 0] > 0) & (wh[:, 1] > 0)
    return wh[keep], int((~keep).sum())


# -- where the anchors go in the cfg --------------------------------------------------------------
def split_masks(k: int, strides: list[float]) -> list[list[int]]:
    """Anchor indices (sorted by area) per head: the k anchors cut into len(strides) runs as
    even as possible (the smaller-anchor runs get the extra ones), the largest anchors to the
    head with the largest stride (coarsest grid), as yolov3's 6,7,8 / 3,4,5 / 0,1,2."""
    heads = len(strides)
    runs = np.array_split(np.arange(k), heads)
    order = sorted(range(heads), key=lambda i: (strides[i], -i))  # finest grid first
    masks: list[list[int]] = [[] for _ in range(heads)]
    for run, head in zip(runs, order, strict=True):
        masks[head] = [int(i) for i in run]
    return masks


def plot_anchors(path, boxes: np.ndarray, anchors: np.ndarray, current: np.ndarray | None,
                 title: str) -> None:
    """Scatter PNG of the boxes' w,h coloured by nearest anchor, the anchors as crosses."""
    from darkcfg.data.base import pyplot, write_figure

    plt = pyplot()
    nearest = corner_iou(boxes, anchors).argmax(1) if len(boxes) else np.zeros(0, int)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    shown = boxes if len(boxes) <= 20000 else boxes[np.linspace(0, len(boxes) - 1, 20000,
                                                                dtype=int)]
    colours = nearest if len(boxes) <= 20000 else nearest[np.linspace(0, len(boxes) - 1, 20000,
                                                                      dtype=int)]
    ax.scatter(shown[:, 0], shown[:, 1], c=colours, cmap="tab20", s=4, alpha=0.5,
               linewidths=0)
    ax.scatter(anchors[:, 0], anchors[:, 1], marker="X", s=120, c="black", label="fitted")
    if current is not None and len(current):
        ax.scatter(current[:, 0], current[:, 1], marker="o", s=60, facecolors="none",
                   edgecolors="red", label="cfg's current")
    ax.set_xlabel("box width (pixels at the net size)")
    ax.set_ylabel("box height (pixels at the net size)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    write_figure(fig, path)
