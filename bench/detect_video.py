"""Video detection throughput: `--detect VIDEO` end to end (decode, prepare, forward, decode+NMS,
draw, encode H.264, JSON lines) against the bare forward at the same batch, on the CPU.

    python bench/detect_video.py [--cfg cfg/yolov3-tiny.cfg] [--frames 96] [--batch 4]
                                 [--size 640x480] [--repeat 3] [--threads N] [--plot PNG]

The clip is generated (darkcfg.detect.video.moving_shapes_clip). The network has the initial
weights of seed 0 with its objectness biases shifted until 1 to 20 objects pass thresh .25 on
the first frame (a trained net's typical count; drawing thousands of noise boxes is not the case to
time). Each repeat times the bare forward on every frame (prepared beforehand, in batches of
--batch) and then the whole pipeline, back to back, so a busy machine slows both alike; the
medians and their ratio are printed (target: pipeline >= 85% of the forward's frames/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darkcfg.detect.decode import (  # noqa: E402
    decode,
    found_objects,
    head_indices,
    load_image,
    nms,
    resize_image,
    run_heads,
)
from darkcfg.detect.video import detect_video, moving_shapes_clip  # noqa: E402
from darkcfg.model import build_network  # noqa: E402


def lower_objectness(net, shift: float) -> None:
    for i in head_indices(net):
        layer, conv = net.layers[i], net.layers[i - 1]
        bias = next(p for name, p in conv.named_parameters() if name.endswith("bias"))
        box = layer.entries - 1 - layer.classes
        with torch.no_grad():
            for a in range(layer.n):
                bias[a * layer.entries + box] -= shift


def calibrate(net, x: torch.Tensor, boxes: int = 20) -> int:
    """Shift the objectness biases until 1..`boxes` objects are found on the first frame
    (thresh .25, after NMS); returns that count."""
    def found() -> int:
        with torch.no_grad():
            dets = nms(decode(net, run_heads(net, x[:1]), 0.25), 0.45)[0]
        return len(found_objects(dets, 0.25, 1, 1))

    low, high, now = 0.0, 20.0, 0.0  # bisect the shift: low finds too many, high none
    count = found()
    for _ in range(40):
        if 1 <= count <= boxes:
            return count
        if count > boxes:
            low = now
        else:
            high = now
        step = (low + high) / 2 - now
        lower_objectness(net, step)
        now += step
        count = found()
    lower_objectness(net, low - now)  # none in range: the last shift that finds some
    return found()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default=str(ROOT / "cfg" / "yolov3-tiny.cfg"))
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", default="640x480")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plot", default=None, metavar="PNG", help="bar chart of the medians")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    net, _, _ = build_network(args.cfg, [], "alexeyab", 0)
    net.eval()
    tmp = Path(tempfile.mkdtemp(prefix="detect_video_"))
    clip = tmp / "clip.mp4"
    moving_shapes_clip(clip, frames=args.frames, width=width, height=height, seed=0)
    import av

    with av.open(str(clip)) as c:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1)
                  for f in c.decode(video=0)]
    x = torch.cat([resize_image(load_image(f)[None], net.info.width, net.info.height)
                   for f in frames])
    calibrate(net, x)
    heads = head_indices(net)
    batches = [x[i:i + args.batch].clone() for i in range(0, len(x), args.batch)]

    def forward() -> float:
        start = time.perf_counter()
        for batch in batches:
            run_heads(net, batch, heads)
        return len(x) / (time.perf_counter() - start)

    def pipeline() -> tuple[float, int]:
        r = detect_video(net, str(clip), tmp / "out", batch_size=args.batch, progress=False)
        assert r.frames == len(frames)
        return r.fps, r.objects

    forward()  # warm-up
    pipeline()
    bare, whole = [], []
    objects = 0
    for _ in range(args.repeat):
        bare.append(forward())
        fps, objects = pipeline()
        whole.append(fps)
    f, w = statistics.median(bare), statistics.median(whole)
    print(f"{Path(args.cfg).name} {net.info.width}x{net.info.height}, clip {args.frames} frames "
          f"{width}x{height} H.264, batch {args.batch}, {torch.get_num_threads()} torch threads, "
          f"{objects} objects drawn")
    print(f"bare forward:  {f:6.2f} frames/s  (runs: {', '.join(f'{v:.2f}' for v in bare)})")
    print(f"whole pipeline: {w:6.2f} frames/s  (runs: {', '.join(f'{v:.2f}' for v in whole)})")
    print(f"pipeline / forward = {w / f:.3f}  (target >= 0.85)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        ax.barh(["bare forward", "whole pipeline"], [f, w], color=["#888", "#2a7"])
        ax.set_xlabel("frames/s (median)")
        ax.set_title(f"{Path(args.cfg).name}, batch {args.batch}, {width}x{height}: "
                     f"pipeline = {100 * w / f:.0f}% of forward", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
