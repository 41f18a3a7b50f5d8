"""`darkcfg check --target opencv|onnx|tensorrt CFG`: what a deployment runtime will not run
as Darknet does, named before anyone exports. Torch-free: rules are data, applied to the parsed
blocks.

Codes (warnings):
  W601  section the target cannot load or run
  W602  activation the target does not have
  W603  key value the target refuses
  W604  key the target reads past (the layer loads, but computes without it)
and, for the targets made from darkcfg's export (onnx, tensorrt), the error that stops the
export itself: a layer that builds but cannot run (its tree= file is absent: E901, as
`darkcfg export` reports it).

Sources of the data:
- opencv: OpenCV 4.x's Darknet importer (modules/dnn/src/darknet/darknet_io.cpp,
  ReadDarknetFromCfgStream and setActivation; OpenCV 5 removed the importer). The section and
  activation lists were confirmed against opencv-python-headless 4.14 by loading one-layer cfgs
  (tests/test_targets.py repeats that where OpenCV is installed).
- onnx: darkcfg's own exporter (darkcfg/export/onnx.py, nms.py): every section exports, so the
  rules are about what the ONNX graph cannot say as Darknet does.
- tensorrt: the ONNX graph as TensorRT's ONNX parser sees it; plus what export turns into
  plugins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cfgparse import Block, CfgError, Diagnostic
from cfgparse.errors import WARNING
from cfgparse.rules import REFERENCES_ONLY

TARGETS = ("opencv", "onnx", "tensorrt")


@dataclass(frozen=True)
class KeyRule:
    """`key` in [section] is flagged when `flagged(value)`; `code` W603 (refused) or W604
    (ignored)."""

    section: str
    key: str
    code: str
    why: str
    flagged: object  # a callable value -> bool

    def applies(self, block: Block) -> bool:
        if block.type != self.section or self.key not in block.options:
            return False
        try:
            return bool(self.flagged(block.options[self.key].value))
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True)
class SectionRule:
    """`rule` for the layers of `sections` (None: any) that read a layer of `reads` (a pair
    rule; None: not one): it says why the target differs, or None. `code` W603 (refused) or
    W604 (computed otherwise); `key` the key at fault, where one is. The dispatch is here, so
    a rule is about its sections only (no `block.type` test inside)."""

    sections: frozenset | None
    rule: Callable
    code: str
    key: str | None = None
    reads: frozenset | None = None

    def applies(self, block: Block, read: Block | None = None) -> bool:
        return (self.sections is None or block.type in self.sections) and \
            (self.reads is None or (read is not None and read.type in self.reads))


def _sections(*names: str) -> frozenset:
    return frozenset(names)


def _option(block: Block, key: str, default=None):
    """A key's typed value without marking it read (a target rule is no builder: W301 stays
    the builders' say)."""
    opt = block.options.get(key)
    return default if opt is None else opt.value


def _not(default):
    return lambda v: v != default


def _any(values):
    return lambda v: (v[0] if isinstance(v, (list, tuple)) else v) not in values


# -- OpenCV 4.x (darknet_io.cpp) ------------------------------------------------------------------
OPENCV_SECTIONS = frozenset({
    "convolutional", "connected", "maxpool", "avgpool", "softmax", "route", "dropout", "cost",
    "reorg", "region", "shortcut", "scale_channels", "sam", "upsample", "yolo", "crop", "net"})
