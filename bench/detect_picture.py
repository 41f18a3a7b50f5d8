"""The README's picture of a trained detector: `--detect` on embedded validation images.

    python bench/detect_picture.py --weights runs/bench-detect/yolov3-tiny/yolov3-tiny_best.weights
        [--cfg cfg/yolov3-tiny.cfg] [--size 160] [--count 8] [--image-size 320]
        [--thresh .25] [--out docs/detect-trained.jpg]

Writes the first `count` images of the embedded detection set's validation split (the images
the training run validated on, rendered at `image-size` pixels so the picture is legible; the
network sees them resized to its `size`), runs `runner.py --detect` on them exactly as a user
would (Darknet's resize, decode, NMS, boxes drawn by torchvision's draw_bounding_boxes), and
tiles the drawn images into one JPEG. Prints runner's lines and how many of the truth boxes a
detection of the right class covers at IoU >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runner  # noqa: E402
from training.detection.embedded import EmbeddedDetection, class_name  # noqa: E402


def iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="cfg/yolov3-tiny.cfg")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--size", type=int, default=160, help="the network input it was trained at")
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--classes", type=int, default=8, help="classes of the embedded set (8)")
    ap.add_argument("--net-classes", type=int, default=80)
    ap.add_argument("--thresh", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "detect-trained.jpg"))
    args = ap.parse_args(argv)
    val = EmbeddedDetection(args.count, args.classes, 3, args.image_size, args.image_size,
                            args.seed, 1)
    with tempfile.TemporaryDirectory() as tmp:
        images, drawn = Path(tmp) / "images", Path(tmp) / "drawn"
        images.mkdir()
        truths = {}
        for i in range(args.count):
            img, boxes = val[i]
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(images / f"val{i:02d}.png")
            truths[f"val{i:02d}"] = boxes
        names = Path(tmp) / "embedded.names"
        names.write_text("".join(class_name(k) + "\n" for k in range(args.net_classes)))
        code = runner.main([args.cfg, "--weights", args.weights, "--detect", str(images),
                            "--names", str(names), "--thresh", str(args.thresh),
                            "--out", str(drawn), "--no-progress",
                            "--set", f"width={args.size}", "--set", f"height={args.size}"])
        if code != 0:
            return code
        found = total = 0
        dets = json.loads((drawn / "detections.json").read_text())
        s = args.image_size
        for stem, boxes in truths.items():
            mine = [d for d in dets if str(d["image_id"]) == stem]
            for x, y, w, h, c in boxes.tolist():
                total += 1
                found += any(d["category_id"] == int(c) and iou(
                    (x, y, w, h), ((d["bbox"][0] + d["bbox"][2] / 2) / s,
                                   (d["bbox"][1] + d["bbox"][3] / 2) / s,
                                   d["bbox"][2] / s, d["bbox"][3] / s)) >= 0.5 for d in mine)
        tiles = [Image.open(drawn / f"{stem}.jpg") for stem in truths]
        cols = min(4, len(tiles))
        rows = -(-len(tiles) // cols)
        sheet = Image.new("RGB", (cols * s + (cols - 1) * 4, rows * s + (rows - 1) * 4), "white")
        for k, tile in enumerate(tiles):
            sheet.paste(tile, ((k % cols) * (s + 4), (k // cols) * (s + 4)))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.out, quality=90)
    print(f"{found} of {total} truth boxes found (right class, IoU >= 0.5) at thresh "
          f"{args.thresh}; picture: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
