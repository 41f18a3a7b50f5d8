"""What Darknet reads: every section type, its aliases, and every key with type and default.

Source: Darknet's src/parser.c (AlexeyAB `parse_*`, plus pjreddie-only keys marked [pj]).
Types: i = int, f = float, s = text, I = list of ints, F = list of numbers, b = 0/1 flag.
A default of None means "required" (or "no default": the builder decides from other keys).
`fork=AB`/`fork=PJ` marks a key only one Darknet fork reads; SECTION_FORK does so for sections.
The shape dumps (../shared/darknet/shapes) confirm it: parsed for the fork that made each dump,
W201 falls on exactly the keys that Darknet reported as "Unused field" (tests/test_parser.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import did_you_mean

# "No default given" for the Block getters (None is a real default: "required").
_MISSING: Any = object()

AB, PJ = "alexeyab", "pjreddie"  # the two Darknet forks ([pj] = pjreddie only)


@dataclass(frozen=True)
class KeySpec:
    type: str
    default: Any = None
    min: float | None = None  # inclusive lower bound, checked at parse time
    choices: tuple[str, ...] | None = None
    doc: str = ""
    fork: str = ""  # "" = both forks read it; else the only fork that does (AB or PJ)


def K(type_: str, default: Any = None, min: float | None = None,
      choices: tuple[str, ...] | None = None, doc: str = "", fork: str = "") -> KeySpec:
    return KeySpec(type_, default, min, choices, doc, fork)


ACTIVATIONS = (
    "logistic", "loggy", "relu", "relu6", "elu", "selu", "gelu", "relie", "ramp", "leaky",
    "revleaky", "linear", "tanh", "plse", "stair", "hardtan", "lhtan", "swish", "mish",
    "hard_mish", "normalize_channels", "normalize_channels_softmax",
    "normalize_channels_softmax_maxval",
)
POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid", "random", "sgdr")

# Keys every layer section reads (src/parser.c parse_network_cfg_custom; stream/wait_stream are
# AlexeyAB GPU keys).
COMMON = {
    "onlyforward": K("b", 0), "stopbackward": K("i", 0), "dontload": K("b", 0),
    "dontloadscales": K("b", 0), "learning_rate": K("f", 1.0),
    "clip": K("f", 0, fork=AB), "dont_update": K("b", 0, fork=AB),
    "burnin_update": K("b", 0, fork=AB), "train_only_bn": K("b", 0, fork=AB),
    "stream": K("i", -1, fork=AB), "wait_stream": K("i", -1, fork=AB),
    "truth": K("b", 0, fork=PJ), "dontsave": K("b", 0, fork=PJ), "numload": K("i", 0, fork=PJ),
    "smooth": K("f", 0, fork=PJ),
}

_ACT = K("s", "logistic", choices=ACTIVATIONS)
_LINEAR = K("s", "linear", choices=ACTIVATIONS)
# [crnn] and [conv_lstm] (src/rnn_layer.c, src/gru_layer.c, src/lstm_layer.c, src/crnn_layer.c,
# src/conv_lstm_layer.c): a 3x3 kernel by default
_CONV_GEOMETRY = {
    "size": K("i", 3, min=1), "stride": K("i", 1, min=1), "dilation": K("i", 1, min=1),
    "pad": K("i", 0, min=0), "padding": K("i", 0, min=0), "groups": K("i", 1, min=1),
}
_POOL = {
    "size": K("i", None, min=1), "stride": K("i", 1, min=1), "padding": K("i", None, min=0),
    "stride_x": K("i", None, min=1, fork=AB), "stride_y": K("i", None, min=1, fork=AB),
    "maxpool_depth": K("b", 0, fork=AB), "out_channels": K("i", 1, min=1, fork=AB),
    "antialiasing": K("i", 0, fork=AB), "maxpool_zero_nonmax": K("b", 0, fork=AB),
}
# [yolo]: pjreddie reads only the first line's keys (src/yolo_layer.c make_yolo_layer); `beta1` is
# read by no
# Darknet (AlexeyAB reports it as an unused field in yolov4-sam-mish-csp-reorg-bfm.cfg).
_YOLO_COMMON = {
    "classes": K("i", 20, min=1), "num": K("i", 1, min=1), "mask": K("I", None),
    "anchors": K("F", None), "max": K("i", 200, min=0), "jitter": K("f", 0.2),
    "random": K("f", 0, min=0),
    "ignore_thresh": K("f", 0.5), "truth_thresh": K("f", 1.0), "map": K("s", None),
    **{key: KeySpec(spec.type, spec.default, spec.min, spec.choices, spec.doc, AB)
       for key, spec in {
           "resize": K("f", 1.0), "focal_loss": K("b", 0), "iou_thresh": K("f", 1.0),
           "iou_normalizer": K("f", 0.75), "obj_normalizer": K("f", 1.0),
           "cls_normalizer": K("f", 1.0), "delta_normalizer": K("f", 1.0),
           "iou_loss": K("s", "mse"), "iou_thresh_kind": K("s", "iou"),
           "beta_nms": K("f", 0.6), "nms_kind": K("s", "default"), "scale_x_y": K("f", 1.0),
           "max_delta": K("f", None), "label_smooth_eps": K("f", 0),
           "objectness_smooth": K("f", 0), "show_details": K("b", 0),
           "counters_per_class": K("s", None), "embedding_layer": K("i", None),
           "track_history_size": K("i", 5), "sim_thresh": K("f", 0.8),
           "dets_for_track": K("i", 1), "dets_for_show": K("i", 1),
           "track_ciou_norm": K("f", 0.01),
       }.items()},
}
_RECURRENT_COMMON = {"output": K("i", 1, min=1), "batch_normalize": K("b", 0)}

SECTIONS: dict[str, dict[str, KeySpec]] = {
    "net": {
        "batch": K("i", 1, min=1), "subdivisions": K("i", 1, min=1),
        "learning_rate": K("f", 0.001, min=0), "learning_rate_min": K("f", 0.00001, min=0),
        "sgdr_cycle": K("i", None, min=1), "sgdr_mult": K("i", 2),
        "momentum": K("f", 0.9, min=0), "decay": K("f", 0.0001, min=0),
        "max_batches": K("i", 0, min=0), "time_steps": K("i", 1, min=1),
        "track": K("i", 0), "augment_speed": K("i", 2), "sequential_subdivisions": K("i", None),
        "try_fix_nan": K("b", 0), "weights_reject_freq": K("i", 0),
        "equidistant_point": K("i", 0), "badlabels_rejection_percentage": K("f", 0),
        "num_sigmas_reject_badlabels": K("f", 0), "ema_alpha": K("f", 0),
        "use_cuda_graph": K("b", 0), "loss_scale": K("f", 1), "dynamic_minibatch": K("b", 0),
        "optimized_memory": K("i", 0), "workspace_size_limit_MB": K("f", 1024),
        "adam": K("b", 0), "B1": K("f", 0.9), "B2": K("f", 0.999), "eps": K("f", 0.000001),
        "height": K("i", 0, min=0), "width": K("i", 0, min=0), "channels": K("i", 0, min=0),
        "inputs": K("i", None, min=1), "max_crop": K("i", None, min=1),
        "min_crop": K("i", None, min=1), "flip": K("b", 1), "blur": K("i", 0),
        "gaussian_noise": K("b", 0), "mixup": K("i", 0), "cutmix": K("b", 0),
        "mosaic": K("b", 0), "letter_box": K("b", 0), "mosaic_bound": K("b", 0),
        "contrastive": K("b", 0), "contrastive_jit_flip": K("b", 0),
        "contrastive_color": K("b", 0), "unsupervised": K("b", 0),
        "label_smooth_eps": K("f", 0), "resize_step": K("i", 32), "attention": K("i", 0),
        "adversarial_lr": K("f", 0), "max_chart_loss": K("f", 20), "angle": K("f", 0),
        "aspect": K("f", 1), "saturation": K("f", 1), "exposure": K("f", 1), "hue": K("f", 0),
        "power": K("f", 4), "policy": K("s", "constant", choices=POLICIES),
        "burn_in": K("i", 0, min=0), "step": K("i", 1), "scale": K("f", 1),
        "steps": K("I", None), "scales": K("F", None), "seq_scales": K("F", None),
        "gamma": K("f", 1), "show_receptive_field": K("b", 0),
        # [pj] and corpus extras Darknet ignores silently
        "notruth": K("b", 0), "random": K("b", 0), "max_ratio": K("f", None),
        "min_ratio": K("f", None), "center": K("b", 0), "clip": K("f", 0),
        "seen": K("i", 0), "max_epochs": K("i", 0),
    },
    "convolutional": {
        "filters": K("i", 1, min=1), "size": K("i", 1, min=1), "stride": K("i", 1, min=1),
        "pad": K("i", 0, min=0), "padding": K("i", 0, min=0), "groups": K("i", 1, min=1),
        "activation": _ACT, "batch_normalize": K("b", 0), "binary": K("b", 0),
        "xnor": K("b", 0), "flipped": K("b", 0), "dot": K("f", 0),
        "stride_x": K("i", -1, fork=AB), "stride_y": K("i", -1, fork=AB),
        "dilation": K("i", 1, min=1, fork=AB), "antialiasing": K("i", 0, fork=AB),
        "cbn": K("b", 0, fork=AB), "bin_output": K("b", 0, fork=AB),
        "share_index": K("i", None, fork=AB), "assisted_excitation": K("f", 0, fork=AB),
        "sway": K("b", 0, fork=AB), "rotate": K("b", 0, fork=AB), "stretch": K("b", 0, fork=AB),
        "stretch_sway": K("b", 0, fork=AB), "angle": K("f", 15, fork=AB),
        "grad_centr": K("b", 0, fork=AB), "reverse": K("b", 0, fork=AB),
        "coordconv": K("b", 0, fork=AB),
    },
    "deconvolutional": {
        "filters": K("i", 1, min=1), "size": K("i", 1, min=1), "stride": K("i", 1, min=1),
        "pad": K("i", 0, min=0), "padding": K("i", 0, min=0), "activation": _ACT,
        "batch_normalize": K("b", 0),
    },
    "connected": {
        "output": K("i", 1, min=1), "activation": _ACT, "batch_normalize": K("b", 0),
    },
    "maxpool": _POOL,
    "local_avgpool": {k: v for k, v in _POOL.items() if k in
                      ("size", "stride", "stride_x", "stride_y", "padding")},
    "avgpool": {},
    "softmax": {
        "groups": K("i", 1, min=1), "temperature": K("f", 1), "tree": K("s", None),
        "spatial": K("b", 0), "noloss": K("b", 0),
    },
    "normalization": {
        "alpha": K("f", 0.0001), "beta": K("f", 0.75), "kappa": K("f", 1),
        "size": K("i", 5, min=1),
    },
    "batchnorm": {},
    "dropout": {
        "probability": K("f", 0.2, min=0), "dropblock": K("b", 0, fork=AB),
        "dropblock_size_rel": K("f", 0, fork=AB), "dropblock_size_abs": K("f", 0, fork=AB),
    },
    "route": {"layers": K("I", None), "groups": K("i", 1, min=1, fork=AB),
              "group_id": K("i", 0, min=0, fork=AB)},
    "shortcut": {
        "from": K("I", None), "activation": _LINEAR,
        "weights_type": K("s", "none", choices=("none", "per_feature", "per_layer",
                                                 "per_channel"), fork=AB),
        "weights_normalization": K("s", "none", choices=("none", "relu", "avg_relu",
                                                          "softmax"), fork=AB),
        "alpha": K("f", 1, fork=PJ), "beta": K("f", 1, fork=PJ),
    },
    "scale_channels": {"from": K("i", None), "scale_wh": K("b", 0), "activation": _LINEAR},
    "sam": {"from": K("i", None), "activation": _LINEAR},
    "upsample": {"stride": K("i", 2), "scale": K("f", 1)},
    "reorg": {"stride": K("i", 1, min=1), "reverse": K("b", 0), "flatten": K("b", 0, fork=PJ),
              "extra": K("i", 0, fork=PJ)},
    "reorg3d": {"stride": K("i", 1, min=1), "reverse": K("b", 0)},
    "yolo": dict(_YOLO_COMMON, new_coords=K("b", 0)),
    "Gaussian_yolo": dict(_YOLO_COMMON, uc_normalizer=K("f", 1.0),
                          yolo_point=K("s", "center", choices=("center", "left_top",
                                                               "right_bottom"))),
    "region": {
        "coords": K("i", 4), "classes": K("i", 20, min=1), "num": K("i", 1, min=1),
        "max": K("i", 200, min=0), "log": K("i", 0), "sqrt": K("b", 0), "softmax": K("b", 0),
        "focal_loss": K("b", 0, fork=AB), "jitter": K("f", 0.2), "resize": K("f", 1, fork=AB),
        "rescore": K("b", 0), "thresh": K("f", 0.5), "classfix": K("i", 0),
        "absolute": K("b", 0), "random": K("b", 0), "coord_scale": K("f", 1),
        "object_scale": K("f", 1), "noobject_scale": K("f", 1), "mask_scale": K("f", 1),
        "class_scale": K("f", 1), "bias_match": K("b", 0), "tree": K("s", None),
        "map": K("s", None), "anchors": K("F", None), "background": K("b", 0, fork=PJ),
    },
    "detection": {
        "coords": K("i", 1), "classes": K("i", 1, min=1), "rescore": K("b", 0),
        "num": K("i", 1, min=1), "side": K("i", 7, min=1), "softmax": K("b", 0),
        "sqrt": K("b", 0), "max": K("i", 200, min=0), "coord_scale": K("f", 1), "forced": K("b", 0),
        "object_scale": K("f", 1), "noobject_scale": K("f", 1), "class_scale": K("f", 1),
        "jitter": K("f", 0.2), "resize": K("f", 1, fork=AB), "random": K("b", 0),
        "reorg": K("b", 0),
    },
    "cost": {
        "type": K("s", "sse", choices=("sse", "masked", "smooth", "seg", "L1", "wgan")),
        "scale": K("f", 1), "ratio": K("f", 0), "noobj": K("f", 1, fork=PJ),
        "thresh": K("f", 0, fork=PJ),
    },
    "crop": {
        "crop_height": K("i", 1, min=1), "crop_width": K("i", 1, min=1), "flip": K("b", 0),
        "angle": K("f", 0), "saturation": K("f", 1), "exposure": K("f", 1),
        "noadjust": K("b", 0), "shift": K("f", 0),
    },
    "local": {
        "filters": K("i", 1, min=1), "size": K("i", 1, min=1), "stride": K("i", 1, min=1),
        "pad": K("i", 0, min=0), "activation": _ACT,
    },
    "activation": {"activation": _LINEAR},
    "implicit": {"mean": K("f", 0), "std": K("f", 0.2), "filters": K("i", 128, min=1),
                 "atoms": K("i", 1, min=1)},
    "empty": {},
    "rnn": dict(_RECURRENT_COMMON, hidden=K("i", 1, min=1, fork=AB), activation=_ACT,
                logistic=K("b", 0), shortcut=K("b", 0)),
    "gru": dict(_RECURRENT_COMMON, tanh=K("b", 0, fork=PJ)),
    "lstm": dict(_RECURRENT_COMMON),
    # pjreddie's [crnn] reads output_filters/hidden_filters and nothing of the geometry
    "crnn": dict(_RECURRENT_COMMON, shortcut=K("b", 0), activation=_ACT,
                 **{k: KeySpec(v.type, v.default, v.min, fork=AB)
                    for k, v in _CONV_GEOMETRY.items()},
                 output=K("i", 1, min=1, fork=AB), hidden=K("i", 1, min=1, fork=AB),
                 xnor=K("b", 0, fork=AB), output_filters=K("i", 1, min=1, fork=PJ),
                 hidden_filters=K("i", 1, min=1, fork=PJ)),
    "conv_lstm": dict(_RECURRENT_COMMON, **_CONV_GEOMETRY, shortcut=K("b", 0),
                      activation=_LINEAR, xnor=K("b", 0), peephole=K("b", 0),
                      bottleneck=K("b", 0), state_constrain=K("i", None),
                      lstm_activation=K("s", "tanh", choices=ACTIVATIONS),
                      time_normalizer=K("f", 1)),
    "history": {"history_size": K("i", 4, min=1)},
    "contrastive": {
        "classes": K("i", 1000, min=1), "yolo_layer": K("i", None), "temperature": K("f", 1),
        "cls_normalizer": K("f", 1), "max_delta": K("f", None),
        "contrastive_neg_max": K("i", 3),
    },
    "logistic": {},
    "l2norm": {},
    "iseg": {"classes": K("i", 1, min=1), "ids": K("i", 32, min=1)},
    # darkcfg extension (not Darknet): torchvision's AdaptiveAvgPool2d, see the README
    "adaptive_avgpool": {"width": K("i", 7, min=1), "height": K("i", 7, min=1)},
}
# Keys every layer reads (the [net] section is not a layer).
for _name, _keys in SECTIONS.items():
    if _name != "net":
        for _k, _v in COMMON.items():
            _keys.setdefault(_k, _v)
# Pools compute defaults from each other (size = stride, padding = size-1): the builder's job.

ALIASES = {
    "network": "net", "conv": "convolutional", "conn": "connected", "max": "maxpool",
    "local_avg": "local_avgpool", "avg": "avgpool", "soft": "softmax", "lrn": "normalization",
    "deconv": "deconvolutional", "silence": "empty",
}
# Darknet section names are case-sensitive; we map exactly.
_CANONICAL = {**{n: n for n in SECTIONS}, **ALIASES}
_SECTION_NAMES = sorted(_CANONICAL)


def is_section_name(name: str) -> bool:
    """Whether `name` is already a section name or alias (plugins loaded so far; loads none:
    for register_section, which plugins call while they load)."""
    return name in _CANONICAL


def canonical_section(name: str) -> str | None:
    found = _CANONICAL.get(name)
    if found is None:
        from .plugins import load_plugins  # lazily: only a name no built-in section has

        if load_plugins():
            found = _CANONICAL.get(name)
    return found


def add_section(name: str, keys: dict[str, KeySpec], aliases: tuple[str, ...] = (), *,
                fork: str = "", replace: bool = False) -> None:
    """Make a user-defined section known to the parser, the linter and the writer: its keys are
    typed and checked like a built-in section's, and every layer's common keys are added.
    Names (and aliases) already known raise ValueError unless `replace`."""
    for n in (name, *aliases):
        if not replace and n in _CANONICAL:
            raise ValueError(f"section name [{n}] is already known; pass override=True to "
                             "replace it")
    SECTIONS[name] = {**COMMON, **keys}
    if fork:
        SECTION_FORK[name] = fork
    for n in (name, *aliases):
        _CANONICAL[n] = name
        if n != name:
            ALIASES[n] = name
    _SECTION_NAMES[:] = sorted(_CANONICAL)
    for flavor, found in _TABLES.items():  # in place: a parse in progress holds these dicts
        known = SECTIONS[name]
        read = known if flavor is None else \
            {k: v for k, v in known.items() if v.fork in ("", flavor)}
        found[name] = SectionTable(known, read, fork)


def section_names() -> list[str]:
    return _SECTION_NAMES


def key_spec(section: str, key: str) -> KeySpec | None:
    keys = SECTIONS.get(section)
    return None if keys is None else keys.get(key)


def default_for(section: str, key: str) -> Any:
    spec = key_spec(section, key)
    return _MISSING if spec is None else spec.default


# -- which fork reads what --------------------------------------------------------------------
# Sections only one fork knows (src/parser.c string_to_layer_type); the other prints "Type not
# recognized".
SECTION_FORK = {
    **dict.fromkeys(("scale_channels", "sam", "reorg3d", "Gaussian_yolo", "local_avgpool",
                     "conv_lstm", "history", "contrastive", "empty", "implicit"), AB),
    **dict.fromkeys(("deconvolutional", "logistic", "l2norm", "iseg"), PJ),
}
FLAVORS = (AB, PJ)

# Kinds of the parser's fast path (parser._section): a plain value of these types is typed inline;
# anything unusual goes through convert() and its diagnostics.
FAST_INT, FAST_FLOAT, FAST_CHOICE, FAST_TEXT, FAST_INTS, FAST_FLOATS = range(6)


class SectionTable:
    """Per section (and fork): `known` = every key some Darknet reads (the typing), `read` = the
    keys the chosen fork reads (no W201 for those), `fast` = key -> (kind, choices, min) for the
    keys of `read` the hot loop types itself, `fork` = the only fork knowing the section, or ''.
    `memo` is the parser's per-section cache of typed lines (cfgs repeat 'size=3' thousands of
    times)."""

    __slots__ = ("known", "read", "fast", "fork", "memo")

    def __init__(self, known: dict[str, KeySpec], read: dict[str, KeySpec], fork: str):
        self.known, self.read, self.fork = known, read, fork
        self.fast = {key: _fast_entry(spec) for key, spec in read.items()}
        self.memo: dict = {}  # the parser's cache: source line -> its typed option (or a skip)


def _fast_entry(spec: KeySpec) -> tuple[int, frozenset | None, float | None]:
    t = spec.type
    if t == "s":
        return (FAST_CHOICE, frozenset(spec.choices), None) if spec.choices else \
            (FAST_TEXT, None, None)
    kind = {"i": FAST_INT, "b": FAST_INT, "f": FAST_FLOAT, "I": FAST_INTS, "F": FAST_FLOATS}[t]
    return kind, None, spec.min


_TABLES: dict[str | None, dict[str, SectionTable]] = {}


def tables(flavor: str | None = None) -> dict[str, SectionTable]:
    """Canonical section name -> SectionTable. With a flavor, keys only the other fork reads get
    W201 like Darknet's "Unused field" ([net] keys never do: Darknet ignores them silently)."""
    found = _TABLES.get(flavor)
    if found is None:
        if flavor is not None and flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS} or None, not {flavor!r}")
        found = {}
        for name, known in SECTIONS.items():
            read = known if flavor is None or name == "net" else \
                {k: v for k, v in known.items() if v.fork in ("", flavor)}
            found[name] = SectionTable(known, read, SECTION_FORK.get(name, ""))
        _TABLES[flavor] = found
    return found


