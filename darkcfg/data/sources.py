"""Labelled data from disk: ImageFolders, Darknet classifier .data files, regression CSV files and
torchvision datasets already on disk (never downloaded). Every problem found here is a located
E901 error, before training starts."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from builders.atomic import files_under, hidden
from cfgparse import CfgError, Diagnostic
from cfgparse.schema import ValueProblem, read_number
from darkcfg.bundled import resolve_cfg
from darkcfg.console import warn
from darkcfg.data.base import (
    DataError,
    DataSplits,
    blank_image,
    check_image_headers,
    data_error,
    image_tensor,
    read_image,
    undecodable_warning,
)
from darkcfg.data.datafile import (
    check_need,
    data_diagnostic,
    data_folders,
    data_int,
    is_image,
    missing_path_hint,
    numbered_list,
    read_data_file,
    read_list,
    resolve,
    split_lines,
    tried_folders_hint,
)

KINDS_HINT = "pass a folder, a .data file, a .csv file, digits or torchvision:NAME:ROOT"


def data_path(spec: str) -> Path:
    """--data SPEC as an existing path (cfg/linear_regression.csv: the shipped one if missing)."""
    path = Path(resolve_cfg(spec)).expanduser()
    if not path.exists():
        raise data_error(f"'{spec}' does not exist", "--data", KINDS_HINT)
    return path


def open_images(spec: str, inputs: tuple[int, ...], seed: int, need: str = "all") -> DataSplits:
    """Labelled images from a --data argument: torchvision:NAME:ROOT, an ImageFolder or a
    Darknet classifier .data file, decoded with the network's channels. `need`: "all"
    (training), "valid" (the validation list and the names, as Darknet's validate_classifier)
    or "names" (the names and top=, as its predict_classifier): the lists a command does not
    use are not read, nor their images' headers checked (an ImageFolder is still walked whole,
    its names being its folders, but checks only the headers used)."""
    check_need(need)
    if len(inputs) != 3:
        raise data_error("image data needs a [net] with width, height and channels", "--data",
                         "set width/height/channels in [net], or give this network of flat "
                         "inputs a .csv file")
    channels = inputs[0]
    if spec == "digits":
        return digits_data(inputs, seed)
    if spec.startswith("torchvision:"):
        return torchvision_data(spec, channels)
    path = data_path(spec)
    if path.suffix == ".csv":
        raise data_error("CSV data is for networks of flat inputs ([net] inputs=N): "
                         "regressors and classifiers of numbers", spec,
                         "use an ImageFolder or a .data file for an image classifier")
    if path.is_dir():
        return image_folder(path, channels, seed, need)
    if path.suffix == ".data":
        return darknet_data(path, channels, need)
    raise data_error(f"cannot tell what kind of data '{spec}' is", spec, KINDS_HINT)


# -- image files ----------------------------------------------------------------------------------
class ImageFiles(Dataset):
    """(path, label) pairs decoded with PIL into uint8 CHW tensors with the net's channels.

    Headers are checked at start (`check_image_headers`); an image whose pixels still do not
    decode (a JPEG cut short after its header) is what `undecodable` says, with a W901 said once
    per loader process, as detection's `LabelledImages` does and Darknet's load_image goes on:
    "skip" (a training split): the next readable image of the list takes its place, with its
    label; "blank" (a validation split): it keeps its place as a blank 10x10 image of its own
    label, which Darknet's validate_classifier scores (load_image_cv gives make_image(10, 10,
    c)); "raise": a DataError naming it (the caller replaces it, e.g. INT8's calibration)."""

    def __init__(self, items: Sequence[tuple[str, int]], channels: int,
                 undecodable: str = "raise"):
        if undecodable not in ("skip", "blank", "raise"):
            raise ValueError(f"undecodable={undecodable!r}: 'skip', 'blank' or 'raise'")
        self.items, self.channels, self.undecodable = list(items), channels, undecodable
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.undecodable == "raise":
            path, label = self.items[index]
            return read_image(path, self.channels), label
        if self.undecodable == "blank":
            image = self._read(index)
            return (blank_image(self.channels) if image is None else image), \
                self.items[index][1]
        for step in range(len(self.items)):
            at = (index + step) % len(self.items)
            image = self._read(at)
            if image is not None:
                return image, self.items[at][1]
        raise DataError(f"none of the {len(self.items)} images can be read")

    def raising(self) -> ImageFiles:
        """The same images, each undecodable one a DataError."""
        return ImageFiles(self.items, self.channels)

    def _read(self, at: int) -> torch.Tensor | None:
        """Image `at`, or None when it does not decode (said once per loader process)."""
        if at in self.bad:
            return None
        path = self.items[at][0]
        try:
            return read_image(path, self.channels)
        except DataError as exc:
            self.bad.add(at)
            # (a rank reads its own share: only it can say so)
            warn(undecodable_warning(exc, path, "scored as a blank image of its class"
                                     if self.undecodable == "blank" else
                                     "skipped; the next image of the list takes its place"),
                 every_rank=True)
            return None


def image_splits(train: list[tuple[str, int]], val: list[tuple[str, int]], channels: int
                 ) -> tuple[ImageFiles, ImageFiles | None]:
    """A classifier's (train, validation) image splits: an image that does not decode is
    skipped in training and scored as a blank image in validation (W901, `ImageFiles`)."""
    return ImageFiles(train, channels, "skip"), \
        ImageFiles(val, channels, "blank") if val else None


def image_folder(root: Path, channels: int, seed: int, need: str = "all") -> DataSplits:
    def scan(folder: Path, classes: list[str] | None = None):
        found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not hidden(d.name)) \
            if classes is None else classes
        items = []
        for label, name in enumerate(found):
            sub = folder / name
            if not sub.is_dir():
                continue
            items += [(str(p), label) for p in sorted(files_under(sub))  # links followed
                      if is_image(p) and p.is_file()]
        return found, items

    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir():
        names, train = scan(train_dir)
        val = scan(val_dir, names)[1] if val_dir.is_dir() else []
        unknown = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and d.name not in
                         names and not hidden(d.name)) if val_dir.is_dir() else []
        if unknown:  # a class train/ lacks (a typo, a case): its images would be dropped unseen
            warn(f"{val_dir} has {len(unknown)} class folder(s) that {train_dir} "
                 f"lacks ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}): "
                 "their images are not validated (a class is a folder of train/)")
        where = f"{train_dir} (+ {val_dir.name}/)" if val else str(train_dir)
    else:
        names, items = scan(root)
        order = np.random.default_rng(seed).permutation(len(items))
        nval = len(items) // 10
        val = [items[i] for i in sorted(order[:nval])]
        train = [items[i] for i in sorted(order[nval:])]
        where = f"{root} (split 90/10 by seed {seed})"
    trained = {y for _, y in train}
    empty = [name for k, name in enumerate(names) if k not in trained]
    if empty and train:  # torchvision's ImageFolder refuses it; a class kept in its place
        warn(f"{len(empty)} class(es) of {where} have no training image "
             f"({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}): the network "
             "never learns them (a class is a folder of images)")
    holder = train_dir if train_dir.is_dir() else root
    loose = sorted(p.name for p in holder.iterdir() if p.is_file() and is_image(p)
                   and not hidden(p.name))
    if loose and train:  # an image beside the class folders has no class
        warn(f"{len(loose)} image(s) lie in {holder} itself, in no class folder "
             f"({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}): they are left "
             "out (a class is a folder of images)")
    if loose and not train:
        raise data_error(f"'{holder}' holds {len(loose)} image(s) but no class folder of them",
                         str(root), "an ImageFolder holds one sub-folder of images per class "
                         f"(e.g. {holder / '<class>' / loose[0]})")
    if not names or not train:
        raise data_error(f"no images in '{root}'", str(root),
                         "an ImageFolder holds one sub-folder of images per class, "
                         "optionally under train/ and val/")
    # every header used now: a corrupt file is an error before the first iteration, not hours in
    checked = {"all": train + val, "valid": val, "names": []}[need]
    check_image_headers(dict.fromkeys(p for p, _ in checked), str(root))
    return DataSplits(*image_splits(train, val, channels),
                      names, f"ImageFolder {where}: {len(names)} classes, {len(train)} train / "
                      f"{len(val)} val images")


