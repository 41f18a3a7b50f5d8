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

import torch  # noqa: E402
from torchvision.ops import box_convert, box_iou  # noqa: E402

import darkcfg.cli.flags as runner  # noqa: E402
from darkcfg.data.detection.embedded import EmbeddedDetection, class_name  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default=str(ROOT / "cfg" / "yolov3-tiny.cfg"))
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
            truth = box_convert(torch.from_numpy(boxes[:, :4]) * s, "cxcywh", "xyxy")
            pred = box_convert(torch.tensor([d["bbox"] for d in mine]).reshape(-1, 4),
                               "xywh", "xyxy")
            same_class = torch.tensor([[d["category_id"] == int(c) for d in mine]
                                       for c in boxes[:, 4]]).reshape(len(boxes), len(mine))
            hits = (box_iou(truth, pred) >= 0.5) & same_class
            total += len(boxes)
            found += int(hits.any(1).sum())
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
