"""Detection inference: Darknet's box decoding (`get_network_boxes`), NMS (`do_nms_sort`,
`greedynms`, `diounms`) and an image -> boxes pipeline (`detect`). src/network.c get_network_boxes;
src/box.c do_nms_sort, diounms_sort.

Each head's forward already applies Darknet's in-layer activation; what is left is the per-head
arithmetic of `get_*_detections`. That lives in the head's own module (builders/heads/), as its
`head_decoding`, found through `decoding_for(layer)`, never through a chain of type tests. Box
geometry (IoU family, letterbox, resize, correct_yolo_boxes) is builders/boxes.py.

    outputs = net(x, collect=head_indices(net))
    dets = nms(decode(net, outputs, thresh=0.25))         # one Detections per image
    boxes, objectness, scores = head_predictions(net, outputs)   # dense tensors, for export
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from builders import native
from builders.boxes import (
    box_diou,
    correct_boxes,
    cxcywh_to_xyxy,
    letterbox_image,
    letterbox_size,
    pairwise_iou,
    resize_image,
)
from builders.graph import collector_paused
from builders.heads import HeadDecoding
from builders.layer import Layer


def decoding_for(layer: Layer) -> HeadDecoding | None:
    """How `decode` reads this layer's output: its head module's `head_decoding` (a plugin head
    sets its own), None for a layer that is not a decoded head."""
    # the instance's own, else its class's: a missing attribute costs nn.Module.__getattr__ an
    # exception, which per layer per image added up to 0.1 ms
    own = layer.__dict__.get("head_decoding")
    return own if own is not None else getattr(type(layer), "head_decoding", None)


def head_indices(net) -> list[int]:
    """Indices of the layers Darknet's get_network_boxes reads, in cfg order."""
    return [i for i, layer in enumerate(net.layers) if decoding_for(layer) is not None]


def check_decodable_heads(net, hint: str) -> list[int]:
    """The head indices, each one `decode` can read and all with the first head's classes (a
    class count that differs is the linter's W302; decoding it cannot go on): else a located
    E300 with `hint` (what the command decodes). A network without heads is the caller's."""
    heads = head_indices(net)
    for i in heads:
        fault = decoding_for(net.layers[i]).unsupported(net.layers[i])
        if fault is not None:
            raise net.meta[i].block.error("E300", fault[1], fault[0], hint=hint)
    first = net.meta[heads[0]].block if heads else None
    for i in heads[1:]:
        block = net.meta[i].block
        if net.layers[i].classes != net.layers[heads[0]].classes:
            raise block.error(
                "E300", f"classes={net.layers[i].classes} here but "
                f"classes={net.layers[heads[0]].classes} in the [{first.name}] at line "
                f"{first.line}: the heads' boxes cannot be decoded together",
                "classes" if "classes" in block else None,
                hint="give every detection head the same classes (darkcfg check: W302)")
    return heads


def _net_size(net, index: int, y: torch.Tensor, input_size) -> tuple[int, int]:
    """(net_w, net_h) the head ran at: given, or the cfg's scaled by the grid (a fully
    convolutional net run at another size keeps its stride)."""
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    built = net.shapes[index]
    if y.dim() == 4 and built.w and built.h and (y.shape[-1] != built.w or y.shape[-2] != built.h):
        return net.info.width * y.shape[-1] // built.w, net.info.height * y.shape[-2] // built.h
    return net.info.width, net.info.height


def _checked_heads(net, outputs: dict[int, torch.Tensor], heads: list[int] | None = None
                   ) -> list[int]:
    """The head indices (`heads` if the caller has them), all of them in `outputs` (else a
    KeyError saying how to run the net)."""
    heads = head_indices(net) if heads is None else heads
    if not heads:
        raise ValueError("the network has no detection head ([yolo], [Gaussian_yolo], "
                         "[region] or [detection])")
    missing = [i for i in heads if i not in outputs]
    if missing:
        raise KeyError(f"outputs lack head layer(s) {missing}: run net(x, collect={heads})")
    return heads


def head_parts(net, outputs: dict[int, torch.Tensor], input_size=None):
    found = []
    for i in _checked_heads(net, outputs):
        layer, decoding = net.layers[i], decoding_for(net.layers[i])
        net_w, net_h = _net_size(net, i, outputs[i], input_size)
        found.append((i, layer, decoding, decoding.predictions(layer, outputs[i], net_w, net_h)))
    return found


