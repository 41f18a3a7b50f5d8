"""mAP as `darknet detector map` computes it (src/detector.c validate_detector_map): hand-computed
cases, and the
101-point variant against pycocotools' AP50 on the same detections."""

import contextlib
import io
import math

import pytest
import torch

from darkcfg.detect.metrics import (
    ImageBoxes,
    _top_per_class,
    average_precision,
    coco_map,
    darknet_map,
    entries_from_probs,
    evaluate,
)

NAMES = ["a", "b", "c"]


def truth(*rows):
    """rows: (cx, cy, w, h, class)."""
    return ImageBoxes.of([r[:4] for r in rows], [r[4] for r in rows])


def dets(*rows):
    """rows: (cx, cy, w, h, class, score)."""
    return ImageBoxes.of([r[:4] for r in rows], [r[4] for r in rows], [r[5] for r in rows])


def shifted(box, dx):
    """The box moved right by dx (same size): IoU = (w - dx) / (w + dx)."""
    return (box[0] + dx, *box[1:])


A = (0.25, 0.25, 0.2, 0.2)
B = (0.75, 0.75, 0.2, 0.3)
C = (0.25, 0.75, 0.1, 0.1)
FAR = (0.9, 0.1, 0.05, 0.05)


def test_perfect_detections():
    gts = [truth((*A, 0), (*B, 1)), truth((*C, 2))]
    ds = [dets((*A, 0, 0.9), (*B, 1, 0.8)), dets((*C, 2, 0.7))]
    for points in (0, 11, 101):
        m = darknet_map(ds, gts, NAMES, map_points=points)
        assert m.map50 == pytest.approx(1.0)
        assert [c.ap for c in m.per_class] == pytest.approx([1, 1, 1])
    assert (m.precision, m.recall, m.f1, m.avg_iou) == pytest.approx((1, 1, 1, 1))
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    assert coco_map(ds, gts, 3) == pytest.approx((1.0, 1.0))


def test_one_miss():
    gts = [truth((*A, 0), (*B, 0))]
    ds = [dets((*A, 0, 0.9))]
    assert darknet_map(ds, gts, ["a"]).map50 == pytest.approx(0.5)
    # levels 0, .1 .. .5 reach recall .5 at precision 1
    assert darknet_map(ds, gts, ["a"], map_points=11).map50 == pytest.approx(6 / 11)
    assert darknet_map(ds, gts, ["a"], map_points=101).map50 == pytest.approx(51 / 101)
    m = darknet_map(ds, gts, ["a"])
    assert (m.tp, m.fp, m.fn, m.recall, m.precision) == (1, 0, 1, 0.5, 1.0)


def test_one_false_positive_above_and_below_the_true_one():
    gts = [truth((*A, 0))]
    above = [dets((*FAR, 0, 0.9), (*A, 0, 0.8))]
    below = [dets((*FAR, 0, 0.7), (*A, 0, 0.8))]
    for points in (0, 11, 101):
        # ranks: FP (P 0, R 0), TP (P 1/2, R 1): the envelope is 1/2 everywhere
        assert darknet_map(above, gts, ["a"], map_points=points).map50 == pytest.approx(0.5)
        assert darknet_map(below, gts, ["a"], map_points=points).map50 == pytest.approx(1.0)
    m = darknet_map(above, gts, ["a"])
    assert (m.tp, m.fp, m.precision, m.recall) == (1, 1, 0.5, 1.0)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.avg_iou == pytest.approx(0.5)  # Σ IoU(TP) / (TP + FP), not / TP


def test_duplicates_are_false_positives():
    gts = [truth((*A, 0))]
    ds = [dets((*A, 0, 0.9), (*shifted(A, 0.02), 0, 0.8))]
    m = darknet_map(ds, gts, ["a"])
    assert m.map50 == pytest.approx(1.0)  # the duplicate ranks after the recall is complete
    assert (m.tp, m.fp) == (1, 1)
    # below conf_thresh a detection counts for AP only
    low = [dets((*A, 0, 0.9), (*shifted(A, 0.02), 0, 0.1))]
    assert (darknet_map(low, gts, ["a"]).tp, darknet_map(low, gts, ["a"]).fp) == (1, 0)