OPENCV_ACTIVATIONS = frozenset({"linear", "leaky", "relu", "logistic", "tanh", "swish", "mish"})
OPENCV_KEYS = (
    KeyRule("convolutional", "flipped", "W603", "OpenCV does not transpose convolution "
            "weights (flipped=1)", _not(0)),
    KeyRule("softmax", "groups", "W603", "OpenCV's softmax takes groups=1 only", _not(1)),
    # measured, OpenCV 4.14: it reads scales, mean, variance before the matrix, as for a
    # convolution; Darknet stores them after it (src/parser.c load_connected_weights)
    KeyRule("connected", "batch_normalize", "W603", "OpenCV reads a [connected] layer's "
            "batch-norm arrays from before its weights (Darknet's .weights store them after): "
            "it loads the layer's weights misplaced", _not(0)),
    KeyRule("region", "tree", "W603", "OpenCV's [region] has no softmax tree decoding "
            "(yolo9000)", lambda v: bool(v)),
    KeyRule("convolutional", "xnor", "W604", "OpenCV runs the convolution in float (no "
            "sign binarisation)", _not(0)),
    KeyRule("convolutional", "binary", "W604", "OpenCV runs the float weights (no binary "
            "weights)", _not(0)),
    KeyRule("convolutional", "antialiasing", "W604", "OpenCV's importer adds no blur "
            "after the convolution", _not(0)),
    # measured, OpenCV 4.14: both leave the file's floats misaligned from that layer on
    KeyRule("convolutional", "share_index", "W603", "OpenCV's importer does not share "
            "weights between layers: it reads this layer's own weights, which the .weights "
            "file does not hold, so this and every later layer load misplaced",
            lambda v: True),
    KeyRule("convolutional", "deform", "W604", "OpenCV has no deformable convolution",
            _not(0)),
    KeyRule("maxpool", "maxpool_depth", "W604", "OpenCV pools over space only", _not(0)),
    KeyRule("maxpool", "antialiasing", "W604", "OpenCV's importer adds no blur after pooling",
            _not(0)),
    KeyRule("shortcut", "weights_type", "W603", "OpenCV's [shortcut] has no learned weights "
            "and reads past them in the .weights file: every later layer loads misplaced",
            _any({"none"})),
    KeyRule("yolo", "new_coords", "W604", "OpenCV's [yolo] decodes the logistic box "
            "(new_coords=0)", _not(0)),
    # measured, OpenCV 4.14 (found by fuzzing): `from=-2,-3` gives other sums; a negative
    # [upsample] stride (Darknet's downsampling) an empty output OpenCV refuses
    KeyRule("shortcut", "from", "W604", "OpenCV's importer does not add several from= layers "
            "as Darknet does", lambda v: isinstance(v, (list, tuple)) and len(v) > 1),
    KeyRule("upsample", "stride", "W603", "OpenCV's importer cannot downsample (a negative "
            "stride): the layer's output is empty and OpenCV refuses the net",
            lambda v: v < 0),
    # measured, OpenCV 4.14 (found by fuzzing): Darknet loads batch-norm arrays for any
    # non-zero value (cbn=1 sets 2), OpenCV only for 1, so the layer's floats are misread
    KeyRule("convolutional", "batch_normalize", "W603", "OpenCV's importer reads batch-norm "
            "arrays only for batch_normalize=1 (Darknet for any non-zero value): it loads this "
            "and every later layer misplaced", lambda v: v not in (0, 1)),
    KeyRule("convolutional", "dilation", "W604", "OpenCV's importer reads no dilation: it "
            "convolves the undilated kernel", lambda v: v != 1),
    # measured, OpenCV 4.14 (found by fuzzing): it reorganises forwards whatever reverse= says
    KeyRule("reorg", "reverse", "W604", "OpenCV's importer reads no reverse=: it runs the "
            "forward reorganisation", _not(0)),
    KeyRule("softmax", "temperature", "W604", "OpenCV's softmax ignores the temperature "
            "(Darknet divides its input by it: src/softmax_layer.c forward_softmax_layer)",
            _not(1)),
)


def _resampling_shortcut(block: Block, c: int, h: int, w: int, sources) -> str | None:
    """pjreddie's [shortcut] adds layers of different width/height by striding over the larger
    (src/blas.c shortcut_cpu); OpenCV's Eltwise asserts equal sizes (eltwise_layer.cpp;
    measured: it refuses a 16x16 + 32x32 shortcut, takes 8 + 16 channels)."""
    odd = [(sw, sh) for _, sh, sw in sources if (sh, sw) != (h, w)]
    if not odd:
        return None
    return (f"[shortcut] adds a {odd[0][0]}x{odd[0][1]} layer to a {w}x{h} one: OpenCV's "
            "Eltwise asserts equal sizes")