def darknet_data(path: Path, channels: int, need: str = "all") -> DataSplits:
    opts = read_data_file(path)
    where = str(path)
    folders = data_folders(path)
    if "train" not in opts and need == "all":
        raise data_error(f"'{path}' has no 'train' list", where,
                         "add train=path/to/train.list (one image path per line)")
    labels_path = resolve(opts.get("labels", "data/labels.list"), *folders)
    if "labels" not in opts and not labels_path.exists():
        detection = "names" in opts or "backup" in opts  # what a detector's .data has
        raise data_error(
            f"'{path}' has no labels= line, and Darknet's default {labels_path} does not "
            "exist: a classifier's .data names its classes with labels=FILE", where,
            "this cfg has no detection head, so it trains as a classifier: use a cfg with "
            "[yolo]/[region] heads for this detection .data" if detection else
            "add labels=path/to/labels.list (one class name per line)")
    labels = _read_list(labels_path, where, "labels")
    _check_labels(labels_path, where)
    names_path = resolve(opts["names"], *folders) if "names" in opts else labels_path
    names = labels
    if names_path != labels_path:  # a blank line keeps its class's place (Darknet's get_labels)
        names = [name or str(i) for i, name in
                 enumerate(read_list(names_path, where, "names", keep_blank=True))]
        if not names:
            raise _empty_list(names_path, where, "names")
    # src/classifier.c: option_find_int(.., "classes", 2)
    classes = data_int(opts, "classes", where) \
        if "classes" in opts else 2
    top = None
    if "top" in opts:  # src/classifier.c predict_classifier: option_find_int(.., "top", 1)
        top = data_int(opts, "top", where)
        if top < 1:
            raise CfgError(data_diagnostic(
                "E901", f"top={opts['top']} is not a whole number of classes of at least 1",
                where, "top", "write top=N (the classes predict shows; valid's top-N)"))
    if classes != len(labels):  # (at the classes= line when there is one)
        said = f"says classes={classes}" if "classes" in opts else \
            f"has no classes= line (Darknet's default: {classes})"
        raise CfgError(data_diagnostic(
            "E901", f"'{path}' {said} but {labels_path} lists {len(labels)} labels", where,
            "classes" if "classes" in opts else None,
            f"add classes={len(labels)} to '{path}'" if "classes" not in opts
            else "make classes= match the labels file"))

    def items(key: str) -> list[tuple[str, int]]:
        list_path = resolve(opts[key], *folders)
        out = []
        lines = numbered_list(list_path, where, key)
        if not lines:
            raise _empty_list(list_path, where, key)
        for n, line in lines:
            raw = line.strip()
            # Darknet's fill_truth: the label whose text occurs in the path as written
            hits = [i for i, label in enumerate(labels) if label in raw]
            if len(hits) != 1:
                raise _label_match_error(list_path, n, line, [labels[i] for i in hits],
                                         labels_path)
            image = resolve(raw, list_path.parent, *folders)
            if not image.is_file():
                start = len(line) - len(line.lstrip())
                raise CfgError(Diagnostic(
                    "E901", f"image '{raw}' does not exist", str(list_path), n, start + 1,
                    hint=missing_path_hint(raw, tried_folders_hint(
                        list_path.parent, path.parent, folders[1])), source=line, span=len(raw)))
            out.append((str(image), hits[0]))
        return out

    # only the lists the command uses: an ImageNet train list's headers cost minutes
    train = items("train") if need == "all" else []
    val = items("valid") if "valid" in opts and need != "names" else []
    if not train and need == "all":
        raise data_error(f"the train list of '{path}' is empty", where, "list image paths")
    check_image_headers(dict.fromkeys(p for p, _ in train + val), where)
    backup = str(resolve(opts["backup"], path.parent)) if "backup" in opts else None
    counts = {"all": f"{len(train)} train / {len(val)} valid images",
              "valid": f"{len(val)} valid images", "names": "lists not read"}[need]
    return DataSplits(*image_splits(train, val, channels),
                      names[: len(labels)], f"Darknet data {path}: {classes} classes, {counts}",
                      backup=backup, top=top)


