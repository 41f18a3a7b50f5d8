"""Darknet's detection augmentation (src/data.c load_data_detection, OpenCV build), with
torchvision.transforms.v2.

Geometry goes through `transforms.v2.functional` on a `tv_tensors.Image` and a
`tv_tensors.BoundingBoxes` together (pad with the image's mean colour, crop, resize, flip), so
the boxes follow every pixel operation; the photometric steps (OpenCV's 8-bit HSV, Gaussian
blur, noise) act on the pixels only. Every random number comes from the numpy Generator passed
in, which the dataset seeds per sample, so a sample is a pure function of its seed.

Keys and sections (§6.6): [net] `flip blur gaussian_noise mixup cutmix mosaic mosaic_bound
letter_box hue saturation exposure resize_step`; the last detection layer's `jitter resize
random max classes` (other layers' values are ignored, as in Darknet). [net] `angle` and `aspect`
do not apply to detectors (Darknet ignores them too).

One deliberate difference: Darknet applies mixup/mosaic with p = 1/2 per loader chunk (a
sixth of a batch); here each training sample draws its own coin, which gives every image the
same probability without tying neighbours together.

Darknet built without OpenCV (`OPENCV=0`, the Makefile's default) augments another way (src/data.c
`load_data_detection`, the `#else` branch): the crop pads by repeating the edge pixels
(src/image.c `crop_image`), resizes with its own align-corners bilinear (`resize_image`), and
jitters colour in float HSV with the hue wrapping around (`distort_image`); no blur, no noise,
no mosaic. `DetectionSettings.build = "native"` (`darkcfg train --darknet-build native`)
reproduces that build, the default "opencv" the usual one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from builders import native
from builders.heads import DataOptions
from darkcfg.config import NetConfig
from darkcfg.data.augment import distort_image
from darkcfg.data.draws import rand_scale

NO_MIX, MIXUP, CUTMIX, MOSAIC = 0, 1, 2, 3
BUILDS = ("opencv", "native")  # which Darknet build's augmentation (see the module doc)


@dataclass(frozen=True)
class DetectionSettings:
    """What the detection loader reads from the cfg, with Darknet's defaults."""

    width: int
    height: int
    channels: int = 3
    classes: int = 80  # the last detection layer's
    max_boxes: int = 200  # the last detection layer's `max`
    jitter: float = 0.2
    resize: float = 1.0
    random: float = 0.0
    letter_box: bool = False
    flip: bool = True
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    blur: int = 0
    gaussian_noise: int = 0
    mix: int = NO_MIX  # Darknet's net.mixup: 1 mixup, 2 cutmix (ignored), 3 mosaic
    mosaic_bound: bool = False
    resize_step: int = 32
    max_batches: int = 0
    notes: tuple[str, ...] = ()  # formatted warnings about these settings, for the run to print
    build: str = "opencv"  # one of BUILDS: the Darknet build whose augmentation is reproduced

    @classmethod
    def from_network(cls, net) -> DetectionSettings:
        """From a built network: [net] and the last detection head's `DataOptions` ([yolo],
        [Gaussian_yolo], [region], [detection]: builders.heads)."""
        heads = [net.layers[i] for i in net.loss_layers
                 if net.layers[i].loss_target == "boxes"]  # what detection data trains
        if not heads:
            from cfgparse import CfgError, Diagnostic

            raise CfgError(Diagnostic("E300", "this network has no detection layer ([yolo], "
                                      "[region], ...), so it cannot take detection data",
                                      net.net_block.path,
                                      hint="detection data is for detectors"))
        head = heads[-1]
        shape = net.input_shape
        return cls.from_block(net.net_block, head.data, head.classes,
                              (shape.w, shape.h, shape.c))

    @classmethod
    def from_block(cls, block, head: DataOptions, classes: int,
                   size: tuple[int, int, int] | None = None) -> DetectionSettings:
        """[net] `block` (a cfgparse Block) and the last head's `DataOptions`."""
        # the one [net] reader; Darknet's parse_net_options reads these whatever the task
        net = NetConfig.from_block(block, check=False)
        w, h, c = size or (net.width, net.height, net.channels)
        mix = MOSAIC if net.mosaic else CUTMIX if net.cutmix else MIXUP if net.mixup else NO_MIX
        letter_box = net.letter_box
        notes = []
        if letter_box and mix == MOSAIC:  # yolov4-csp.cfg and its kin ship with both
            from cfgparse.errors import WARNING

            notes.append(block.diagnostic(
                "W305", "letter_box=1 with mosaic=1: some Darknet builds stop with a fatal "
                "error here (src/image_opencv.cpp image_data_augmentation); darkcfg applies "
                "both (each mosaic part keeps its aspect ratio)", "letter_box", severity=WARNING,
                hint="remove letter_box or mosaic from [net] to train as those builds "
                "require").format())
        return cls(
            width=w, height=h, channels=c, classes=int(classes),
            max_boxes=head.max_boxes, jitter=head.jitter, resize=head.resize,
            random=head.random, letter_box=letter_box,
            flip=net.flip, hue=net.hue, saturation=net.saturation or 1.0,
            exposure=net.exposure or 1.0, blur=net.blur, gaussian_noise=net.gaussian_noise,
            mix=mix, mosaic_bound=net.mosaic_bound, resize_step=net.resize_step,
            max_batches=net.max_batches, notes=tuple(notes))

    def honoured(self) -> list[str]:
        """The augmentation keys with an effect in this cfg (for the run's banner)."""
        on = []
        native = self.build == "native"  # that build has no blur and no noise
        for key, value, off in (("jitter", self.jitter, 0), ("resize", self.resize, 1),
                                ("random", self.random, 0), ("letter_box", self.letter_box, 0),
                                ("flip", self.flip, 0), ("hue", self.hue, 0),
                                ("saturation", self.saturation, 1),
                                ("exposure", self.exposure, 1),
                                ("blur", 0 if native else self.blur, 0),
                                ("gaussian_noise", 0 if native else self.gaussian_noise, 0)):
            if value != off:
                on.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={int(value)}")
        on += {MIXUP: ["mixup"], MOSAIC: [f"mosaic (bound={int(self.mosaic_bound)})"]}.get(
            self.mix, [])
        if native:
            on.append("as Darknet built without OpenCV")
        return on

    def for_build(self, build: str) -> DetectionSettings:
        """These settings with the augmentation of Darknet `build` (one of BUILDS). Raises
        CfgError where that build cannot run the cfg (mosaic needs OpenCV in Darknet)."""
        from dataclasses import replace

        from cfgparse import CfgError, Diagnostic

        if build not in BUILDS:
            raise CfgError(Diagnostic("E100", f"--darknet-build {build}: not one of "
                                      f"{', '.join(BUILDS)}", "<command line>",
                                      hint="opencv (the usual build) or native (OPENCV=0)"))
        if build == "native" and self.mix == MOSAIC:
            raise CfgError(Diagnostic("E305", "mosaic=1 with --darknet-build native: Darknet "
                                      "built without OpenCV stops here (mosaic needs OpenCV)",
                                      "<command line>", hint="drop --darknet-build native or "
                                      "set mosaic=0 in [net]"))
        return replace(self, build=build)