def _spatial_softmax(block: Block, c: int, h: int, w: int, sources=()) -> str | None:
    """Darknet's [softmax] (groups=1) normalises the whole c*h*w input of each image
    (src/softmax_layer.c forward_softmax_layer: inputs/groups values per group); OpenCV's
    Softmax layer normalises the channels at each position (measured: pjreddie/go.cfg's
    1x19x19 input gives 1.0 everywhere)."""
    if h * w <= 1:
        return None
    groups = _option(block, "groups", 1)
    if groups != 1:
        return None  # W603 already: OpenCV refuses groups != 1
    return (f"[softmax] over a {c}x{h}x{w} input: OpenCV normalises the {c} channel(s) at each "
            f"of the {h}x{w} positions, Darknet all {c * h * w} values together")


def _sam_shapes(block: Block, c: int, h: int, w: int, sources) -> str | None:
    """Darknet's [sam] multiplies its two inputs value by value, the same count in any shape;
    OpenCV's Eltwise asserts equal channels (measured, OpenCV 4.14, found by fuzzing: a
    [reorg] output times the layer before the reorg)."""
    if all(src == (c, h, w) for src in sources):
        return None
    other = next(src for src in sources if src != (c, h, w))
    return (f"[sam] multiplies a {other[0]}x{other[1]}x{other[2]} layer by a {c}x{h}x{w} one "
            "(CxHxW): OpenCV's Eltwise asserts equal shapes")


#: rules that need the layer shapes (the graph check's build)
OPENCV_SHAPE_RULES = (SectionRule(_sections("softmax"), _spatial_softmax, "W604"),
                      SectionRule(_sections("shortcut"), _resampling_shortcut, "W603"),
                      SectionRule(_sections("sam"), _sam_shapes, "W603"))


def _anchor_count(block: Block) -> str | None:
    """OpenCV asserts num * 2 == the number of anchor values (Darknet pads or reads past)."""
    if "anchors" not in block.options:
        return None
    anchors = block.options["anchors"].value
    count = len(anchors) if isinstance(anchors, (list, tuple)) else 1
    num = _option(block, "num", 1)  # (Darknet's default, found by fuzzing)
    if isinstance(num, int) and num * 2 != count:
        return f"num={num} with {count} anchor values: OpenCV asserts num * 2 == anchors"
    return None


def _crop_adjust(block: Block) -> str | None:
    """Darknet's [crop] maps its input to 2x - 1 unless noadjust=1 (src/crop_layer.c
    forward_crop_layer). OpenCV's importer then misplaces the weights of the layers after it
    (measured, OpenCV 4.14: a [crop] + [convolutional] cfg is refused at getMemoryShapes with
    and without batch-norm; the same with noadjust=1 runs and matches): vgg-16.cfg."""
    if _option(block, "noadjust", 0):
        return None
    return ("[crop] without noadjust=1 (Darknet scales its output to 2x - 1): OpenCV's importer "
            "then loads the following layers' weights misplaced and refuses to run")


@dataclass(frozen=True)
class DefaultRule:
    """`key` absent from [section]: Darknet's default and the target's differ (measured, OpenCV
    4.14: one-layer cfgs with and without the key). Called on a [section] block: why, or
    None."""

    section: str
    key: str
    why: str
    agrees: object = None  # block -> True where the two defaults give the same after all

    def __call__(self, block: Block) -> str | None:
        if self.key in block.options:
            return None
        if self.agrees is not None and self.agrees(block):
            return None
        return f"no {self.key}= given: {self.why}"


_LOGISTIC = ("Darknet applies its default, logistic; OpenCV's importer applies none (linear). "
             "Write activation=logistic to have both apply it")
