"""Rules about sections, once, torch-free: the builders raise them, the linter reports them.

* `[net]` training settings (E305): `net_rules`; `fatal_only=True` keeps the ones Darknet cannot
  run at all (the trainer refuses those, the linter reports every one);
* layer references (E301): `REFERENCE_KEYS`, `absolute_reference`, `reference_problem`;
* [shortcut] grids (E302, W303): `shortcut_grid_rule`;
* detection heads: what each head needs from the layer that feeds it (`HEAD_INPUTS`: filters =
  len(mask) x (classes + 5) for [yolo], ...), its anchors and mask (E304, W304);
* `random=` multi-scale training: the sizes it gives (`multiscale_dims`, `largest_multiscale`),
  for the loader (darkcfg.data.detection.scales) and the memory guard (builders.memory).

Every rule reads values with `value()`, which does not mark a key as read: whether a builder reads
a key stays the builder's business (the W301 report).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import schema
from .blocks import Block, Option
from .errors import ERROR, WARNING, Diagnostic


def value(block: Block, key: str) -> Any:
    """The typed value of `key`, or its schema default, without marking the key as read."""
    opt = block.options.get(key)
    if opt is not None:
        return opt.value
    spec = schema.key_spec(block.type, key)
    return None if spec is None else spec.default


def as_list(v: Any) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def item_diagnostic(block: Block, key: str, item: int, code: str, message: str, hint: str = "",
                    severity: str = ERROR) -> Diagnostic:
    """A diagnostic on the `item`-th comma-separated entry of a list value (e.g. one route index)
    rather than on the whole value."""
    opt = block.options.get(key)
    if opt is None or opt.origin or not opt.source or not opt.value_column:
        return block.diagnostic(code, message, key, hint, severity)
    column, width = item_span(opt, item)
    return Diagnostic(code, message, block.path, opt.line, column, severity, hint, opt.source,
                      width)


def item_span(opt: Option, item: int) -> tuple[int, int]:
    """1-based column and width of the `item`-th comma-separated entry of an option's value in its
    source line (Darknet drops spaces, so commas are what separate entries)."""
    src = opt.source
    i = opt.value_column - 1
    seen = 0
    while seen < item and i < len(src):
        if src[i] == ",":
            seen += 1
        i += 1
    while i < len(src) and src[i] in " \t":
        i += 1
    end = i
    while end < len(src) and src[end] != ",":
        end += 1
    text = src[i:end].rstrip()
    return i + 1, max(len(text), 1)


# -- [net] (E305) --------------------------------------------------------------------------------

def input_size_rule(net: Block) -> Diagnostic | None:
    width, height, channels = value(net, "width"), value(net, "height"), value(net, "channels")
    if not (width * height * channels) and not value(net, "inputs"):
        return net.diagnostic("E305", "[net] gives no input size",
                              hint="set width, height and channels (or inputs for flat data)")
    return None


def subdivisions_rule(net: Block) -> Diagnostic | None:
    """subdivisions > batch: Darknet's mini-batch (batch / subdivisions) is 0 images. Builds go
    on (inference does not read it); training refuses it (darkcfg.train.loop.Trainer)."""
    batch, subdivisions = value(net, "batch"), value(net, "subdivisions")
    if subdivisions <= batch:
        return None
    return net.diagnostic(
        "E305", f"subdivisions={subdivisions} is larger than batch={batch}: each step would "
        "train on 0 images", "subdivisions",
        hint=f"use subdivisions <= batch, e.g. subdivisions={batch}")


def net_rules(net: Block, *, fatal_only: bool = False) -> list[Diagnostic]:
    """[net]: an input size, whole mini-batches, a learning-rate schedule Darknet can run.

    Fatal: what Darknet stops on, divides by zero with or loops forever on. The others (partial
    mini-batches, steps/scales of different lengths, unordered steps, burn_in past the end) run,
    but not as written; the linter reports them as errors too, the trainer goes on."""
    fatal: list[Diagnostic] = []
    other: list[Diagnostic] = []
    missing_input = input_size_rule(net)
    if missing_input is not None:
        fatal.append(missing_input)
    batch, subdivisions = value(net, "batch"), value(net, "subdivisions")
    empty_steps = subdivisions_rule(net)
    if empty_steps is not None:
        other.append(empty_steps)
    elif batch % subdivisions:
        other.append(net.diagnostic(
            "E305", f"batch={batch} is not divisible by subdivisions={subdivisions}: Darknet "
            f"trains on {batch // subdivisions * subdivisions} of the {batch} images per step",
            "subdivisions", hint="make batch a multiple of subdivisions"))

    policy = value(net, "policy")
    steps, scales = net.options.get("steps"), net.options.get("scales")
    if policy == "steps":
        for key, opt in (("steps", steps), ("scales", scales)):
            if opt is None:
                fatal.append(net.diagnostic(
                    "E305", f"policy=steps needs '{key}' (Darknet stops with a fatal error)",
                    "policy", hint=f"add {key}=... with one entry per learning-rate change"))
    if steps is not None and scales is not None and len(as_list(steps.value)) != len(
            as_list(scales.value)):
        n_steps, n_scales = len(as_list(steps.value)), len(as_list(scales.value))
        other.append(net.diagnostic(
            "E305", f"steps has {n_steps} entries but scales has {n_scales}", "scales",
            hint="give one scale per step (Darknet silently uses 1.0 for a missing scale and "
            "ignores extra ones)"))
    if steps is not None:
        values = as_list(steps.value)
        for i in range(1, len(values)):
            if values[i] <= values[i - 1]:
                other.append(item_diagnostic(
                    net, "steps", i, "E305",
                    f"steps must increase: {values[i]:g} comes after {values[i - 1]:g}",
                    hint="list the iterations in increasing order"))
                break
    max_batches, burn_in = value(net, "max_batches"), value(net, "burn_in")
    if max_batches and burn_in >= max_batches:
        other.append(net.diagnostic(
            "E305", f"burn_in={burn_in} is not below max_batches={max_batches}: training ends "
            "during the warm-up", "burn_in", hint="use a burn_in well below max_batches"))
    if policy == "poly" and not max_batches:
        fatal.append(net.diagnostic(
            "E305", "policy=poly needs max_batches > 0 (its rate is "
            "lr*(1-batch/max_batches)^power)",
            "max_batches" if "max_batches" in net else "policy",
            hint="set max_batches, or use policy=constant to train without an end"))
    if policy == "poly" and value(net, "power") < 0:
        fatal.append(net.diagnostic(
            "E305", f"policy=poly needs power >= 0 (got {value(net, 'power'):g}): its rate "
            "lr*(1-batch/max_batches)^power is infinite at max_batches", "power",
            hint="use power=4 (Darknet's default) or another value >= 0"))
    if policy == "step" and value(net, "step") <= 0:
        fatal.append(net.diagnostic(
            "E305", f"policy=step needs step > 0 (got {value(net, 'step')}): the rate divides "
            "by it", "step" if "step" in net else "policy", hint="set step=<iterations>"))
    if policy == "sgdr":
        cycle = value(net, "sgdr_cycle") or max_batches
        if cycle <= 0:
            fatal.append(net.diagnostic(
                "E305", "policy=sgdr needs sgdr_cycle (or max_batches) > 0: Darknet looks for "
                "the current cycle forever", "policy",
                hint="set sgdr_cycle=<iterations> or max_batches=<iterations>"))
        if value(net, "sgdr_mult") <= 0:
            fatal.append(net.diagnostic(
                "E305", f"sgdr_mult={value(net, 'sgdr_mult'):g} must be > 0: each cycle is the "
                "last one times sgdr_mult", "sgdr_mult", hint="set sgdr_mult=2"))
    if value(net, "adam"):
        # Adam divides by 1 - B^t (zero for B = 1) and by sqrt(v) + eps: torch's Adam refuses
        # these values outright (it used to end the run with its ValueError's traceback)
        for key, ok, want in (("B1", lambda b: 0 <= b < 1, "0 <= B1 < 1, e.g. B1=0.9"),
                              ("B2", lambda b: 0 <= b < 1, "0 <= B2 < 1, e.g. B2=0.999"),
                              ("eps", lambda e: e >= 0, "eps >= 0, e.g. eps=0.000001")):
            if not ok(value(net, key)):
                fatal.append(net.diagnostic(
                    "E305", f"adam=1 cannot train with {key}={value(net, key):g}",
                    key if key in net else "adam", hint=f"use {want}"))
    return fatal if fatal_only else fatal + other


# -- layer references (E301) ---------------------------------------------------------------------

# Sections whose keys name earlier layers (Darknet's negative-relative rule), and whether the
# section cannot do without the key.
REFERENCE_KEYS: dict[str, tuple[tuple[str, bool], ...]] = {
    "route": (("layers", True),),
    "shortcut": (("from", True),),
    "sam": (("from", True),),
    "scale_channels": (("from", True),),
    "convolutional": (("share_index", False),),
}


#: Sections whose input is only the layers they name (Darknet's [route]: src/route_layer.c
#: forward_route_layer copies its layers= outputs); the others read the layer before them too.
REFERENCES_ONLY = frozenset({"route"})


def absolute_reference(index: int, ref: int) -> int:
    """Darknet's rule: a negative reference is relative to the layer, else absolute."""
    return index + ref if ref < 0 else ref