def head_predictions(net, outputs: dict[int, torch.Tensor], input_size=None):
    """Every candidate box of every head, in get_network_boxes order, no thresholding:
    (boxes (N,K,4) relative cx,cy,w,h, objectness (N,K), class_scores (N,K,C)), with
    class_scores = Darknet's probs before thresholding (objectness x class probability; [region]
    AlexeyAB: sigma(obj) x softmax, objectness field 1). Trace-friendly: no data-dependent
    control flow. `input_size` = (w, h) of the network input (default: inferred from the grid).
    Heads with a different class count than the first are an error, as Darknet reports."""
    found = head_parts(net, outputs, input_size)
    classes = found[0][3].scores.shape[-1]
    for i, _, _, parts in found:
        if parts.scores.shape[-1] != classes:
            raise ValueError(f"head {i} has {parts.scores.shape[-1]} classes, the first head "
                             f"{classes}: Darknet decodes with the first head's count")
    return (torch.cat([p.boxes for *_, p in found], 1),
            torch.cat([p.objectness for *_, p in found], 1),
            torch.cat([p.scores for *_, p in found], 1))


# -- decode ---------------------------------------------------------------------------------------


@dataclass
class Detections:
    """One image's detections in get_network_boxes order (src/network.c get_network_boxes).

    boxes (K,4): relative centre x, y and size w, h; objectness (K); probs (K,C): zero where
    Darknet zeroes them (below thresh, or suppressed by `nms`); layer (K): the head each came
    from; index (K): its position among `head_predictions`' K candidates."""

    boxes: torch.Tensor
    objectness: torch.Tensor
    probs: torch.Tensor
    layer: torch.Tensor
    index: torch.Tensor
    nms_kind: str = "default"
    beta_nms: float = 0.6

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def classes(self) -> int:
        """The number of classes (the columns of `probs`)."""
        return self.probs.shape[1]

    def pairs(self) -> set[tuple[int, int]]:
        """{(detection, class)} whose prob is nonzero."""
        return {(int(i), int(c)) for i, c in torch.nonzero(self.probs).tolist()}

    def to(self, device) -> Detections:
        """A copy with every tensor on `device`."""
        return replace(self, **{k: getattr(self, k).to(device)
                                for k in ("boxes", "objectness", "probs", "layer", "index")})


def _sizes(image_size, batch: int):
    if image_size is None:
        return [None] * batch
    if len(image_size) == 2 and not isinstance(image_size[0], (tuple, list)):
        return [tuple(image_size)] * batch
    if len(image_size) != batch:
        raise ValueError(f"{len(image_size)} image sizes for {batch} images")
    return [tuple(s) for s in image_size]


def decode(net, outputs: dict[int, torch.Tensor], thresh: float = 0.25, *, image_size=None,
           letter_box: bool = False, input_size=None, heads: list[int] | None = None
           ) -> list[Detections]:
    """Darknet's get_network_boxes for every image of the batch: one `Detections` each.

    `outputs` = {head layer index: tensor} as `net(x, collect=head_indices(net))` returns.
    `image_size` = (w, h) of the original image (or one per image) with `letter_box` applies
    correct_yolo_boxes; boxes stay relative. `input_size` = the net input (w, h) if it is not the
    cfg's (default: inferred from the grids). `heads`: `head_indices(net)`, if the caller has
    them."""
    heads = _checked_heads(net, outputs, heads)
    # Decoding runs on the host, as Darknet's get_network_boxes: the candidates are few and
    # data-dependent, and on a GPU each selection is a launch and a sync (measured on an H200,
    # yolov4-tiny 416, batch 1, nearly every box above thresh: decode + NMS 53 ms there, 30 ms
    # through one copy of the head outputs and the native kernels)
    outputs = {i: outputs[i].cpu() for i in heads}
    t = torch.tensor(thresh, dtype=torch.float32)
    batch = outputs[heads[0]].shape[0]
    sizes = _sizes(image_size, batch)
    last = net.layers[heads[-1]]
    kind, beta = decoding_for(last).nms_kind(last)  # the last head's, as detector test
    per_head, start, classes = [], 0, None
    for i in heads:
        layer, decoding, y = net.layers[i], decoding_for(net.layers[i]), outputs[i]
        net_size = _net_size(net, i, y, input_size)
        image, index, parts, count = decoding.emitted(layer, y, t.to(y.device), *net_size)
        classes = parts.scores.shape[-1] if classes is None else classes
        if parts.scores.shape[-1] != classes:
            raise ValueError(f"head {i} has {parts.scores.shape[-1]} classes, the first head "
                             f"{classes}: Darknet decodes with the first head's count")
        obj, probs = decoding.threshold(layer, parts.objectness, parts.scores,
                                        t.to(y.device))
        per_head.append((i, decoding, _per_image((parts.boxes, obj, probs, index + start),
                                                  image, batch), net_size))
        start += count
    results = []
    for b in range(batch):
        pieces = []
        for i, decoding, images, net_size in per_head:
            bx, obj, probs, index = images[b]
            if decoding.letterbox:
                if letter_box and sizes[b] is not None and 0 in letterbox_size(
                        int(sizes[b][0]), int(sizes[b][1]), *map(int, net_size)):
                    # a sliver image (1x300 into 64x64) takes no pixel of the letterboxed
                    # input: letterbox_image embeds nothing and correct_yolo_boxes would
                    # divide by its zero side (Darknet's boxes are inf); nothing was seen
                    bx, obj, probs, index = bx[:0], obj[:0], probs[:0], index[:0]
                else:
                    bx = correct_boxes(bx, sizes[b], net_size, letter_box)
            pieces.append((bx, obj, probs, index, torch.full_like(index, i)))
        cat = [torch.cat([p[j] for p in pieces]) for j in range(5)]
        results.append(Detections(cat[0], cat[1], cat[2], cat[4], cat[3], kind, beta))
    return results


