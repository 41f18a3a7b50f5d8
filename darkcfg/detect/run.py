"""`runner.py CFG --detect IMG_OR_DIR...` and `--input X.npy --detections OUT.json`: what
`darknet detector test -ext_output` does, plus drawn images, COCO-format JSON and label files.

Bad input (a missing or unreadable image, a cfg without a detection head, names that do not
match `classes`) raises a located CfgError: the command prints it and exits 2. Typed options in
(`ModelSpec`, `DetectOptions`), never argparse.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from builders.atomic import files_under
from cfgparse import CfgError, Diagnostic
from cfgparse.errors import WARNING, printable
from darkcfg.console import say, warn
from darkcfg.data.base import check_image_headers, undecodable_warning
from darkcfg.data.datafile import (
    IMAGE_EXTENSIONS,
    data_folders,
    is_image,
    missing_path_hint,
    names_in,
    read_data_file,
    read_text,
    resolve,
    split_lines,
)
from darkcfg.detect.decode import (
    Found,
    c_round,
    check_decodable_heads,
    detect_batches,
    detections_for_input,
    head_indices,
    net_letter_box,
)
from darkcfg.detect.draw import drawn, label_lines
from darkcfg.model import ModelSpec


@dataclass(frozen=True)
class DetectOptions:
    """Which model, what to detect in and what to write (`darkcfg detect`)."""

    model: ModelSpec
    targets: tuple[str, ...] = ()  # images and folders
    names: str | None = None  # class names file (default: names= of a .data `data`)
    data: str | None = None  # a Darknet .data file, for its names=
    out: str | None = None  # the folder for drawn images, detections.json (runs/<cfg>/detect)
    thresh: float = 0.25
    nms: float = 0.45  # 0: no NMS
    letter_box: bool = False  # letterbox (default: [net] letter_box)
    save_labels: bool = False  # also OUT/<image>.txt
    input: str | None = None  # X.npy: a raw network input ...
    detections: str | None = None  # ... whose detections go to this JSON file
    progress: bool = True
    max_memory: int | None = None  # bytes one image may need; None: the device's memory
    force: bool = False  # run even when the estimate is over max_memory

    def __post_init__(self):
        if isinstance(self.targets, (str, os.PathLike)):  # one image or folder, not characters
            object.__setattr__(self, "targets", (os.fspath(self.targets),))
        for name, example in (("thresh", ".25"), ("nms", ".45")):
            value = getattr(self, name)
            if not 0 <= value <= 1:  # NaN fails too
                raise CfgError(Diagnostic("E100", f"--{name} {value:g}: a threshold lies in "
                                          "[0, 1]", "<command line>",
                                          hint=f"e.g. --{name} {example}"))


# -- inputs ---------------------------------------------------------------------------------------

def image_paths(targets: list[str]) -> tuple[list[Path], bool]:
    """The images to run: files as given, folders' image files (recursive, sorted), the lines
    of a `.txt` list (`listed_images`). Non-image files inside folders are skipped with one
    warning line. Returns (paths, any folder or list?)."""
    paths: list[Path] = []
    skipped: list[Path] = []
    unreadable: list[Path] = []  # broken links, FIFOs, sockets under an image's name
    unlisted: list[OSError] = []  # folders it may not list
    folder = False
    for target in targets:
        p = Path(target)
        if p.is_dir():
            folder = True
            listed = files_under(p, unlisted)
            found = sorted(q for q in listed if q.is_file())
            unreadable += sorted(q for q in listed if is_image(q) and not q.is_file())
            images = {f.with_suffix("") for f in found if is_image(f)}
            for f in found:
                if is_image(f):
                    paths.append(f)
                elif not (f.suffix == ".txt" and f.with_suffix("") in images):
                    skipped.append(f)  # (an image's label file beside it, Darknet's layout,
                    #                     is skipped without a word)
        elif p.is_file() and p.suffix.lower() == IMAGE_LIST:
            folder = True  # (a progress bar, as for a folder)
            paths += listed_images(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise CfgError(Diagnostic("E901", f"image or folder '{target}' {not_there(p)}",
                                      target, hint="check the path: an image, a folder, a "
                                      "video, a stream URL or a camera index"))
    if unlisted:
        said = unlisted[0]
        warn(f"skipped {len(unlisted)} folder(s) that cannot be listed (e.g. "
             f"{printable(str(said.filename))}: {said.strerror or said}): their images are "
             "not run")
    if unreadable:
        warn(f"skipped {len(unreadable)} image name(s) that are not files "
             f"(e.g. {printable(str(unreadable[0]))}: {not_there(unreadable[0])})")
    if skipped:
        warn(f"skipped {len(skipped)} file(s) that are not images "
             f"(e.g. {printable(str(skipped[0]))}; images end in {', '.join(IMAGE_EXTENSIONS)})")
    if not paths:
        raise CfgError(Diagnostic("E901", "no images to run", " ".join(targets),
                                  hint="give image files or folders that hold some"))
    return paths, folder


IMAGE_LIST = ".txt"  # an image list given to detect or predict: one path a line


def listed_images(path: Path) -> list[Path]:
    """The images of a list file (what Darknet's `detector test ... < list.txt` reads one line
    at a time), read as a .data file's lists are: a path as written (relative to the working
    folder), else next to the list; blank lines, a BOM and CRLF ends skipped. A listed path
    that is no file is E901 at its line."""
    out = []
    for n, line in enumerate(split_lines(read_text(path)), 1):
        raw = line.strip()
        if not raw:
            continue
        image = resolve(raw, path.parent)
        if not image.is_file():
            raise CfgError(Diagnostic(
                "E901", f"listed image '{printable(raw)}' {not_there(image)}", str(path), n,
                len(line) - len(line.lstrip()) + 1, source=line.rstrip(), span=len(raw),
                hint=missing_path_hint(raw, "paths are tried relative to the current "
                                       f"directory, then to {path.parent or '.'}")))
        out.append(image)
    return out


def not_there(path: Path) -> str:
    """Why a path named as an image is neither a file nor a folder."""
    if path.is_symlink() and not path.exists():
        return f"is a link to '{os.readlink(path)}', which does not exist"
    if path.is_dir():  # (a list's line: a list names image files)
        return "is a folder, not an image file"
    if os.path.exists(path):  # a FIFO, a socket or a device: reading it could wait forever
        return "is not a file (a FIFO, socket or device): save the image to a file"
    return "does not exist"


def checked_images(targets: list[str]) -> tuple[list[Path], bool]:
    """`image_paths`, every image's header read (check_image_headers): a missing or unreadable
    image is an E901 before the (slow) build and weights, and before --out is made."""
    paths, folder = image_paths(targets)
    check_image_headers([str(p) for p in paths], ", ".join(targets))
    return paths, folder


@dataclass(frozen=True)
class CocoIds:
    """A COCO `--data`'s own ids, for detections.json: scored against that JSON by COCO's
    tools as they are (category ids with gaps, image ids by file)."""

    categories: list[int]  # class index -> category id
    # image path -> (image id, the size its boxes are in) of each of its entries
    images: dict[str, list[tuple[object, tuple[float, float]]]]

    def entries(self, path: Path) -> list[tuple[object, tuple[float, float]]] | None:
        """The entries of the picture of `path`'s file name (a copy of the images elsewhere
        too); of a name that two of its pictures share (a/000001.jpg, b/000001.jpg: by name
        they took one id, merged), the entries of the JSON's file at `path` itself."""
        unique, shared = self._by_name
        if path.name in unique:
            return unique[path.name]
        return shared.get(os.path.realpath(path)) if shared else None

    @functools.cached_property
    def _by_name(self) -> tuple[dict[str, list], dict[str, list]]:
        """{file name: entries} of the names one picture has, {real path: entries} of those
        that several share (no path resolved for the others: COCO's 118k are one name each)."""
        count = Counter(Path(f).name for f in self.images)
        unique = {Path(f).name: e for f, e in self.images.items() if count[Path(f).name] == 1}
        shared = {os.path.realpath(f): e for f, e in self.images.items()
                  if count[Path(f).name] > 1}
        return unique, shared


