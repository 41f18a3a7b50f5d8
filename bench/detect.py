"""Detection speed: `--detect` end to end (image file -> boxes: read, resize, forward, decode,
NMS; drawing off) against the forward pass alone, yolov4-tiny at 416x416 on the CPU, batch 1.

    python bench/detect.py [--repeat 15] [--threads N] [--cfg CFG] [--weights W]
                           [--image both|photo|noise] [--device cuda]

Weights: the oracle's calibrated yolov4-tiny weights when ../shared is there (else the initial
weights of seed 0). Two regimes, both printed:
  * typical: the objectness biases of the convs before the heads lowered until at most 40
    boxes pass thresh .25 before NMS, as for a trained net on a real photo;
  * dense: the weights as they are (nearly every cell passes: the NMS worst case).
Each repeat times the forward alone, then decode+NMS on that forward's outputs, then the whole
`detect()` call, back to back, so a busy machine slows all alike; medians are printed, and the
decode+NMS share of the forward (target <= 10%).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builders import build  # noqa: E402
from darkcfg.detect.decode import decode, detect, head_indices, nms  # noqa: E402

SHARED = ROOT.parent / "shared" / "darknet"
CFG = SHARED / "corpus" / "alexeyab" / "yolov4-tiny.cfg"
if not CFG.exists():  # ../shared does not travel (a lent GPU machine): the repo's copy
    CFG = ROOT / "cfg" / "yolov4-tiny.cfg"
ORACLE_WEIGHTS = ROOT / ".oracle_cache" / "yolov4-tiny.calibrated.weights"


def lower_objectness(net, shift: float) -> None:
    """Subtract `shift` from the bias of every objectness channel feeding a head."""
    for i in head_indices(net):
        layer = net.layers[i]
        conv = net.layers[i - 1]  # the conv that feeds the head
        bias = next(p for name, p in conv.named_parameters() if name.endswith("bias"))
        box = layer.entries - 1 - layer.classes
        with torch.no_grad():
            for a in range(layer.n):
                bias[a * layer.entries + box] -= shift


def calibrate(net, image: Path, boxes: int) -> float:
    """Lower the objectness biases in steps of 0.25 until at most `boxes` pass .25 (at least
    one where possible). Returns the total shift."""
    from builders.boxes import resize_image
    from darkcfg.detect.decode import load_image

    x = resize_image(load_image(image)[None], net.info.width, net.info.height)
    return calibrate_input(net, x.to(next(net.parameters()).device), boxes)


def calibrate_input(net, x: torch.Tensor, boxes: int) -> float:
    """`calibrate` on a network input (1, C, H, W) already at the network's size."""
    shift = 0.0
    with torch.no_grad():
        while len(decode(net, net(x, collect=head_indices(net)), 0.25)[0]) > boxes:
            lower_objectness(net, 0.25)
            shift += 0.25
    return shift


def timed(fn):
    """Seconds fn() takes, its work on a GPU finished too; and its result."""
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def run(net, image: Path, repeat: int, label: str) -> dict:
    """The forward as `detect` runs it (run_heads: fp16 autocast on CUDA), decode + NMS of its
    outputs, and `detect()` of the file, on the net's device."""
    heads = head_indices(net)
    from builders.boxes import resize_image
    from darkcfg.detect.decode import load_pixels, run_heads

    device = next(net.parameters()).device
    x = resize_image(load_pixels(image)[None], net.info.width, net.info.height).to(device)
    with torch.no_grad():
        for _ in range(2):  # warm-up
            outputs = run_heads(net, x, heads)
            nms(decode(net, outputs, 0.25))
            detect(net, [image])
    fwd, post, e2e, prep, stream = [], [], [], [], []
    candidates = kept = 0
    for _ in range(repeat):
        with torch.no_grad():
            t, outputs = timed(lambda: run_heads(net, x, heads))
            fwd.append(t)
            t, dets = timed(lambda o=outputs: nms(decode(net, o, 0.25)))
            post.append(t)
            t, found = timed(lambda: detect(net, [image]))
            e2e.append(t)
            t, _ = timed(lambda: resize_image(load_pixels(image)[None], net.info.width,
                                              net.info.height))
            prep.append(t)
            # a folder/stream of images, one per batch: the next is read while this one runs
            t, _ = timed(lambda: detect(net, [image] * STREAM, batch_size=1))
            stream.append(t / STREAM)
        before = decode(net, outputs, 0.25)[0]
        candidates, kept = len(before), len(found[0])
    f, p, e, r, st = (statistics.median(v) for v in (fwd, post, e2e, prep, stream))
    print(f"{label:8s} forward {1 / f:6.2f} img/s ({1e3 * f:7.1f} ms) | decode+NMS "
          f"{1e3 * p:6.2f} ms = {100 * p / f:5.1f}% of forward | --detect end to end "
          f"{1 / e:6.2f} img/s ({1e3 * e:7.1f} ms, {e / f:4.2f}x forward; read+resize "
          f"{1e3 * r:.1f} ms) | {STREAM} images in a row: {1e3 * st:.1f} ms each, "
          f"{st / f:4.2f}x forward | {candidates} boxes before NMS, {kept} objects printed")
    return {"forward": f, "post": p, "e2e": e, "stream": st}


