"""What Darknet reads: every section type, its aliases, and every key with type and default.

Source: ../shared/darknet/SEMANTICS.md (AlexeyAB `parse_*`, plus pjreddie-only keys marked [pj]).
Types: i = int, f = float, s = text, I = list of ints, F = list of numbers, b = 0/1 flag.
A default of None means "required" (or "no default": the builder decides from other keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeySpec:
    type: str
    default: Any = None
    min: float | None = None  # inclusive lower bound, checked at parse time
    choices: tuple[str, ...] | None = None
    doc: str = ""

    @property
    def fast(self):
        """A converter for the parser's common case (plain int/float), or None."""
        return _FAST.get(self.type) if self.choices is None else None


def _plain_float(text: str) -> float:
    if text[-1:].isalpha() and not text[-1:] in "eE":  # 'inf', 'nan' and the like
        raise ValueError(text)
    return float(text)


_FAST = {"i": int, "b": int, "f": _plain_float}


def K(type_: str, default: Any = None, min: float | None = None,
      choices: tuple[str, ...] | None = None, doc: str = "") -> KeySpec:
    return KeySpec(type_, default, min, choices, doc)


ACTIVATIONS = (
    "logistic", "loggy", "relu", "relu6", "elu", "selu", "gelu", "relie", "ramp", "leaky",
    "revleaky", "linear", "tanh", "plse", "stair", "hardtan", "lhtan", "swish", "mish",
    "hard_mish", "normalize_channels", "normalize_channels_softmax",
    "normalize_channels_softmax_maxval",
)
POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid", "random", "sgdr")

# Keys every layer section reads (SEMANTICS.md §5; [pj] extras at the end).
COMMON = {
    "clip": K("f", 0), "onlyforward": K("b", 0), "dont_update": K("b", 0),
    "burnin_update": K("b", 0), "stopbackward": K("i", 0), "train_only_bn": K("b", 0),
    "dontload": K("b", 0), "dontloadscales": K("b", 0), "learning_rate": K("f", 1.0),
    "stream": K("i", -1), "wait_stream": K("i", -1),
    "truth": K("b", 0), "dontsave": K("b", 0), "numload": K("i", 0), "smooth": K("f", 0),
}

_ACT = K("s", "logistic", choices=ACTIVATIONS)
_LINEAR = K("s", "linear", choices=ACTIVATIONS)
_CONV_GEOMETRY = {
    "size": K("i", 1, min=1), "stride": K("i", 1, min=1), "stride_x": K("i", -1),
    "stride_y": K("i", -1), "dilation": K("i", 1, min=1), "pad": K("i", 0, min=0),
    "padding": K("i", 0, min=0), "groups": K("i", 1, min=1),
}
_POOL = {
    "size": K("i", None, min=1), "stride": K("i", 1, min=1), "stride_x": K("i", None, min=1),
    "stride_y": K("i", None, min=1), "padding": K("i", None, min=0),
    "maxpool_depth": K("b", 0), "out_channels": K("i", 1, min=1), "antialiasing": K("i", 0),
    "maxpool_zero_nonmax": K("b", 0),
}
_YOLO_COMMON = {
    "classes": K("i", 20, min=1), "num": K("i", 1, min=1), "mask": K("I", None),
    "anchors": K("F", None), "max": K("i", 200), "jitter": K("f", 0.2),
    "resize": K("f", 1.0), "random": K("f", 0), "focal_loss": K("b", 0),
    "ignore_thresh": K("f", 0.5), "truth_thresh": K("f", 1.0), "iou_thresh": K("f", 1.0),
    "iou_normalizer": K("f", 0.75), "obj_normalizer": K("f", 1.0),
    "cls_normalizer": K("f", 1.0), "delta_normalizer": K("f", 1.0),
    "iou_loss": K("s", "mse"), "iou_thresh_kind": K("s", "iou"), "beta_nms": K("f", 0.6),
    "nms_kind": K("s", "default"), "scale_x_y": K("f", 1.0), "max_delta": K("f", None),
    "label_smooth_eps": K("f", 0), "objectness_smooth": K("f", 0), "show_details": K("b", 0),
    "map": K("s", None), "counters_per_class": K("s", None), "embedding_layer": K("i", None),
    "track_history_size": K("i", 5), "sim_thresh": K("f", 0.8), "dets_for_track": K("i", 1),
    "dets_for_show": K("i", 1), "track_ciou_norm": K("f", 0.01), "beta1": K("f", 0),
}
_RECURRENT_COMMON = {
    "output": K("i", 1, min=1), "batch_normalize": K("b", 0), "shortcut": K("b", 0),
}

