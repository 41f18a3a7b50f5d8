"""Detector validation speed: what `darkcfg valid` and training's periodic validation do
(forward, decode + NMS at Darknet's thresh .005, Darknet's mAP, COCO mAP), against the forward
alone and, for COCO mAP, against pycocotools used the plain way.

    python bench/validation.py [--cfg CFG] [--size 96] [--data SRC] [--weights W] [--repeat 3]
                               [--threads N]

Default: cfg/yolov4-tiny.cfg at 96x96 on the embedded validation split (256 images) with the
initial weights of seed 0, the worst case: an untrained detector passes thresh .005 nearly
everywhere (~190k entries after NMS). Trained weights (`--weights`, with their `--data`) give a
few entries an image. Each repeat times, back to back on the same split so a busy machine slows
all alike: the forward alone over the loader; decode + NMS + entries on its outputs;
`network_detections` (all of it: forward, decode, NMS, entries); `darknet_map`; `coco_map`;
and the baseline, pycocotools the plain way on the same detections (a result dict per entry,
`COCO.loadRes`, COCOeval's default parameters: four area ranges, maxDets 1/10/100), whose two
numbers must equal coco_map's. Prints medians, wall and process CPU time (the CPU time moves
less on a shared machine), and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darkcfg.cli.valid import parse  # noqa: E402
from darkcfg.detect.decode import (  # noqa: E402
    decode,
    head_indices,
    net_letter_box,
    nms,
    run_heads,
)
from darkcfg.detect.metrics import (  # noqa: E402
    MAP_DETECTION_THRESH,
    MAP_NMS_THRESH,
    coco_map,
    darknet_map,
    entries_from_probs,
    network_detections,
)
from darkcfg.train.session import (  # noqa: E402
    eval_loader,
    prepare_eval,
    weights_run_data,
    workers_for,
)


def plain_pycocotools(detections, truths, classes: int) -> tuple[float, float]:
    """COCO mAP@[.5:.95] and AP50 as the COCO API's own example computes them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (det, gt) in enumerate(zip(detections, truths, strict=True), start=1):
        w, h = gt.size
        images.append({"id": image_id, "width": w, "height": h})
        rows = [(*b, c, 0) for b, c in zip(gt.boxes.tolist(), gt.classes.tolist(), strict=True)]
        if gt.difficult is not None:
            rows += [(*r[:4], round(r[4]), 1) for r in gt.difficult.tolist()]
        for cx, cy, bw, bh, c, crowd in rows:
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": c + 1, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": crowd})
        for (cx, cy, bw, bh), c, p in zip(det.boxes.tolist(), det.classes.tolist(),
                                          det.scores.tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": c + 1, "score": p,
                            "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = COCO()
        gt_api.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": c + 1} for c in range(classes)]}
        gt_api.createIndex()
        evaluator = COCOeval(gt_api, gt_api.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default=str(ROOT / "cfg" / "yolov4-tiny.cfg"))
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--data", default=None)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    argv = [args.cfg, "--set", f"width={args.size}", "--set", f"height={args.size}"]
    argv += ["--data", args.data] if args.data else []
    argv += ["--weights", args.weights] if args.weights else []
    opts = weights_run_data(parse(argv).run)
    trainer, _ = prepare_eval(opts)
    task = trainer.task
    splits = task.open_data(opts.data, opts.seed, opts.classes, need="valid")
    _, val_set = task.prepare(splits, trainer.cfg, opts.seed)
    loader = eval_loader(val_set, max(trainer.cfg.mini_batch, 1), trainer.device,
                         workers_for(opts, splits, val_set, trainer.device, 1),
                         collate=task.collate)
    net, names, heads = trainer.net, task.names, head_indices(trainer.net)
    net.eval()

    letter = net_letter_box(net)

    def forward():
        """The heads' outputs of every batch, with the batch's image sizes."""
        with torch.no_grad():
            return [(run_heads(net, images.to(trainer.device), heads), sizes.tolist(),
                     tuple(images.shape[-1:-3:-1])) for images, _, sizes, *_ in loader]

    def decode_nms(batches):
        """What network_detections does after the forward: decode at .005, NMS .45, entries."""
        entries = []
        for outputs, sizes, input_size in batches:
            found = decode(net, outputs, MAP_DETECTION_THRESH, image_size=sizes,
                           letter_box=letter, input_size=input_size)
            found = nms([replace(d, probs=d.probs[:, :len(names)]) for d in found],
                        MAP_NMS_THRESH)
            entries += [entries_from_probs(d.boxes, d.probs) for d in found]
        return entries

    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # process CPU time: less moved by other processes

    def timed(name, fn, *args):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - start)
        cpu.setdefault(name, []).append(time.process_time() - start_cpu)
        return out

    forward()  # warm-up: kernels built, weights transformed
    for _ in range(args.repeat):
        batches = timed("forward", forward)
        timed("decode_nms", decode_nms, batches)
        dets, truths = timed("detections", network_detections, net, loader, trainer.device,
                             len(names))
        timed("darknet_map", darknet_map, dets, truths, names)
        ours = timed("coco_map", coco_map, dets, truths, len(names))
        plain = timed("plain", plain_pycocotools, dets, truths, len(names))
        if ours != plain:
            raise SystemExit(f"coco_map {ours} differs from plain pycocotools {plain}")
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    entries = sum(len(d.scores) for d in dets)
    total = med["detections"] + med["darknet_map"] + med["coco_map"]
    print(f"{Path(args.cfg).name} {args.size}x{args.size}, {len(dets)} images, {entries} "
          f"entries, {torch.get_num_threads()} threads, median of {args.repeat}:")
    for k in ("forward", "decode_nms", "detections", "darknet_map", "coco_map", "plain"):
        print(f"  {k:<12} {med[k]:8.3f} s wall {med_cpu[k]:8.3f} s CPU")
    print(f"validation {total:.2f} s = {total / med['forward']:.2f}x the forward; decode + NMS "
          f"{med['decode_nms']:.2f} s; coco_map {med['coco_map']:.2f} s = "
          f"{med['coco_map'] / med['plain']:.2f}x plain pycocotools ({med['plain']:.2f} s), "
          f"same numbers {ours}")
    print(f"in CPU time: coco_map {med_cpu['coco_map'] / med_cpu['plain']:.2f}x plain; "
          f"darknet_map + coco_map {med_cpu['darknet_map'] + med_cpu['coco_map']:.2f} s")


if __name__ == "__main__":
    main()
