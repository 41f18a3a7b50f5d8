"""What every detection head shares: the `DetectionHead` layer protocol (forward, typed
settings, `loss -> (loss, stats)`, `head_decoding`), the decoding protocol (`HeadDecoding`,
`HeadParts`), reading a head's keys from its block, and the plumbing of Darknet-style losses.

Darknet does not minimise a written loss: each head fills a `delta` buffer (= -dL/d(head
input)) with formulas that are often not the gradient of anything (IoU-family pseudo-gradients,
the missing sigma' on yolo x/y, max_delta clipping). A head computes that delta `D` exactly,
without autograd (`DetectionHead.deltas`), and `loss` returns the surrogate
`-(D * x).sum() / N` (N = the batch of `x`): its gradient with respect to the head input `x` is
`-D / N`, which is what Darknet back-propagates per image. Its value is shifted (by a constant,
so the gradient is unchanged) to Darknet's `l.cost / N`.

Truth is (N, M, 5) float `[x, y, w, h, class]`, relative to the network input; a list ends at
its first row with x == 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from cfgparse import Block, CfgError, schema
from cfgparse.rules import anchor_pairs, head_input_problem, mask_problem, num_problem

from ..boxes import box_iou
from ..layer import Layer
from ..registry import Shape

#: a head's statistics: Darknet's printed line (avg IoU, count, class/iou/total loss, ...)
Stats = dict[str, float]


# -- reading the block ----------------------------------------------------------------------------

def read_keys(block: Block, flavor: str, skip: frozenset[str] | set[str],
              defaults: dict | None = None) -> dict:
    """Every key of this section that the fork `flavor` reads (per the schema), except `skip`
    (read by the builder itself), typed, with Darknet's default: the one place a head reads its
    block, from which its typed settings are made. Keys of the other fork stay unread, so W301
    reports them as ignored."""
    defaults = defaults or {}
    options = {}
    for key, spec in schema.SECTIONS[block.type].items():
        if key in schema.COMMON or key in skip or spec.fork not in ("", flavor):
            continue
        options[key] = block.get(key, defaults.get(key, spec.default))
    return options


def anchors_of(block: Block, num: int) -> list[float]:
    problem = num_problem(block)
    if problem is not None:
        raise CfgError(problem)
    return anchor_pairs(block.floats("anchors", None), num)


def mask_of(block: Block, num: int) -> list[int]:
    mask = block.ints("mask", None)
    problem = mask_problem(block)
    if problem is not None:
        raise CfgError(problem)
    return list(range(num)) if mask is None else mask


def check_input(block: Block, have: int, previous: Block | None = None) -> None:
    """The head's input against what it decodes (cfgparse.rules.HEAD_INPUTS); `previous`: the
    section before the head, where the error points when it sets the count."""
    problem = head_input_problem(block, have, previous)
    if problem is not None:
        raise CfgError(problem)


@dataclass(frozen=True)
class DataOptions:
    """What a head asks of the detection data (darkcfg.data.detection reads the last head's):
    the truth boxes per image (`max`), and the augmentation keys of the head's section."""

    max_boxes: int = 200
    jitter: float = 0.2
    resize: float = 1.0
    random: float = 0.0

    @classmethod
    def from_keys(cls, keys: dict) -> DataOptions:
        return cls(max_boxes=int(keys.get("max", 200)), jitter=float(keys.get("jitter", 0.2)),
                   resize=float(keys.get("resize", 1.0) or 1.0),
                   random=float(keys.get("random", 0) or 0))


@dataclass(frozen=True)
class LossScales:
    """The four weights of the YOLOv1/v2 losses ([detection], [region])."""

    coord_scale: float = 1.0
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0

    @staticmethod
    def read(keys: dict) -> dict[str, float]:
        return {k: float(keys[k]) for k in ("coord_scale", "object_scale", "noobject_scale",
                                            "class_scale")}


NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")


# -- forward helpers ------------------------------------------------------------------------------

def transform_runs(entries: int, logistic: set[int], scaled: set[int]):
    """[(start, stop, logistic?, scaled?)] runs of consecutive entries treated alike."""
    runs: list[list] = []
    for e in range(entries):
        kind = (e in logistic, e in scaled)
        if runs and runs[-1][2:] == list(kind):
            runs[-1][1] = e + 1
        else:
            runs.append([e, e + 1, *kind])
    return [tuple(r) for r in runs]


def grid(x: torch.Tensor, out: Shape) -> tuple[int, int]:
    """H, W of a head's input: the tensor's own (a fully convolutional net may run at another
    size than the cfg's), or the built shape for a flat tensor."""
    return (x.shape[2], x.shape[3]) if x.dim() == 4 else (out.h, out.w)


def grouped_softmax(t: torch.Tensor, sizes: list[int] | None, dim: int) -> torch.Tensor:
    if sizes is None:
        return torch.softmax(t, dim)
    return torch.cat([torch.softmax(p, dim) for p in torch.split(t, sizes, dim)], dim)


# -- decoding -------------------------------------------------------------------------------------

class HeadParts(NamedTuple):
    """One head's candidates in Darknet's order: boxes (N,k,4) relative centre/size, Darknet's
    `objectness` field (N,k) and the class probabilities before thresholding (N,k,C)."""

    boxes: torch.Tensor
    objectness: torch.Tensor
    scores: torch.Tensor


class HeadDecoding:
    """What Darknet's `get_network_boxes` does for one kind of head. Subclasses give
    `predictions`; the default thresholding is Darknet's `prob = p if p > thresh else 0`, every
    box kept."""

    #: `correct_yolo_boxes` (letterbox undo) applies to this head's boxes ([detection]: no).
    letterbox: bool = True

    def predictions(self, layer: Layer, y: torch.Tensor, net_w: int, net_h: int) -> HeadParts:
        """The head output `y` (N, C, H, W) decoded into HeadParts: boxes (N, K, 4) relative
        centre/size, objectness (N, K), class scores (N, K, C), in get_network_boxes order.
        Every head's decoding gives its own."""
        raise NotImplementedError

    def unsupported(self, layer: Layer) -> tuple[str, str] | None:
        """(the cfg key at fault, why) when this layer's options cannot be decoded; else None."""
        return None

    def keep(self, layer: Layer, parts: HeadParts, thresh: torch.Tensor):
        """Which candidates Darknet emits: (N,k) bool, or None for all of them."""
        return None

    def emitted(self, layer: Layer, y: torch.Tensor, thresh: torch.Tensor, net_w: int,
                net_h: int) -> tuple[torch.Tensor, torch.Tensor, HeadParts, int]:
        """The candidates Darknet emits, in get_network_boxes order: (image (K,), index (K,)
        among `predictions`' candidates of that image, their HeadParts with K rows, how many
        candidates an image has). This default decodes every candidate, then selects; a head
        may decode only the emitted ones."""
        parts = self.predictions(layer, y, net_w, net_h)
        keep = self.keep(layer, parts, thresh)
        if keep is None:
            keep = torch.ones(parts.objectness.shape, dtype=torch.bool,
                              device=parts.objectness.device)
        image, index = torch.nonzero(keep, as_tuple=True)
        return image, index, HeadParts(parts.boxes[image, index],
                                       parts.objectness[image, index],
                                       parts.scores[image, index]), keep.shape[1]

    def threshold(self, layer: Layer, objectness: torch.Tensor, scores: torch.Tensor,
                  thresh: torch.Tensor):
        """(objectness, probs) of the emitted candidates (any leading shape)."""
        return objectness, torch.where(scores > thresh, scores, 0.0)

    def nms_kind(self, layer: Layer) -> tuple[str, float]:
        """(nms_kind, beta_nms) as Darknet parses them for this head (unknown -> default)."""
        return getattr(layer, "nms_kind", "default"), getattr(layer, "beta_nms", 0.0)


def cells(h: int, w: int, n: int, device, anchor_major: bool = False):
    """col, row (float) of every (cell, anchor) pair, cell-major with the anchor inner (Darknet's
    [yolo]/AlexeyAB [region] order), or anchor-major (pjreddie [region])."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32),
                                indexing="ij")
    if anchor_major:
        return cols.reshape(1, -1).expand(n, -1).reshape(-1), \
            rows.reshape(1, -1).expand(n, -1).reshape(-1)
    return cols.reshape(-1, 1).expand(-1, n).reshape(-1), \
        rows.reshape(-1, 1).expand(-1, n).reshape(-1)


def per_anchor(values: list[float], h: int, w: int, device, anchor_major: bool = False):
    t = torch.tensor(values, dtype=torch.float32, device=device)
    return t.repeat_interleave(h * w) if anchor_major else t.repeat(h * w)


# -- the head protocol ----------------------------------------------------------------------------

class Deltas(NamedTuple):
    """One loss evaluation: Darknet's delta buffer (the head input's shape, or its flat layout),
    Darknet's `l.cost` (a float64 scalar tensor) and the printed statistics."""

    delta: torch.Tensor
    cost: torch.Tensor
    stats: Stats