def test_iou_threshold_is_strict_and_matches_the_class():
    gts = [truth((*A, 0))]
    # IoU = (0.2 - dx) / (0.2 + dx) = 0.5 at dx = 0.2 / 3: strict `>` makes it an FP
    half = [dets((*shifted(A, 0.2 / 3 - 1e-9), 0, 0.9))]
    assert darknet_map(half, gts, ["a"]).map50 == pytest.approx(1.0)
    half = [dets((*shifted(A, 0.2 / 3 + 1e-9), 0, 0.9))]
    assert darknet_map(half, gts, ["a"]).map50 == 0.0
    wrong_class = [dets((*A, 1, 0.9))]
    m = darknet_map(wrong_class, gts, ["a", "b"])
    assert [c.ap for c in m.per_class] == [0.0, 0.0]
    assert (m.per_class[1].fp, m.fp) == (1, 1)


def test_multiple_classes_and_a_class_without_truth():
    gts = [truth((*A, 0), (*B, 1)), truth((*C, 1))]
    ds = [dets((*A, 0, 0.9), (*B, 1, 0.3)), dets((*FAR, 1, 0.6), (*FAR, 2, 0.5))]
    m = darknet_map(ds, gts, NAMES)
    # class a: 1. class b ranks FP(.6) TP(.3): recall 1/2 at precision 1/2, AP 1/4.
    # class c has no truth: AP 0, and still in the mean (Darknet's rule)
    assert [c.ap for c in m.per_class] == pytest.approx([1.0, 0.25, 0.0])
    assert m.map50 == pytest.approx(1.25 / 3)
    assert [(c.tp, c.fp, c.truths) for c in m.per_class] == [(1, 0, 1), (1, 1, 2), (0, 1, 0)]
    # COCO leaves class c out of its mean
    # (class b: precision 1/2 at the 51 levels up to recall 1/2)
    assert coco_map(ds, gts, 3)[1] == pytest.approx((1.0 + 0.5 * 51 / 101) / 2)


def test_11_vs_101_vs_all_point():
    # 3 truths; ranks TP FP TP FP FP: P 1 .5 .67 .5 .4, R 1/3 1/3 2/3 2/3 2/3
    flags = [True, False, True, False, False]
    assert average_precision(flags, 3, 0) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)
    assert average_precision(flags, 3, 11) == pytest.approx((4 * 1 + 3 * 2 / 3) / 11)
    assert average_precision(flags, 3, 101) == pytest.approx((34 * 1 + 33 * 2 / 3) / 101)
    # the same through darknet_map: entries ranked by score over two images
    gts = [truth((*A, 0), (*B, 0)), truth((*C, 0))]
    ds = [dets((*A, 0, 0.9), (*FAR, 0, 0.8), (*shifted(A, 0.01), 0, 0.4)),
          dets((*C, 0, 0.7), (*FAR, 0, 0.3))]
    assert darknet_map(ds, gts, ["a"]).map50 == pytest.approx(5 / 9)
    assert darknet_map(ds, gts, ["a"], map_points=11).map50 == pytest.approx(6 / 11)
    assert darknet_map(ds, gts, ["a"], map_points=101).map50 == pytest.approx(56 / 101)
    with pytest.raises(ValueError, match="map points"):
        average_precision(flags, 3, 1)


def test_thresholded_statistics_follow_detection_order_not_score():
    # the first entry of the image claims the truth at conf .25, whatever its score (§7 step 3)
    gts = [truth((*A, 0))]
    good, poor = shifted(A, 0.2 / 19), shifted(A, 0.2 / 3 * 0.9)  # IoU .9 and about .54
    first_low = [dets((*good, 0, 0.5), (*poor, 0, 0.9))]
    m = darknet_map(first_low, gts, ["a"])
    assert (m.tp, m.fp) == (1, 1)
    assert m.avg_iou == pytest.approx(0.9 / 2)
    assert m.map50 == pytest.approx(1.0)  # AP ranks by score: the .9 one is the TP


def test_difficult_truths_remove_entries_from_ap_only():
    gts = [ImageBoxes.of([A], [0], difficult=[[*B, 0]])]
    ds = [dets((*B, 0, 0.9), (*A, 0, 0.8))]
    m = darknet_map(ds, gts, ["a"])
    assert m.map50 == pytest.approx(1.0)  # the detection of the difficult object is dropped
    assert (m.tp, m.fp) == (1, 1)  # but still an FP at conf .25 (§9 #21)