def read_names(names_file: str | None, data_file: str | None
               ) -> tuple[list[str], str | None, CocoIds | None]:
    """Class names from --names, or those of --data (a Darknet .data file's names=, or a
    data.yaml, COCO JSON or VOC folder's classes), where they came from, and a COCO JSON's ids;
    ([], None, None) if neither."""
    if names_file is None and data_file is not None and not data_file.endswith(".data"):
        from darkcfg.data.detection.formats import open_set

        found = open_set(data_file, strict=False, need="names")  # (a data.yaml: no list read)
        ids = CocoIds(found.category_ids, found.image_ids or {}) \
            if found.category_ids is not None else None
        return found.names, data_file, ids
    if names_file is None and data_file is not None and data_file.endswith(".data"):
        path = Path(data_file)
        options = read_data_file(path)
        if "names" not in options:
            return [], None, None
        names_file = str(resolve(options["names"], *data_folders(path)))
    if names_file is None:
        return [], None, None
    try:
        text = Path(names_file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CfgError(Diagnostic("E901", f"cannot read the names file '{names_file}': {exc}",
                                  names_file, hint="one class name per line")) from None
    names = names_in(split_lines(text))
    blank = [n for n, name in enumerate(names) if not name]
    if blank:  # Darknet's get_labels keeps a blank line's place: the names after it keep theirs
        warn(f"line {blank[0] + 1} of '{names_file}' is blank"
             + (f" (and {len(blank) - 1} more)" if len(blank) > 1 else "")
             + f": class {blank[0]} has no name and is shown by number; the names after it "
             "keep their lines' classes")
    return names, names_file, None


def check_names(net, names: list[str], where: str | None) -> None:
    """More names than the heads have classes (or none) cannot be the names the weights were
    trained with: E304. Fewer are the data a larger cfg was trained on (an 80-class cfg on a
    2-class set trains, docs/datasets.md): those classes are named, the rest shown by number."""
    heads = head_indices(net)
    classes = net.layers[heads[0]].classes
    if where is None or len(names) == classes:
        return
    block = net.meta[heads[0]].block
    if not names or len(names) > classes:
        raise block.error("E304", f"'{where}' lists {len(names)} class names, but "
                          f"[{block.name}] has classes={classes}", "classes",
                          hint="use the names file the weights were trained with, or fix "
                          "classes= in every head")
    warn(block.diagnostic("W302", f"'{where}' names {len(names)} classes and [{block.name}] has "
                          f"classes={classes}: classes {len(names)}..{classes - 1} are shown by "
                          "number", "classes", severity=WARNING,
                          hint="use the names file the weights were trained with"))


def detector(model: ModelSpec, max_memory: int | None = None, force: bool = False):
    """The built network with its weights, on its device, in eval mode. Darknet's detector builds
    the network for one image of one time step (src/detector.c test_detector:
    parse_network_cfg_custom(cfgfile, 1, 1)), so a [crnn]/[conv_lstm] detector trained with
    time_steps=N runs on single images (a --set time_steps=... still wins)."""
    from darkcfg.model import build_network, load_any_weights, pick_device

    net = build_network(model.cfg, ["time_steps=1", *model.sets], model.flavor, model.seed,
                        guard=not force, forceable=True)[0]
    if not head_indices(net):
        raise CfgError(Diagnostic(
            "E300", f"'{model.cfg}' has no detection head", model.cfg,
            hint="--detect needs a [yolo], [Gaussian_yolo], [region] or [detection] layer; "
            "use --predict for a classifier"))
    check_decodable_heads(net, "--detect decodes [yolo], [Gaussian_yolo], flat [region] and "
                          "[detection] heads")
    device = pick_device(model.device)
    if not force:  # one image's feature maps, estimated from shapes before any allocation
        from builders.memory import guard_memory
        from darkcfg.model import device_memory

        guard_memory(net, max_memory or device_memory(device), batch=1, training=False,
                     cpu=device.type == "cpu")
    if model.weights:
        say(load_any_weights(net, model.weights, model.cutoff, model.partial))
    else:
        warn(f"no --weights: the initial weights of seed {model.seed} (boxes are noise)")
    return net.to(device).eval()


# -- outputs --------------------------------------------------------------------------------------

def ext_output(found: list[Found], image_w: int, image_h: int) -> list[str]:
    """Darknet's `-ext_output` lines (draw_detections_v3): name: prob% and the unclipped box."""
    lines = []
    for f in found:
        left, top, right, bottom = f.box
        name = printable(f.name) if f.name else str(f.class_id)  # a names file's ANSI escapes
        lines.append(f"{name}: {f.score * 100:.0f}%\t(left_x: {c_round(left):4.0f}   "
                     f"top_y: {c_round(top):4.0f}   width: {c_round(right - left):4.0f}   "
                     f"height: {c_round(bottom - top):4.0f})")
    return lines


def coco_results(found: list[Found], image_id, image_w: int, image_h: int,
                 category_ids: Sequence[int] | None = None,
                 stated: tuple[float, float] | None = None) -> list[dict]:
    """COCO results entries (print_cocos): bbox [x, y, w, h] in pixels, clipped to the image;
    `category_id` the class index, or `category_ids[class]` (a COCO --data's own ids). A box
    with no area inside the image (one in a letterbox's padding) is left out: Darknet writes it
    with a negative width or height, which COCOeval ignores and no COCO tool takes as a box.
    `stated`: the size a COCO entry gives the image, which its annotations' pixels are in
    (the reader takes them so): the boxes are scaled to it."""
    sx, sy = (stated[0] / image_w, stated[1] / image_h) if stated else (1.0, 1.0)
    out = []
    for f in found:
        left, top = max(f.box[0], 0.0), max(f.box[1], 0.0)
        right, bottom = min(f.box[2], float(image_w)), min(f.box[3], float(image_h))
        if right <= left or bottom <= top:
            continue
        category = category_ids[f.class_id] if category_ids is not None and \
            f.class_id < len(category_ids) else f.class_id
        out.append({"image_id": image_id, "category_id": category,
                    "bbox": [round(left * sx, 3), round(top * sy, 3),
                             round((right - left) * sx, 3), round((bottom - top) * sy, 3)],
                    "score": round(f.score, 6)})
    return out


JPEG_MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION


def save_jpeg(path: Path, rgb: torch.Tensor) -> None:
    """The drawn image, atomically (a full disk is a located error naming `path`: the caller's
    handler of images that do not decode must not blame an input for it). A side past JPEG's
    65500 pixels (a PNG panorama) is drawn scaled down to fit: the encoder refused it, which
    stopped the run with a misleading write error."""
    from PIL import Image

    from builders.atomic import atomic_open

    image = Image.fromarray(rgb.permute(1, 2, 0).numpy())
    if max(image.size) > JPEG_MAX_SIDE:
        scale = JPEG_MAX_SIDE / max(image.size)
        image = image.resize(tuple(min(JPEG_MAX_SIDE, max(1, round(side * scale)))
                                   for side in image.size), Image.Resampling.BILINEAR)
    with atomic_open(path) as fh:
        image.save(fh, format="JPEG", quality=90)


class _Discarded(Exception):
    """Thrown into atomic_open to leave no file (JsonList.discard)."""


class JsonList:
    """A JSON list written as its entries come (detections.json: a folder of thousands at a low
    --thresh held millions of entries in memory until its last image): into a temp file beside
    `path` that `close()` renames into place, `discard()` removes. The same bytes as
    json.dumps(entries) + newline."""

    def __init__(self, path: Path):
        from builders.atomic import atomic_open

        self.path, self.count = path, 0
        self._writer = atomic_open(path)
        self._file = self._writer.__enter__()
        self._write(b"[")

    def add(self, entries: list[dict]) -> None:
        for entry in entries:
            self._write((b", " if self.count else b"") + json.dumps(entry).encode())
            self.count += 1

    def _write(self, data: bytes) -> None:
        from builders.atomic import write_error

        try:
            self._file.write(data)
        except OSError as exc:  # a full disk: said at detections.json, not at an image
            self.discard()
            raise write_error(self.path, exc, started=True) from None

    def close(self) -> None:
        if self._writer is not None:
            self._write(b"]\n")
            writer, self._writer = self._writer, None
            writer.__exit__(None, None, None)

    def discard(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.__exit__(_Discarded, _Discarded(), None)


def write_text(path: Path, text: str) -> None:
    from builders.atomic import atomic_write

    atomic_write(path, text)


def image_id(path: Path) -> int | None:
    """The file name's number, after its last '_' if it has one (Darknet's get_coco_image_id:
    COCO 2017's 000000397133.jpg is image 397133, COCO 2014's COCO_val2014_000000000139.jpg
    image 139), or None when that part is not a number. Only the file name is read: Darknet
    takes the last '_' of the whole path, so a folder's '_' gave it 0."""
    number = path.stem.rsplit("_", 1)[-1]  # isdigit() alone also takes '²' and other digits
    return int(number) if number.isascii() and number.isdigit() and len(number) < 19 else None


def coco_image_ids(paths: Sequence[Path]) -> list[int] | None:
    """detections.json's image_id of each image: its file name's number (image_id), an int as
    COCO's tools need; None where some name is no number (then every image_id is the image's
    drawn name: one type in one file). Two files of one number (a/000001.jpg, b/000001.jpg;
    Darknet gives them one id, so COCO scoring merged them): the first keeps it, the others get
    numbers above every image's, said once. One file listed twice keeps its one id."""
    numbers = [image_id(p) for p in paths]
    if None in numbers:
        return None
    owner: dict[int, Path] = {}  # a number -> the file that keeps it
    given: dict[str, int] = {}  # a file that could not keep its number -> its id
    ids, moved, spare = [], [], max(numbers, default=0) + 1
    for path, number in zip(paths, numbers, strict=True):
        first = owner.setdefault(number, path)
        if first != path and os.path.realpath(first) != os.path.realpath(path):
            file = os.path.realpath(path)
            if file not in given:
                moved.append((path, number))
                given[file], spare = spare, spare + 1
            number = given[file]
        ids.append(number)
    if moved:
        path, number = moved[0]
        kept = paths[numbers.index(number)]
        first_new = spare - len(moved)
        warn(f"{len(moved)} image(s) have the file number of another image, Darknet's COCO "
             f"image_id ('{printable(str(path))}' and '{printable(str(kept))}' are both "
             f"{number}): detections.json gives them the image_id {first_new}"
             + (f" to {spare - 1}" if len(moved) > 1 else "")
             + " instead, so that COCO scoring keeps them apart")
    return ids


def unique_stem(path: Path, taken: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in taken:
        stem, n = f"{path.stem}_{n}", n + 1
    taken.add(stem)
    return stem


# -- the commands ---------------------------------------------------------------------------------

def run_detect(opts: DetectOptions) -> None:
    """Detect in `opts.targets` and/or the raw input `opts.input` (-> `opts.detections`)."""
    if opts.detections and not opts.input:
        raise CfgError(Diagnostic("E100", "--detections needs --input X.npy", "<command line>",
                                  hint="or give IMAGE... files to detect in"))
    if opts.input and not opts.detections:  # (the images were detected, the input not read)
        raise CfgError(Diagnostic("E100", "--input is read by --detections, which is not given",
                                  "--input", hint="add --detections OUT.json, or drop --input"))
    if not (opts.targets or opts.detections):
        raise CfgError(Diagnostic("E100", "nothing to detect in", "<command line>",
                                  hint="give images or folders, or --input X.npy "
                                  "--detections OUT.json"))
    from builders.atomic import check_folder, check_writable

    if opts.input and opts.detections:
        check_writable(opts.detections, "--detections")  # before the (slow) build
    if opts.targets:
        out = check_folder(output_folder(opts.out, opts.model.name), "--out")
        from darkcfg.detect.video import check_sources, is_video

        videos = [t for t in opts.targets if is_video(t)]
        if videos:  # a missing file, PyAV, a file that is no video: before the build and images
            check_sources(videos)
        images = [t for t in opts.targets if not is_video(t)]
        found = checked_images(images) if images else ([], False)
        refuse_output_over_inputs(out, found[0])
    names, names_where, coco = read_names(opts.names, opts.data)
    model = opts.model
    net = detector(model, opts.max_memory, opts.force)
    check_names(net, names, names_where)
    if opts.input and opts.detections:
        detections_json(net, opts, names)
    if opts.targets:
        from builders.atomic import lock_folder
        from darkcfg.detect.video import source_name

        lock = lock_folder(out, "--out")  # two detects into one folder would mix their files
        try:
            taken: set[str] = set()
            stems = [unique_stem(p, taken) for p in found[0]]
            # clip.mp4 and sub/clip.mp4: clip and clip_1
            named = [unique_stem(Path(source_name(video) + ".mp4"), taken) for video in videos]
            refuse_replacing(out, [f"{s}.jpg" for s in stems] + [f"{n}.mp4" for n in named]
                             + ([f"{s}.txt" for s in stems] + [f"{n}_labels" for n in named]
                                if opts.save_labels else []), videos)
            if images:
                detect_images(net, opts, names, out, images, progress=opts.progress,
                              coco=coco, found=found)
            for video, name in zip(videos, named, strict=True):
                detect_one_video(net, opts, names, out, video, name, progress=opts.progress)
        finally:
            os.close(lock)


EARLIER_OUTPUTS = ("detections.json", "*.jsonl")  # what every image or video detect writes


def output_folder(out: str | None, cfg_name: str) -> Path:
    """Where a detect writes. `--out` as given, unless it holds an earlier detect's outputs
    (they would be replaced: E901, as for a second --train into a run's folder); by default
    runs/<cfg>/detect, or detect2, detect3 ... the first that is missing or empty. An empty
    --out (an unset `--out "$DIR"`) is the default, as for train: it wrote into the working
    folder."""
    def earlier(folder: Path) -> str | None:
        return next((p.name for pattern in EARLIER_OUTPUTS for p in folder.glob(pattern)
                     if not p.name.startswith(".")), None)  # (not a temp file)

    if out:
        found = earlier(Path(out)) if Path(out).is_dir() else None
        if found:
            raise CfgError(Diagnostic(
                "E901", f"'{out}' holds the outputs of an earlier detect ({found}): this one "
                "would replace them", out, hint="give another --out (or delete them)"))
        return Path(out)
    base = Path("runs") / cfg_name / "detect"
    folder, n = base, 1
    # (any file: the part an interrupted detect wrote, which this one would replace)
    while folder.is_dir() and (earlier(folder) or any(folder.iterdir())):
        n += 1
        folder = base.with_name(f"detect{n}")
    return folder


def refuse_replacing(out: Path, names: list[str], videos: Sequence[str] = ()) -> None:
    """E901 when --out already holds a file under a name this detect writes (an annotated
    image, a label file, a video or its labels folder): a file the user keeps there, or an input
    such as the --names file, would be replaced (a detect never replaces what it did not
    write; an earlier detect's outputs are refused by `output_folder`). An input video there
    is left to `detect_video`'s own, more precise, refusal."""
    def an_input_video(path: Path) -> bool:
        return any(os.path.exists(v) and os.path.exists(path) and os.path.samefile(v, path)
                   for v in videos)

    held = [n for n in names if os.path.lexists(out / n) and not an_input_video(out / n)]
    if held:
        raise CfgError(Diagnostic(
            "E901", f"--out '{out}' already holds '{held[0]}'"
            + (f" (and {len(held) - 1} more)" if len(held) > 1 else "")
            + ", which this detect would replace", str(out / held[0]),
            hint="give --out a new or empty folder (the default is runs/<cfg-name>/detect)"))


def detect_one_video(net, opts: DetectOptions, names: list[str], out: Path, source: str,
                     name: str, progress: bool) -> None:
    from darkcfg.detect.video import detect_video, shown_source

    try:
        r = detect_video(net, source, out, thresh=opts.thresh, nms=opts.nms,
                         letter_box=opts.letter_box or None, names=names,
                         save_labels=opts.save_labels, progress=progress, name=name)
    except KeyboardInterrupt as stop:
        r = stop.args[0] if stop.args else None
        if r is not None:
            say(f"{r.frames} frame(s) written to {r.video} and {r.jsonl} before the interrupt"
                if r.frames else f"no frame of '{shown_source(r.source)}' written before the "
                "interrupt")
        raise
    source = shown_source(r.source)
    video, jsonl = (printable(str(p)) for p in (r.video, r.jsonl))
    skipped = f"; {r.skipped} damaged packet(s) skipped (W901 above)" if r.skipped else ""
    print(f"{source}: {r.frames} frame(s), {r.objects} object(s) above thresh {opts.thresh:g} "
          f"in {r.seconds:.2f} s ({r.fps:.1f} frames/s){skipped} -> {video}, {jsonl}")


def detections_json(net, opts: DetectOptions, names: list[str]) -> None:
    import numpy as np

    from darkcfg.data.base import read_array

    x = torch.from_numpy(np.asarray(read_array(opts.input), dtype=np.float32))
    s = net.input_shape
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] != s.c:
        raise CfgError(Diagnostic("E901", f"'{opts.input}' holds an array of shape "
                                  f"{tuple(x.shape)}, not (N, {s.c}, H, W)", opts.input,
                                  hint=f"the network takes ({s.c}, {s.h}, {s.w}) inputs"))
    try:
        dets = detections_for_input(net, x.to(next(net.parameters()).device), opts.thresh,
                                    nms_thresh=opts.nms)
    except RuntimeError as exc:  # a size the network's routes, pools or heads cannot take
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CfgError(Diagnostic("E302", f"the network cannot take the {x.shape[3]}x"
                                  f"{x.shape[2]} input of '{opts.input}': {first}", opts.input,
                                  hint=f"use the cfg's size ({s.w}x{s.h}) or another multiple "
                                  "of the network's stride")) from None
    entries = []
    for b, d in enumerate(dets):
        probs = d.probs.float().cpu()
        for i, c in torch.nonzero(probs).tolist():
            entries.append({"image": b, "detection": i, "category_id": c,
                            "name": names[c] if c < len(names) else "",
                            "score": float(probs[i, c]),
                            "objectness": float(d.objectness[i]),
                            "bbox": [float(v) for v in d.boxes[i].tolist()]})
    path = Path(opts.detections)
    write_text(path, json.dumps(entries, indent=1) + "\n")
    say(f"wrote {path} ({len(entries)} detections of {len(dets)} input(s); bbox = relative "
        f"centre x, y, w, h)")


def refuse_output_over_inputs(out: Path, paths: list[Path]) -> None:
    """--out may not be a folder that holds an input image or an input's label file (beside it,
    or in the `labels/` folder Darknet's label path maps `images/`, `JPEGImages/` to): the
    annotated `<stem>.jpg` and the --save-labels `<stem>.txt` would replace the image or its
    ground truth. (Darknet's -save_labels writes beside the image; darkcfg never writes over an
    input.)"""
    from darkcfg.data.detection.labels import label_path

    target = out.resolve()
    for p in paths:
        labels = Path(label_path(str(p))).resolve().parent
        if target in (p.resolve().parent, labels):
            what = "input image" if p.resolve().parent == target else "label files of the image"
            raise CfgError(Diagnostic(
                "E901", f"--out '{out}' holds the {what} '{p}': the annotated images and "
                "label files written there would replace inputs (images or their labels)",
                str(out), hint="give --out a folder that holds no input image or label file "
                "(the default is runs/<cfg-name>/detect)"))


def next_batch(batches, paths: list[Path], done: int):
    """The next batch of `detect_batches` (None after the last). An image that verified but
    does not decode is a located E901, named by the error: it may be any image of the batch
    being read, not the next one. Only the reading is caught: an OSError of stdout (`| head`,
    `> /dev/full`) is not an image's."""
    try:
        return next(batches, None)
    except OSError as exc:
        where = getattr(exc, "image", None) or str(paths[min(done, len(paths) - 1)])
        raise CfgError(Diagnostic("E901", str(exc), where,
                                  hint="remove it or convert it to JPEG/PNG")) from None


def detect_images(net, opts: DetectOptions, names: list[str], out: Path,
                  targets: list[str] | None = None, progress: bool = True,
                  coco: CocoIds | None = None,
                  found: tuple[list[Path], bool] | None = None) -> set[str]:
    """Detect in the images and folders `targets` (`found`: their `image_paths`, if the
    caller has them), writing OUT/<name>.jpg (and .txt) and OUT/detections.json (with a COCO
    --data's ids when it lists every image; `found` is checked_images' answer). Returns the
    output names used."""
    from tqdm import tqdm

    # fail on an unreadable image before any work, with its path: the header check training
    # makes (Pillow's verify() also refused a PNG whose IDAT checksum alone is wrong, which
    # training, validation and data check read)
    paths, folder = found or checked_images(list(opts.targets) if targets is None else targets)
    refuse_output_over_inputs(out, paths)
    from builders.atomic import ensure_folder

    ensure_folder(out, "--out")
    letter = opts.letter_box or net_letter_box(net)
    loaded = [str(p) for p in paths]
    taken, objects = set(), 0
    listed = [coco.entries(p) for p in paths] if coco is not None else []
    coco_ids = None
    if not (listed and all(listed)):  # (a COCO --data that misses one: the file numbers)
        listed, coco_ids = [], coco_image_ids(paths)
    bar = tqdm(total=len(paths), unit="img", disable=not (progress and folder), file=sys.stderr)
    start = time.perf_counter()
    done, unreadable, written = 0, 0, 0
    results = JsonList(out / "detections.json")
    try:
        batches = detect_batches(net, loaded, opts.thresh, opts.nms, letter, names=names,
                                 skip_unreadable=True)
        while (batch := next_batch(batches, paths, done)) is not None:
            images, dets, found = batch
            for image, det, objs in zip(images, dets, found, strict=True):
                path = paths[done]
                done += 1
                if isinstance(image, OSError):  # its header read (checked above), its pixels
                    # do not (a JPEG cut short): left out, as Darknet's load_image goes on
                    unreadable += 1
                    warn(undecodable_warning(image, str(path), "left out; detect goes on"))
                    continue
                h, w = image.shape[-2:]
                lines = ext_output(objs, w, h)
                objects += len(objs)
                # one line per image whatever its name (a line break in it escaped)
                text = f"{printable(str(path))}: {len(objs)} object(s)" + \
                    "".join(f"\n{li}" for li in lines)
                if bar.disable:
                    print(text)
                else:
                    bar.write(text, file=sys.stdout)
                stem = unique_stem(path, taken)
                save_jpeg(out / f"{stem}.jpg", drawn(image, objs))
                written += 1
                # a picture with two COCO entries (merged in training and valid) has its
                # boxes under each id: COCOeval on the JSON as it is scores each entry
                entries = listed[done - 1] if listed else \
                    [(coco_ids[done - 1] if coco_ids is not None else stem, None)]
                for iid, stated in entries:
                    results.add(coco_results(objs, iid, w, h, coco.categories
                                             if coco is not None else None, stated))
                if opts.save_labels:
                    labels = label_lines(det, opts.thresh)
                    write_text(out / f"{stem}.txt", "".join(f"{li}\n" for li in labels))
            bar.update(len(images))
    except (KeyboardInterrupt, BrokenPipeError) as stop:
        # (and SIGTERM, SIGHUP, a `| head` that stopped reading): what is drawn gets its
        # detections.json
        bar.close()
        results.close()
        why = "the interrupt" if isinstance(stop, KeyboardInterrupt) else "stdout closed"
        say(f"{written} of {len(paths)} image(s) written to {out}/ (and their "
            f"detections.json) before {why}")
        raise
    except BaseException:
        results.discard()
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    results.close()
    how = "letterbox" if letter else "resize"
    read = done - unreadable
    left_out = f"; {unreadable} image(s) left out that do not decode (W901 above)" \
        if unreadable else ""
    print(f"{read} image(s), {objects} object(s) above thresh {opts.thresh:g} "
          f"(nms {opts.nms:g}, {how}) in {elapsed:.2f} s ({read / max(elapsed, 1e-9):.1f} img/s)"
          f"{left_out} -> {out}/")
    return taken