def reference_problem(block: Block, key: str, ref: int, index: int,
                      item: int = 0) -> Diagnostic | None:
    """E301 when the `item`-th layer named by `key` in layer `index` is not a layer before it."""
    absolute = absolute_reference(index, ref)
    if 0 <= absolute < index:
        return None
    where = "before it" if index else "before the first layer"
    valid = (f"use an index in 0..{index - 1} or -1..-{index}" if index
             else "the first layer cannot refer to another layer")
    return item_diagnostic(
        block, key, item, "E301",
        f"'{key}' refers to layer {ref} (absolute {absolute}), but layer {index} "
        f"[{block.name}] has {index} layer{'s' if index != 1 else ''} {where}", valid)


def shortcut_grid_rule(block: Block, sources: Sequence[int], from_grids: Sequence[tuple[int, int]],
                       grid: tuple[int, int], flavor: str | None) -> list[Diagnostic]:
    """[shortcut] adds its `from` layers' outputs (layers `sources`, grids (h, w)) to the
    previous layer's (`grid`). Same grid: fine. One grid an integer k times the other in both
    directions: pjreddie's resampling shortcut (shortcut_layer.c strides by the ratio; AlexeyAB
    asserts equal sizes), W303 unless the flavor is pjreddie. Anything else loses positions in
    either fork: E302. A flat output counts as 1x1."""
    found = []
    out_h, out_w = grid
    for item, (src, (h, w)) in enumerate(zip(sources, from_grids, strict=True)):
        if (h, w) == (out_h, out_w):
            continue
        scale = _integer_scale(h, w, out_h, out_w)
        sizes = f"layer {src} is {w}x{h}, the previous layer {out_w}x{out_h}"
        if scale is None:
            found.append(item_diagnostic(
                block, "from", item, "E302",
                f"[shortcut] adds layers of different width/height ({sizes})",
                "add layers of the same spatial size (route/shortcut from a layer before the "
                "stride, or resize with [upsample]/[maxpool])"))
        elif flavor != "pjreddie":
            found.append(item_diagnostic(
                block, "from", item, "W303",
                f"[shortcut] resamples by {scale} ({sizes}): only pjreddie's Darknet runs this; "
                "AlexeyAB's asserts equal sizes", "use a strided 1x1 [convolutional] on the "
                "from-layer to match sizes, or check with --flavor pjreddie", WARNING))
    return found