def test_entries_from_probs_and_truth_padding():
    boxes = torch.tensor([A, B])
    probs = torch.tensor([[0.0, 0.6, 0.3], [0.8, 0.0, 0.0]])
    e = entries_from_probs(boxes, probs)
    assert e.classes.tolist() == [1, 2, 0]
    assert e.scores.tolist() == pytest.approx([0.6, 0.3, 0.8])
    assert torch.allclose(e.boxes, torch.tensor([A, A, B], dtype=torch.float64))
    padded = torch.tensor([[*A, 2], [*B, 1], [0, 0, 0, 0, 0], [*C, 0]])
    t = ImageBoxes.from_truth(padded)
    assert t.classes.tolist() == [2, 1]  # rows end at the first x == 0
    assert ImageBoxes.from_labels([[1, *A]]).classes.tolist() == [1]


def test_coco_map50_95_hand_computed():
    gts = [truth((*A, 0))]
    iou = 0.72  # true positive for IoU thresholds .50 .55 .60 .65 .70, not from .75 on
    dx = 0.2 * (1 - iou) / (1 + iou)
    ds = [dets((*shifted(A, dx), 0, 0.9))]
    map50_95, ap50 = coco_map(ds, gts, 1)
    assert ap50 == pytest.approx(1.0)
    assert map50_95 == pytest.approx(0.5)
    assert coco_map([dets()], gts, 1) == (0.0, 0.0)


