"""`darkcfg data check`: a detection set checked without training.

Reads the set in any format (every label problem located, none fatal), opens every image,
and measures what the network will see: objects per class, box sizes at the network size
(Darknet resizes the image to width x height, so a box of relative size w, h is w*width by
h*height pixels), and how many boxes are smaller than one output cell (w and h both below a
detection head's stride: the head sees the object inside one cell or not at all).
It also says what training would warn about or reject: images without a label file (training's
warning; an error when no train image has one), more data classes than the network detects
(with --cfg, training's rule), and an annotated image size that is not the image's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cfgparse import Diagnostic
from cfgparse.errors import ERROR, WARNING, plot_text
from darkcfg.data.detection.formats import DetectionSet, open_set
from darkcfg.data.detection.formats.base import DeclaredSize
from darkcfg.data.detection.labels import SET_CODE, missing_labels

SIZE_EDGES = (0, 8, 16, 32, 64, 128, 256, float("inf"))  # box size bins, pixels at net size


@dataclass
class CheckReport:
    data: DetectionSet
    net_size: tuple[int, int]  # (width, height) the boxes are measured at
    strides: tuple[int, ...]  # the detection heads' strides (cell sizes in pixels)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    images_read: int = 0
    size_from: str = ""  # where net_size and strides come from
    findings: list[Diagnostic] = field(default_factory=list)  # the check's own (label files)

    @property
    def problems(self) -> list[Diagnostic]:
        return self.data.problems + self.findings

    def unreadable_errors(self) -> list[Diagnostic]:
        """An E901 naming each image that does not read (training refuses or skips it)."""
        return [Diagnostic("E901", f"cannot read image '{image}': {why}", image,
                           hint="remove it from the set or convert it to JPEG/PNG")
                for image, why in self.unreadable]

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.problems if d.severity == ERROR]

    @property
    def ok(self) -> bool:
        """No error (warnings, such as W903 edge boxes, train as Darknet does) and every image
        readable."""
        return not self.errors and not self.unreadable

    def splits(self):
        yield "train", self.data.train
        if self.data.valid is not None:
            yield "valid", self.data.valid

    def class_counts(self, split) -> np.ndarray:
        boxes = [b for b in split.boxes if len(b)]
        classes = np.concatenate([b[:, 4] for b in boxes]).astype(int) if boxes else \
            np.zeros(0, int)
        return np.bincount(classes, minlength=self.data.classes)

    def pixel_sizes(self, split) -> np.ndarray:
        """(n, 2) box width, height in pixels at the network size."""
        boxes = [b for b in split.boxes if len(b)]
        if not boxes:
            return np.zeros((0, 2))
        wh = np.concatenate(boxes)[:, 2:4].astype(np.float64)
        return wh * np.asarray(self.net_size, np.float64)

    def table(self) -> str:
        d = self.data
        w, h = self.net_size
        lines = [f"data: {d.describe()}",
                 f"labels: {len(self.errors)} error(s), "
                 f"{len(self.problems) - len(self.errors)} warning(s)",
                 f"images: {self.images_read} read, {len(self.unreadable)} unreadable"]
        names = [n for n, _ in self.splits()]
        counts = {n: self.class_counts(s) for n, s in self.splits()}
        width = max(12, *(len(n) for n in d.names)) + 6
        lines += ["", f"{'class':<{width}}" + "".join(f"{n:>8}" for n in names)]
        for k, name in enumerate(d.names):
            lines.append(f"{f'{k} {name}':<{width}}" + "".join(f"{counts[n][k]:>8}"
                                                             for n in names))
        lines.append(f"{'total':<{width}}" + "".join(f"{counts[n].sum():>8}" for n in names))
        sizes = {n: np.sqrt(self.pixel_sizes(s).prod(1)) for n, s in self.splits()}
        lines += ["", f"{f'box size at {w}x{h}':<{width}}" + "".join(f"{n:>8}" for n in names)
                  + f"   (sqrt(w*h) in pixels; {self.size_from})"]
        for lo, hi in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:], strict=True):
            label = f"{lo:g}-{hi:g} px" if hi != float("inf") else f">= {lo:g} px"
            lines.append(f"{label:<{width}}" + "".join(
                f"{int(((sizes[n] >= lo) & (sizes[n] < hi)).sum()):>8}" for n in names))
        lines += ["", f"boxes smaller than one output cell at {w}x{h} (width and height both "
                  "below the stride):"]
        for stride in self.strides:
            parts = []
            for n, s in self.splits():
                px = self.pixel_sizes(s)
                small = int(((px[:, 0] < stride) & (px[:, 1] < stride)).sum())
                parts.append(f"{n} {small} of {len(px)} ({100 * small / max(len(px), 1):.1f}%)")
            lines.append(f"  stride {stride:>2} ({w // stride}x{h // stride} cells): "
                         + ", ".join(parts))
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """The class and box-size histograms and a w-h scatter with the strides, as a PNG."""
        from darkcfg.data.base import pyplot, write_figure

        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        d = self.data
        x = np.arange(d.classes)
        splits = list(self.splits())
        bar = 0.8 / len(splits)
        for i, (name, s) in enumerate(splits):
            axes[0].bar(x + i * bar, self.class_counts(s), bar, label=name)
        axes[0].set_xticks(x + bar * (len(splits) - 1) / 2,
                           [plot_text(n if len(n) <= 12 else n[:11] + "…") for n in d.names],
                           rotation=45 if d.classes > 6 else 0, ha="right" if d.classes > 6
                           else "center", fontsize=8 if d.classes > 20 else 10)
        axes[0].set_title("objects per class")
        axes[0].legend()
        w, h = self.net_size
        bins = list(zip(SIZE_EDGES[:-1], SIZE_EDGES[1:], strict=True))
        labels = [f"{lo:g}-{hi:g}" if hi != float("inf") else f">={lo:g}" for lo, hi in bins]
        for i, (name, s) in enumerate(splits):
            size = np.sqrt(self.pixel_sizes(s).prod(1))
            counts = [int(((size >= lo) & (size < hi)).sum()) for lo, hi in bins]
            axes[1].bar(np.arange(len(bins)) + i * bar, counts, bar, label=name)
        axes[1].set_xticks(np.arange(len(bins)) + bar * (len(splits) - 1) / 2, labels)
        axes[1].set_title(f"box size sqrt(w*h), pixels at {w}x{h}")
        axes[1].legend()
        for name, s in splits:
            px = self.pixel_sizes(s)
            axes[2].scatter(px[:, 0], px[:, 1], s=4, alpha=0.5, label=name)
        for stride in self.strides:
            axes[2].axvline(stride, color="grey", lw=0.8, ls="--")
            axes[2].axhline(stride, color="grey", lw=0.8, ls="--")
        axes[2].set_xlabel("width (px)")
        axes[2].set_ylabel("height (px)")
        axes[2].set_title(f"box width x height at {w}x{h}; dashed: strides "
                          f"{', '.join(map(str, self.strides))}")
        fig.suptitle(plot_text(f"darkcfg data check {d.path}"))
        fig.tight_layout()
        write_figure(fig, path, dpi=90)


def check_set(source: str | Path, net_size: tuple[int, int] = (416, 416),
              strides: tuple[int, ...] = (8, 16, 32), size_from: str = "",
              classes: int | None = None) -> CheckReport:
    """Read `source` keeping every problem, open every image; the report. classes: the
    network's (--cfg), checked as training checks it."""
    from darkcfg.data.base import open_image

    data = open_set(source, strict=False)
    report = CheckReport(data, net_size, tuple(sorted(set(strides))),
                         size_from=size_from or "strides " + ", ".join(map(str, strides)))
    mismatch = data.class_mismatch(classes) if classes is not None else None
    report.findings += [mismatch] if mismatch else []
    report.findings += missing_label_files(data)
    declared = {image: size for _, split in report.splits()
                for image, size in split.declared.items()}
    seen = set()
    for _, split in report.splits():
        for image in split.images:
            if image in seen:
                continue
            seen.add(image)
            try:
                with open_image(image) as im:
                    im.load()
                    stated = declared.get(image)
                    if stated is not None:
                        report.findings += size_disagreement(image, stated, im)
                report.images_read += 1
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
                report.unreadable.append((image, f"{type(exc).__name__}: {exc}"))
    return report