#: (rule, code): W603 where OpenCV refuses the layer, W604 where it computes otherwise
OPENCV_DEFAULTS = (
    (DefaultRule("convolutional", "activation", _LOGISTIC), "W604"),
    (DefaultRule("connected", "activation", _LOGISTIC), "W604"),
    (DefaultRule("convolutional", "filters", "Darknet's default is 1; OpenCV's importer refuses "
                 "the layer (it asserts filters > 0)"), "W603"),
    (DefaultRule("convolutional", "size", "Darknet's default is 1; OpenCV's importer refuses "
                 "the layer (it asserts size > 0)"), "W603"),
    (DefaultRule("upsample", "stride", "Darknet's default is 2; OpenCV's importer does not "
                 "resize (factor 1)"), "W604"),
    (DefaultRule("reorg", "stride", "Darknet's default is 1 (a copy); OpenCV's importer "
                 "reorganises with another stride"), "W604"),
    (DefaultRule("yolo", "mask", "Darknet uses all num anchors; OpenCV's importer refuses the "
                 "layer (it asserts a mask)"), "W603"),
    (DefaultRule("yolo", "anchors", "Darknet's anchors are then 0; OpenCV's importer refuses "
                 "the layer (it asserts anchors)"), "W603"),
)


def _pool_window(block: Block) -> str | None:
    """OpenCV's [maxpool] defaults are size 2 and stride 2, and it reads no stride_x/stride_y;
    Darknet's are stride 1 and size = stride (src/parser.c parse_maxpool). Measured, OpenCV
    4.14: `stride=1` alone, `size=2` alone and `stride=2 stride_x=1 stride_y=1` differ."""
    stride = _option(block, "stride", 1)
    size = _option(block, "size", stride)
    ours = (size, _option(block, "stride_x", stride), _option(block, "stride_y", stride))
    theirs = (_option(block, "size", 2), _option(block, "stride", 2))
    if ours == (theirs[0], theirs[1], theirs[1]):
        return None
    return (f"OpenCV's importer pools {theirs[0]}x{theirs[0]} with stride {theirs[1]} (its "
            f"defaults are size 2 and stride 2, and it reads no stride_x/stride_y), Darknet "
            f"{size}x{size} with stride {ours[1]}x{ours[2]} (x, y)")


def _conv_strides(block: Block) -> str | None:
    """Darknet's [convolutional] takes stride_x/stride_y where both are given (src/parser.c
    parse_convolutional); OpenCV's importer reads `stride` only (measured, OpenCV 4.14)."""
    stride = _option(block, "stride", 1)
    sx, sy = _option(block, "stride_x", -1), _option(block, "stride_y", -1)
    if not (isinstance(sx, int) and isinstance(sy, int)) or sx < 1 or sy < 1 or \
            sx == sy == stride:
        return None
    return (f"stride_x={sx} stride_y={sy}: OpenCV's importer reads stride={stride} only and "
            "computes another output size")


def _flat_input(block: Block) -> str | None:
    """[net] inputs=N without width, height and channels (flat data): OpenCV sizes its input
    from those three only (measured, OpenCV 4.14: the cfg loads, and its first [connected]
    asserts on any input shape; the same net with width=1 height=1 channels=N runs)."""
    if "inputs" not in block.options:
        return None
    size = [_option(block, key, 0) for key in ("width", "height", "channels")]
    if all(isinstance(v, int) and v > 0 for v in size):
        return None
    return ("a flat input (inputs= without width, height and channels): OpenCV's importer takes "
            "the input size from width, height and channels only, and the network does not run")


#: OpenCV layers that need an image (N, C, H, W) input (measured, OpenCV 4.14: each asserts on
#: a [connected] layer's (N, C) output)
OPENCV_SPATIAL = frozenset({"convolutional", "maxpool", "avgpool", "upsample", "reorg"})