# -- one image: geometry + photometric ------------------------------------------------------------
@dataclass
class Placed:
    """An augmented image at the network size, its kept boxes and its crop (for mosaic)."""

    image: torch.Tensor  # uint8 (C, h, w)
    boxes: np.ndarray  # (k, 5) [x, y, w, h, class] relative, filtered
    pleft: int
    pright: int
    ptop: int
    pbot: int
    flip: bool
    source_size: tuple[int, int] = (0, 0)  # (ow, oh) of the image before augmentation


def _precalc(lo: float, hi: float, r: float) -> float:
    """Darknet's rand_precalc_random: r in [0, 1) mapped to [lo, hi)."""
    return r * (hi - lo) + lo


def crop_offsets(ow: int, oh: int, netw: int, neth: int, s: DetectionSettings,
                 rng: np.random.Generator, corner: int | None = None, flip: bool = False
                 ) -> tuple[int, int, int, int]:
    """(pleft, pright, ptop, pbot) of one image (§6.2 steps 1-4; positive = crop, negative =
    pad). `corner` = the mosaic quadrant when "move to corner" applies."""
    r1, r2, r3, r4 = rng.random(4)
    dw, dh = int(ow * s.jitter), int(oh * s.jitter)
    pleft, pright = int(_precalc(-dw, dw, r1)), int(_precalc(-dw, dw, r2))
    ptop, pbot = int(_precalc(-dh, dh, r3)), int(_precalc(-dh, dh, r4))
    if s.resize != 1:
        q1, q2 = rng.random(2)
        rdown = 1 / s.resize if s.resize > 1 else s.resize
        rup = 1 / s.resize if s.resize < 1 else s.resize
        min_rdw, min_rdh = int(ow * (1 - 1 / rdown) / 2), int(oh * (1 - 1 / rdown) / 2)
        max_rdw, max_rdh = int(ow * (1 - 1 / rup) / 2), int(oh * (1 - 1 / rup) / 2)
        if s.resize < 1:
            max_rdw = max_rdh = 0
        pleft = int(pleft + _precalc(min_rdw, max_rdw, q1))
        pright = int(pright + _precalc(min_rdw, max_rdw, q2))
        ptop = int(ptop + _precalc(min_rdh, max_rdh, q1))
        pbot = int(pbot + _precalc(min_rdh, max_rdh, q2))
    if s.letter_box:
        img_ar, net_ar = ow / oh, netw / neth
        if img_ar / net_ar > 1:
            delta = (ow / net_ar - oh) / 2
            ptop, pbot = int(ptop - delta), int(pbot - delta)
        else:
            delta = (oh * net_ar - ow) / 2
            pleft, pright = int(pleft - delta), int(pright - delta)
    if corner is not None:  # mosaic: move this sub-image's content to the canvas corner
        left_side = (corner in (0, 2)) != flip  # zero the side facing the canvas centre
        if left_side:
            pright, pleft = pright + pleft, 0
        else:
            pleft, pright = pleft + pright, 0
        if corner < 2:
            pbot, ptop = pbot + ptop, 0
        else:
            ptop, pbot = ptop + pbot, 0
    swidth, sheight = ow - pleft - pright, oh - ptop - pbot
    if swidth <= 0 or sheight <= 0 or ow - pleft <= 0 or oh - ptop <= 0:
        return 0, 0, 0, 0
    return pleft, pright, ptop, pbot


