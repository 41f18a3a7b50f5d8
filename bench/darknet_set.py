"""Write the embedded detection set as a Darknet-format data set (to train real Darknet and
darkcfg on the very same files).

    python bench/darknet_set.py OUT [--size 160] [--classes 6] [--train 2000] [--valid 300]
                                    [--seed 0] [--png] [--cfg CFG ...]

OUT gets `images/{train,valid}/NNNNN.jpg` with a `.txt` label file beside each (`class x y w h`,
relative centre and size: where AlexeyAB's `replace_image_to_label` looks) and the same file
under `labels/{train,valid}/` (where pjreddie's looks: it replaces "images" with "labels", so
its Darknet, e.g. Debian's `darknet` package, trains on the set too), `train.txt` and
`valid.txt` (absolute paths, one a line), `obj.names`, `obj.data` (classes, train, valid, names,
backup=OUT/backup), and for each `--cfg` (default cfg/yolov3-tiny.cfg) a copy
`OUT/<name>-<classes>c.cfg` with `classes=` in every [yolo] and the `filters=` of the
[convolutional] before it (mask entries x (classes + 5)) set for the set's classes. The
defaults mirror the set of issue 22 (2000 train / 300 valid images, 160x160, 6 classes).
Images are JPEG quality 95 (`--png`: lossless).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_set(out: Path, size: int = 160, classes: int = 6, train: int = 2000,
              valid: int = 300, seed: int = 0, png: bool = False) -> Path:
    """Writes the set under `out`; returns the `.data` path."""
    from torchvision.io import encode_jpeg, encode_png

    from builders.atomic import atomic_write
    from darkcfg.data.detection.embedded import EmbeddedDetection

    out = Path(out).resolve()
    lists = {}
    for split, count, index in (("train", train, 0), ("valid", valid, 1)):
        source = EmbeddedDetection(count, classes, 3, size, size, seed, index)
        folder = out / "images" / split
        labels = out / "labels" / split
        for made in (folder, labels):
            made.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(count):
            image, boxes = source[i]
            path = folder / f"{i:05d}.{'png' if png else 'jpg'}"
            data = encode_png(image) if png else encode_jpeg(image, quality=95)
            # a fresh folder of many small files: plain writes (an fsync each costs minutes);
            # the lists and obj.data, written last and atomically, make the set usable
            path.write_bytes(bytes(data.numpy()))
            label = "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
                            for x, y, w, h, c in boxes)
            path.with_suffix(".txt").write_text(label)  # AlexeyAB's place
            (labels / f"{i:05d}.txt").write_text(label)  # pjreddie's: "images" -> "labels"
            paths.append(str(path))
        lists[split] = out / f"{split}.txt"
        atomic_write(lists[split], "\n".join(paths) + "\n")
        names = source.names
    atomic_write(out / "obj.names", "\n".join(names) + "\n")
    (out / "backup").mkdir(exist_ok=True)
    data_path = out / "obj.data"
    atomic_write(data_path, f"classes = {classes}\ntrain = {lists['train']}\n"
                      f"valid = {lists['valid']}\nnames = {out / 'obj.names'}\n"
                      f"backup = {out / 'backup'}\n")
    return data_path


def cfg_for_classes(cfg: Path, classes: int, out: Path) -> Path:
    """A copy of `cfg` whose [yolo] heads detect `classes` classes (text edit: the rest of the
    file, comments included, stays as it is)."""
    from builders.atomic import atomic_write

    lines = Path(cfg).read_text().splitlines()
    filters_line, section, head = None, "", []

    def finish_head():
        if head:
            mask = next((v for k, v in head if k == "mask"), None)
            num = next((v for k, v in head if k == "num"), "1")
            anchors = len(mask.split(",")) if mask else int(num)
            lines[filters_line] = f"filters={anchors * (classes + 5)}"

    for i, line in enumerate(list(lines)):
        text = line.split("#")[0].strip()
        if text.startswith("["):
            finish_head()
            section, head = text.strip("[]").lower(), []
            continue
        key, eq, value = (part.strip() for part in text.partition("="))
        if not eq:
            continue
        if section in ("convolutional", "conv") and key == "filters":
            filters_line = i
        elif section == "yolo":
            head.append((key, value))
            if key == "classes":
                lines[i] = f"classes={classes}"
    finish_head()
    path = Path(out) / f"{Path(cfg).stem}-{classes}c.cfg"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--valid", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", action="store_true")
    p.add_argument("--cfg", nargs="*", default=[str(ROOT / "cfg" / "yolov3-tiny.cfg")])
    args = p.parse_args(argv)
    path = write_set(Path(args.out), args.size, args.classes, args.train, args.valid,
                     args.seed, args.png)
    print(path)
    for cfg in args.cfg:
        print(cfg_for_classes(Path(cfg), args.classes, path.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
