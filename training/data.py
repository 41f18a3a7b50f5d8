"""Training data: where images come from, how [net] augments them, and a resumable order.

Sources (`open_data(spec, ...)`):
  None                      the embedded, procedurally generated shapes (deterministic from seed)
  DIR                       an ImageFolder: DIR/train + DIR/val, or DIR split 90/10
  X.data                    a Darknet classifier .data file (labels from paths by substring)
  X.csv                     regression rows: `inputs` feature columns, then the target columns
  torchvision:NAME:ROOT     a torchvision dataset already on disk (never downloaded)

Every sample is a pure function of (seed, epoch, index): augmentations draw from a generator
seeded per sample, and the order comes from a seeded DistributedSampler. That is what makes
--resume bit-exact and DDP ranks disjoint.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from cfgparse import CfgError, Diagnostic

from .config import NetConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """A data problem found while loading (possibly in a worker): the runner prints it, exit 2.
    A plain-string exception, so it survives the trip back from DataLoader workers."""


def data_error(message: str, where: str, hint: str = "") -> CfgError:
    return CfgError(Diagnostic("E901", message, where, hint=hint))


@dataclass
class Task:
    """What the network learns, read from its loss layer."""

    kind: str  # "classify" or "regress"
    outputs: int  # classes, or regression targets
    inputs: tuple[int, ...]  # per-sample input shape: (C, H, W) or (N,)


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset | None
    names: list[str]  # class names (empty for regression)
    description: str
    backup: str | None = None  # a .data file's backup directory
    augment: bool = True  # image data takes [net] augmentations
    extra: dict = field(default_factory=dict)


# -- the embedded dataset -------------------------------------------------------------------------
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "hstripes", "vstripes")
COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1), "magenta": (0.85, 0.15, 0.8), "cyan": (0.1, 0.85, 0.85),
           "orange": (1.0, 0.5, 0.05), "white": (0.95, 0.95, 0.95)}
GREYS = {"grey25": (0.3,), "grey50": (0.5,), "grey75": (0.75,), "white": (1.0,)}
PLACES = ("top-left", "top-right", "bottom-left", "bottom-right")
BACKDROPS = ("dark", "reddish", "greenish", "bluish")


class EmbeddedShapes(Dataset):
    """Coloured shapes on noisy backgrounds; class = (shape, colour[, quadrant, backdrop]).

    Up to 8 shapes x 8 colours = 64 classes vary shape and colour (size and position are
    nuisances); larger class counts also fix the quadrant and the backdrop tint (up to 1024
    distinguishable classes; beyond that classes repeat). Sample i is a pure function of
    (seed, split, i), so the set needs no storage and is identical on every run and rank."""

    def __init__(self, size: int, classes: int, channels: int, height: int, width: int,
                 seed: int, split: int):
        self.size, self.classes = size, classes
        self.c, self.h, self.w, self.seed, self.split = channels, height, width, seed, split
        colours = COLOURS if channels >= 3 else GREYS
        self.colours = list(colours.values())
        ncol = len(self.colours)
        self.factors = [len(SHAPES), ncol] + ([len(PLACES), len(BACKDROPS)]
                                              if classes > len(SHAPES) * ncol else [])
        self.names = [self._name(k, list(colours)) for k in range(classes)]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.ys, self.xs = (ys + 0.5) / height, (xs + 0.5) / width

    def _digits(self, label: int) -> list[int]:
        """(shape, colour[, quadrant, backdrop]) of a class. Colours run diagonally (class k < 8
        is shape k in colour k, then shape k in colour k+1, ...), so that few classes differ
        in both shape and colour, the easiest start for a net trained from scratch."""
        out = []
        for n in self.factors:
            out.append(label % n)
            label //= n
        out[1] = (out[0] + out[1]) % self.factors[1]
        return out

    def _name(self, label: int, colour_names: list[str]) -> str:
        d = self._digits(label)
        words = [colour_names[d[1]], SHAPES[d[0]]]
        if len(d) > 2:
            words += [PLACES[d[2]], BACKDROPS[d[3]]]
        return " ".join(words)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.split, index])
        label = index % self.classes  # balanced classes
        d = self._digits(label)
        shape, colour = d[0], np.array(self.colours[d[1]], np.float32)
        radius = rng.uniform(0.18, 0.32)
        if len(d) > 2:  # the quadrant is part of the class
            cy = (0.27 if d[2] < 2 else 0.73) + rng.uniform(-0.04, 0.04)
            cx = (0.27 if d[2] % 2 == 0 else 0.73) + rng.uniform(-0.04, 0.04)
            radius *= 0.7
        else:
            cy, cx = rng.uniform(0.3, 0.7, 2)
        dy, dx = (self.ys - cy) / radius, (self.xs - cx) / radius
        mask = _shape_mask(shape, dy, dx)
        back = np.full(self.c, 0.12, np.float32)
        if len(d) > 2 and d[3] and self.c >= 3:
            back[d[3] - 1] = 0.35
        img = back[:, None, None] + rng.normal(0, 0.06, (self.c, self.h, self.w))
        fill = colour[: self.c] if self.c <= len(colour) else np.resize(colour, self.c)
        fill = fill * rng.uniform(0.8, 1.0)
        img = np.where(mask[None], fill[:, None, None], img)
        img = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        return torch.from_numpy(img), label


def _shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    ay, ax = np.abs(dy), np.abs(dx)
    inside = (ay <= 1) & (ax <= 1)
    name = SHAPES[shape]
    if name == "disc":
        return dy * dy + dx * dx <= 1
    if name == "square":
        return (ay <= 0.8) & (ax <= 0.8)
    if name == "triangle":
        return (dy <= 0.8) & (ax <= (dy + 0.9) * 0.6)
    if name == "cross":
        return inside & ((ay <= 0.3) | (ax <= 0.3))
    if name == "ring":
        r2 = dy * dy + dx * dx
        return (r2 <= 1) & (r2 >= 0.36)
    if name == "diamond":
        return ay + ax <= 1
    if name == "hstripes":
        return inside & (np.floor((dy + 1) * 2.5) % 2 == 0)
    return inside & (np.floor((dx + 1) * 2.5) % 2 == 0)  # vstripes


def embedded(task: Task, seed: int, classes: int | None = None, train_size: int = 0,
             val_size: int = 0) -> DataSplits:
    """The embedded data for `task`: as many classes as the network outputs, or the first
    `classes` of them (a quick demo of a 1000-way net on a few classes)."""
    if task.kind != "classify" or len(task.inputs) != 3:
        raise data_error("the embedded dataset is images for a classifier; this network "
                         f"{'regresses' if task.kind == 'regress' else 'takes flat inputs'}",
                         "--data", "pass --data X.csv (regression) or another data source")
    if classes is not None and not 1 <= classes <= task.outputs:
        raise data_error(f"--classes {classes}: the network has {task.outputs} outputs",
                         "--classes", f"use 1..{task.outputs}")
    k = classes or task.outputs
    c, h, w = task.inputs
    train_size = train_size or max(8192, 16 * k)
    val_size = val_size or 512
    train = EmbeddedShapes(train_size, k, c, h, w, seed, 0)
    val = EmbeddedShapes(val_size, k, c, h, w, seed, 1)
    distinct = math.prod(train.factors)
    note = f" ({distinct} distinguishable)" if k > distinct else ""
    used = f"{k} of the network's {task.outputs} classes" if k < task.outputs else \
        f"{k} classes"
    return DataSplits(train, val, train.names,
                      f"embedded shapes: {used}{note}, {w}x{h}x{c}, "
                      f"{train_size} train / {val_size} val images, seed {seed}")


# -- image files ----------------------------------------------------------------------------------
class ImageFiles(Dataset):
    """(path, label) pairs decoded with PIL into uint8 CHW tensors with the net's channels."""

    def __init__(self, items: Sequence[tuple[str, int]], channels: int):
        self.items, self.channels = list(items), channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return read_image(path, self.channels), label