def _integer_scale(h: int, w: int, out_h: int, out_w: int) -> str | None:
    """'1/k' or 'k' when one grid is exactly k times the other in both directions."""
    for a_h, a_w, b_h, b_w, name in ((h, w, out_h, out_w, "1/{}"), (out_h, out_w, h, w, "{}")):
        if b_h and b_w and a_h % b_h == 0 and a_w % b_w == 0 and a_h // b_h == a_w // b_w:
            return name.format(a_h // b_h)
    return None


def missing_reference(block: Block, key: str) -> Diagnostic:
    return block.diagnostic("E301", f"[{block.name}] needs '{key}' (the layers it reads)",
                            hint=f"add {key}=-1 (the previous layer) or another layer index")


# -- detection heads (E304, W304) ----------------------------------------------------------------

@dataclass(frozen=True)
class HeadInput:
    """What a detection head needs from the layer before it."""

    count: int  # channels (or flat inputs) it decodes
    formula: str  # how `count` follows from the head's keys, in words
    unit: str  # "input channels" or "inputs"
    feeding_section: str  # the section type that usually feeds it
    feeding_key: str  # that section's key that sets `count`
    head_key: str  # the head's key to point at when the input does not match


def _yolo_input(block: Block) -> HeadInput:
    classes = value(block, "classes")
    n = len(as_list(value(block, "mask"))) or value(block, "num")
    extra = 9 if block.type == "Gaussian_yolo" else 5  # 8 or 4 box numbers, + objectness
    return HeadInput(n * (classes + extra), f"len(mask)={n} x (classes={classes} + {extra})",
                     "input channels", "convolutional", "filters",
                     "mask" if "mask" in block else "classes")


def _region_input(block: Block) -> HeadInput:
    num, coords, classes = value(block, "num"), value(block, "coords"), value(block, "classes")
    return HeadInput(num * (coords + 1 + classes),
                     f"num={num} x (coords={coords} + 1 + classes={classes})",
                     "input channels", "convolutional", "filters", "classes")


def _detection_input(block: Block) -> HeadInput:
    side, coords, num, classes = (value(block, k) for k in ("side", "coords", "num", "classes"))
    return HeadInput(side * side * ((1 + coords) * num + classes),
                     f"side={side}^2 x ((1 + coords={coords}) x num={num} + classes={classes})",
                     "inputs", "connected", "output", "side")


HEAD_INPUTS: dict[str, Callable[[Block], HeadInput]] = {
    "yolo": _yolo_input,
    "Gaussian_yolo": _yolo_input,
    "region": _region_input,
    "detection": _detection_input,
}
ANCHORED_HEADS = ("yolo", "Gaussian_yolo", "region")  # heads with anchors=, num= pairs
MASKED_HEADS = ("yolo", "Gaussian_yolo")  # heads whose mask= picks some of the anchors
# heads whose anchors are in grid cells, not input pixels (src/region_layer.c get_region_box)
CELL_ANCHORED_HEADS = ("region",)


def head_input(block: Block) -> HeadInput:
    return HEAD_INPUTS[block.type](block)


def head_input_problem(head: Block, have: int, prev: Block | None = None
                       ) -> Diagnostic | None:
    """E304 when a head's input (`have` channels or inputs) is not what it decodes: at the
    feeding key of the layer right before it when that is the section that sets the count (a
    [convolutional]'s filters, a [connected]'s output), else at the head. The builders and the
    linter (`feeding_layer_rule`) both report through here, so both point at one place."""
    need = head_input(head)
    if have == need.count:
        return None
    if prev is not None and prev.type == need.feeding_section:
        key = need.feeding_key
        return prev.diagnostic(
            "E304", f"{key}={have}, but the [{head.name}] at line {head.line} needs "
            f"{key}={need.count} = {need.formula}", key,
            hint=f"set {key}={need.count} here (or change the [{head.name}] settings)")
    return head.diagnostic(
        "E304", f"[{head.name}] needs {need.count} {need.unit} = {need.formula}, but the "
        f"previous layer gives {have}", need.head_key,
        hint=f"set {need.feeding_key}={need.count} in the layer before this one")


def feeding_layer_rule(head: Block, prev: Block | None) -> list[Diagnostic]:
    """The linter's `head_input_problem` before any build: the layer right before a head, when
    it is the section that sets the count (other feeding layers are checked on shapes)."""
    need = head_input(head)
    if prev is None or prev.type != need.feeding_section:
        return []
    problem = head_input_problem(head, value(prev, need.feeding_key), prev)
    return [problem] if problem is not None else []


def anchor_pairs(anchors: Sequence[float] | None, num: int) -> list[float]:
    """The anchors' w,h pairs as Darknet fills them: at least `num` pairs, missing numbers keep
    the initial 0.5 (corpus cfgs list fewer, or more, than num pairs)."""
    given = list(anchors or [])
    pairs = max(num, (len(given) + 1) // 2)
    return given + [0.5] * (2 * pairs - len(given))


#: The most anchor pairs a head may have: each truth is matched against every one of them, and
#: Darknet allocates 2*num biases (num=2147483647 was a MemoryError deep in the build)
MAX_ANCHORS = 2 ** 16


def num_problem(block: Block) -> Diagnostic | None:
    """E203 at a head's `num` past MAX_ANCHORS."""
    if block.type not in ANCHORED_HEADS or value(block, "num") <= MAX_ANCHORS:
        return None
    return block.diagnostic("E203", f"num={value(block, 'num')} anchor pairs: darkcfg builds at "
                            f"most {MAX_ANCHORS} (each truth is matched against every anchor)",
                            "num", hint="num is the number of anchors= pairs: give that")


def mask_problem(block: Block) -> Diagnostic | None:
    """E304 at the first mask index that names no anchor pair (Darknet keeps num pairs, more
    when anchors lists more)."""
    if block.type not in MASKED_HEADS or "mask" not in block:
        return None
    num = value(block, "num")
    anchors = as_list(value(block, "anchors")) if "anchors" in block else None
    listed = (len(anchors) + 1) // 2 if anchors is not None else 0  # a lone w gets h=0.5
    available = max(num, listed)
    mask = as_list(value(block, "mask"))
    bad = [i for i, m in enumerate(mask) if not 0 <= m < available]
    if not bad:
        return None
    return item_diagnostic(
        block, "mask", bad[0], "E304",
        f"mask index {mask[bad[0]]} has no anchor: num={num} and anchors lists {listed} "
        f"pairs (indices 0..{available - 1})", "use anchor indices 0..num-1, or add anchors")


def anchor_rules(block: Block) -> list[Diagnostic]:
    """[yolo]/[Gaussian_yolo]/[region]: anchors are w,h pairs, num of them; mask picks some.
    W304 where Darknet pads or reads past the lists, E304 for a mask index with no anchor."""
    out: list[Diagnostic] = []
    if block.type not in ANCHORED_HEADS:
        return out
    problem = num_problem(block)
    if problem is not None:
        return [problem]
    num = value(block, "num")
    anchors = as_list(value(block, "anchors")) if "anchors" in block else None
    if anchors is not None and len(anchors) != 2 * num:
        if len(anchors) > 2 * num:
            effect = f"Darknet reads the first {2 * num} values and ignores the rest"
            fix = f"set num={len(anchors) // 2} or drop the extra values"
        else:
            effect = f"Darknet uses 0.5 for the {2 * num - len(anchors)} missing values"
            fix = f"give {2 * num} values"
        if _merged_numbers(block.options["anchors"]):
            fix += "; Darknet deletes spaces, so two numbers without a comma between them merge"
        out.append(block.diagnostic(
            "W304", f"anchors has {len(anchors)} values but num={num} needs {2 * num} "
            f"({num} w,h pairs): {effect}", "anchors", hint=fix, severity=WARNING))
    if block.type not in MASKED_HEADS or "mask" not in block:
        return out
    problem = mask_problem(block)
    if problem is not None:
        return out + [problem]
    # pairs listed beyond num are what a mask index >= num means, though Darknet reads past
    # its array for them
    listed = (len(anchors) + 1) // 2 if anchors is not None else 0
    available = max(num, listed)
    mask = as_list(value(block, "mask"))
    beyond = [i for i, m in enumerate(mask) if num <= m < available]
    if beyond:
        out.append(item_diagnostic(
            block, "mask", beyond[0], "W304",
            f"mask uses anchor{'s' if len(beyond) > 1 else ''} "
            f"{','.join(str(mask[i]) for i in beyond)}, not below num={num}: Darknet keeps "
            "only num anchor pairs and reads past them", f"set num={available}", WARNING))
    return out


def _merged_numbers(opt: Option) -> bool:
    """Whether the written value has two numbers separated only by spaces ('61,45  61,45')."""
    text = opt.source[opt.value_column - 1:] if opt.source else ""
    return re.search(r"[\d.]\s+[\d.]", text.split("#", 1)[0]) is not None


# -- multi-scale training (src/detector.c train_detector) -----------------------------------------
def roundl(v: float) -> int:
    """C roundl: half away from zero."""
    return int(abs(v) + 0.5) * (1 if v >= 0 else -1)


def multiscale_dims(r: float, init_w: int, init_h: int, step: int) -> tuple[int, int]:
    """The input (w, h) for the factor `r`: `roundl(r * init / step + 1) * step` per side (the
    +1 biases sizes up one step), a shrinking r < 1 never above init, the floor one step."""
    def one(init: int) -> int:
        dim = roundl(r * init / step + 1) * step
        if r < 1 and dim > init:
            dim = init
        return max(dim, step)

    return one(init_w), one(init_h)


def multiscale_coef(random: float) -> float:
    """`random=1` means up to 1.4x (and down to 1/1.4x); another value is the factor itself."""
    return 1.4 if random == 1 else float(random)


def largest_multiscale(init_w: int, init_h: int, random: float, resize_step: int = 32
                       ) -> tuple[int, int]:
    """The largest input multi-scale training reaches (its first and last sizes too): 608x608
    for 416x416 with random=1. (init_w, init_h) without multi-scale (random=0)."""
    if not random:
        return init_w, init_h
    coef = multiscale_coef(random)
    return multiscale_dims(max(coef, 1 / coef), init_w, init_h, max(int(resize_step), 1))
