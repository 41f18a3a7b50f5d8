"""[net] training settings with Darknet's meaning (src/parser.c parse_net_options; src/network.c
get_current_rate, update_network), and the pure LR schedule.

Imports no torch: `lr_at` is a plain function of the iteration, so it can be tabled, plotted and
tested without building a network.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from cfgparse import Block, CfgError, Diagnostic, schema
from cfgparse.characters import odd_space_diagnostic, odd_spaces
from cfgparse.errors import did_you_mean
from cfgparse.rules import net_rules


@dataclass(frozen=True)
class NetConfig:
    """The [net] settings the trainer uses, resolved with Darknet's defaults."""

    batch: int = 1  # images per iteration (all subdivisions), as written in the cfg
    subdivisions: int = 1
    learning_rate: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0001
    max_batches: int = 0
    policy: str = "constant"
    burn_in: int = 0
    power: float = 4.0
    step: int = 1
    scale: float = 1.0
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    gamma: float = 1.0
    learning_rate_min: float = 0.00001
    sgdr_cycle: int = 0  # 0: max_batches (Darknet's default)
    sgdr_mult: int = 2  # an int in Darknet (option_find_int_quiet): each cycle is a whole
    # multiple of the last; a fraction would shrink the cycles and never reach a later batch_num
    adam: bool = False
    B1: float = 0.9
    B2: float = 0.999
    eps: float = 0.000001
    width: int = 0
    height: int = 0
    channels: int = 0
    inputs: int = 0
    # augmentations: classifier training reads angle..max_crop; detection training (through
    # DetectionSettings) flip, saturation, exposure, hue and letter_box..resize_step
    angle: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    hue: float = 0.0
    flip: bool = True
    aspect: float = 1.0
    min_crop: int | None = None  # None: not set in the cfg (see the README)
    max_crop: int | None = None
    letter_box: bool = False
    blur: int = 0
    gaussian_noise: int = 0
    mixup: int = 0  # Darknet's net.mixup as written: 1 mixup, 2 cutmix, 3 mosaic (see mix)
    cutmix: bool = False
    mosaic: bool = False
    mosaic_bound: bool = False
    resize_step: int = 32
    label_smooth_eps: float = 0.0  # classifier targets: 1-eps for the class, eps/(k-1) elsewhere
    seed: int = 0  # for the `random` policy (not a [net] key: the runner's --seed)
    overrides: dict = field(default_factory=dict, compare=False)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def mini_batch(self) -> int:
        """Darknet's net.batch: batch / subdivisions (C division, at least 1)."""
        return max(self.batch // self.subdivisions, 1)

    @property
    def images_per_iteration(self) -> int:
        return self.mini_batch * self.subdivisions

    @classmethod
    def from_block(cls, net: Block, seed: int = 0, check: bool = True) -> NetConfig:
        """Read [net] through the typed getters (so every key counts as read). `check`: raise
        the located errors of settings Darknet cannot train with (see `check`)."""
        max_batches = net.int("max_batches")
        policy = net.str("policy")
        cfg = cls(
            batch=net.int("batch"), subdivisions=net.int("subdivisions"),
            learning_rate=net.float("learning_rate"), momentum=net.float("momentum"),
            decay=net.float("decay"), max_batches=max_batches, policy=policy,
            burn_in=net.int("burn_in"), power=net.float("power"), step=net.int("step"),
            scale=net.float("scale"), steps=tuple(net.ints("steps", [])),
            scales=tuple(net.floats("scales", [])), gamma=net.float("gamma"),
            learning_rate_min=net.float("learning_rate_min"),
            sgdr_cycle=net.int("sgdr_cycle", max_batches), sgdr_mult=net.int("sgdr_mult"),
            adam=net.bool("adam"), B1=net.float("B1"), B2=net.float("B2"),
            eps=net.float("eps"), width=net.int("width"), height=net.int("height"),
            channels=net.int("channels"), inputs=net.int("inputs", 0),
            angle=net.float("angle"), saturation=net.float("saturation"),
            exposure=net.float("exposure"), hue=net.float("hue"), flip=net.bool("flip"),
            aspect=net.float("aspect"), min_crop=net.int("min_crop", None),
            max_crop=net.int("max_crop", None), letter_box=net.bool("letter_box"),
            blur=net.int("blur"), gaussian_noise=net.int("gaussian_noise"),
            mixup=net.int("mixup"), cutmix=net.bool("cutmix"), mosaic=net.bool("mosaic"),
            mosaic_bound=net.bool("mosaic_bound"), resize_step=net.int("resize_step"),
            label_smooth_eps=net.float("label_smooth_eps"), seed=seed,
        )
        net.mark_read(*NOT_HONOURED)
        if check:
            cfg.check(net)
        return cfg

    def check(self, net: Block) -> None:
        """Settings Darknet stops on, divides by zero with or loops forever on: a located error
        (the same rules and messages as the linter's E305, cfgparse.rules.net_rules)."""
        problems = net_rules(net, fatal_only=True)
        if problems:
            raise CfgError(problems)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["steps"], out["scales"] = list(self.steps), list(self.scales)
        out["mini_batch"] = self.mini_batch
        return out

    # -- the schedule ----------------------------------------------------------------------------
    def lr_at(self, batch_num: int) -> float:
        """Darknet's get_current_rate(batch_num). The k-th optimizer update (k = 1, 2, ...) uses
        batch_num = k (src/network.c get_current_rate, update_network). Pure: `random` draws from
        (seed, batch_num)."""
        return lr_at(self, batch_num)


# [net] keys darkcfg does not act on (GPU-only knobs, label-noise handling, ...): every key of
# the schema's [net] that NetConfig has no field for. Read so that they are not reported as
# ignored by accident; docs/darknet-differences.md lists them.
NOT_HONOURED = tuple(key for key in schema.SECTIONS["net"]
                     if key not in {f.name for f in fields(NetConfig)})


def lr_at(cfg: NetConfig, batch_num: int) -> float:
    """The learning rate of update `batch_num` under `cfg`'s policy (Darknet's
    get_current_rate): burn-in, then constant, step, steps, exp, poly, random, sigmoid or sgdr."""
    lr = cfg.learning_rate
    if batch_num < cfg.burn_in:
        return lr * (batch_num / cfg.burn_in) ** cfg.power
    policy = cfg.policy
    if policy == "constant":
        return lr
    if policy == "step":
        return lr * _pow(cfg.scale, batch_num // cfg.step)
    if policy == "steps":
        rate = lr
        for i, step in enumerate(cfg.steps):
            if step > batch_num:
                return rate
            rate *= cfg.scales[i] if i < len(cfg.scales) else 1.0  # missing scales are 1
        return rate
    if policy == "exp":
        return lr * _pow(cfg.gamma, batch_num)
    if policy == "poly":
        return lr * (1 - batch_num / cfg.max_batches) ** cfg.power
    if policy == "random":
        return lr * uniform01(cfg.seed, batch_num) ** cfg.power
    if policy == "sigmoid":
        z = cfg.gamma * (batch_num - cfg.step)
        # 1 / (1 + e^z) without e^z: math.exp raises past z = 709 where C's exp gives inf (0)
        return lr * (math.exp(-z) / (1.0 + math.exp(-z)) if z > 0 else 1.0 / (1.0 + math.exp(z)))
    if policy == "sgdr":
        start, cycle = 0, float(cfg.sgdr_cycle)
        while start + cycle < batch_num:
            start += cycle
            cycle *= cfg.sgdr_mult
        low = cfg.learning_rate_min
        return low + 0.5 * (lr - low) * (1 + math.cos((batch_num - start) * math.pi / cycle))
    raise ValueError(f"unknown policy {policy!r}")  # the schema already rejected it


def _pow(base: float, exponent: int) -> float:
    """C's pow: a result past the float range is inf (Python's float power raises), as Darknet
    computes a scale or gamma above 1 over many iterations."""
    try:
        return base ** exponent
    except OverflowError:
        return math.inf if base > 0 or exponent % 2 == 0 else -math.inf


def uniform01(seed: int, batch_num: int) -> float:
    """A uniform [0, 1) number that depends only on (seed, batch_num): Darknet's rand_uniform,
    made reproducible (and identical after --resume)."""
    return float(np.random.default_rng([seed & 0xFFFFFFFF, batch_num]).random())


# -- --set KEY=VALUE -----------------------------------------------------------------------------
def apply_overrides(net: Block, assignments: Iterable[str]) -> tuple[Block, dict]:
    """[net] with each 'KEY=VALUE' applied through `Block.with_values` (typed and range-checked
    by the schema); errors are located at the --set argument, with "did you mean"."""
    blocks, values = apply_overrides_to_blocks([net], assignments)
    return blocks[0], values


def apply_overrides_to_blocks(blocks: list[Block], assignments: Iterable[str]
                              ) -> tuple[list[Block], dict]:
    """`--set KEY=VALUE` sets a [net] key; `--set SECTION.KEY=VALUE` sets KEY in every section
    of that type (e.g. `convolutional.batch_normalize=1`), a darkcfg extension for trying a
    variant of a cfg without copying it. Blocks stay immutable: changed ones are new copies."""
    blocks = list(blocks)
    values: dict[str, str] = {}
    for text in assignments:
        key, raw = split_assignment(text)
        section, dot, name = key.rpartition(".")
        if not dot or section == "net":
            blocks[0] = _set(blocks[0], name, raw, text, _layer_sections(blocks, name))
        else:
            kind = schema.canonical_section(section)
            hits = [i for i, b in enumerate(blocks) if kind is not None and b.type == kind]
            if not hits:
                present = sorted({b.name for b in blocks[1:]})
                raise CfgError(Diagnostic(
                    "E205", f"the cfg has no [{section}] section to set '{name}' in",
                    f"--set {text}", hint=did_you_mean(section, present) or
                    f"its sections: {', '.join(present)}"))
            for i in hits:
                blocks[i] = _set(blocks[i], name, raw, text)
        values[key] = "".join(raw.split())
    return blocks, values


def cfg_with_overrides(cfg_path: str, assignments: Iterable[str]) -> str:
    """The cfg text a run's weights go with: `cfg_path` with its `--set` values written in
    (every other byte kept; a YAML cfg as canonical cfg text), so that Darknet and OpenCV
    build the network the weights were trained as."""
    from cfgparse import edit, parse, write
    from cfgparse.parser import read_source

    text, path = read_source(cfg_path, None)
    blocks = list(parse(text, path=path))
    changed, _ = apply_overrides_to_blocks(blocks, assignments)
    if path.lower().endswith((".yaml", ".yml")):
        return write(changed)
    edits = [(old, key, opt.raw) for old, new in zip(blocks, changed, strict=True)
             if new is not old for key, opt in new.options.items()
             if key not in old.options or old.options[key].raw != opt.raw]
    return edit(text, edits)


def split_assignment(text: str) -> tuple[str, str]:
    """(KEY, VALUE) of `--set KEY=VALUE`. A non-ASCII space or invisible character in it is
    E109 as in a cfg file: str.split() would drop it silently, Darknet would keep it."""
    odd = odd_spaces(text)
    if odd:
        where = "a --set key" if odd[0] < text.find("=") or "=" not in text else \
            "a --set value"
        raise CfgError(odd_space_diagnostic(text, odd, where, f"--set {text}", 0, 0, ""))
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise CfgError(Diagnostic("E102", f"'{text}' is not KEY=VALUE", f"--set {text}",
                                  hint="write e.g. --set batch=64"))
    return key, raw


def _set(block: Block, key: str, raw: str, text: str, layer_sections: Sequence[str] = ()
         ) -> Block:
    try:
        return block.with_values(origin=f"--set {text}", **{key: raw})
    except CfgError as exc:
        d = exc.first
        hint = d.hint
        if d.code == "E205" and layer_sections:  # a layer key set without its section
            first = layer_sections[0]
            hint = f"a layer key: --set {first}.{key}={raw} sets it in every [{first}]" + (
                f" (other sections with '{key}' here: {', '.join(layer_sections[1:])})"
                if len(layer_sections) > 1 else "")
        raise CfgError(Diagnostic(d.code, d.message, f"--set {text}", hint=hint)) from None


def _layer_sections(blocks: Sequence[Block], key: str) -> list[str]:
    """The cfg's layer section types that take `key` (for the hint of a layer key set as if
    it were [net]'s)."""
    found: list[str] = []
    for b in blocks[1:]:
        known = schema.SECTIONS.get(b.type)
        if known is not None and key in known and b.type not in found:
            found.append(b.type)
    return found
