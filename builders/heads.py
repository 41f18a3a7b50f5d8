"""Builders: detection heads — [yolo], [Gaussian_yolo], [region], [detection], [contrastive]
(SEMANTICS.md §7.15–7.18, §7.28).

Each forward applies exactly the transform Darknet applies inside the layer at inference (the
rest of the decoding happens later, in Darknet's get_*_boxes). Keys that only matter for training
are read and kept in `train_options` for the loss.
"""

from __future__ import annotations

import torch

from cfgparse import Block, CfgError, schema
from cfgparse.rules import anchor_pairs, head_input_problem, mask_problem

from . import head_loss
from .dense import flat_input, load_tree
from .layer import Layer
from .registry import BuildContext, Shape, register

# Keys whose meaning the forward itself uses (read explicitly by the builders).
_FORWARD_KEYS = {"classes", "num", "mask", "anchors", "coords", "softmax", "tree", "side",
                 "scale_x_y", "new_coords", "background", "yolo_layer"}


def training_options(block: Block, flavor: str, defaults: dict | None = None) -> dict:
    """Every other key this fork reads in this section (per the schema), typed, with its Darknet
    default. Keys of the other fork stay unread, so W301 reports them as ignored."""
    defaults = defaults or {}
    options = {}
    for key, spec in schema.SECTIONS[block.type].items():
        if key in schema.COMMON or key in _FORWARD_KEYS or spec.fork not in ("", flavor):
            continue
        options[key] = block.get(key, defaults.get(key, spec.default))
    return options


def _transform_runs(entries: int, logistic: set[int], scaled: set[int]):
    """[(start, stop, logistic?, scaled?)] runs of consecutive entries treated alike."""
    runs: list[list] = []
    for e in range(entries):
        kind = (e in logistic, e in scaled)
        if runs and runs[-1][2:] == list(kind):
            runs[-1][1] = e + 1
        else:
            runs.append([e, e + 1, *kind])
    return [tuple(r) for r in runs]


def _grid(x: torch.Tensor, out: Shape) -> tuple[int, int]:
    """H, W of a head's input: the tensor's own (a fully convolutional net may run at another
    size than the cfg's), or the built shape for a flat tensor."""
    return (x.shape[2], x.shape[3]) if x.dim() == 4 else (out.h, out.w)


def _grouped_softmax(t: torch.Tensor, sizes: list[int] | None, dim: int) -> torch.Tensor:
    if sizes is None:
        return torch.softmax(t, dim)
    return torch.cat([torch.softmax(p, dim) for p in torch.split(t, sizes, dim)], dim)


def _anchors(block: Block, num: int) -> list[float]:
    return anchor_pairs(block.floats("anchors", None), num)


def _mask(block: Block, num: int) -> list[int]:
    mask = block.ints("mask", None)
    problem = mask_problem(block)
    if problem is not None:
        raise CfgError(problem)
    return list(range(num)) if mask is None else mask


def _check_input(block: Block, have: int) -> None:
    """The head's input against what it decodes (cfgparse.rules.HEAD_INPUTS)."""
    problem = head_input_problem(block, have)
    if problem is not None:
        raise CfgError(problem)


# -- [yolo], [Gaussian_yolo] ----------------------------------------------------------------------