def place(image: torch.Tensor, boxes: np.ndarray, pleft: int, pright: int, ptop: int,
          pbot: int, netw: int, neth: int, flip: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Crop rect (pleft, ptop, ow-pleft-pright, oh-ptop-pbot) of `image` (outside the source:
    its mean colour), resized to netw x neth (bilinear, half-pixel centres, no antialiasing:
    cv::resize INTER_LINEAR), flipped if `flip`; `boxes` (n, 5) relative to the source follow
    as tv_tensors.BoundingBoxes. Returns the image and the boxes relative to the output,
    each edge clamped to [0, 1] (not yet filtered)."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    c, oh, ow = image.shape
    img = tv_tensors.Image(image)
    xyxy = np.empty((len(boxes), 4), np.float32)
    xyxy[:, 0] = (boxes[:, 0] - boxes[:, 2] / 2) * ow
    xyxy[:, 2] = (boxes[:, 0] + boxes[:, 2] / 2) * ow
    xyxy[:, 1] = (boxes[:, 1] - boxes[:, 3] / 2) * oh
    xyxy[:, 3] = (boxes[:, 1] + boxes[:, 3] / 2) * oh
    bb = tv_tensors.BoundingBoxes(torch.from_numpy(xyxy), format="XYXY", canvas_size=(oh, ow),
                                  clamping_mode=None)
    swidth, sheight = ow - pleft - pright, oh - ptop - pbot
    pad = [max(-pleft, 0), max(-ptop, 0), max(-pright, 0), max(-pbot, 0)]
    if any(pad):
        fill = [float(v) for v in image.float().mean((1, 2)).add(0.5).floor()]
        img, bb = F.pad(img, pad, fill=fill), F.pad(bb, pad)
    img, bb = (F.crop(t, ptop + pad[1], pleft + pad[0], sheight, swidth) for t in (img, bb))
    if (sheight, swidth) != (neth, netw):
        img = F.resize(img, [neth, netw], antialias=False)
        bb = F.resize(bb, [neth, netw])
    if flip:
        img, bb = F.horizontal_flip(img), F.horizontal_flip(bb)
    edges = bb.as_subclass(torch.Tensor).numpy().astype(np.float32).reshape(-1, 4)
    edges = np.clip(edges / np.array([netw, neth, netw, neth], np.float32), 0, 1)
    return img.as_subclass(torch.Tensor), _truth_rows(edges, boxes[:, 4])


def _truth_rows(edges: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Relative corner boxes (n, 4) [left, top, right, bottom] and their classes -> truth rows
    (n, 5) [x, y, w, h, class] (fill_truth_detection's layout)."""
    out = np.empty((len(edges), 5), np.float32)
    out[:, 0] = (edges[:, 0] + edges[:, 2]) / 2
    out[:, 1] = (edges[:, 1] + edges[:, 3]) / 2
    out[:, 2] = edges[:, 2] - edges[:, 0]
    out[:, 3] = edges[:, 3] - edges[:, 1]
    out[:, 4] = classes
    return out


def keep_boxes(boxes: np.ndarray, netw: int, neth: int, max_boxes: int, classes: int
               ) -> np.ndarray:
    """fill_truth_detection's filters, after the transform: truncate to `max` first (Darknet
    truncates before filtering), then drop class >= classes, w < 1/netw, h < 1/neth and centres
    outside (0, 1]; w, h > 1 become 1."""
    b = boxes[:max_boxes]
    ok = (b[:, 4] < classes) & (b[:, 2] >= 1 / netw) & (b[:, 3] >= 1 / neth) & \
        (b[:, 0] > 0) & (b[:, 0] <= 1) & (b[:, 1] > 0) & (b[:, 1] <= 1)
    b = b[ok].copy()
    b[:, 2:4] = np.minimum(b[:, 2:4], 1)
    return b


def hsv_shift(image: torch.Tensor, dhue: float, dsat: float, dexp: float) -> torch.Tensor:
    """Darknet's colour jitter (src/image_opencv.cpp image_data_augmentation): 8-bit RGB->HSV
    (H in [0, 180)), S *= dsat, V *= dexp, H += 179·dhue, each saturating to [0, 255] (a
    negative hue shift clips at 0), then HSV->RGB (H >= 180 wraps). OpenCV's own 8-bit
    conversions round through integer tables: against cv2.cvtColor this differs by up to 8
    levels on 1-5% of the values (measured, 40x50 random image), a random jitter either way.
    With the native kernels (builders.native) the same float32 steps run in one C loop, the
    same bytes 5-10x faster; these torch ops are the reference and the fallback."""
    if image.dtype == torch.uint8 and image.shape[0] == 3 and image.is_contiguous() \
            and image.device.type == "cpu":
        out = native.hsv_shift_u8(image, *hsv_constants(dhue, dsat, dexp))
        if out is not None:
            return out
    return hsv_shift_reference(image, dhue, dsat, dexp)


def hsv_constants(dhue: float, dsat: float, dexp: float) -> tuple[float, float, float, float]:
    """The float32 scalars hsv_shift_reference computes with (torch casts a Python number to
    the tensor's float32): hue shift in OpenCV's units, dsat, dexp, and 6/180."""
    return tuple(float(np.float32(v)) for v in (179 * dhue, dsat, dexp, 6 / 180))


def hsv_shift_reference(image: torch.Tensor, dhue: float, dsat: float, dexp: float
                        ) -> torch.Tensor:
    """hsv_shift in torch ops (see there)."""
    x = image.to(torch.float32)
    v, arg = x.max(0)
    diff = v - x.min(0)[0]
    r, g, b = x[0], x[1], x[2]
    safe = diff.clamp(min=1)
    # hue sector by the max channel (R wins ties, then G), in OpenCV's 0..180 scale
    hraw = torch.where(arg == 0, g - b, torch.where(arg == 1, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.floor(hraw * 30 / safe + 0.5)
    h = torch.where(h < 0, h + 180, h) * (diff > 0)
    s = torch.floor(diff * 255 / v.clamp(min=1) + 0.5)
    h = torch.floor(h + 179 * dhue + 0.5).clamp_(0, 255)
    s = torch.floor(s * dsat + 0.5).clamp_(0, 255).div_(255)
    v = torch.floor(v * dexp + 0.5).clamp_(0, 255)
    # HSV->RGB: channel n (R 5, G 3, B 1) = v - v·s·clamp(min(k, 4 - k), 0, 1), k = (n + H/30) mod 6
    k = torch.remainder(_HSV_N + (h * (6 / 180))[None], 6)
    rgb = v - v * s * torch.minimum(k, 4 - k).clamp_(0, 1)
    return torch.floor(rgb + 0.5).clamp_(0, 255).to(torch.uint8)


_HSV_N = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def blur_image(image: torch.Tensor, blur: int, boxes: np.ndarray) -> torch.Tensor:
    """Darknet's blur: 1 = background blur (17x17 Gaussian, then every truth box's pixels copied
    back), > 1 = the whole image with ksize (blur/2)*2+1; sigma from ksize as OpenCV does."""
    from torchvision.transforms.v2 import functional as F

    if blur <= 0:
        return image
    k = 17 if blur == 1 else (blur // 2) * 2 + 1
    c, h, w = image.shape
    k = min(k, (min(h, w) - 1) // 2 * 2 + 1)  # reflect padding needs a kernel under the size
    if k < 3:
        return image
    out = F.gaussian_blur(image, [k, k])
    if blur == 1:
        for x, y, bw, bh, _ in boxes:
            left, top = int((x - bw / 2) * w), int((y - bh / 2) * h)
            right, bottom = left + int(bw * w), top + int(bh * h)
            left, top = max(left, 0), max(top, 0)
            right, bottom = min(right, w), min(bottom, h)
            if right > left and bottom > top:
                out[:, top:bottom, left:right] = image[:, top:bottom, left:right]
    return out


def add_noise(image: torch.Tensor, std: int, rng: np.random.Generator) -> torch.Tensor:
    """cv::randn into a uint8 matrix (negative noise saturates to 0), then a saturating add."""
    noise = np.clip(np.floor(rng.normal(0, min(std, 127), image.shape) + 0.5), 0, 255)
    out = image.to(torch.int16) + torch.from_numpy(noise.astype(np.int16))
    return out.clamp(0, 255).to(torch.uint8)


def moved_boxes(boxes: np.ndarray, ow: int, oh: int, pleft: int, pright: int, ptop: int,
                pbot: int, flip: bool) -> np.ndarray:
    """src/data.c correct_boxes in float32 for the crop (pleft, ptop, swidth, sheight): boxes
    (n, 5) relative to the source -> relative to the crop, flipped if `flip`, each edge clamped
    to [0, 1] (not yet filtered). `place` moves boxes the same way through torchvision."""
    swidth, sheight = np.float32(ow - pleft - pright), np.float32(oh - ptop - pbot)
    b = boxes.astype(np.float32)
    left = ((b[:, 0] - b[:, 2] / 2) * ow - pleft) / swidth
    right = ((b[:, 0] + b[:, 2] / 2) * ow - pleft) / swidth
    top = ((b[:, 1] - b[:, 3] / 2) * oh - ptop) / sheight
    bottom = ((b[:, 1] + b[:, 3] / 2) * oh - ptop) / sheight
    if flip:
        left, right = 1 - right, 1 - left
    return _truth_rows(np.clip(np.stack([left, top, right, bottom], 1), 0, 1), b[:, 4])


def place_native(image: torch.Tensor, pleft: int, pright: int, ptop: int, pbot: int,
                 netw: int, neth: int, flip: bool) -> torch.Tensor:
    """The non-OpenCV build's pixels: src/image.c crop_image (outside the source, the nearest
    edge pixel), resize_image (bilinear, corners aligned, in float), flip_image. Float (C, h, w)
    in [0, 1]."""
    from builders.boxes import resize_image

    c, oh, ow = image.shape
    rows = (torch.arange(oh - ptop - pbot) + ptop).clamp_(0, oh - 1)
    cols = (torch.arange(ow - pleft - pright) + pleft).clamp_(0, ow - 1)
    x = image.to(torch.float32).div_(255)[:, rows][:, :, cols]
    x = resize_image(x, netw, neth)
    return x.flip(-1) if flip else x


def augment(image: torch.Tensor, boxes: np.ndarray, netw: int, neth: int, s: DetectionSettings,
            rng: np.random.Generator, corner: int | None = None) -> Placed:
    """One image through load_data_detection's per-image path: random crop/pad (jitter, resize,
    letter_box), resize to the network size, flip, boxes shuffled, transformed, truncated to
    `max` and filtered, then HSV, blur and Gaussian noise (OpenCV build; `s.build == "native"`:
    that build's crop, resize and float HSV, no blur or noise)."""
    c, oh, ow = image.shape
    use_corner = corner is not None and rng.random() < 0.5
    flip = bool(s.flip) and rng.random() < 0.5
    pleft, pright, ptop, pbot = crop_offsets(ow, oh, netw, neth, s, rng,
                                             corner if use_corner else None, flip)
    dhue = float(rng.uniform(-s.hue, s.hue)) if s.hue else 0.0
    dsat = rand_scale(s.saturation, rng) if s.saturation != 1 else 1.0
    dexp = rand_scale(s.exposure, rng) if s.exposure != 1 else 1.0
    blur = 0
    if s.blur and s.build == "opencv":
        blur = (0, 1, s.blur)[int(rng.integers(0, 3))]
    boxes = boxes[rng.permutation(len(boxes))] if len(boxes) > 1 else boxes  # randomize_boxes
    if s.build == "native":
        x = place_native(image, pleft, pright, ptop, pbot, netw, neth, flip)
        if dsat != 1 or dexp != 1 or dhue != 0:
            x = distort_image(x, dhue, dsat, dexp)
        # the batch is uint8 until collation: Darknet's float pixels rounded to 1/255 here
        img = x.mul_(255).round_().to(torch.uint8)
        kept = keep_boxes(moved_boxes(boxes, ow, oh, pleft, pright, ptop, pbot, flip), netw,
                          neth, s.max_boxes, s.classes)
        return Placed(img, kept, pleft, pright, ptop, pbot, flip, (ow, oh))
    img, moved = place(image, boxes, pleft, pright, ptop, pbot, netw, neth, flip)
    kept = keep_boxes(moved, netw, neth, s.max_boxes, s.classes)
    if blur > 1:  # a blur wider than an eighth of the smallest box would erase it
        min_w_h = int(min(np.min(kept[:, 2]) * netw, np.min(kept[:, 3]) * neth)) \
            if len(kept) else 0
        if min_w_h // 8 < blur:
            blur = min_w_h // 8
    if dsat != 1 or dexp != 1 or dhue != 0:
        img = hsv_shift(img, dhue, dsat, dexp) if c == 3 else \
            (img.float() * dexp).add(0.5).floor().clamp(0, 255).to(torch.uint8)
    img = blur_image(img, blur, kept)
    if s.gaussian_noise and rng.random() < 0.5:
        img = add_noise(img, s.gaussian_noise, rng)
    return Placed(img, kept, pleft, pright, ptop, pbot, flip, (ow, oh))


# -- several images: mixup and mosaic -------------------------------------------------------------
Loader = Callable[[int], tuple[torch.Tensor, np.ndarray]]


def mixup(first: Placed, second: Placed, max_boxes: int) -> tuple[torch.Tensor, np.ndarray]:
    """0.5·img1 + 0.5·img2 (rounded, as addWeighted into uint8); img1's boxes, then img2's."""
    img = (first.image.float() * 0.5 + second.image.float() * 0.5).add(0.5).floor()
    boxes = np.concatenate([first.boxes, second.boxes])[:max_boxes]
    return img.to(torch.uint8), boxes


def mosaic(parts: list[Placed], cut_x: int, cut_y: int, s: DetectionSettings, netw: int,
           neth: int) -> tuple[torch.Tensor, np.ndarray]:
    """Four augmented images (top-left, top-right, bottom-left, bottom-right) into one canvas
    split at (cut_x, cut_y), each shifted toward the centre by its padding (blend_truth_mosaic)."""
    w, h = netw, neth
    out = torch.empty_like(parts[0].image)
    boxes: list[np.ndarray] = []
    for q, part in enumerate(parts):
        ow, oh = part.source_size
        pleft, pright = (part.pright, part.pleft) if part.flip else (part.pleft, part.pright)
        left = min(cut_x, max(0, -pleft * w // ow))
        right = min(w - cut_x, max(0, -pright * w // ow))
        top = min(cut_y, max(0, -part.ptop * h // oh))
        bot = min(h - cut_y, max(0, -part.pbot * h // oh))
        # source window origin in the augmented image, and this quadrant's canvas rect
        sx = w - cut_x - right if q in (0, 2) else left - cut_x
        sy = h - cut_y - bot if q < 2 else top - cut_y
        x0, x1 = (0, cut_x) if q in (0, 2) else (cut_x, w)
        y0, y1 = (0, cut_y) if q < 2 else (cut_y, h)
        out[:, y0:y1, x0:x1] = part.image[:, y0 + sy:y1 + sy, x0 + sx:x1 + sx]
        b = part.boxes.astype(np.float64)
        b[:, 0] -= sx / w
        b[:, 1] -= sy / h
        boxes.append(_bound_mosaic(b, (x0, y0, x1, y1), s, w, h))
    kept = np.concatenate(boxes).astype(np.float32)[:s.max_boxes]
    return out, kept


def _bound_mosaic(b: np.ndarray, quad: tuple[int, int, int, int], s: DetectionSettings,
                  w: int, h: int) -> np.ndarray:
    """blend_truth_mosaic's clipping and keep test for one quadrant's shifted boxes."""
    kept = []
    qx0, qy0, qx1, qy1 = quad
    for xb, yb, wb, hb, cls in b:
        xb, wb, x_kept = _mosaic_axis(xb, wb, w, qx0, qx1, s.mosaic_bound)
        yb, hb, y_kept = _mosaic_axis(yb, hb, h, qy0, qy1, s.mosaic_bound)
        if x_kept and y_kept:
            kept.append([xb, yb, wb, hb, cls])
    return np.asarray(kept, np.float64).reshape(-1, 5)


def _mosaic_axis(c: float, size: float, pixels: int, lo: int, hi: int, bound: bool
                 ) -> tuple[float, float, bool]:
    """One axis of blend_truth_mosaic (x with the width, y with the height): the box's centre
    and size clipped to the quadrant [lo, hi] (mosaic_bound) or cut at the canvas's edges, and
    whether that axis lets it stay."""
    low, high = int((c - size / 2) * pixels), int((c + size / 2) * pixels)
    if bound:
        low, high = min(max(low, lo), hi), min(max(high, lo), hi)
        c, size = (high + low) / 2 / pixels, (high - low) / pixels
    else:
        if low < 0:
            d = low / pixels
            c, size = c - d / 2, size + d
        if high > pixels:
            d = (high - pixels) / pixels
            c, size = c - d / 2, size - d
        low, high = int((c - size / 2) * pixels), int((c + size / 2) * pixels)
    return c, size, (low >= 0 and high <= pixels and 0 < size < 1 and 0 < c < 1
                     and size > 1 / pixels)


def training_sample(load: Loader, count: int, netw: int, neth: int, s: DetectionSettings,
                    rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """One training image at netw x neth and its boxes (k, 5): images drawn uniformly with
    replacement from `load` (count images), then mixup or mosaic with p = 1/2 when the cfg
    asks for them."""
    mix = s.mix if s.mix in (MIXUP, MOSAIC) and rng.random() < 0.5 else NO_MIX

    def one(corner: int | None = None) -> Placed:
        image, boxes = load(int(rng.integers(count)))
        return augment(image, boxes, netw, neth, s, rng, corner)

    if mix == MOSAIC:
        cut_x = int(rng.integers(int(0.2 * netw), int(0.8 * netw) + 1))
        cut_y = int(rng.integers(int(0.2 * neth), int(0.8 * neth) + 1))
        return mosaic([one(q) for q in range(4)], cut_x, cut_y, s, netw, neth)
    if mix == MIXUP:
        first, second = one(), one()
        if s.build == "native":  # that build puts the new image's boxes first (the blend of
            first, second = second, first  # two halves is the same either way round)
        return mixup(first, second, s.max_boxes)
    part = one()
    return part.image, part.boxes