STREAM = 8  # images per `detect` call in the stream row


def write_picture(path: Path, kind: str) -> None:
    """The bench's 640x480 JPEG. "noise": uniform noise, 276 kB, the decoder's worst case (every
    coefficient coded); "photo": a smooth random scene with a little sensor noise, sized like a
    VGA photo at quality 90, so the JPEG decode costs what a camera frame's does."""
    from PIL import Image

    rng = np.random.default_rng(0)
    if kind == "noise":
        pixels = rng.uniform(0, 1, (480, 640, 3)) * 255
    else:
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 15, 20)).astype(np.float32))
        field = torch.nn.functional.interpolate(coarse, size=(480, 640), mode="bicubic",
                                                align_corners=False)[0].permute(1, 2, 0)
        pixels = field.numpy() + rng.normal(0, 4, (480, 640, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cfg", default=str(CFG))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--image", choices=("both", "photo", "noise"), default="both",
                    help="the JPEG read: a photo-like scene (a camera frame's decode cost), "
                    "uniform noise (the decoder's worst case), or both, one after the other "
                    "(the default)")
    ap.add_argument("--boxes", type=int, default=40,
                    help="typical regime: at most this many boxes pass .25 before NMS (40)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the net runs")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = ("photo", "noise") if args.image == "both" else (args.image,)
    for kind in kinds:
        measure(args, kind)


def measure(args, kind: str) -> None:
    """Both regimes on one picture, with the net as built and loaded (calibrate changes it)."""
    from cfgparse import parse
    from darkcfg.config import apply_overrides

    blocks = list(parse(args.cfg))
    net_block, _ = apply_overrides(blocks[0], [f"width={args.size}", f"height={args.size}",
                                               "batch=1", "subdivisions=1"])
    torch.manual_seed(0)
    net = build([net_block, *blocks[1:]]).eval()
    weights = args.weights or (ORACLE_WEIGHTS if ORACLE_WEIGHTS.exists() else None)
    if weights:
        from builders.weights import load_weights

        load_weights(net, weights)
    net.to(args.device)
    print(f"{Path(args.cfg).name} {args.size}x{args.size}, batch 1, {args.device}, "
          f"{torch.get_num_threads()} threads, weights: {weights or 'initial (seed 0)'}, "
          f"{args.repeat} repeats (medians)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "photo.jpg"  # a 640x480 JPEG, decoded and resized each time
        write_picture(image, kind)
        print(f"image: {kind}, 640x480 JPEG of {image.stat().st_size / 1e3:.0f} kB")
        dense = run(net, image, args.repeat, "dense")
        shift = calibrate(net, image, args.boxes)
        print(f"typical: objectness biases lowered by {shift:g}")
        typical = run(net, image, args.repeat, "typical")
    share = 100 * typical["post"] / typical["forward"]
    ratio = typical["e2e"] / typical["forward"]
    print(f"{kind}: typical decode+NMS = {share:.1f}% of the forward (target <= 10%): "
          f"{'OK' if share <= 10 else 'over'}; end to end {ratio:.2f}x the forward (target "
          f"<= 1.1x: {'OK' if ratio <= 1.1 else 'over'}); dense decode+NMS "
          f"{100 * dense['post'] / dense['forward']:.1f}%\n")

if __name__ == "__main__":
    main()