def _check_labels(labels_path: Path, where: str) -> None:
    """A label listed twice matches every path of its class twice: E901 at the repeat."""
    seen: dict[str, int] = {}
    for n, line in numbered_list(labels_path, where, "labels"):
        label = line.strip()
        if label in seen:
            raise CfgError(Diagnostic(
                "E901", f"the label '{label}' is listed twice (lines {seen[label]} and {n}): "
                "every path of its class would match two labels", str(labels_path), n,
                line.index(label) + 1, hint="remove the repeated line", source=line,
                span=len(label)))
        seen[label] = n


def _label_match_error(list_path: Path, n: int, line: str, hits: list[str],
                       labels_path: Path) -> CfgError:
    """E901 at a list line whose path holds no label's text, or more than one (Darknet's
    fill_truth prints 'Too many or too few labels' and trains on a wrong truth)."""
    raw = line.strip()
    start = len(line) - len(line.lstrip())
    if not hits:
        return CfgError(Diagnostic(
            "E901", f"'{raw}' holds the text of no label of {labels_path}", str(list_path),
            n, start + 1, hint="Darknet finds an image's class by its label's text in the "
            "path: name the file or its folder with its label, or add the label",
            source=line, span=len(raw) or 1))
    inner = [(a, b) for a in hits for b in hits if a != b and a in b]
    folder = [h for h in hits if h in os.path.dirname(raw)]
    if inner:
        hint = (f"'{inner[0][0]}' is part of the label '{inner[0][1]}', so every "
                f"'{inner[0][1]}' path matches both: rename labels so that none holds another")
    elif folder and len(folder) < len(hits):
        hint = (f"'{folder[0]}' occurs in the folders of the path, not only in the file "
                "name: rename that folder or the label")
    else:
        hint = "each image path must hold exactly one label's text"
    at, first = min((raw.index(h), h) for h in hits)
    quoted = ", ".join(f"'{h}'" for h in hits)
    return CfgError(Diagnostic(
        "E901", f"'{raw}' matches {len(hits)} labels ({quoted}): Darknet finds a label's "
        "text anywhere in the path (fill_truth: 'Too many or too few labels')", str(list_path),
        n, start + at + 1, hint=hint, source=line, span=len(first)))