def _per_image(tensors, image: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, ...]]:
    """Each image's rows of `tensors` (rows in order, image (K,) the image of each): one gather
    and views, not a selection per image (each a pass over the whole batch's candidates)."""
    if batch == 1:
        return [tuple(tensors)]
    order = torch.sort(image, stable=True).indices  # (candidates come image by image: no move)
    counts = torch.bincount(image, minlength=batch).tolist()
    split = [t[order].split(counts) for t in tensors]
    return list(zip(*split, strict=True))


# -- NMS ------------------------------------------------------------------------------------------

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")


def _diou_above(boxes: torch.Tensor, thresh: float, beta: float) -> np.ndarray:
    """box_diou(boxes, boxes, beta) > thresh as a numpy bool matrix, diagonal False. The distance
    term is >= 0, so only pairs whose IoU alone passes can pass: the term is computed for those
    (few) pairs only."""
    iou = pairwise_iou(boxes, boxes)
    i, j = torch.nonzero(iou > thresh, as_tuple=True)
    passes = box_diou(boxes[i], boxes[j], beta, iou[i, j]) > thresh
    similar = torch.zeros_like(iou, dtype=torch.bool)
    similar[i[passes], j[passes]] = True
    similar.fill_diagonal_(False)
    return similar.cpu().numpy()


def _greedy(similar: np.ndarray, rows: np.ndarray, suppresses: np.ndarray | None = None
            ) -> np.ndarray:
    """Greedy suppression: visit `rows` (indices into the symmetric `similar`, diagonal False)
    in descending score order; a row not yet removed removes all it is similar to. An earlier
    survivor is never hit (it would have removed the later row first), so no triangle is needed.
    Returns the mask of `rows` that survive."""
    removed = np.zeros(similar.shape[0], dtype=bool)
    if suppresses is None:
        suppresses = similar.any(1)
    for r in rows[suppresses[rows]]:  # rows that suppress nothing need no visit
        if not removed[r]:
            removed |= similar[r]
    return ~removed[rows]


def _suppressed_default(boxes, probs, active, thresh):
    """do_nms_sort with torchvision's kernel: one batched_nms over the (detection, class) pairs;
    float64 boxes so its per-class coordinate offsets cost no precision."""
    from torchvision.ops import batched_nms

    det, cls = torch.nonzero((probs > 0) & active[:, None], as_tuple=True)
    xyxy = cxcywh_to_xyxy(boxes[det]).double()
    kept = batched_nms(xyxy, probs[det, cls].double(), cls, thresh)
    out = torch.zeros_like(probs, dtype=torch.bool)
    out[det, cls] = True
    out[det[kept], cls[kept]] = False
    return out