def _after_connected(block: Block, previous: Block | None) -> str | None:
    """Darknet's [connected] output is a 1x1xC image to the next layer; OpenCV's is (N, C),
    which its spatial layers refuse (found by fuzzing: [connected] then [convolutional])."""
    return (f"[{block.name}] after a [connected] layer: OpenCV's fully connected output is "
            f"(N, C), not Darknet's 1x1xC image, and its [{block.name}] refuses it")


def _after_head(block: Block, previous: Block | None) -> str | None:
    """Darknet's [yolo]/[region] output is its input's CxHxW shape, which a next layer may read;
    OpenCV's is the decoded boxes, (boxes, 5 + classes) (measured, OpenCV 4.14, found by
    fuzzing: a [convolutional] after a [yolo], a [shortcut] from= one, are refused)."""
    return (f"[{block.name}] reads a [{previous.name}]: OpenCV's [{previous.name}] outputs "
            "decoded boxes, not Darknet's CxHxW map, and the layer cannot take them")


def _after_cost(block: Block, previous: Block | None) -> str | None:
    """Darknet's [cost] output stays zero at inference (no truth: src/cost_layer.c
    forward_cost_layer returns early; SEMANTICS.md 7.19); OpenCV's is its input (measured,
    OpenCV 4.14, found by fuzzing: a [softmax] after a [cost] gives OpenCV's softmax of the
    input, Darknet's of zeros)."""
    return (f"[{block.name}] reads a [cost]: Darknet's [cost] outputs zeros at inference, "
            "OpenCV's passes its input on")


def _route_before_connected(layers: Sequence[tuple], i: int, j: int) -> str | None:
    """OpenCV's importer counts the output of the layer before a [connected] as c*h*w channels,
    which the next [convolutional] after a [route] naming that layer takes for its input
    channels (measured, OpenCV 4.14, found by fuzzing: [convolutional] 4x8x8, [connected],
    [route] layers=-2, [maxpool], [convolutional] is refused, "input channels should be
    multiple of 256"; a [connected] or no layer with weights after the route, a route to
    another layer or to a 1x1 one: runs and matches)."""
    c, h, w = layers[j + 1][1]
    if layers[j + 1][0].type != "connected" or h * w <= 1:
        return None
    later = (b.type for b, *_ in layers[i + 1:])
    if next((t for t in later if t in ("convolutional", "connected", "route")), None) != \
            "convolutional":
        return None
    return (f"[route] names a {c}x{h}x{w} layer right before a [connected]: OpenCV's importer "
            f"counts its output as {c * h * w} channels, and the [convolutional] after the "
            "route loads misplaced weights (OpenCV refuses the net)")


#: layers whose OpenCV output has their input's dimensions
_OPENCV_PASSING = frozenset({"dropout", "softmax", "cost", "shortcut", "sam"})


def _opencv_flat(layers: Sequence[tuple], k: int) -> bool:
    """Whether OpenCV's output of layer k is a [connected] layer's (N, C), not (N, C, H, W)."""
    while k >= 0:
        kind = layers[k][0].type
        if kind == "connected":
            return True
        if kind == "route" and layers[k][3]:
            k = layers[k][3][0]
        elif kind in _OPENCV_PASSING:
            k -= 1
        else:
            return False
    return False


def _joins_flat_and_map(layers: Sequence[tuple], i: int, other: int, j: int,
                        joiner: str) -> str | None:
    """Darknet adds, multiplies or concatenates a [connected] output (a 1x1xC image) with any
    other layer; OpenCV's Eltwise and Concat assert equal dimensions, and its [connected]
    output is (N, C) (measured, OpenCV 4.14, found by fuzzing: [avgpool], [connected],
    [shortcut] from=-2 or [route] layers=-2,-1 is refused; of two [connected] outputs both run
    and match)."""
    if other < 0 or _opencv_flat(layers, other) == _opencv_flat(layers, j):
        return None
    return (f"[{layers[i][0].name}] joins a [connected] output with an image: OpenCV's fully "
            f"connected output is (N, C), not Darknet's 1x1xC image, and its {joiner} asserts "
            "equal dimensions")


