"""`darkcfg data convert`: write a read DetectionSet as a Darknet, YOLO (ultralytics) or COCO set.

The output folder is new (or empty), so nothing of the input can be overwritten; every file is
written atomically (builders.atomic). Images are copied (hard-linked with link=True), renamed
only when two would share a file or label name, a name holds a line break, or (for Darknet) the
extension is one Darknet's label rule misses (`_Writer.image`). Label values are written as the
shortest decimal that reads back to the same float32 (COCO bboxes: the fewest decimals that read
back as the same float32 label), so a round trip gives the same samples bit for bit.

Layouts:
  darknet  OUT/obj.data (classes, train, valid, difficult, names, backup), OUT/obj.names,
           OUT/train.txt, OUT/valid.txt, OUT/images/<name>.jpg with OUT/images/<name>.txt beside
           it (a plain images/ folder keeps Darknet's labels next to the image); objects not to
           score in OUT/difficult/ (Darknet's `difficult=` list, parallel to valid)
  yolo     OUT/data.yaml (train, val, names), OUT/images/{train,val}/, OUT/labels/{train,val}/
           (objects not to score are dropped: ultralytics has no such list)
  coco     OUT/instances_train.json, OUT/instances_val.json, OUT/images/ (objects not to score
           are `iscrowd: 1`; a COCO source's category ids are kept, else 1..n)
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from builders.atomic import (
    atomic_open,
    atomic_write,
    check_folder,
    hold,
    remove_abandoned,
    sync_folder,
    synced_together,
    temp_prefix,
)
from cfgparse import CfgError, Diagnostic
from darkcfg.data.detection.formats.base import DetectionSet, Split
from darkcfg.data.detection.formats.yolo import ULTRALYTICS_IMG_FORMATS
from darkcfg.data.detection.labels import darknet_label_path, label_path

TARGETS = ("darknet", "yolo", "coco")


def convert(data: DetectionSet, to: str, out: Path, link: bool = False) -> list[Path]:
    """Write `data` as a `to` set in the new folder `out`; the files written (main first).
    The set is written into a hidden sibling folder and renamed to `out` once complete, so an
    interrupted or failed convert (Ctrl-C, a full disk) leaves no half-written set in the way of
    the next try."""
    if to not in TARGETS:
        raise CfgError(Diagnostic("E100", f"--to {to}: use one of {', '.join(TARGETS)}",
                                  "<command line>"))
    out = check_new_folder(out)
    from darkcfg.data.base import check_image_headers

    # the images training would refuse, refused before anything is written (as training does)
    check_image_headers(dict.fromkeys(image for split in (data.train, data.valid) if split
                                      for image in split.images), str(data.path))
    out.parent.mkdir(parents=True, exist_ok=True)
    # the hidden folders of converts to `out` that were killed outright
    prefix = temp_prefix(out.name, ".partial")
    remove_abandoned(out.parent, f"{glob.escape(prefix)}*.partial")
    partial = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=out.parent))
    # held until the rename: a later convert sees the folder is not abandoned
    held = hold(os.open(partial, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)))
    try:
        writer = _Writer(partial, link)
        # each file synced once; its folder once at the end, before the set gets its name
        with synced_together():
            written = {"darknet": writer.darknet, "yolo": writer.yolo,
                       "coco": writer.coco}[to](data)
        os.chmod(partial, 0o777 & ~_umask())  # mkdtemp's 0700 -> what mkdir would have made
        try:
            os.replace(partial, out)  # an empty `out` folder is replaced too
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            # another convert to `out` finished first: its set stays, this one goes
            raise taken(out, " (another convert wrote it while this one ran)") from None
        sync_folder(out.parent)  # the set's own rename
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        os.close(held)
    return [out / path.relative_to(partial) for path in written]


def check_new_folder(out: Path | str) -> Path:
    """`out` as a Path, or E901 when it is a file or a folder that is not empty, or cannot be
    made: a command checks it before it reads the source set (a COCO file of 100k images)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise taken(out)
    check_folder(out, "OUT")
    return out