def clear_memos() -> None:
    """Empty the parser's per-section line caches (for benchmarks of a first parse)."""
    for found in _TABLES.values():
        for table in found.values():
            table.memo.clear()


# -- typing values ----------------------------------------------------------------------------
class ValueProblem(ValueError):
    """An ill-typed (E202), out-of-range (E203) or unknown (E204) value."""

    def __init__(self, code: str, message: str, hint: str = "", offset: int = 0,
                 length: int = 0):
        super().__init__(message)
        self.code, self.hint = code, hint
        # where in the value the problem is (characters of the whitespace-free text; length 0:
        # the whole value)
        self.offset, self.length = offset, length


# ASCII digits only: Python's int() also takes other scripts' digits and '_', C's atoi does not.
_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_ATOI = re.compile(r"[+-]?[0-9]*")
# the number C's atoi / atof read at the start of a value (they stop at the first other character)
_INT_PREFIX = re.compile(r"[+-]?[0-9]+")
_FLOAT_PREFIX = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_NUMERIC = frozenset("ifbIF")
# Darknet reads integers with atoi into a C int (src/option_list.c option_find_int): a value
# beyond 32 bits has no meaning there (and Python's int() refuses over 4300 digits).
INT_MAX = 2**31 - 1
# Names other frameworks use for one of Darknet's activations (Darknet itself knows none of them:
# src/activations.c get_activation falls back to relu with a warning).
ACTIVATION_SYNONYMS = {"silu": "swish", "sigmoid": "logistic", "identity": "linear",
                       "none": "linear", "hardtanh": "hardtan"}