def _eltwise_of_flat_and_map(layers: Sequence[tuple], i: int, j: int) -> str | None:
    """[shortcut]/[sam]: the layer before and a from= layer (OpenCV's Eltwise)."""
    return _joins_flat_and_map(layers, i, i - 1, j, "Eltwise")


def _concat_of_flat_and_map(layers: Sequence[tuple], i: int, j: int) -> str | None:
    """[route] of several layers: its first and another (OpenCV's Concat; measured)."""
    return _joins_flat_and_map(layers, i, layers[i][3][0], j, "Concat")


def _untracked_size_then_connected(layers: Sequence[tuple], i: int, j: int) -> str | None:
    """Darknet's [route] and [scale_channels] output the map of the layer they name; OpenCV's
    importer keeps the width and height of the layer before them, and a later [connected]
    sizes its weights by those (measured, OpenCV 4.14, found by fuzzing: a 4x8x8 map scaled
    by its [avgpool], or a [route] back to it after an [avgpool] or [maxpool], then a
    [connected], with or without a [convolutional] or [maxpool] between, is refused; an
    [avgpool] between, or a [route] to the layer right before a [connected], runs and
    matches)."""
    block, (_, h, w) = layers[i][0], layers[i][1]
    _, mh, mw = layers[j + 1][1]
    # (a layer right before a [connected]: OpenCV counts it flattened, c*h*w channels of 1x1)
    if i == 0 or (mh, mw) == (h, w) or \
            layers[j + 1][0].type == "connected":
        return None
    later = (b.type for b, *_ in layers[i + 1:])
    if next((t for t in later if t in ("connected", "avgpool")), None) != "connected":
        return None
    return (f"[{block.name}] outputs a {mw}x{mh} map after a {w}x{h} layer: OpenCV's importer "
            f"keeps the {w}x{h} size, and the [connected] after it expects another input size "
            "(OpenCV refuses the net)")


OPENCV_BLOCK_RULES = (
    SectionRule(_sections("yolo", "region"), _anchor_count, "W603", "anchors"),
    SectionRule(_sections("crop"), _crop_adjust, "W603"),
    SectionRule(_sections("net"), _flat_input, "W603", "inputs"),
    SectionRule(_sections("maxpool"), _pool_window, "W604"),
    SectionRule(_sections("convolutional"), _conv_strides, "W604", "stride_x"),
    *(SectionRule(_sections(rule.section), rule, code) for rule, code in OPENCV_DEFAULTS))
#: (block, the layer it reads) rules: keyed by the section read
OPENCV_PAIR_RULES = (
    SectionRule(OPENCV_SPATIAL, _after_connected, "W603", reads=_sections("connected")),
    SectionRule(None, _after_head, "W603", reads=_sections("yolo", "region")),
    SectionRule(None, _after_cost, "W604", reads=_sections("cost")))
#: (layers, layer index, index of a layer it names) rules: the graph check's
OPENCV_REF_RULES = (
    SectionRule(_sections("route"), _route_before_connected, "W603"),
    SectionRule(_sections("shortcut", "sam"), _eltwise_of_flat_and_map, "W603"),
    SectionRule(_sections("route"), _concat_of_flat_and_map, "W603"),
    SectionRule(_sections("route", "scale_channels"), _untracked_size_then_connected, "W603"))

# -- ONNX (darkcfg's exporter) --------------------------------------------------------------------
RECURRENT = frozenset({"rnn", "lstm", "gru", "crnn", "conv_lstm", "history"})
ONNX_SECTIONS = {
    s: ("exported unrolled over [net] time_steps with a zero initial state: the graph does not "
        "carry state from one call to the next as Darknet's does")
    for s in RECURRENT}
REGION_TREE = KeyRule("region", "tree", "W603", "a [region] softmax tree (yolo9000) cannot be "
                      "decoded (--decode)", lambda v: bool(v))
ONNX_KEYS = (
    KeyRule("convolutional", "xnor", "W604", "sign(x) in float32: onnxruntime's rounding may "
            "flip signs near 0 (the export allows the float32-vs-float64 difference)", _not(0)),
    REGION_TREE,
)