SECTIONS: dict[str, dict[str, KeySpec]] = {
    "net": {
        "batch": K("i", 1, min=1), "subdivisions": K("i", 1, min=1),
        "learning_rate": K("f", 0.001, min=0), "learning_rate_min": K("f", 0.00001, min=0),
        "sgdr_cycle": K("i", None, min=1), "sgdr_mult": K("f", 2),
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
        "filters": K("i", 1, min=1), **_CONV_GEOMETRY, "activation": _ACT,
        "batch_normalize": K("b", 0), "cbn": K("b", 0), "antialiasing": K("i", 0),
        "binary": K("b", 0), "xnor": K("b", 0), "bin_output": K("b", 0),
        "share_index": K("i", None), "assisted_excitation": K("f", 0), "sway": K("b", 0),
        "rotate": K("b", 0), "stretch": K("b", 0), "stretch_sway": K("b", 0),
        "flipped": K("b", 0), "dot": K("f", 0), "angle": K("f", 15), "grad_centr": K("b", 0),
        "reverse": K("b", 0), "coordconv": K("b", 0), "deform": K("b", 0),
        "adam": K("b", 0),
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
        "probability": K("f", 0.2, min=0), "dropblock": K("b", 0),
        "dropblock_size_rel": K("f", 0), "dropblock_size_abs": K("f", 0),
    },
    "route": {"layers": K("I", None), "groups": K("i", 1, min=1), "group_id": K("i", 0, min=0)},
    "shortcut": {
        "from": K("I", None), "activation": _LINEAR,
        "weights_type": K("s", "none", choices=("none", "per_feature", "per_layer",
                                                 "per_channel")),
        "weights_normalization": K("s", "none", choices=("none", "relu", "avg_relu",
                                                          "softmax")),
        "alpha": K("f", 1), "beta": K("f", 1),
    },
    "scale_channels": {"from": K("i", None), "scale_wh": K("b", 0), "activation": _LINEAR},
    "sam": {"from": K("i", None), "activation": _LINEAR},
    "upsample": {"stride": K("i", 2), "scale": K("f", 1)},
    "reorg": {"stride": K("i", 1, min=1), "reverse": K("b", 0), "flatten": K("b", 0),
              "extra": K("i", 0)},
    "reorg3d": {"stride": K("i", 1, min=1), "reverse": K("b", 0)},
    "yolo": dict(_YOLO_COMMON, new_coords=K("b", 0)),
    "Gaussian_yolo": dict(_YOLO_COMMON, uc_normalizer=K("f", 1.0),
                          yolo_point=K("s", "center", choices=("center", "left_top",
                                                               "right_bottom"))),
    "region": {
        "coords": K("i", 4), "classes": K("i", 20, min=1), "num": K("i", 1, min=1),
        "max": K("i", 200), "log": K("i", 0), "sqrt": K("b", 0), "softmax": K("b", 0),
        "focal_loss": K("b", 0), "jitter": K("f", 0.2), "resize": K("f", 1),
        "rescore": K("b", 0), "thresh": K("f", 0.5), "classfix": K("i", 0),
        "absolute": K("b", 0), "random": K("b", 0), "coord_scale": K("f", 1),
        "object_scale": K("f", 1), "noobject_scale": K("f", 1), "mask_scale": K("f", 1),
        "class_scale": K("f", 1), "bias_match": K("b", 0), "tree": K("s", None),
        "map": K("s", None), "anchors": K("F", None), "background": K("b", 0),
    },
    "detection": {
        "coords": K("i", 1), "classes": K("i", 1, min=1), "rescore": K("b", 0),
        "num": K("i", 1, min=1), "side": K("i", 7, min=1), "softmax": K("b", 0),
        "sqrt": K("b", 0), "max": K("i", 200), "coord_scale": K("f", 1), "forced": K("b", 0),
        "object_scale": K("f", 1), "noobject_scale": K("f", 1), "class_scale": K("f", 1),
        "jitter": K("f", 0.2), "resize": K("f", 1), "random": K("b", 0), "reorg": K("b", 0),
    },
    "cost": {
        "type": K("s", "sse", choices=("sse", "masked", "smooth", "seg", "L1", "wgan")),
        "scale": K("f", 1), "ratio": K("f", 0), "noobj": K("f", 1), "thresh": K("f", 0),
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
    "rnn": dict(_RECURRENT_COMMON, hidden=K("i", 1, min=1), activation=_ACT,
                logistic=K("b", 0)),
    "gru": dict(_RECURRENT_COMMON, tanh=K("b", 0)),
    "lstm": dict(_RECURRENT_COMMON),
    "crnn": dict(_RECURRENT_COMMON, **{k: v for k, v in _CONV_GEOMETRY.items()},
                 hidden=K("i", 1, min=1), activation=_ACT, xnor=K("b", 0),
                 output_filters=K("i", None), hidden_filters=K("i", None)),
    "conv_lstm": dict(_RECURRENT_COMMON, **{k: v for k, v in _CONV_GEOMETRY.items()},
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
}
# Keys every layer reads (the [net] section is not a layer).
for _name, _keys in SECTIONS.items():
    if _name != "net":
        for _k, _v in COMMON.items():
            _keys.setdefault(_k, _v)
# conv's default stride is 1, but conv's "size" default is 1 and pad/padding interplay is the
# builder's; pools compute defaults from each other (size = stride, padding = size-1).

ALIASES = {
    "network": "net", "conv": "convolutional", "conn": "connected", "max": "maxpool",
    "local_avg": "local_avgpool", "avg": "avgpool", "soft": "softmax", "lrn": "normalization",
    "deconv": "deconvolutional", "silence": "empty",
}
# Darknet section names are case-sensitive; we map exactly.
_CANONICAL = {**{n: n for n in SECTIONS}, **ALIASES}
_SECTION_NAMES = sorted(_CANONICAL)


def canonical_section(name: str) -> str | None:
    return _CANONICAL.get(name)


def section_names() -> list[str]:
    return _SECTION_NAMES


def section_keys(section: str) -> list[str]:
    return sorted(SECTIONS.get(canonical_section(section) or section, {}))


def key_spec(section: str, key: str) -> KeySpec | None:
    keys = SECTIONS.get(section)
    return None if keys is None else keys.get(key)


class ValueProblem(ValueError):
    """An ill-typed (E202), out-of-range (E203) or unknown (E204) value."""

    def __init__(self, code: str, message: str, hint: str = ""):
        super().__init__(message)
        self.code, self.hint = code, hint


def default_for(section: str, key: str) -> Any:
    from .blocks import _MISSING as missing

    spec = key_spec(section, key)
    return missing if spec is None else spec.default


_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


def _number(text: str, key: str, want: str) -> int | float:
    if want == "i":
        if _INT.match(text):
            return int(text)
        raise ValueProblem("E202", f"'{key}' must be an integer, got '{text}'",
                           f"write {key}=<integer>")
    if _FLOAT.match(text):
        return float(text)
    raise ValueProblem("E202", f"'{key}' must be a number, got '{text}'",
                       f"write {key}=<number>")


def convert(spec: KeySpec | None, key: str, raw: str) -> tuple[Any, str]:
    """Typed value for `raw` (Darknet's whitespace-free text), plus a note when Darknet would read
    it differently. Raises ValueError with a message that names the key."""
    if spec is None:
        return infer(raw), ""
    t = spec.type
    if spec.min is None or t not in ("i", "b", "f"):
        pass
    elif t == "f":
        try:  # fast path for the common case; the checks below give the messages
            value = float(raw)
            if value >= spec.min and _FLOAT.match(raw):
                return value, ""
        except ValueError:
            pass
    else:
        try:
            value = int(raw)
            if value >= spec.min:
                return value, ""
        except ValueError:
            pass
    note = ""
    text = raw
    if spec.type in ("i", "f", "b", "I", "F") and "#" in text:
        text = text.split("#", 1)[0]  # atoi/atof (and the list parsers) stop at '#' too
    if t in ("i", "b"):
        if not _INT.match(text) and _FLOAT.match(text):
            value = int(float(text))  # C atoi truncates; so do we, with a warning
            note = f"'{key}' is an integer; Darknet reads '{text}' as {value}"
        else:
            value = _number(text, key, "i")
    elif t == "f":
        value = _number(text, key, "f")
    elif t in ("I", "F"):
        parts = [p for p in text.split(",") if p != ""]
        if not parts:
            raise ValueProblem("E202", f"'{key}' must be a comma-separated list, got '{raw}'",
                               f"write {key}=1,2,3")
        value = [_number(p, key, "i" if t == "I" else "f") for p in parts]
    else:
        value = text
        if spec.choices and value not in spec.choices:
            from .errors import did_you_mean

            hint = did_you_mean(value, spec.choices) or "one of: " + ", ".join(spec.choices)
            raise ValueProblem("E204", f"unknown {key} '{value}'", hint)
    if spec.min is not None and t in ("i", "f") and value < spec.min:
        raise ValueProblem("E203", f"'{key}' = {value} is out of range (must be >= {spec.min:g})",
                           f"use a value >= {spec.min:g}")
    return value, note


def coerce_text(section: str, key: str, raw: str) -> Any:
    return convert(key_spec(section, key), key, "".join(raw.split()))[0]


def infer(raw: str) -> Any:
    """Type a value the schema does not know: int, float, number list, else text."""
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    if "," in raw:
        parts = raw.split(",")
        if all(_INT.match(p) for p in parts):
            return [int(p) for p in parts]
        if all(_FLOAT.match(p) for p in parts):
            return [float(p) for p in parts]
    return raw