def _suppressed_diou(boxes, probs, active, thresh, beta):
    """diounms_sort: the same per-class greedy loop with a DIoU test (Darknet's, not in
    torchvision). The similarity matrix is computed once over the boxes any class uses (when it
    fits) and each class walks its rows in its own order. On the CPU `nms` runs the native
    kernel instead (builders.native.greedy_nms_diou, the same kept pairs); this runs on other
    devices and without a compiler."""
    # the per-class walk in numpy: a few small arrays per class, where torch ops would cost
    # more in dispatch than in work (about half of decode + NMS for a typical image)
    p = probs.detach().cpu().numpy()
    positive = (p > 0) & active.cpu().numpy()[:, None]
    out = np.zeros(p.shape, dtype=bool)
    used = np.flatnonzero(positive.any(1))

    def similar_of(index: np.ndarray) -> np.ndarray:
        return _diou_above(boxes[torch.from_numpy(index).to(boxes.device)], thresh, beta)

    shared = similar_of(used) if used.size <= 4096 else None  # 4096² bools = 16 MiB
    shared_suppresses = shared.any(1) if shared is not None else None
    local = np.full(p.shape[0], -1, dtype=np.int64)
    local[used] = np.arange(used.size)
    for k in np.flatnonzero(positive.any(0)):
        members = np.flatnonzero(positive[:, k])
        # descending prob, ties in detection order (a stable sort of the negated probs)
        order = members[np.argsort(-p[members, k], kind="stable")]
        if shared is not None:
            survivors = _greedy(shared, local[order], shared_suppresses)
        else:
            survivors = _greedy(similar_of(order), np.arange(order.size))
        out[order[~survivors], k] = True
    return torch.from_numpy(out).to(probs.device)


def nms(dets, thresh: float = 0.45, kind: str | None = None, beta: float | None = None):
    """Darknet's NMS on one `Detections` (or a list): per class, greedy in descending prob order,
    the suppressed detections' prob for that class set to 0; boxes, objectness and the order stay
    (Darknet also permutes its array; the kept (detection, class) pairs are the same).

    kind: "default" (do_nms_sort, IoU > thresh), "greedynms" (DIoU with exponent 0.6),
    "diounms" (IoU - (d²/c²)^beta), "cornersnms" (IoU); default: the last head's nms_kind and
    beta_nms, as `darknet detector test`. Detections with objectness 0 take no part."""
    if isinstance(dets, (list, tuple)):
        return [nms(d, thresh, kind, beta) for d in dets]
    kind = dets.nms_kind if kind is None else kind
    beta = dets.beta_nms if beta is None else beta
    if kind not in NMS_KINDS:
        raise ValueError(f"nms kind must be one of {', '.join(NMS_KINDS)}, not {kind!r}")
    if len(dets) == 0:
        return replace(dets)
    active = dets.objectness != 0
    boxes, probs = dets.boxes.float(), dets.probs
    if kind in ("default", "cornersnms"):
        suppressed = _suppressed_default(boxes, probs, active, thresh)
    else:
        beta = 0.6 if kind == "greedynms" else beta
        suppressed = native.greedy_nms_diou(boxes, probs, active, thresh, beta)
        if suppressed is None:
            suppressed = _suppressed_diou(boxes, probs, active, thresh, beta)
    return replace(dets, probs=probs.masked_fill(suppressed, 0.0))


# -- images -> boxes ------------------------------------------------------------------------------


class Found(NamedTuple):
    """One detected object: class id, class name ("" if unknown), score, and the box (left, top,
    right, bottom) in pixels of the original image (not clipped)."""

    class_id: int
    name: str
    score: float
    box: tuple[float, float, float, float]


def decoded(image, channels: int = 3):
    """A path decoded: a JPEG with the asked channels as a uint8 (C, H, W) tensor
    (`_jpeg_bytes`), anything else as a PIL image (RGB, or L for one channel); a non-path as it
    is. No OpenMP work: safe to run in a reader thread beside the network's threads.
    Raises OSError (with the path) for an unreadable file."""
    if not isinstance(image, (str, os.PathLike)):
        return image
    fast = _jpeg_bytes(image, channels)
    if fast is not None:
        return fast
    from darkcfg.data.base import eight_bit, image_errors, open_image, upright

    try:
        with open_image(image) as im:
            out = eight_bit(upright(im)).convert("L" if channels == 1 else "RGB")
            out.load()
            return out
    except image_errors() as exc:
        error = OSError(f"cannot read image '{image}': {exc}")
        error.image = os.fspath(image)  # which one of a batch (detect_images locates it)
        raise error from None


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)