_WANT = {"i": "an integer", "b": "0 or 1", "f": "a number", "I": "a comma-separated list of "
         "integers", "F": "a comma-separated list of numbers"}
_EXAMPLE = {"i": "<integer>", "b": "1", "f": "<number>", "I": "1,2,3", "F": "0.5,1,2"}


def convert(spec: KeySpec | None, key: str, raw: str) -> tuple[Any, str]:
    """Typed value for `raw` (Darknet's whitespace-free text), plus a note when Darknet would read
    it differently. Raises ValueProblem with a message that names the key."""
    if spec is None:
        return infer(raw), ""
    t = spec.type
    text = raw
    if t in _NUMERIC and "#" in text:
        text = text.split("#", 1)[0]  # atoi/atof (and the list parsers) stop at '#' too
    note = ""
    if t in ("i", "b"):
        if _INT.match(text):
            value: Any = _int(text, key)
        elif _FLOAT.match(text):
            digits = _ATOI.match(text).group().lstrip("+-")  # C atoi stops at '.', 'e'
            value = -int(digits or 0) if text.startswith("-") else int(digits or 0)  # ('-.5': 0)
            note = f"'{key}' is an integer; Darknet reads '{text}' as {value}"
        else:
            raise _ill_typed(key, raw, t, text)
    elif t == "f":
        value = _float(text, key, raw, t)
    elif t in ("I", "F"):
        parts = [p for p in text.split(",") if p != ""]  # Darknet skips empty items
        if not parts:
            raise _ill_typed(key, raw, t)
        if t == "I":
            bad = next((p for p in parts if not _INT.match(p)), None)
            if bad is not None:
                raise _bad_item(key, raw, t, text, bad)
            value = [_int(p, key) for p in parts]
        else:
            bad = next((p for p in parts if not _FLOAT.match(p)), None)
            if bad is not None:
                raise _bad_item(key, raw, t, text, bad)
            value = [_float(p, key, raw, t) for p in parts]
    else:
        value = text
        if spec.choices and value not in spec.choices:
            hint = did_you_mean(value, spec.choices) or "one of: " + ", ".join(spec.choices)
            darknet_name = ACTIVATION_SYNONYMS.get(value.lower())
            if darknet_name in spec.choices:
                hint = (f"Darknet calls it '{darknet_name}' (it has no '{value}' and would "
                        f"silently use relu): write {key}={darknet_name}")
            raise ValueProblem("E204", f"unknown {key} '{value}'", hint)
    if spec.min is not None and t in ("i", "f") and value < spec.min:
        raise ValueProblem("E203", f"'{key}' = {value} is out of range (must be >= {spec.min:g})",
                           f"use a value >= {spec.min:g}")
    return value, note


