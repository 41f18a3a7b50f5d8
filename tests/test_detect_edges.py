"""`darkcfg detect` and `predict` on hostile input: what a stranger's files, pipes and names
did to them (docs/robustness.md, "Detection")."""

from __future__ import annotations

import json

import numpy as np

from tests.test_detect import run_cli, tiny_cfg


def save(path, h: int, w: int, seed: int = 0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_coco_results_leave_out_boxes_with_no_area_in_the_image():
    # a box in a letterbox's padding (below a 200x10 image) was written with a negative height
    # (Darknet's print_cocos clips each corner on one side only): not a COCO box
    from darkcfg.detect.decode import Found
    from darkcfg.detect.run import coco_results

    below = Found(0, "", 0.5, (10.0, 20.0, 30.0, 40.0))  # wholly under a 200x10 image
    partly = Found(1, "", 0.6, (-5.0, 4.0, 30.0, 40.0))
    right = Found(2, "", 0.7, (210.0, 2.0, 230.0, 8.0))  # wholly right of it
    out = coco_results([below, partly, right], 3, 200, 10)
    assert out == [{"image_id": 3, "category_id": 1, "bbox": [0.0, 4.0, 30.0, 6.0],
                    "score": 0.6}]


def test_letterboxed_detections_json_holds_only_boxes_inside_the_image(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    image = save(tmp_path / "thin.png", 10, 200)
    out = tmp_path / "o"
    assert run_cli(cfg, "--detect", image, "--letter-box", "--thresh", "0.05", "--out", out,
                   "--no-progress") == 0
    printed = sum("%\t(" in line for line in capsys.readouterr().out.splitlines())
    results = json.loads((out / "detections.json").read_text())
    assert results and all(r["bbox"][2] > 0 and r["bbox"][3] > 0 for r in results)
    assert len(results) < printed  # the boxes in the padding are printed, not in the JSON