# -- TensorRT (the ONNX graph through TensorRT's ONNX parser) -------------------------------------
TENSORRT_SECTIONS = {
    s: ("exported unrolled over [net] time_steps: TensorRT builds one fixed-length engine and "
        "the state is not carried between calls") for s in RECURRENT}
TENSORRT_ACTIVATIONS = {
    "mish": "TensorRT's activation layer has no Mish before TensorRT 10 (the graph's Mish / "
            "softplus-tanh ops run unfused, or a plugin replaces them)",
    "hard_mish": "decomposed into elementwise ops (no TensorRT layer)",
    "gelu": "the ONNX Gelu op needs opset 20; TensorRT before 10 needs the decomposed form",
    "normalize_channels": "decomposed into reductions; a plugin is the usual replacement",
    "normalize_channels_softmax": "decomposed into reductions; a plugin is the usual "
                                  "replacement",
    "normalize_channels_softmax_maxval": "decomposed into reductions; a plugin is the usual "
                                         "replacement",
}
TENSORRT_KEYS = (
    KeyRule("yolo", "nms_kind", "W604", "--decode --nms builds this DIoU NMS from an ONNX "
            "Loop over Unique groups, and TensorRT's ONNX parser has no Unique: export without "
            "--nms and use TensorRT's EfficientNMS plugin, which is IoU-based (Darknet's "
            "do_nms_sort rule, not this one)", _any({"default", "cornersnms"})),
    KeyRule("convolutional", "xnor", "W604", "TensorRT runs sign() in float: no binary "
            "kernels", _not(0)),
)


@dataclass(frozen=True)
class Target:
    name: str
    sections: dict  # section -> why (only unsupported ones), or a frozenset of supported ones
    activations: dict  # activation -> why (unsupported), or a frozenset of supported ones
    keys: tuple
    # SectionRules, by what their rule is called with:
    block_rules: tuple = ()  # block -> why or None
    shape_rules: tuple = ()  # (block, c, h, w of its input, source shapes) -> why
    # (block, a block it reads: the one before it, or one it names in layers=/from=) -> why
    pair_rules: tuple = ()
    # (check_target_shapes's layers, index of a layer, index of a layer it names) -> why
    ref_rules: tuple = ()
    exported: bool = False  # made from darkcfg's export: it runs the network's forward


TARGET_RULES = {
    "opencv": Target("opencv", OPENCV_SECTIONS, OPENCV_ACTIVATIONS, OPENCV_KEYS,
                     OPENCV_BLOCK_RULES, OPENCV_SHAPE_RULES, OPENCV_PAIR_RULES,
                     OPENCV_REF_RULES),
    "onnx": Target("onnx", ONNX_SECTIONS, {}, ONNX_KEYS, exported=True),
    "tensorrt": Target("tensorrt", TENSORRT_SECTIONS, TENSORRT_ACTIVATIONS,
                       (REGION_TREE,) + TENSORRT_KEYS, exported=True),
}

_LABEL = {"opencv": "OpenCV's Darknet importer (cv2.dnn.readNetFromDarknet, OpenCV 4.x)",
          "onnx": "the ONNX export", "tensorrt": "TensorRT (from the ONNX export)"}


def _section_problem(target: Target, section: str) -> str | None:
    if isinstance(target.sections, frozenset):
        return None if section in target.sections else "is not a layer it knows"
    return target.sections.get(section)


def _activation_problem(target: Target, activation: str) -> str | None:
    if isinstance(target.activations, frozenset):
        return None if activation in target.activations else "is not an activation it has"
    return target.activations.get(activation)