def jpeg_frame(data) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's frame header (SOFn), walking the marker
    segments before it; None if the bytes are not a JPEG or end before one."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    at, size = 2, len(data)
    while at + 4 <= size:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length follows
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / scan: no frame header came
            return None
        length = data[at + 2] << 8 | data[at + 3]
        if marker in _SOF:
            if at + 10 > size or length < 8:
                return None
            return (data[at + 5] << 8 | data[at + 6], data[at + 7] << 8 | data[at + 8],
                    data[at + 9])
        at += 2 + length
    return None


def _jpeg_bytes(path, channels: int) -> torch.Tensor | None:
    """A JPEG file with `channels` components as a uint8 (C, H, W) tensor, through
    torchvision's libjpeg-turbo (the same pixels as Pillow's, 15-30% faster: 2.1 vs 2.5 ms for a
    noisy 640x480 photo); None for anything else (other formats, CMYK, a grey JPEG asked for as
    RGB and back, a frame over Pillow's decompression-bomb limit, a file either library
    refuses), which Pillow then reads or reports. The frame header is read here rather than by
    Image.open (0.4 ms after a forward has emptied the caches, against 0.2 for the file)."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            if fh.read(3) != b"\xff\xd8\xff":
                return None
            fh.seek(0)
            data = bytearray(fh.read())
        frame = jpeg_frame(data)
        if frame is None or frame[2] != channels or channels not in (1, 3) or \
                not frame[0] or not frame[1]:
            return None
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and frame[0] * frame[1] > limit:
            return None  # Pillow warns or refuses, as it would for any other file
        from torchvision.io import decode_jpeg

        # the EXIF orientation applied, as cv::imread does in Darknet's load_image
        out = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8),
                          apply_exif_orientation=True)
    except Exception:  # noqa: BLE001 - Pillow reads it again and names the problem
        return None
    return out if out.dim() == 3 and out.shape[0] == channels else None


def load_pixels(image, channels: int = 3) -> torch.Tensor:
    """A path, PIL image or tensor as a (C, H, W) tensor with `channels` channels: uint8 as
    read (a file, a PIL image, a uint8 tensor), else the float tensor given. The network input
    is made from these (`network_input` reads bytes as value / 255). Raises OSError (with the
    path) for an unreadable file."""
    image = decoded(image, channels)
    if isinstance(image, np.ndarray):
        raise TypeError(f"a numpy array {image.shape} is not taken as an image (its layout and "
                        "channel order are guesses): pass torch.from_numpy(a).permute(2, 0, 1) "
                        "for an (H, W, C) RGB array (OpenCV's are BGR: a[..., ::-1] first)")
    if not isinstance(image, torch.Tensor):
        from PIL import Image

        from darkcfg.data.base import eight_bit

        if not isinstance(image, Image.Image):
            raise TypeError(f"an image is a path, a PIL image or a (C, H, W) tensor, not "
                            f"{type(image).__name__}")

        image = eight_bit(image)
        if channels == 1:
            image = image.convert("L")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        arr = np.asarray(image, dtype=np.uint8)
        image = torch.from_numpy(arr.copy())
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    if image.dim() != 3:
        raise ValueError(f"an image tensor is (C, H, W), not {tuple(image.shape)}")
    if image.shape[0] not in (1, 3, 4, channels):
        raise ValueError(f"an image tensor is (C, H, W) with 1, 3 or 4 channels, not "
                         f"{tuple(image.shape)}" + (": an (H, W, C) tensor needs "
                                                    ".permute(2, 0, 1)" if image.shape[-1] in
                                                    (1, 3, 4) else ""))
    if image.dtype != torch.uint8:
        if image.is_floating_point():
            low, high = torch.aminmax(image) if image.numel() else (0.0, 0.0)
            # pixels in [0, 1]; a bicubic resize overshoots a little, 0-255 values do not
            if not -1 <= low <= high <= 2:  # NaN fails too
                raise ValueError(f"float pixels lie in [0, 1], not [{float(low):g}, "
                                 f"{float(high):g}]: divide 0-255 values by 255, or pass uint8")
        else:
            raise ValueError(f"image pixels are uint8 (0-255) or float in [0, 1], not "
                             f"{image.dtype}")
        image = image.float()
    if image.shape[0] != channels:
        image = _channels(image, channels)
    return image


def _channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """`image` (C, H, W) with `channels` channels as Pillow converts: RGB(A) to one channel is
    its luminance (ITU-R 601-2, Pillow's integer rounding for bytes), RGBA to RGB drops alpha,
    one channel to three repeats it; other counts repeat the channels cyclically."""
    if channels == 1 and image.shape[0] in (3, 4):
        r, g, b = image[0], image[1], image[2]
        if image.dtype == torch.uint8:  # Pillow's L = (R*19595 + G*38470 + B*7471 + 2^15) >> 16
            luma = (r.int() * 19595 + g.int() * 38470 + b.int() * 7471 + 0x8000) >> 16
            return luma.to(torch.uint8)[None]
        return (r * 0.299 + g * 0.587 + b * 0.114)[None]
    if channels == 3 and image.shape[0] == 4:
        return image[:3]
    return image.repeat((channels + image.shape[0] - 1) // image.shape[0], 1, 1)[:channels]


def load_image(image, channels: int = 3) -> torch.Tensor:
    """A path, PIL image or tensor as a (C,H,W) float tensor in [0,1] (uint8 tensors are /255).
    Raises OSError (with the path) for an unreadable file."""
    image = load_pixels(image, channels)
    return image.to(torch.float32).div_(255) if image.dtype == torch.uint8 else image


def c_round(v: float) -> float:
    """C's round(): halves away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def found_objects(dets: Detections, thresh: float, image_w: float, image_h: float,
                  names: Sequence[str] = ()) -> list[Found]:
    """What `detector test` prints (draw_detections_v3): detections with a class prob > thresh,
    by left edge (ties in detection order); for each, the best class first (the lowest id among
    equals), then the other classes > thresh in id order."""
    probs, boxes = dets.probs.float().cpu(), dets.boxes.float().cpu()
    pairs = native.found_objects(probs, boxes, thresh, image_w, image_h)
    if pairs is None:
        pairs = _printed_pairs(probs.numpy(), boxes.numpy(), thresh, image_w, image_h)
    cls, scores, *corners = pairs
    label = [names[c] if c < len(names) else "" for c in range(probs.shape[1])]
    with collector_paused():
        return list(map(_found, zip(cls, map(label.__getitem__, cls), scores,
                                    zip(*corners, strict=True), strict=True)))