def _int(text: str, key: str) -> int:
    """A C int, as Darknet's atoi reads it; anything wider is out of range (E203)."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 10 or abs(int(text)) > INT_MAX:
        shown = text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"
        raise ValueProblem("E203", f"'{key}' = {shown} is too large (Darknet reads integers "
                           f"as 32-bit C ints: at most {INT_MAX})",
                           f"write {key}=<an integer up to {INT_MAX}>")
    return int(text)


def _float(text: str, key: str, raw: str, t: str) -> float:
    if not _FLOAT.match(text):
        raise _ill_typed(key, raw, t, text)
    value = float(text)
    if value - value != 0.0:  # inf: a literal too large for a double
        raise ValueProblem("E203", f"'{key}' = {text} is too large for a number",
                           f"write {key}=<number>")
    return value


def _ill_typed(key: str, raw: str, t: str, text: str | None = None) -> ValueProblem:
    """E202 for `raw`; `text`: the value as a number is read (raw up to a '#'), for what C's
    atoi/atof would make of it: text after a number is pointed at, with the number to write
    (Python's reading where Python reads the whole text: `1_0`, `１６`)."""
    message, hint = f"'{key}' must be {_WANT[t]}, got '{raw}'", f"write {key}={_EXAMPLE[t]}"
    if text is None:
        return ValueProblem("E202", message, hint)
    integer = t in ("i", "b")
    reader = "atoi" if integer else "atof"
    meant = python_reading(text, integer)
    special = None if integer else _C_SPECIAL.match(text)
    if special is not None and special.end() == len(text):  # nan, inf, 0x10: atof reads them
        value = c_reading(text, False)
        return ValueProblem("E202", f"{message}: Darknet's atof reads it as {_decimal(value)} ("
                            f"{_SPECIAL_NAME[special.lastgroup]})",
                            f"write {key}={_decimal(value)}" if math.isfinite(value) else hint)
    number = (_INT_PREFIX if integer else _FLOAT_PREFIX).match(text)
    if number is None:
        write = f"write {key}={meant}" if meant is not None else hint
        return ValueProblem("E202", message, f"{write} (Darknet's {reader} would read '{text}' "
                            "as 0)")
    junk = text[number.end():]
    write = meant if meant is not None else number.group()
    return ValueProblem(
        "E202", f"{message}: '{junk}' follows the number {number.group()}",
        f"write {key}={write} (Darknet's {reader} stops at '{junk[0]}' and reads "
        f"{number.group()}; a note goes after a '#')", number.end(), len(junk))


# what C's strtod (Darknet's atof) reads besides decimals: inf, infinity, nan, nan(...) in any
# case, and hexadecimal floats (0x1.8p3)
_C_SPECIAL = re.compile(r"[+-]?(?:(?P<inf>[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)|"
                        r"(?P<nan>[nN][aA][nN](?:\([0-9A-Za-z_]*\))?)|"
                        r"(?P<hex>0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)"
                        r"(?:[pP][+-]?[0-9]+)?))")
_SPECIAL_NAME = {"inf": "infinity", "nan": "not a number", "hex": "a hexadecimal number"}


def c_reading(text: str, integer: bool) -> int | float:
    """The number C's atoi (`integer`) or atof reads at the start of `text` (Darknet's readers
    of cfg, .data and label values; they stop at the first other character, 0 when none)."""
    if integer:
        number = _INT_PREFIX.match(text)
        return int(number.group()) if number else 0
    special = _C_SPECIAL.match(text)
    if special is not None:
        word = special.group()
        if special.lastgroup == "hex":
            try:
                return float.fromhex(word)
            except OverflowError:  # (strtod: HUGE_VAL)
                return math.copysign(math.inf, -1.0 if word[0] == "-" else 1.0)
        return float(word.split("(")[0])  # Python's float() reads inf/infinity/nan too
    number = _FLOAT_PREFIX.match(text)
    return float(number.group()) if number else 0.0


def python_reading(text: str, integer: bool) -> str | None:
    """`text` in plain decimal digits when Python's float() reads it whole as a finite number
    and C's atoi/atof would not (`1_0`, `１６`, `١٠`; `1e3` or `10.0` for an integer, when
    whole), else None: what the writer most likely meant."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if integer:
        return str(int(value)) if value.is_integer() and abs(value) <= INT_MAX else None
    return _decimal(value)


def _decimal(value: float) -> str:
    shown = repr(value)
    return shown[:-2] if shown.endswith(".0") else shown


def read_number(text: str, integer: bool = False, name: str = "",
                reader: str = "Darknet's") -> int | float:
    """A number of a data file (`.data` values, VOC XML, data.yaml's nc:), read only where C's
    atoi/atof (Darknet's readers) and Python read it alike: ASCII digits with a sign, for a
    float a point and an exponent, finite (an integer within a C int). Anything else is a
    ValueProblem (E202, E203 too large) saying what C reads instead and what to write. `name`:
    written before the value in the message ('top=' gives "'top=1_0' is not ..."); `reader`:
    whose atoi/atof the message names."""
    what = f"'{name}{text}'"
    if integer and _INT.match(text):
        return _int(text, name.rstrip("=") or "the value")
    if not integer and _FLOAT.match(text):
        value = float(text)
        if value - value == 0.0:
            return value
        raise ValueProblem("E203", f"{what} is too large for a number", "write a smaller number")
    want = "an integer" if integer else "a number"
    c_value = c_reading(text, integer)
    shown = _decimal(c_value) if isinstance(c_value, float) else str(c_value)
    reads = f"{reader} {'atoi' if integer else 'atof'} reads {shown}"
    special = None if integer else _C_SPECIAL.fullmatch(text)
    if special is not None:  # nan, inf, 0x10: atof reads them, Python (but hex) too
        meant = shown if math.isfinite(c_value) else None
        reads += f" ({_SPECIAL_NAME[special.lastgroup]})"
    else:
        meant = python_reading(text, integer)
        reads += f", not {meant}" if meant not in (None, shown) else ""
        if meant is None and c_value:
            meant = shown  # `10abc`: the number C reads
    raise ValueProblem("E202", f"{what} is not {want} in decimal digits: {reads}",
                       f"write {name}{meant}" if meant is not None else
                       f"write {name}<{want} in decimal digits>" if name else
                       f"write {want} in decimal digits")


def _bad_item(key: str, raw: str, t: str, text: str, item: str) -> ValueProblem:
    """E202 at the first item of a list that is not a number."""
    start = 0
    for part in text.split(","):  # the offset of `item` in the value
        if part == item:
            break
        start += len(part) + 1
    want = "an integer" if t == "I" else "a number"
    meant = python_reading(item, t == "I")  # `1_0`: 10, as in _ill_typed
    number = (_INT_PREFIX if t == "I" else _FLOAT_PREFIX).match(item)
    if number is None:
        return ValueProblem("E202", f"'{key}' must be {_WANT[t]}, got '{raw}': '{item}' is "
                            f"not {want}", f"write {meant} there" if meant is not None else
                            f"write {key}={_EXAMPLE[t]}", start, len(item))
    junk = item[number.end():]
    return ValueProblem(
        "E202", f"'{key}' must be {_WANT[t]}, got '{raw}': '{junk}' follows the number "
        f"{number.group()}", f"write {meant or number.group()} there (Darknet reads "
        f"{number.group()}; a note goes after a '#')", start + number.end(), len(junk))


def coerce_text(section: str, key: str, raw: str) -> Any:
    return convert(key_spec(section, key), key, "".join(raw.split()))[0]


def infer(raw: str) -> Any:
    """Type a value the schema does not know: int, float, number list, else text."""
    if _INT.match(raw):
        return int(raw) if len(raw) <= 4000 else raw  # int() refuses over 4300 digits
    if _FLOAT.match(raw):
        return float(raw)
    if "," in raw:
        parts = raw.split(",")
        if all(_INT.match(p) and len(p) <= 4000 for p in parts):
            return [int(p) for p in parts]
        if all(_FLOAT.match(p) for p in parts):
            return [float(p) for p in parts]
    return raw
