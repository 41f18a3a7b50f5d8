"""darkcfg's anchors against Darknet's calc_anchors algorithm (one random start, srand(time(0)))
on the same boxes: the average IoU of the printed anchors.

    python bench/anchors.py [--draws 20]

Two sets of boxes at 416x416: the embedded detection set's training labels (1024 images), and
a clustered set (6 clusters of 40 boxes with 3% log-normal spread, one tiny cluster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darkcfg.data.detection.anchors import (  # noqa: E402
    average_iou,
    darknet_kmeans,
    data_boxes,
    fit_anchors,
    printed,
    scaled,
)
from darkcfg.model import build_network  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=20)
    args = p.parse_args()
    net, _, _ = build_network(str(ROOT / "cfg" / "yolov3-tiny.cfg"), [], "alexeyab", 0,
                              device="meta")
    embedded, _ = scaled(data_boxes(net, None, 0)[0], 416, 416)
    rng = np.random.default_rng(0)
    centres = np.array([(8, 10), (20, 30), (60, 40), (90, 120), (160, 100), (330, 300)])
    clustered = np.concatenate([c * np.exp(rng.normal(0, 0.03, (40, 2))) for c in centres])
    print("| boxes | k | Darknet's algorithm, min / median / max over "
          f"{args.draws} draws | darkcfg, seeds 0-4 min / max |")
    print("|---|---|---|---|")
    for label, boxes in (("embedded set", embedded), ("clustered", clustered)):
        for k in (6, 9):
            theirs = [average_iou(boxes, printed(darknet_kmeans(boxes, k, s), 416))
                      for s in range(args.draws)]
            ours = [fit_anchors(boxes, k, 416, seed=s).avg_iou for s in range(5)]
            print(f"| {label} ({len(boxes)}) | {k} | {100 * min(theirs):.2f} / "
                  f"{100 * statistics.median(theirs):.2f} / {100 * max(theirs):.2f} % | "
                  f"{100 * min(ours):.2f} / {100 * max(ours):.2f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