def taken(out: Path, why: str = "") -> CfgError:
    return CfgError(Diagnostic("E901", f"'{out}' exists and is not an empty folder{why}",
                               str(out),
                               hint="convert writes a new set: name a new (or empty) folder"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def label_text(boxes: np.ndarray) -> str:
    """Darknet label lines `class x y w h`, each value the shortest decimal of its float32."""
    return "".join(f"{int(c)} {_short(x)} {_short(y)} {_short(w)} {_short(h)}\n"
                   for x, y, w, h, c in np.asarray(boxes, np.float32))


def _short(v) -> str:
    return np.format_float_positional(np.float32(v), unique=True, trim="-")


class _Writer:
    def __init__(self, out: Path, link: bool):
        self.out, self.link = out, link
        self.placed: dict[tuple[str, str], str] = {}  # (folder, source) -> name written
        self.taken: set[tuple[str, str]] = set()  # (folder, stem casefolded): one label file each
        self.suffixes: dict[tuple[str, str], int] = {}  # (folder, stem casefolded): next k
        self.target = ""  # darknet, yolo: extensions that format reads (set by its writer)

    def image(self, source: str, folder: str) -> str:
        """Copy (or link) `source` into OUT/folder once; its path relative to OUT. Renamed
        when its label file would be another image's (`a.jpg` and `a.png` share `a.txt`; in
        any case, for case-blind file systems) and when its name holds a line break or another
        character a list line cannot hold; an extension the target does not read (Darknet's
        label rule misses `.Jpg`, `.tif`, `.webp`; ultralytics lists no `.gif`, `.pgm`) is
        renamed or the image re-encoded as PNG."""
        key = (folder, os.path.abspath(source))
        if key in self.placed:
            return self.placed[key]
        name = "".join(c if c.isprintable() else "_" for c in os.path.basename(source))
        stem, ext = os.path.splitext(name.strip() or "image")
        reencode = False
        if self.target == "darknet":
            ext, reencode = _darknet_extension(ext)
        elif self.target == "yolo" and ext.lower().lstrip(".") not in ULTRALYTICS_IMG_FORMATS:
            ext, reencode = f"{ext}.png", True  # ultralytics takes only its IMG_FORMATS
        base = stem
        # the first free `base_k`, from where the last image of this name stopped (k from 1
        # on each time was quadratic in the images of one name: frame_0001.jpg of 1000 clips)
        k = self.suffixes.get((folder, base.casefold()), 1)
        while (folder, stem.casefold()) in self.taken:
            stem, k = f"{base}_{k}", k + 1
        self.suffixes[(folder, base.casefold())] = k
        self.taken.add((folder, stem.casefold()))
        relative = f"{folder}/{stem}{ext}"
        target = self.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if reencode:
            _write_png(source, target)
        elif self.link and _try_link(source, target):
            pass
        else:
            with open(source, "rb") as src, atomic_open(target) as fh:
                shutil.copyfileobj(src, fh)
        self.placed[key] = relative
        return relative

    # -- Darknet ----------------------------------------------------------------------------
    def darknet(self, data: DetectionSet) -> list[Path]:
        written = []
        self.target = "darknet"

        def listed(images, boxes, folder: str, list_name: str) -> Path:
            """The images under `folder`, a label file each, and the list naming them."""
            lines = []
            for image, found in zip(images, boxes, strict=True):
                relative = self.image(image, folder)
                atomic_write(self.out / label_path(relative), label_text(found))
                lines.append(relative)
            atomic_write(self.out / list_name, "".join(f"{x}\n" for x in lines))
            return self.out / list_name

        lines = [f"classes={data.classes}", "train=train.txt"]
        written.append(listed(data.train.images, data.train.boxes, "images", "train.txt"))
        if data.valid is not None:
            written.append(listed(data.valid.images, data.valid.boxes, "images", "valid.txt"))
            lines.append("valid=valid.txt")
        scored = data.valid_or_train
        if scored.difficult is not None:
            listed(scored.images, scored.difficult, "difficult", "difficult.txt")
            lines.append("difficult=difficult.txt")
        atomic_write(self.out / "obj.names", "".join(f"{n}\n" for n in data.names))
        lines += ["names=obj.names", "backup=backup/"]
        atomic_write(self.out / "obj.data", "\n".join(lines) + "\n")
        return [self.out / "obj.data", self.out / "obj.names", *written]

    # -- YOLO (ultralytics) -------------------------------------------------------------------
    def yolo(self, data: DetectionSet) -> list[Path]:
        self.target = "yolo"
        def split(s: Split, name: str) -> None:
            for image, boxes in zip(s.images, s.boxes, strict=True):
                relative = self.image(image, f"images/{name}")
                label = f"labels/{name}/{os.path.splitext(os.path.basename(relative))[0]}.txt"
                atomic_write(self.out / label, label_text(boxes))

        split(data.train, "train")
        val = "images/train"
        if data.valid is not None:
            split(data.valid, "val")
            val = "images/val"
        import yaml

        doc = {"train": "images/train", "val": val,
               "names": dict(enumerate(data.names))}
        atomic_write(self.out / "data.yaml",
                     f"# converted by darkcfg data convert from {data.path}\n"
                     + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        return [self.out / "data.yaml"]

    # -- COCO ---------------------------------------------------------------------------------
    def coco(self, data: DetectionSet) -> list[Path]:
        from darkcfg.data.detection.formats.base import image_size
        from darkcfg.data.detection.formats.coco import coco_document

        written = []
        splits = [("train", data.train)] + ([("val", data.valid)] if data.valid else [])
        for name, s in splits:
            s = s.distinct()  # a COCO file has one entry an image (a repeat weighs nothing)
            images = []
            for image in s.images:
                relative = self.image(image, "images")
                # measured on the source, so that an error names it, not the hidden copy
                images.append((os.path.basename(relative), image_size(image)))
            doc = coco_document(images, s.boxes, s.difficult, data.names, data.category_ids)
            path = self.out / f"instances_{name}.json"
            atomic_write(path, json.dumps(doc))
            written.append(path)
        return written


def _darknet_extension(ext: str) -> tuple[str, bool]:
    """(the extension to write, re-encode as PNG?) for real Darknet, whose label rule knows only
    `.jpg .JPG .jpeg .JPEG .png .PNG .bmp .BMP .ppm .PPM .tiff .TIFF` and reads an image of
    any other extension as its own label file: `.Jpg` becomes `.jpg`, `.tif` `.tiff` (the same
    bytes), any other `.webp.png` (re-encoded)."""
    lower = {".tif": ".tiff"}.get(ext.lower(), ext.lower())
    for candidate in (ext, lower):
        if darknet_label_path(f"x{candidate}") != f"x{candidate}":
            return candidate, False
    return f"{ext}.png", True


def _write_png(source: str, target: Path) -> None:
    """`source` as the PNG of the pixels darkcfg reads from it (turned by its EXIF orientation,
    16-bit and float scaled to 8 bits): a PNG keeps no orientation tag."""

    from darkcfg.data.base import eight_bit, image_errors, open_image, upright

    try:
        with open_image(source) as im:
            picture = eight_bit(upright(im))
            if picture.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                picture = picture.convert("RGB")  # CMYK, YCbCr ...: what training reads
            picture.load()
    except image_errors() as exc:
        raise CfgError(Diagnostic("E901", f"cannot read image '{source}': {exc}", source,
                                  hint="remove it or convert it to JPEG/PNG")) from None
    with atomic_open(target) as fh:
        picture.save(fh, format="PNG")


def _try_link(source: str, target: Path) -> bool:
    try:
        os.link(source, target)
    except OSError:
        return False
    return True