_found = functools.partial(tuple.__new__, Found)  # Found(*t) without its __new__'s cost


def _printed_pairs(probs: np.ndarray, single: np.ndarray, thresh: float, image_w: float,
                   image_h: float) -> tuple[list, ...]:
    """found_objects' pairs in numpy (builders.native.found_objects computes the same): (class
    ids, probs, lefts, tops, rights, bottoms) as lists."""
    boxes = single.astype(np.float64)  # pixel corners in double, as Python floats would be
    above = probs > thresh
    rows = np.flatnonzero(above.any(1))
    left = single[rows, 0] - single[rows, 2] / np.float32(2)  # the sort key in float32
    rows = rows[np.argsort(left, kind="stable")]
    best = np.where(above[rows], probs[rows], -1.0).argmax(1)
    # every (row, class) pair above thresh, row by row in print order, the best class first
    at, cls = np.nonzero(above[rows])
    order = np.lexsort((cls, cls != best[at], at))
    at, cls = at[order], cls[order]
    det = rows[at]
    x, y, w, h = boxes[det].T
    return (cls.tolist(), probs[det, cls].astype(np.float64).tolist(),
            ((x - w / 2) * image_w).tolist(), ((y - h / 2) * image_h).tolist(),
            ((x + w / 2) * image_w).tolist(), ((y + h / 2) * image_h).tolist())


def net_letter_box(net) -> bool:
    return net.net_block.bool("letter_box")