def _read_list(path: Path, where: str, key: str) -> list[str]:
    out = read_list(path, where, key)
    if not out:
        raise _empty_list(path, where, key)
    return out


def _empty_list(path: Path, where: str, key: str) -> CfgError:
    """E901 at the .data line naming an empty list."""
    return CfgError(data_diagnostic("E901", f"the {key} file '{path}' is empty", where, key,
                                    "add one entry per line"))


# -- regression CSV -------------------------------------------------------------------------------
def regression_csv(path: str | Path, inputs: tuple[int, ...], outputs: int) -> DataSplits:
    """Regression rows: the network's `inputs` numbers, then its `outputs` targets per line (an
    optional header line)."""
    path = Path(path)
    n_in = math.prod(inputs)
    table, _ = _csv_table(path, n_in, outputs, f"{outputs} target numbers",
                          "columns: the inputs first, then the targets")
    x, y = table[:, :n_in].reshape(-1, *inputs), table[:, n_in:]
    return DataSplits(Tensors(x, y), None, [], f"CSV {path}: {len(table)} rows, "
                      f"{n_in} inputs -> {outputs} targets", augment=False,
                      in_memory=True)


def class_csv(path: str | Path, inputs: tuple[int, ...], classes: int) -> DataSplits:
    """Classification rows: the network's `inputs` numbers, then a class index 0..classes-1 per
    line (an optional header line)."""
    path = Path(path)
    n_in = math.prod(inputs)
    table, lines = _csv_table(path, n_in, 1, "a class index",
                              "columns: the inputs first, then the class (0, 1, ...)")
    labels = table[:, n_in]
    bad = ((labels != labels.round()) | (labels < 0) | (labels >= classes)).nonzero()
    if len(bad):
        n, raw = lines[int(bad[0, 0])]
        raise _csv_error(path, n, raw, f"class {labels[int(bad[0, 0])].item():g}: "
                         f"this network has {classes} classes (0..{classes - 1})",
                         "the last column is a class index, a whole number from 0")
    x, y = table[:, :n_in].reshape(-1, *inputs), labels.long()
    return DataSplits(Tensors(x, y), None, [str(k) for k in range(classes)],
                      f"CSV {path}: {len(table)} rows, {n_in} inputs -> {classes} classes",
                      augment=False, in_memory=True)