class DetectionHead(Layer):
    """A detection head: a layer whose loss compares with truth boxes and whose output
    `darkcfg.detect` decodes with `head_decoding`. A head module subclasses it, gives `forward`,
    `deltas` (Darknet's forward_*_layer in training) and a `HeadDecoding`, and registers its
    builder; the trainer and decoder ask nothing else of it."""

    is_output = True
    takes_loss = True
    loss_target = "boxes"  # truth (N, M, 5) [x, y, w, h, class]
    #: how `darkcfg.detect` turns this head's output into boxes (None: not decoded)
    head_decoding: ClassVar[HeadDecoding | None] = None

    #: what the detection data reads from this head; set by the builder
    data: DataOptions = DataOptions()
    #: the head's class count (every head's builder sets it from its block)
    classes: int = 1
    #: Darknet's nms_kind / beta_nms of this head ([yolo] reads them; the others keep defaults)
    nms_kind: str = "default"
    beta_nms: float = 0.0
    #: (key, why) of keys written in the block that darkcfg does not honour (W-warnings)
    unhonoured_keys: tuple[tuple[str | None, str], ...] = ()

    def deltas(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> Deltas:
        """Darknet's delta for the head input `x` against `truth`, at net.seen = `seen`."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss")

    def loss(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0
             ) -> tuple[torch.Tensor, Stats]:
        """(surrogate loss whose gradient is -delta / N and whose value is Darknet's cost / N,
        the printed statistics)."""
        found = self.deltas(x, truth, seen)
        return surrogate(x, found.delta.reshape(x.shape), found.cost), found.stats


# -- loss plumbing --------------------------------------------------------------------------------

def surrogate(x: torch.Tensor, delta: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Surrogate with gradient -delta/N, whose value is Darknet's cost / N."""
    n = x.shape[0]
    value = -(delta.detach() * x).sum(dtype=delta.dtype) / n
    return value + (cost.detach().to(value.dtype) / n - value.detach())


def work(x: torch.Tensor) -> torch.Tensor:
    """The head input, detached, in at least float32 (AMP gives half precision: IoUs and
    thresholds need float32, as in Darknet)."""
    x = x.detach()
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def alive_truth(truth: torch.Tensor, max_boxes: int) -> tuple[torch.Tensor, int]:
    """Truth rows Darknet reads: up to `max` rows, ending at the first x == 0; and how many
    rows are worth keeping (the largest live count of any image)."""
    truth = truth[:, :max_boxes]
    alive = torch.cumprod((truth[..., 0] != 0).to(torch.int32), 1).bool()
    return alive, int(alive.sum(1).max()) if alive.numel() else 0


def best_truth(pred: torch.Tensor, truth: torch.Tensor, usable: torch.Tensor):
    """Every predicted box (B, n, H, W, 4) against every usable truth of its image (truth
    (B, M, 5), usable (B, M)): (the best IoU, the index of that truth (the first of equal
    maxima)), each (B, n, H, W); 0 and 0 without truths."""
    if not truth.shape[1]:
        return (torch.zeros(pred.shape[:-1], dtype=pred.dtype, device=pred.device),
                torch.zeros(pred.shape[:-1], dtype=torch.long, device=pred.device))
    ious = box_iou(pred.unsqueeze(4), truth[:, None, None, None, :, :4])
    ious = torch.where(usable[:, None, None, None, :], ious, torch.zeros_like(ious))
    return ious.max(4)


def finite(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def pick(slot: torch.Tensor, key: torch.Tensor, how: str) -> torch.Tensor:
    """Indices of the assignment with the smallest/largest `key` per slot (one per slot: a slot
    is never assigned twice with the same key)."""
    if not len(slot):
        return slot
    uniq, inverse = torch.unique(slot, return_inverse=True)
    best = torch.zeros(len(uniq), dtype=key.dtype, device=key.device)
    best.scatter_reduce_(0, inverse, key, how, include_self=False)
    return (key == best[inverse]).nonzero(as_tuple=True)[0]


def first_argmax(iou: torch.Tensor) -> torch.Tensor:
    """argmax with Darknet's strict '>' from 0: the first maximum, 0 when all are 0."""
    top = iou.max(-1, keepdim=True).values
    idx = torch.arange(iou.shape[-1], device=iou.device).expand_as(iou)
    first = torch.where(iou == top, idx, torch.full_like(idx, iou.shape[-1])).min(-1).values
    return torch.where(top.squeeze(-1) > 0, first, torch.zeros_like(first))