def device_of(net) -> torch.device:
    param = next(iter(net.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def check_run_arguments(thresh: float, nms: float, batch_size: int,
                        names: Sequence[str]) -> None:
    """The library's refusal of arguments no run can use (`detect`, `detect_batches`,
    `detect_video`): ValueError or TypeError naming the argument."""
    for name, value in (("thresh", thresh), ("nms", nms)):
        if not 0 <= value <= 1:  # NaN too: a NaN threshold silently found nothing
            raise ValueError(f"{name}={value!r}: a threshold lies in [0, 1]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: a count of images, 1 or more")
    if isinstance(names, (str, os.PathLike)):  # a .names file's path: its characters as names
        raise TypeError(f"names={str(names)!r}: names is the list of class names, not a file; "
                        "read a .names file with Path(f).read_text().splitlines()")


def in_eval_mode(net) -> None:
    """Detection runs the network in eval mode (batch-norm's running statistics)."""
    if any(layer.training for layer in net.layers):  # a walk over every module costs 0.7 ms
        net.eval()


@torch.no_grad()
def detect_batches(net, images: Sequence, thresh: float = 0.25, nms: float = 0.45,
                   letter_box: bool | None = None, *, names: Sequence[str] = (),
                   batch_size: int = 8, nms_kind: str | None = None,
                   skip_unreadable: bool = False):
    """`detect`, one batch at a time: yields (images (each (C,H,W): uint8 as read, or the
    float tensor given, in [0,1]), their Detections (after NMS, boxes relative to the original
    image), their `Found` lists). A file that does not decode raises its OSError (`.image`: the
    path); with `skip_unreadable` it takes its place in `images` instead, with None for its
    Detections and no objects, and the batch goes on (Darknet's load_image says "Cannot load
    image" and goes on)."""
    check_run_arguments(thresh, nms, batch_size, names)
    letter = net_letter_box(net) if letter_box is None else bool(letter_box)
    in_eval_mode(net)
    device = device_of(net)
    heads = head_indices(net)
    if not heads:
        raise ValueError("the network has no detection head ([yolo], [Gaussian_yolo], "
                         "[region] or [detection])")
    c = net.info.channels

    def read_one(image):
        try:
            return decoded(image, c)
        except OSError as exc:
            if not skip_unreadable:
                raise
            return exc

    def read(start: int) -> list:
        return [read_one(im) for im in images[start:start + batch_size]]

    starts = range(0, len(images), batch_size)
    if not starts:
        return
    if len(starts) == 1:
        pending = [_Ready(read(0))]
    else:
        # the next chunk's files are decoded in a thread (libjpeg-turbo and PIL release the
        # GIL) from the end of this chunk's forward on: beside this chunk's decode + NMS and the
        # caller's drawing, one core each. Not during the forward: both cores are the network's
        # there, and a reader beside it only slows it. The torch work (resize) stays on this
        # thread: a second OpenMP pool beside the network's slows both (measured: 1.58x the
        # forward per image with the resize in the thread, on 2 cores)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="darkcfg-read")
        pending = [pool.submit(read, starts[0])]
    try:
        for k, _ in enumerate(starts):
            read_chunk = pending[k].result()
            pending[k] = None  # drop the reference: a chunk lives until the next yield only
            chunk = [im if isinstance(im, OSError) else load_pixels(im, c) for im in read_chunk]
            ok = [im for im in chunk if not isinstance(im, OSError)]
            dets, found = [], []
            if ok:
                x = network_input(net, ok, letter, device)
                sizes = [(im.shape[-1], im.shape[-2]) for im in ok]
                outputs = run_heads(net, x, heads)
            if k + 1 < len(starts):
                pending.append(pool.submit(read, starts[k + 1]))
            if ok:
                dets = detections_of_outputs(net, outputs, (x.shape[-1], x.shape[-2]), thresh,
                                             image_size=sizes, letter_box=letter,
                                             nms_thresh=nms, nms_kind=nms_kind, heads=heads)
                found = [found_objects(d, thresh, iw, ih, names)
                         for d, (iw, ih) in zip(dets, sizes, strict=True)]
            if len(ok) < len(chunk):  # the unreadable keep their places: None, no objects
                at = iter(range(len(ok)))
                places = [None if isinstance(im, OSError) else next(at) for im in chunk]
                dets = [None if j is None else dets[j] for j in places]
                found = [[] if j is None else found[j] for j in places]
            yield chunk, dets, found
    finally:
        if len(starts) > 1:
            pool.shutdown(wait=True, cancel_futures=True)


def network_input(net, images: Sequence[torch.Tensor], letter: bool,
                  device: torch.device | None = None) -> torch.Tensor:
    """(C, H, W) images (float in [0,1], or uint8 read as value / 255) as one network input
    batch, as `detector test` prepares an image: letterbox_image or resize_image to the
    network size."""
    fit = letterbox_image if letter else resize_image
    w, h = net.info.width, net.info.height
    batch = [fit(im[None].to(device) if device is not None else im[None], w, h)
             for im in images]
    return batch[0] if len(batch) == 1 else torch.cat(batch)


class _Ready:
    """An already computed result with a Future's `result()`."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def detect(net, images, thresh: float = 0.25, nms: float = 0.45, letter_box: bool | None = None,
           *, names: Sequence[str] = (), batch_size: int = 8,
           nms_kind: str | None = None) -> list[list[Found]]:
    """Images (paths, PIL images or (C,H,W) tensors; one or a list) -> per image a list of
    `Found` (class id, name, score, box (left, top, right, bottom) in original pixels), as
    `darknet detector test`: RGB in [0,1], resize_image or letterbox_image (`letter_box`,
    default [net] letter_box), get_network_boxes at `thresh`, the last head's NMS at `nms`
    (0: none), the objects in the order Darknet prints them. Batched, on the net's device, under
    autocast on CUDA. The net is put in eval mode. A path's EXIF orientation is applied (as
    cv::imread does); a PIL image is taken as stored, boxes in its own pixels (pass
    ImageOps.exif_transpose(im) for a camera's upright picture). `names`: a list of class
    names (a .names file's lines). An image that cannot be read raises OSError naming it; a
    threshold outside [0, 1] or a batch_size below 1 ValueError; a network without a detection
    head ValueError. More names than the heads' classes is a ValueError; fewer (the data a larger
    cfg was trained on) a warning, the classes without one named by number, as `darkcfg
    detect --names` shows them."""
    names = class_names(net, names)
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)) and \
            not (isinstance(images, torch.Tensor) and images.dim() == 4):
        images = [images]
    results: list[list[Found]] = []
    for _, _, found in detect_batches(net, list(images), thresh, nms, letter_box, names=names,
                                      batch_size=batch_size, nms_kind=nms_kind):
        results += found
    return results


def class_names(net, names: Sequence[str]) -> Sequence[str]:
    """`names` for the classes of `net`'s heads: more is a ValueError (they cannot be the names
    the weights were trained with); fewer are padded with the numbers of the classes they leave
    unnamed, with a warning (the command line's W302). No names at all name nothing ("")."""
    heads = head_indices(net)
    if not names or isinstance(names, (str, os.PathLike)) or not heads:
        return names  # (detect_batches refuses a path and a network without heads)
    classes = net.layers[heads[0]].classes
    if len(names) > classes:
        raise ValueError(f"names lists {len(names)} class names, but the network's "
                         f"[{net.meta[heads[0]].type}] has classes={classes}: pass the names "
                         "the weights were trained with")
    if len(names) < classes:
        warnings.warn(f"names lists {len(names)} class names and the network has classes="
                      f"{classes}: classes {len(names)}..{classes - 1} are named by number",
                      UserWarning, stacklevel=3)
        names = [*names, *map(str, range(len(names), classes))]
    return names


def run_heads(net, x: torch.Tensor, heads: list[int] | None = None) -> dict[int, torch.Tensor]:
    """The head outputs for input x, under autocast on CUDA (decoded in float32 after)."""
    heads = head_indices(net) if heads is None else heads
    param = next(iter(net.parameters()), None)
    if param is not None and param.dtype != x.dtype and param.dtype.is_floating_point and \
            x.device.type != "cuda":  # a .double() or .half() net on the CPU: its own dtype
        x = x.to(param.dtype)
    if x.device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.float16)
    elif torch.is_autocast_enabled("cpu"):  # a caller's bfloat16 region: decode in float32
        autocast = torch.autocast("cpu", enabled=False)
    else:  # entering a disabled autocast costs more than the rest of this function
        autocast = contextlib.nullcontext()
    with torch.no_grad(), autocast:
        outs = net(x, collect=heads)
    return {i: y if y.dtype == torch.float32 else y.float() for i, y in outs.items()}


def detections_for_input(net, x: torch.Tensor, thresh: float = 0.25, *, image_size=None,
                         letter_box: bool = False, nms_thresh: float = 0.45,
                         nms_kind: str | None = None, heads=None) -> list[Detections]:
    """forward + decode + nms on a prepared network input (N,C,H,W)."""
    outputs = run_heads(net, x, heads)
    return detections_of_outputs(net, outputs, (x.shape[-1], x.shape[-2]) if x.dim() == 4
                                 else None, thresh, image_size=image_size,
                                 letter_box=letter_box, nms_thresh=nms_thresh,
                                 nms_kind=nms_kind, heads=heads)


def detections_of_outputs(net, outputs: dict[int, torch.Tensor], input_size, thresh: float,
                          *, image_size=None, letter_box: bool = False,
                          nms_thresh: float = 0.45, nms_kind: str | None = None,
                          heads: list[int] | None = None) -> list[Detections]:
    """decode + nms of the head outputs of a network input of `input_size` (w, h)."""
    dets = decode(net, outputs, thresh, image_size=image_size, letter_box=letter_box,
                  input_size=input_size, heads=heads)
    return nms(dets, nms_thresh, nms_kind) if nms_thresh else dets