def _csv_table(path: Path, n_in: int, outputs: int, targets: str, hint: str
               ) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """The number rows of a CSV file (after an optional header), each `n_in + outputs` finite
    numbers, and each row's (line number, text) for diagnostics."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise data_error(f"cannot read '{path}': {exc}", str(path)) from None
    rows = []
    for n, raw in enumerate(split_lines(text), 1):  # (a U+2028 in a cell breaks no row)
        raw = raw.removesuffix("\r")
        cells = next(csv.reader([raw]), [])
        if any(c.strip() for c in cells):  # blank lines and ",," are no rows
            rows.append((n, raw, cells))
    if rows and not _numeric(rows[0][2]):
        rows = rows[1:]  # a header line
    if not rows:
        raise data_error(f"'{path}' has no data rows", str(path), "one sample per line")
    want = n_in + outputs
    values = []
    for n, raw, row in rows:
        if len(row) != want:
            raise _csv_error(path, n, raw, f"{len(row)} columns: this network "
                             f"needs {n_in} input numbers and {targets}", hint)
        for cell in row:
            word = cell.strip(" \t")
            try:  # Python reads '1_000' as 1000 and '١' as 1, C's atof 1 and 0; NaN trained
                read_number(word)  # into a NaN loss
            except ValueProblem as exc:
                raise _csv_error(path, n, raw, f"'{word}' is not a finite number",
                                 f"every column holds a number ({exc}; {exc.hint})") from None
        values.append([float(c) for c in row])
    return torch.tensor(values, dtype=torch.float32), [(n, raw) for n, raw, _ in rows]


def _csv_error(path: Path, line: int, raw: str, message: str, hint: str) -> CfgError:
    """E901 located at a CSV line, shown under it."""
    return CfgError(Diagnostic("E901", message, str(path), line, 1, hint=hint, source=raw,
                               span=len(raw) or 1))


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
        return image_tensor(image, self.channels), int(label)


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
            # torchvision's advice (download=True) is no option of darkcfg's
            reason = str(problem).split(". You can use download=True")[0].rstrip(". ")
            raise data_error(f"cannot open torchvision {name} in '{root}': {reason}", "--data",
                             f"put {name} under {root} as torchvision lays it out (darkcfg "
                             "never downloads)")
        return None

    train, val = load(True), load(False)
    if len(train) == 0:
        raise data_error(f"torchvision {name} in '{root}' is empty", "--data")
    names = [str(c) for c in getattr(train, "classes", [])]
    return DataSplits(Converted(train, channels), Converted(val, channels) if val else None,
                      names, f"torchvision {name} ({root}): {len(train)} train / "
                      f"{len(val) if val else 0} val images")


def digits_data(inputs: tuple[int, ...], seed: int) -> DataSplits:
    """`--data digits` (darkcfg/data/digits.py) for a network taking 8x8x1 images."""
    from darkcfg.data.digits import DIGIT_NAMES, digits_arrays

    if tuple(inputs) != (1, 8, 8):
        raise data_error(f"--data digits holds 8x8x1 images, but the network takes "
                         f"{'x'.join(map(str, inputs))}", "--data",
                         "set width=8 height=8 channels=1 in [net] (see cfg/digits.cfg)")
    x_train, y_train, x_val, y_val = digits_arrays(seed)
    return DataSplits(Tensors(x_train, y_train), Tensors(x_val, y_val), DIGIT_NAMES,
                      f"scikit-learn digits: {len(x_train)} train / {len(x_val)} val 8x8 "
                      "images (seeded 80/20 split)", in_memory=True)