def check_target(blocks: Sequence[Block], target: str) -> list[Diagnostic]:
    """Warnings for everything in `blocks` that `target` does not run as Darknet does."""
    rules = TARGET_RULES[target]
    label = _label(target)
    found: list[Diagnostic] = []
    for previous, block in zip([None, *list(blocks)[:-1]], blocks, strict=True):
        # a [route] reads only its layers= (check_target_shapes: the graph resolves them)
        reads = previous if previous is not None and previous.type != "net" and \
            block.type not in REFERENCES_ONLY else None
        for rule in rules.pair_rules:
            why = rule.rule(block, reads) if rule.applies(block, reads) else None
            if why is not None:
                found.append(block.diagnostic(rule.code, f"{label}: {why}", None,
                                              hint=_hint(target), severity=WARNING))
        why = _section_problem(rules, block.type)
        if why is not None:
            found.append(block.diagnostic(
                "W601", f"{label}: [{block.name}] {why}", None,
                hint=_hint(target), severity=WARNING))
            continue
        opt = block.options.get("activation")
        if opt is not None and isinstance(opt.value, str):
            why = _activation_problem(rules, opt.value)
            if why is not None:
                found.append(block.diagnostic(
                    "W602", f"{label}: activation={opt.value} {why}", "activation",
                    hint=_hint(target), severity=WARNING))
        for rule in rules.block_rules:
            why = rule.rule(block) if rule.applies(block) else None
            if why is not None:
                found.append(block.diagnostic(rule.code, f"{label}: {why}", rule.key,
                                              hint=_hint(target), severity=WARNING))
        for rule in rules.keys:
            if rule.applies(block):
                found.append(block.diagnostic(
                    rule.code, f"{label}: {rule.key}={block.options[rule.key].raw}: {rule.why}",
                    rule.key, hint=_hint(target), severity=WARNING))
    return found


def check_target_shapes(layers: Sequence[tuple], target: str) -> list[Diagnostic]:
    """Warnings that need the built graph: `layers` = (block, (c, h, w) of its input, [(c, h,
    w) of each layer it reads by reference (route `layers`, shortcut/sam `from`)], [the
    indices of those layers]), from the graph check's build. The pair rules see each layer read
    by reference (check_target gave them the layer before)."""
    rules = TARGET_RULES[target]
    found = []

    def flag(block, code, why):
        found.append(block.diagnostic(code, f"{_label(target)}: {why}", None,
                                      hint=_hint(target), severity=WARNING))

    for i, (block, (c, h, w), sources, refs) in enumerate(layers):
        for rule in rules.shape_rules:
            why = rule.rule(block, c, h, w, sources) if rule.applies(block) else None
            if why is not None:
                flag(block, rule.code, why)
        # (the layer before: check_target's, except for a section that reads only its refs)
        named = [layers[j][0] for j in sorted(refs)
                 if j != i - 1 or block.type in REFERENCES_ONLY]
        for rule in rules.pair_rules:
            why = next((w for w in (rule.rule(block, read) for read in named
                                    if rule.applies(block, read)) if w), None)
            if why is not None:
                flag(block, rule.code, why)
        for rule in rules.ref_rules:
            why = next((w for w in (rule.rule(layers, i, j) for j in refs) if w), None) \
                if rule.applies(block) else None
            if why is not None:
                flag(block, rule.code, why)
    return found


def check_target_runs(stops: Iterable[CfgError], target: str) -> list[Diagnostic]:
    """What stops `darkcfg export` though the network builds: `stops` are the layers' run
    errors (builders.layer.Layer.run_error, e.g. a tree= file that is absent), reported as the
    export reports them (their code, place and hint: errors) for the targets made from the
    export; nothing for the others (OpenCV reads the cfg itself)."""
    if not TARGET_RULES[target].exported:
        return []
    return [dataclasses.replace(d, message=f"{_label(target)}: {d.message}")
            for error in stops for d in error.diagnostics]


def _label(target: str) -> str:
    return _LABEL[target]


def _hint(target: str) -> str:
    if target == "opencv":
        return "OpenCV will refuse or mis-run this cfg: export ONNX instead (--export m.onnx)"
    return "see docs/deploy.md (Targets) for what the exported graph does instead"