class YoloHead(Layer):
    """Layout [anchor][entry][h][w]: logistic on the listed entries, then x,y -> x*s - (s-1)/2."""

    is_output = True
    takes_loss = True
    loss_target = "boxes"  # truth (N, M, 5) [x, y, w, h, class] (head_loss)

    def __init__(self, out: Shape, n: int, entries: int, logistic: set[int], scaled: set[int],
                 scale_x_y: float):
        super().__init__()
        self.out, self.n, self.entries = out, n, entries
        self.scale_x_y = scale_x_y
        self.runs = _transform_runs(entries, logistic, scaled if scale_x_y != 1 else set())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = _grid(x, self.out)
        v = x.reshape(x.shape[0], self.n, self.entries, h, w)
        s = self.scale_x_y
        parts = []
        for start, stop, logistic, scaled in self.runs:
            p = v[:, :, start:stop]
            if logistic:
                p = torch.sigmoid(p)
            if scaled:
                p = p * s - 0.5 * (s - 1)
            parts.append(p)
        return torch.cat(parts, 2).reshape(x.shape[0], self.n * self.entries, h, w)

    def loss(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> torch.Tensor:
        return head_loss.yolo_loss(self, x, truth, seen)


def _build_yolo(block: Block, ctx: BuildContext, gaussian: bool):
    pjreddie = ctx.net.flavor == "pjreddie" and not gaussian
    classes = block.int("classes")
    num = block.int("num")
    anchors = _anchors(block, num)
    mask = _mask(block, num)
    box = 8 if gaussian else 4
    entries = box + 1 + classes
    n = len(mask)
    _check_input(block, ctx.input.c)
    scale_x_y = 1.0 if pjreddie else block.float("scale_x_y")
    new_coords = False if (pjreddie or gaussian) else block.bool("new_coords")
    if gaussian:  # x,y,w,h means and sigmas: logistic on all but the w/h means (4, 6)
        logistic = {0, 1, 2, 3, 5, 7} | set(range(8, entries))
        scaled = {0, 2}
    else:
        logistic = set() if new_coords else {0, 1} | set(range(4, entries))
        scaled = {0, 1}
    layer = YoloHead(ctx.input, n, entries, logistic, scaled, scale_x_y)
    layer.classes, layer.mask, layer.anchors, layer.num = classes, mask, anchors, num
    layer.new_coords = new_coords
    layer.train_options = training_options(block, "pjreddie" if pjreddie else "alexeyab",
                                           {"max": 90} if pjreddie else None)
    embedding = layer.train_options.get("embedding_layer")
    if embedding is not None:
        layer.train_options["embedding_layer"] = ctx.resolve(block, "embedding_layer", embedding)
    layer.describe = f"{classes} classes"
    layer.filters = ctx.input.c
    layer.pjreddie = pjreddie
    head_loss.configure_yolo(block, layer, ctx.net.width, ctx.net.height)
    return layer, ctx.input


@register("yolo")
def build_yolo(block: Block, ctx: BuildContext):
    return _build_yolo(block, ctx, gaussian=False)


@register("Gaussian_yolo")
def build_gaussian_yolo(block: Block, ctx: BuildContext):
    return _build_yolo(block, ctx, gaussian=True)


# -- [region] -------------------------------------------------------------------------------------

class Region(Layer):
    """YOLOv2 head. The forward returns (N, C, H, W) with Darknet's in-layer activations;
    `darknet_output` gives the fork's memory order (AlexeyAB: HWC, pjreddie: CHW).

    AlexeyAB: logistic on objectness only, softmax over each anchor's classes (if softmax=1).
    pjreddie: logistic on x, y and objectness (unless background), then softmax over the classes
    (+ background) or, with softmax=0, logistic on them."""

    is_output = True
    takes_loss = True
    loss_target = "boxes"

    def __init__(self, out: Shape, n: int, coords: int, classes: int, softmax: bool,
                 tree: list[int] | None, tree_error, pjreddie: bool, background: bool):
        super().__init__()
        self.out, self.n, self.coords, self.classes = out, n, coords, classes
        self.entries = coords + 1 + classes
        self.softmax, self.tree, self.tree_error = softmax, tree, tree_error
        self.pjreddie, self.background = pjreddie, background

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tree_error is not None:
            raise self.tree_error
        h, w = _grid(x, self.out)
        v = x.reshape(x.shape[0], self.n, self.entries, h, w)
        k = self.coords
        if not self.pjreddie:
            cls = v[:, :, k + 1:]
            if self.tree is not None or self.softmax:
                cls = _grouped_softmax(cls, self.tree, 2)
            parts = [v[:, :, :k], torch.sigmoid(v[:, :, k:k + 1]), cls]
        else:
            xy, wh = torch.sigmoid(v[:, :, :2]), v[:, :, 2:k]
            obj = v[:, :, k:k + 1] if self.background else torch.sigmoid(v[:, :, k:k + 1])
            cls = v[:, :, k + 1:]
            if self.tree is not None:
                cls = _grouped_softmax(cls, self.tree, 2)
            elif self.softmax and self.background:  # softmax spans the objectness slot too
                both = torch.softmax(v[:, :, k:], 2)
                obj, cls = both[:, :, :1], both[:, :, 1:]
            elif self.softmax:
                cls = torch.softmax(cls, 2)
            else:
                cls = torch.sigmoid(cls)
            parts = [xy, wh, obj, cls]
        return torch.cat(parts, 2).reshape(x.shape[0], self.n * self.entries, h, w)

    def darknet_output(self, y: torch.Tensor) -> torch.Tensor:
        if self.pjreddie:
            return y.reshape(y.shape[0], -1)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)  # AlexeyAB's flatten to HWC

    def loss(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> torch.Tensor:
        return head_loss.region_loss(self, x, truth, seen)


@register("region")
def build_region(block: Block, ctx: BuildContext):
    pjreddie = ctx.net.flavor == "pjreddie"
    classes, coords = block.int("classes"), block.int("coords")
    num = block.int("num")
    anchors = _anchors(block, num)
    if coords < 2:
        raise block.error("E203", f"coords={coords}: a [region] box has at least x and y",
                          "coords")
    _check_input(block, ctx.input.c)
    tree, tree_error = load_tree(block, "tree", classes) if block.has("tree") else (None, None)
    background = block.bool("background") if pjreddie else False
    layer = Region(ctx.input, num, coords, classes, block.bool("softmax"), tree, tree_error,
                   pjreddie, background)
    layer.anchors = anchors
    layer.train_options = training_options(block, ctx.net.flavor,
                                           {"max": 30} if pjreddie else None)
    layer.describe = f"{classes} classes"
    layer.filters = ctx.input.c
    head_loss.configure_region(block, layer, ctx.net.flavor)
    return layer, ctx.input


# -- [detection] ----------------------------------------------------------------------------------

class Detection(Layer):
    """YOLOv1 head on the flat input: side*side*classes class scores (softmax per cell if
    softmax=1), then side*side*num confidences, then the boxes — those stay raw."""

    is_output = True
    takes_loss = True
    loss_target = "boxes"

    def __init__(self, inputs: int, cells: int, classes: int, softmax: bool):
        super().__init__()
        self.inputs, self.cells, self.classes, self.softmax = inputs, cells, classes, softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(x.shape[0], -1)
        if not self.softmax:
            return y
        split = self.cells * self.classes
        probs = torch.softmax(y[:, :split].reshape(-1, self.cells, self.classes), -1)
        return torch.cat([probs.reshape(y.shape[0], split), y[:, split:]], 1)

    def loss(self, x: torch.Tensor, truth: torch.Tensor, seen: int = 0) -> torch.Tensor:
        return head_loss.detection_loss(self, x, truth, seen)


@register("detection")
def build_detection(block: Block, ctx: BuildContext):
    inputs = flat_input(block, ctx)
    classes, coords, num, side = (block.int(k) for k in ("classes", "coords", "num", "side"))
    _check_input(block, inputs)
    layer = Detection(inputs, side * side, classes, block.bool("softmax"))
    layer.side, layer.num, layer.coords = side, num, coords  # for decoding
    layer.train_options = training_options(block, ctx.net.flavor)
    layer.describe = f"{side}x{side} {classes} cls"
    head_loss.configure_detection(block, layer, side, num, coords)
    return layer, Shape.flat(inputs)


# -- [contrastive] --------------------------------------------------------------------------------

class Contrastive(Layer):
    """AlexeyAB's contrastive-learning layer. Its forward returns at once outside training, so
    the output buffer Darknet exposes stays zero: we return zeros too (its loss is not
    implemented; the layer keeps its options for it)."""

    is_output = True

    def __init__(self, inputs: int):
        super().__init__()
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.inputs)


@register("contrastive")
def build_contrastive(block: Block, ctx: BuildContext):
    inputs = flat_input(block, ctx)
    layer = Contrastive(inputs)
    yolo_layer = block.int("yolo_layer", 0)
    if yolo_layer:
        target = ctx.resolve(block, "yolo_layer", yolo_layer)
        if ctx.types[target] != "yolo":
            raise block.error("E304", f"yolo_layer points at layer {target}, a "
                              f"[{ctx.types[target]}], not a [yolo] layer", "yolo_layer")
        yolo_layer = target
    layer.yolo_layer = yolo_layer or None
    layer.classes = block.int("classes")
    layer.train_options = training_options(block, ctx.net.flavor)
    layer.describe = f"{layer.classes} classes"
    return layer, Shape.flat(inputs)