def read_image(path: str, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}") from None
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    if channels not in (1, 3):  # e.g. 4-channel nets: repeat to fill
        t = t.repeat((channels + t.shape[0] - 1) // t.shape[0], 1, 1)[:channels]
    return t.contiguous()


def image_folder(root: Path, channels: int, seed: int) -> DataSplits:
    def scan(folder: Path, classes: list[str] | None = None):
        found = sorted(d.name for d in folder.iterdir() if d.is_dir()) if classes is None \
            else classes
        items = []
        for label, name in enumerate(found):
            sub = folder / name
            if not sub.is_dir():
                continue
            items += [(str(p), label) for p in sorted(sub.rglob("*"))
                      if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        return found, items

    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir():
        names, train = scan(train_dir)
        val = scan(val_dir, names)[1] if val_dir.is_dir() else []
        where = f"{train_dir} (+ {val_dir.name}/)" if val else str(train_dir)
    else:
        names, items = scan(root)
        order = np.random.default_rng(seed).permutation(len(items))
        nval = len(items) // 10
        val = [items[i] for i in sorted(order[:nval])]
        train = [items[i] for i in sorted(order[nval:])]
        where = f"{root} (split 90/10 by seed {seed})"
    if not names or not train:
        raise data_error(f"no images in '{root}'", str(root),
                         "an ImageFolder holds one sub-folder of images per class, "
                         "optionally under train/ and val/")
    read_image(train[0][0], channels)  # fail now, not in a worker, if the files are unreadable
    return DataSplits(ImageFiles(train, channels), ImageFiles(val, channels) if val else None,
                      names, f"ImageFolder {where}: {len(names)} classes, {len(train)} train / "
                      f"{len(val)} val images")


def read_data_file(path: Path) -> dict[str, str]:
    """A Darknet .data file: key=value lines, whitespace removed, '#'/';' comment lines."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise data_error(f"cannot read '{path}': {exc}", str(path)) from None
    options: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = "".join(line.split())
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise CfgError(Diagnostic("E102", f"missing '=' in '{line}'", str(path), n, 1,
                                      hint="a .data line is key=value"))
        options.setdefault(key, value)  # like option_find, the first occurrence wins
    return options


def _resolve(raw: str, bases: Sequence[Path]) -> Path:
    """A path from a .data file or list: absolute as is, else the first base it exists under."""
    p = Path(raw)
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return base / p
    return bases[0] / p


def darknet_data(path: Path, channels: int) -> DataSplits:
    opts = read_data_file(path)
    bases = [path.parent, Path.cwd()]
    where = str(path)
    if "train" not in opts:
        raise data_error(f"'{path}' has no 'train' list", where,
                         "add train=path/to/train.list (one image path per line)")
    labels_path = _resolve(opts.get("labels", "data/labels.list"), bases)
    labels = _read_list(labels_path, where, "labels")
    names_path = _resolve(opts["names"], bases) if "names" in opts else labels_path
    names = _read_list(names_path, where, "names") if names_path != labels_path else labels
    classes = int(opts.get("classes", 2))
    if classes != len(labels):
        raise data_error(f"'{path}' says classes={classes} but {labels_path} lists "
                         f"{len(labels)} labels", where, "make classes= match the labels file")

    def items(key: str) -> list[tuple[str, int]]:
        list_path = _resolve(opts[key], bases)
        out = []
        for raw in _read_list(list_path, where, key):
            # Darknet's fill_truth: the label whose text occurs in the path as written
            hits = [i for i, label in enumerate(labels) if label in raw]
            if len(hits) != 1:
                raise data_error(f"'{raw}' in {list_path} matches {len(hits)} labels "
                                 f"({', '.join(labels[i] for i in hits) or 'none'})", where,
                                 "each image path must contain exactly one label string "
                                 "(Darknet: 'Too many or too few labels')")
            image = _resolve(raw, [list_path.parent, *bases])
            if not image.is_file():
                raise data_error(f"image '{raw}' (listed in {list_path}) does not exist", where,
                                 f"paths are tried relative to {list_path.parent}, "
                                 f"{path.parent} and the current directory")
            out.append((str(image), hits[0]))
        return out

    train = items("train")
    val = items("valid") if "valid" in opts else []
    if not train:
        raise data_error(f"the train list of '{path}' is empty", where, "list image paths")
    read_image(train[0][0], channels)
    backup = str(_resolve(opts["backup"], bases)) if "backup" in opts else None
    return DataSplits(ImageFiles(train, channels), ImageFiles(val, channels) if val else None,
                      names[: len(labels)], f"Darknet data {path}: {classes} classes, "
                      f"{len(train)} train / {len(val)} valid images", backup=backup,
                      extra={"top": int(opts.get("top", 5))})


def _read_list(path: Path, where: str, key: str) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise data_error(f"cannot read the {key} file '{path}': {exc}", where,
                         f"fix the '{key}=' line of the .data file") from None
    out = [line.strip() for line in lines]  # Darknet's fgetl keeps inner spaces ("a cat")
    out = [line for line in out if line]
    if not out:
        raise data_error(f"the {key} file '{path}' is empty", where, "add one entry per line")
    return out


# -- regression CSV -------------------------------------------------------------------------------
def regression_csv(path: Path, task: Task) -> DataSplits:
    n_in = math.prod(task.inputs)
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise data_error(f"cannot read '{path}': {exc}", str(path)) from None
    if rows and not _numeric(rows[0]):
        rows = rows[1:]  # a header line
    if not rows:
        raise data_error(f"'{path}' has no data rows", str(path), "one sample per line")
    want = n_in + task.outputs
    values = []
    for n, row in enumerate(rows, 1):
        if len(row) != want or not _numeric(row):
            raise data_error(f"row {n} of '{path}' has {len(row)} columns "
                             f"({', '.join(row)[:60]}); this network needs {n_in} input and "
                             f"{task.outputs} target numbers", str(path),
                             "columns: the inputs first, then the targets")
        values.append([float(c) for c in row])
    table = torch.tensor(values, dtype=torch.float32)
    x, y = table[:, :n_in].reshape(-1, *task.inputs), table[:, n_in:]
    return DataSplits(Tensors(x, y), None, [], f"CSV {path}: {len(values)} rows, "
                      f"{n_in} inputs -> {task.outputs} targets", augment=False)


def _numeric(row: Sequence[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


class Tensors(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


# -- torchvision datasets -------------------------------------------------------------------------
class Converted(Dataset):
    """A torchvision dataset's (PIL image, label) as (uint8 CHW tensor, label)."""

    def __init__(self, dataset, channels: int):
        self.dataset, self.channels = dataset, channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        if not isinstance(image, torch.Tensor):
            image = image.convert("L" if self.channels == 1 else "RGB")
            arr = np.asarray(image, dtype=np.uint8)
            image = torch.from_numpy(arr.copy())
            image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        if image.shape[0] != self.channels:
            image = image[:1].repeat(self.channels, 1, 1) if image.shape[0] == 1 else \
                image.float().mean(0, keepdim=True).to(image.dtype).repeat(self.channels, 1, 1)
        return image.contiguous(), int(label)


def torchvision_data(spec: str, channels: int) -> DataSplits:
    import torchvision.datasets as tvd

    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise data_error(f"'{spec}' is not torchvision:NAME:ROOT", "--data",
                         "e.g. --data torchvision:CIFAR10:~/data")
    name, root = parts[1], os.path.expanduser(parts[2])
    cls = getattr(tvd, name, None)
    if not isinstance(cls, type):
        from cfgparse.errors import did_you_mean

        known = [n for n in dir(tvd) if isinstance(getattr(tvd, n), type) and n[0].isupper()]
        raise data_error(f"torchvision has no dataset '{name}'", "--data",
                         did_you_mean(name, known) or "see torchvision.datasets")
    if not Path(root).is_dir():
        raise data_error(f"dataset root '{root}' does not exist", "--data",
                         f"put {name} under {root} (darkcfg never downloads)")

    def load(train: bool):
        attempts = ({"train": train}, {"split": "train" if train else "test"},
                    {"split": "train" if train else "val"})
        problem: Exception | None = None
        for kwargs in attempts:
            try:
                try:
                    return cls(root, download=False, **kwargs)
                except TypeError as exc:
                    if "download" not in str(exc):
                        raise
                    return cls(root, **kwargs)  # a dataset that never downloads
            except TypeError as exc:  # this dataset takes the other keyword
                problem = exc
            except (RuntimeError, OSError, ValueError) as exc:
                problem = exc
                if "split" not in str(exc):
                    break
        if train:
            raise data_error(f"cannot open torchvision {name} in '{root}': {problem}", "--data",
                             "check the root folder (darkcfg never downloads)")
        return None

    train, val = load(True), load(False)
    if len(train) == 0:
        raise data_error(f"torchvision {name} in '{root}' is empty", "--data")
    names = [str(c) for c in getattr(train, "classes", [])]
    return DataSplits(Converted(train, channels), Converted(val, channels) if val else None,
                      names, f"torchvision {name} ({root}): {len(train)} train / "
                      f"{len(val) if val else 0} val images")


def open_data(spec: str | None, task: Task, seed: int, classes: int | None = None) -> DataSplits:
    """The data for `task` from a --data argument (None = embedded, optionally with only
    `classes` of the network's classes)."""
    if classes is not None and spec is not None:
        raise data_error("--classes is for the embedded dataset", "--classes",
                         "the classes of --data come from the data")
    if spec is None:
        splits = embedded(task, seed, classes)
    elif spec == "digits":
        splits = digits_data(task, seed)
    elif spec.startswith("torchvision:"):
        splits = torchvision_data(spec, _channels(task))
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise data_error(f"'{spec}' does not exist", "--data",
                             "pass a folder, a .data file, a .csv file or torchvision:NAME:ROOT")
        if path.suffix == ".csv":
            if task.kind != "regress":
                raise data_error("CSV data is for regression networks ([connected] + [cost])",
                                 spec, "use an ImageFolder or a .data file for a classifier")
            return regression_csv(path, task)
        if path.is_dir():
            splits = image_folder(path, _channels(task), seed)
        elif path.suffix == ".data":
            splits = darknet_data(path, _channels(task))
        else:
            raise data_error(f"cannot tell what kind of data '{spec}' is", spec,
                             "pass a folder, a .data file, a .csv file or torchvision:NAME:ROOT")
    if task.kind != "classify":
        raise data_error(f"{splits.description.split(':')[0]} holds labelled images, but this "
                         "network regresses", spec or "--data", "pass --data X.csv")
    if len(splits.names) > task.outputs:
        raise data_error(f"the data has {len(splits.names)} classes but the network outputs "
                         f"{task.outputs}", spec or "--data",
                         f"set the last [connected]/[convolutional] to {len(splits.names)} "
                         "outputs")
    return splits


def digits_data(task: Task, seed: int) -> DataSplits:
    from .digits import DIGIT_NAMES, digits_arrays

    if task.inputs != (1, 8, 8):
        raise data_error(f"--data digits holds 8x8x1 images, but the network takes "
                         f"{'x'.join(map(str, task.inputs))}", "--data",
                         "set width=8 height=8 channels=1 in [net] (see cfg/digits.cfg)")
    x_train, y_train, x_val, y_val = digits_arrays(seed)
    return DataSplits(Tensors(x_train, y_train), Tensors(x_val, y_val), DIGIT_NAMES,
                      f"scikit-learn digits: {len(x_train)} train / {len(x_val)} val 8x8 "
                      "images (seeded 80/20 split)")


def _channels(task: Task) -> int:
    if len(task.inputs) != 3:
        raise data_error("image data needs a [net] with width, height and channels", "--data",
                         "set width/height/channels in [net], or use --data X.csv")
    return task.inputs[0]


# -- [net] augmentations --------------------------------------------------------------------------
class Augment:
    """[net]'s classifier augmentations through torchvision.transforms.v2 functionals, drawing
    from the global torch RNG (the caller seeds it per sample).

    train: random shorter-side resize in [min_crop, max_crop] (only when the cfg sets them) with
    aspect jitter, random crop to width x height, rotation by +-angle, horizontal flip, and
    Darknet's rand_scale() of saturation and exposure plus a +-hue shift.
    eval: shorter side to the net size, centre crop (Darknet's `classifier predict`).
    Random draws come from the numpy Generator passed in (seeded per sample by `Samples`)."""

    def __init__(self, cfg: NetConfig, train: bool):
        self.h, self.w = cfg.height, cfg.width
        self.train = train
        lo = cfg.min_crop
        hi = cfg.max_crop
        self.crop = (lo or min(self.h, self.w), hi or 2 * max(self.h, self.w)) \
            if (lo or hi) else None
        self.aspect, self.angle, self.flip = cfg.aspect, cfg.angle, cfg.flip
        self.saturation, self.exposure, self.hue = cfg.saturation, cfg.exposure, cfg.hue

    @property
    def random(self) -> bool:
        return self.train and bool(self.crop or self.aspect != 1 or self.angle or self.flip or
                                   self.saturation != 1 or self.exposure != 1 or self.hue)

    def __call__(self, img: torch.Tensor, rng: np.random.Generator | None = None
                 ) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if rng is None:
            rng = np.random.default_rng()

        h, w = img.shape[-2:]
        if self.train and (self.crop or self.aspect != 1):
            lo, hi = self.crop or (min(self.h, self.w), min(self.h, self.w))
            side = int(rng.integers(lo, max(hi, lo) + 1))
            ratio = _rand_scale(self.aspect, rng)
            short = min(h, w)
            nh, nw = max(round(h * side / short), 1), max(round(w * side / short * ratio), 1)
            img = F.resize(img, [nh, nw], antialias=True)
            top = int(rng.integers(0, max(nh - self.h, 0) + 1))
            left = int(rng.integers(0, max(nw - self.w, 0) + 1))
            img = F.crop(img, top, left, self.h, self.w)  # pads with 0 when smaller
        elif (h, w) != (self.h, self.w):
            scale = max(self.h / h, self.w / w)
            img = F.resize(img, [max(round(h * scale), self.h), max(round(w * scale), self.w)],
                           antialias=True)
            img = F.center_crop(img, [self.h, self.w])
        if not self.train:
            return img
        if self.angle:
            img = F.rotate(img, float(rng.uniform(-self.angle, self.angle)))
        if self.flip and rng.random() < 0.5:
            img = F.horizontal_flip(img)
        if img.shape[0] == 3:
            if self.saturation != 1:
                img = F.adjust_saturation(img, _rand_scale(self.saturation, rng))
            if self.hue:
                img = F.adjust_hue(img, float(rng.uniform(-self.hue, self.hue)))
        if self.exposure != 1:
            img = F.adjust_brightness(img, _rand_scale(self.exposure, rng))
        return img


def _rand_scale(s: float, rng: np.random.Generator) -> float:
    """Darknet's rand_scale: uniform in [1, s], inverted half of the time."""
    x = float(rng.uniform(1.0, max(s, 1 / s)))
    return x if rng.random() < 0.5 else 1 / x


class Samples(Dataset):
    """Indexed by (index, epoch) from ResumableSampler; `transform(x, rng)` draws from a generator
    seeded by (seed, epoch, index), so a sample never depends on worker or resume history."""

    def __init__(self, dataset: Dataset, transform: Callable | None, seed: int,
                 random: bool = False):
        self.dataset, self.transform, self.seed, self.random = dataset, transform, seed, random

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        x, y = self.dataset[index]
        if self.transform is None:
            return x, y
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, index]) \
            if self.random else None
        return self.transform(x, rng), y


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle, drop_last) that yields (index, epoch) and can start
    part-way through an epoch, so a resumed run sees exactly the remaining samples."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        return iter([(i, self.epoch) for i in indices[self.start:]])

    def __len__(self) -> int:
        return self.num_samples - self.start