def size_disagreement(image: str, stated: DeclaredSize, im) -> list[Diagnostic]:
    """A warning at an annotation whose stated image size is not the image's (as darkcfg reads
    it, turned by its EXIF orientation). A warning, not an error: the boxes are taken relative to
    the stated size (as ultralytics' convert_coco and Darknet's voc_label.py do), which is right
    when the pictures were resized after labelling and wrong when the boxes are in the
    picture's own pixels; only the user knows which."""
    from darkcfg.data.base import upright_size

    width, height = upright_size(im)
    if (stated.width, stated.height) == (width, height):
        return []
    turned = " (turned by its EXIF orientation)" if (width, height) != im.size else ""
    scale = (f"boxes in the image's pixels come out at {width / stated.width:g}x their size; "
             if width * stated.height == height * stated.width else "")
    d = stated.where(f"the annotation says the image is {stated.width:g}x{stated.height:g} but "
                     f"'{image}' is {width}x{height}{turned}",
                     f"boxes are taken relative to the stated size: {scale}state the image's "
                     "size, unless the pictures were resized after labelling")
    return [replace(d, code=SET_CODE, severity=WARNING)]


# where each format looks for an image's label file, for the hint of a missing one
_LABEL_RULE = {
    "yolo": "ultralytics' rule: the last /images/ of the image path becomes /labels/ and the "
            "extension .txt",
    "darknet": "Darknet's replace_image_to_label: /JPEGImages/ becomes /labels/ (and "
               "/images/train2017/ /labels/train2017/ ...), the extension .txt; a plain "
               "/images/ folder keeps the label beside the image",
}


def missing_label_files(data: DetectionSet) -> list[Diagnostic]:
    """Images without a label file, said as training says it (a warning with an example); an
    error when no train image has one: the set has nothing to learn, a misnamed labels folder
    more likely than a set of empty pictures."""
    found = []
    for name, split in (("train", data.train), ("valid", data.valid)):
        if split is None or not split.missing:
            continue
        image, label = split.missing_example
        hint = split.label_beside() or \
            (f"e.g. '{image}' has no '{label}' ({_LABEL_RULE.get(data.format, '')})")
        if name == "train" and split.missing == len(split):
            found.append(Diagnostic(
                "E901", f"none of the {len(split)} train images has a label file: nothing to "
                "learn", str(data.path), hint=hint))
        else:
            found.append(Diagnostic(
                SET_CODE, missing_labels(split.missing, len(split), f"{name} images"),
                str(data.path), severity=WARNING, hint=hint))
    return found