def random_scene(seed, counts=(7, 11, 13), images=30):
    """Truths on a 4x4 grid (disjoint, so a detection overlaps at most one truth by IoU > .5),
    detections: jittered hits, duplicates, misses, wrong classes and random boxes; distinct
    continuous scores (no ties)."""
    g = torch.Generator().manual_seed(seed)
    cells = [[] for _ in range(images)]
    for c, n in enumerate(counts):
        for _ in range(n):
            while True:
                img, cell = int(torch.randint(images, (1,), generator=g)), int(
                    torch.randint(16, (1,), generator=g))
                if cell not in [k for k, _ in cells[img]]:
                    cells[img].append((cell, c))
                    break
    gts, ds = [], []
    for img in range(images):
        t_rows, d_rows = [], []
        for cell, c in cells[img]:
            size = 0.08 + 0.12 * torch.rand(2, generator=g)
            box = ((cell % 4 + 0.5) / 4, (cell // 4 + 0.5) / 4, float(size[0]), float(size[1]))
            t_rows.append((*box, c))
            for _ in range(int(torch.randint(3, (1,), generator=g))):  # 0, 1 or 2 detections
                jitter = 0.06 * (torch.rand(4, generator=g) - 0.5)
                d = (box[0] + float(jitter[0]), box[1] + float(jitter[1]),
                     box[2] * (1 + 2 * float(jitter[2])), box[3] * (1 + 2 * float(jitter[3])))
                cls = c if float(torch.rand(1, generator=g)) > 0.1 else (c + 1) % len(counts)
                d_rows.append((*d, cls, float(torch.rand(1, generator=g))))
        for _ in range(int(torch.randint(3, (1,), generator=g))):
            xy = torch.rand(2, generator=g)
            wh = 0.02 + 0.1 * torch.rand(2, generator=g)
            d_rows.append((float(xy[0]), float(xy[1]), float(wh[0]), float(wh[1]),
                           int(torch.randint(len(counts), (1,), generator=g)),
                           float(torch.rand(1, generator=g))))
        gts.append(ImageBoxes.of([r[:4] for r in t_rows], [r[4] for r in t_rows],
                                 size=(416, 320)))
        ds.append(dets(*d_rows) if d_rows else dets())
    return ds, gts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_darknet_101_point_equals_pycocotools_ap50(seed):
    ds, gts = random_scene(seed)
    darknet = darknet_map(ds, gts, NAMES, map_points=101).map50
    _, coco_ap50 = coco_map(ds, gts, 3)
    assert 0.2 < darknet < 0.95  # a non-trivial scene
    assert darknet == pytest.approx(coco_ap50, abs=1e-9)
    # all-point AP is close to, not equal to, the 101-point one
    assert darknet_map(ds, gts, NAMES).map50 == pytest.approx(darknet, abs=0.02)


def crowded_scene(seed, images=12, classes=9):
    """Detections COCOeval cuts: up to 160 per image and class (more than its maxDets 100),
    scores from 6 values (ties within and across images), boxes near the truths (matches at
    every IoU threshold), objects not to score, images of different sizes."""
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)

    ds, gts = [], []
    for i in range(images):
        n = int(torch.randint(0, 8, (1,), generator=g))
        truth_boxes = torch.cat([uniform(n, 2, low=0.2, high=0.8),
                                 uniform(n, 2, low=0.05, high=0.3)], 1)
        truth_classes = torch.randint(classes, (n,), generator=g)
        k = int(torch.randint(0, 400, (1,), generator=g))
        near = truth_boxes[torch.randint(n, (k,), generator=g)] if n else uniform(k, 4)
        boxes = (near * uniform(k, 4, low=0.8, high=1.2)).clamp(0.01, 1)
        few = torch.randint(4, (k,), generator=g)  # most boxes in a few classes: > 100 each
        cls = torch.where(few < 3, few, torch.randint(classes, (k,), generator=g))
        scores = torch.randint(1, 7, (k,), generator=g).double() / 8
        hard = torch.cat([uniform(2, 4, low=0.1, high=0.5),
                          torch.randint(classes, (2, 1), generator=g).double()], 1)
        size = (int(torch.randint(64, 640, (1,), generator=g)), 320 + 16 * i)
        gts.append(ImageBoxes.of(truth_boxes, truth_classes,
                                 difficult=hard if i % 3 == 0 else None, size=size))
        ds.append(ImageBoxes.of(boxes, cls, scores))
    return ds, gts


def pycocotools_stats(ds, gts, classes, cut=False):
    """COCOeval's 12 stats the plain way (every box its own annotation, COCO.loadRes, the
    default parameters); `cut`: only the entries `_top_per_class` keeps."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (det, gt) in enumerate(zip(ds, gts, strict=True), start=1):
        w, h = gt.size
        images.append({"id": image_id, "width": w, "height": h})
        hard = gt.difficult if gt.difficult is not None else torch.zeros(0, 5)
        for rows, crowd in ((torch.cat([gt.boxes, gt.classes[:, None]], 1), 0), (hard, 1)):
            for cx, cy, bw, bh, c in rows.tolist():
                box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": round(c) + 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": crowd})
        keep = _top_per_class(det.scores, det.classes, 100) if cut else range(len(det.scores))
        for j in keep:
            cx, cy, bw, bh = det.boxes[j].tolist()
            results.append({"image_id": image_id, "category_id": int(det.classes[j]) + 1,
                            "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                            "score": float(det.scores[j])})
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = COCO()
        gt_api.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": c + 1} for c in range(classes)]}
        gt_api.createIndex()
        evaluator = COCOeval(gt_api, gt_api.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_map_is_pycocotools_on_every_box(seed):
    """The cut to each image and class's top 100 (ties: entry order, as COCOeval's mergesort)
    changes none of COCOeval's 12 stats; coco_map, which also skips the area ranges and
    maxDets it does not read, gives its two exactly."""
    ds, gts = crowded_scene(seed)
    counts = torch.bincount(torch.cat([d.classes + 9 * i for i, d in enumerate(ds)]))
    assert int(counts.max()) > 100  # the cut cuts
    every_box = pycocotools_stats(ds, gts, 9)
    assert 0 < every_box[0] < every_box[1] < 1  # a non-trivial scene
    assert pycocotools_stats(ds, gts, 9, cut=True) == every_box
    assert coco_map(ds, gts, 9) == (every_box[0], every_box[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_darknet_map_pairs_each_entry_with_its_own_images_truths(seed):
    """All images are scored at once; the counts at conf_thresh are each image's own (an
    entry never matches a truth or a difficult object of another image)."""
    ds, gts = crowded_scene(seed)
    names = [str(c) for c in range(9)]
    together = darknet_map(ds, gts, names, conf_thresh=0.3)
    alone = [darknet_map([d], [g], names, conf_thresh=0.3) for d, g in zip(ds, gts, strict=True)]
    assert together.tp > 5 and together.fp > 100
    for c in range(9):
        assert together.per_class[c].tp == sum(m.per_class[c].tp for m in alone)
        assert together.per_class[c].fp == sum(m.per_class[c].fp for m in alone)
    iou_sum = sum(m.avg_iou * (m.tp + m.fp) for m in alone)
    assert together.avg_iou * (together.tp + together.fp) == pytest.approx(iou_sum, rel=1e-12)


def test_coco_map_evaluates_only_the_area_range_it_reads(monkeypatch):
    from pycocotools.cocoeval import COCOeval

    calls = []
    evaluate_image = COCOeval.evaluateImg
    monkeypatch.setattr(COCOeval, "evaluateImg",
                        lambda self, *a: calls.append(a[2]) or evaluate_image(self, *a))
    ds, gts = crowded_scene(0, images=4, classes=3)
    coco_map(ds, gts, 3)
    assert calls == [[0, 1e10]] * (4 * 3)  # 'all' only, once per image and class


def test_top_per_class_per_image_keeps_entry_order_and_the_first_of_ties():
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5, 0.0, 0.5, 0.7])
    classes = torch.tensor([0, 0, 0, 0, 0, 1, 0])
    images = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    assert _top_per_class(scores, classes, 2).tolist() == [2, 5, 6]  # one image: .9 and .7
    assert _top_per_class(scores, classes, 2, images).tolist() == [0, 2, 5, 6]
    assert _top_per_class(scores, classes, 3, images).tolist() == [0, 1, 2, 5, 6]  # no 0 score


def test_where_darknet_and_coco_differ():
    """The definitional differences the README lists, each shown once."""
    # 1. a duplicate whose best truth is taken is an FP in Darknet; COCO lets it match the
    #    next-best free truth with IoU >= .5
    a2 = shifted(A, 0.02)  # IoU(A, a2) = .82: two heavily overlapping objects
    gts = [truth((*A, 0), (*a2, 0))]
    ds = [dets((*A, 0, 0.9), (*shifted(A, 0.005), 0, 0.8))]  # the 2nd is closer to A than to a2
    assert darknet_map(ds, gts, ["a"], map_points=101).map50 == pytest.approx(51 / 101)
    assert coco_map(ds, gts, 1)[1] == pytest.approx(1.0)
    # 2. IoU exactly at the threshold: Darknet needs > .5, COCO >= .5
    gts = [truth((0.5, 0.5, 0.5, 0.5, 0))]
    ds = [dets((0.5, 0.5, 0.5, 0.25, 0, 0.9))]  # IoU exactly 1/2
    assert darknet_map(ds, gts, ["a"], map_points=101).map50 == 0.0
    assert coco_map(ds, gts, 1)[1] == pytest.approx(1.0)
    # 3. recall levels: numpy's linspace(0, 1, 101)[35] is a hair above 0.35 = 7/20, so a
    #    recall that stops exactly at .35 reaches one level fewer in COCO
    gts = [truth(*[((i % 5 + 0.5) / 5, (i // 5 + 0.5) / 5, 0.1, 0.1, 0) for i in range(20)])]
    ds = [dets(*[(*gts[0].boxes[i].tolist(), 0, 0.9 - i / 100) for i in range(7)])]
    darknet = darknet_map(ds, gts, ["a"], map_points=101).map50
    assert darknet == pytest.approx(36 / 101)
    assert coco_map(ds, gts, 1)[1] == pytest.approx(35 / 101)
    # 4. classes without truth: AP 0 in Darknet's mean, left out of COCO's (see the
    #    multiple-classes test)


def test_evaluate_json_and_table():
    gts = [truth((*A, 0), (*B, 1))]
    ds = [dets((*A, 0, 0.9), (*FAR, 1, 0.5))]
    m = evaluate(ds, gts, ["cat", "dog"])
    js = m.to_json()
    assert js["map50"] == pytest.approx(0.5)
    assert js["per_class"] == {"cat": 1.0, "dog": 0.0}
    assert js["map50_95"] == pytest.approx(0.5)
    assert js["thresholds"] == {"detection": 0.005, "nms": 0.45, "iou": 0.5, "conf": 0.25,
                                "map_points": 0}
    for key in ("precision", "recall", "f1", "avg_iou"):
        assert math.isfinite(js[key])
    table = m.table()
    assert "cat" in table and "100.00%" in table and "mAP@0.50) = 0.500000" in table
    assert evaluate(ds, gts, ["cat", "dog"], coco=False).map50_95 is None


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="truth lists"):
        darknet_map([dets()], [], ["a"])
    with pytest.raises(ValueError, match="outside"):
        darknet_map([dets((*A, 3, 0.5))], [truth((*A, 0))], ["a"])
    with pytest.raises(ValueError, match="scores"):
        ImageBoxes.of([A], [0], [0.5, 0.6])