class Repeated(Dataset):
    """A dataset repeated so that one global batch fits (tiny CSVs, toy folders)."""

    def __init__(self, dataset: Dataset, times: int):
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (index, epoch): each repeat draws its own augmentation
            copy, index = divmod(key[0], len(self.dataset))
            return self.dataset[(index, key[1] * self.times + copy)]
        return self.dataset[key % len(self.dataset)]


@dataclass
class Stream:
    """Endless per-process batches: iteration i covers samples [i*B, (i+1)*B) of the seeded
    epoch order (this rank's share), whatever iteration the run started at."""

    loader: torch.utils.data.DataLoader
    sampler: ResumableSampler
    batch: int  # per process

    @property
    def iterations_per_epoch(self) -> int:
        return self.sampler.num_samples // self.batch

    def epoch_of(self, iteration: int) -> float:
        return iteration / self.iterations_per_epoch

    def batches(self, start_iteration: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        per_epoch = self.iterations_per_epoch
        epoch, skip = divmod(start_iteration, per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            self.sampler.start = skip * self.batch
            yield from self.loader
            epoch, skip = epoch + 1, 0


def make_stream(dataset: Dataset, batch: int, world: int, rank: int, seed: int,
                device: torch.device, workers: int) -> Stream:
    if len(dataset) < batch * world:
        dataset = Repeated(dataset, -(-batch * world // len(dataset)))
    sampler = ResumableSampler(dataset, world, rank, seed)
    generator = torch.Generator().manual_seed(seed)  # keeps the global RNG out of the loader
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None, generator=generator)
    return Stream(loader, sampler, batch)


def default_workers(device: torch.device, world: int, busy: bool) -> int:
    """Loader processes. With an accelerator the CPU is free for decoding and augmenting: a few
    per process. On CPU the cores train; one helper process when samples cost real work
    (decoding files, random augmentations: single-threaded there, where small images are fast),
    none for plain in-memory samples."""
    if device.type == "cpu":
        return 1 if busy else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return max(1, min(8, cores // max(world, 1) - 1))


def eval_loader(dataset: Dataset, batch: int, device: torch.device, workers: int,
                world: int = 1, rank: int = 0) -> torch.utils.data.DataLoader:
    """Validation batches (this rank's share, in order)."""
    indices = list(range(rank, len(dataset), world))
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices),
                                       batch_size=batch, shuffle=False, num_workers=workers,
                                       pin_memory=device.type == "cuda")
