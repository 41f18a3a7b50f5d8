"""Detection datasets, batches and the resumable training stream.

Entry point: `detection_datasets(net, source, seed, classes=None)` -> `DetectionSplits` (train
set, validation set, `collate`, class names, banner text, backup folder, the settings read from
the cfg). See its docstring for the batch layout.

Training follows Darknet's sampling (src/data.c fill_truth_detection): there are no epochs; every
image of
every batch is drawn uniformly with replacement. Sample `slot` of iteration `i` is a pure
function of (seed, i, slot): its images, augmentation and size (multi-scale, `scales.py`) all
come from a generator seeded by those three numbers, so a killed and resumed run, any number of
loader workers, and DDP ranks (each takes its own slots) reproduce the same batches byte for
byte on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from builders.boxes import letterbox_image, resize_image
from cfgparse import CfgError
from darkcfg.console import warn
from darkcfg.data.base import (
    blank_image,
    check_classes_count,
    check_classes_option,
    check_image_headers,
    loader_processes,
    undecodable_warning,
)
from darkcfg.data.detection.augment import DetectionSettings, training_sample
from darkcfg.data.detection.embedded import DEFAULT_CLASSES, DISTINCT, EmbeddedDetection
from darkcfg.data.detection.labels import Labels, set_warnings
from darkcfg.data.detection.scales import training_size

EMBEDDED_TRAIN, EMBEDDED_VAL = 8192, 256


# -- sources: (uint8 image (C, H, W), boxes (n, 5) [x, y, w, h, class] relative) ------------------
class LabelledImages(Dataset):
    """Image files (headers checked at start: `check_image_headers`) and their (already
    validated) boxes. An image that still fails to decode (e.g. a JPEG cut short after its
    header) is skipped with a warning, as Darknet's load_image_mat_cv logs it to bad.list and goes
    on: its place is taken by the next readable image of the list, so a run never stops on it.
    `scored` (a validation split): the image keeps its place as a blank 10x10 picture with its
    own truths, as Darknet's load_image_cv makes one, so no other image is scored twice."""

    def __init__(self, paths: list[str], labels: Labels, channels: int, scored: bool = False):
        self.paths, self.labels, self.channels = paths, labels, channels
        self.scored = scored
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        from darkcfg.data import DataError

        if self.scored:
            image = self._read(index)
            return (blank_image(self.channels) if image is None else image), \
                self.labels.boxes[index]
        for step in range(len(self.paths)):
            at = (index + step) % len(self.paths)
            image = self._read(at)
            if image is not None:
                return image, self.labels.boxes[at]
        raise DataError(f"none of the {len(self.paths)} images can be read")

    def _read(self, at: int) -> torch.Tensor | None:
        """Image `at`, or None when it does not decode (said once per loader process)."""
        from darkcfg.data import DataError, read_image

        if at in self.bad:
            return None
        try:
            return read_image(self.paths[at], self.channels)
        except DataError as exc:
            self.bad.add(at)
            # (a rank reads its own share: only it can say so)
            warn(undecodable_warning(exc, self.paths[at], "scored as a blank image with its "
                                     "labels" if self.scored else
                                     "skipped; the next image of the list takes its place"),
                 every_rank=True)
            return None


def pad_truth(boxes: np.ndarray, max_boxes: int) -> torch.Tensor:
    """(max_boxes, 5) float32 [x, y, w, h, class], zero rows after the last box (Darknet's truth
    layout without the track id)."""
    out = torch.zeros(max_boxes, 5, dtype=torch.float32)
    n = min(len(boxes), max_boxes)
    if n:
        out[:n] = torch.from_numpy(np.asarray(boxes[:n], np.float32))
    return out


# -- training -------------------------------------------------------------------------------------
class Slot(NamedTuple):
    """A training sample's key: which iteration (0-based) and which place in its global batch."""

    iteration: int
    slot: int


class DetectionTrain(Dataset):
    """Indexed by Slot(iteration, slot): one augmented image at that iteration's size
    (multi-scale) and its truth (max, 5). Batches come from `DetectionStream` (a plain
    index/epoch sampler cannot give the iteration the size depends on)."""

    def __init__(self, source: Dataset, settings: DetectionSettings, seed: int):
        self.source, self.settings, self.seed = source, settings, seed

    def __len__(self) -> int:  # the images drawn from (sampling is with replacement)
        return len(self.source)

    def size_at(self, iteration: int) -> tuple[int, int]:
        """(width, height) of iteration `iteration` (0-based)."""
        s = self.settings
        return training_size(iteration, s.width, s.height, s.random, self.seed, s.max_batches,
                             s.resize_step)

    def __getitem__(self, key: Slot) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(key, Slot):
            raise TypeError(f"DetectionTrain takes Slot(iteration, slot) keys, not {key!r}: "
                            "use DetectionSplits.stream() for training batches")
        iteration, slot = key
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, iteration, slot])
        w, h = self.size_at(iteration)
        image, boxes = training_sample(self.source.__getitem__, len(self.source), w, h,
                                       self.settings, rng)
        return image, pad_truth(boxes, self.settings.max_boxes)


class IterationSampler(Sampler):
    """(iteration, slot) keys from `start` on, forever: slots rank·batch .. rank·batch+batch-1
    of each iteration, so ranks draw disjoint samples of the same global batch."""

    def __init__(self, batch: int, rank: int = 0, start: int = 0):
        self.batch, self.rank, self.start = batch, rank, start

    def __iter__(self) -> Iterator[Slot]:
        i = self.start
        first = self.rank * self.batch
        while True:
            for slot in range(first, first + self.batch):
                yield Slot(i, slot)
            i += 1


@dataclass
class DetectionStream:
    """Endless (images, truth) batches for `darkcfg.train.loop.fit`: batch k of `batches(start)` is
    iteration start + k, whatever iteration the run (re)started at."""

    dataset: DetectionTrain
    batch: int  # per process
    world: int = 1
    rank: int = 0
    workers: int = 0
    pin_memory: bool = False

    @property
    def iterations_per_epoch(self) -> int:
        """Darknet's nominal epoch: train images / images per iteration (at least 1)."""
        return max(len(self.dataset) // (self.batch * self.world), 1)

    def batches(self, start_iteration: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = IterationSampler(self.batch, self.rank, start_iteration)
        generator = torch.Generator().manual_seed(self.dataset.seed)  # global RNG untouched
        loader = DataLoader(self.dataset, batch_size=self.batch, sampler=sampler,
                            collate_fn=collate,
                            pin_memory=self.pin_memory, generator=generator,
                            **loader_processes(self.workers, prefetch_factor=2))
        batches = iter(loader)
        try:
            yield from batches
        finally:
            # stop the loader processes now, whatever ended the stream: they ignore SIGTERM
            # (loader_worker_init), so an error's traceback that still holds this iterator
            # would leave them to multiprocessing's exit handler, which waits on them forever
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


# -- validation -----------------------------------------------------------------------------------
class DetectionEval(Dataset):
    """Index i: (float image (C, h, w) at the network size the way `detector map` feeds it:
    letterbox_image with [net] letter_box=1, else resize_image; truth (M, 5) relative to the
    *original* image, every object of it (M = max(objects, `max`)); the original (width,
    height) as a tensor)."""

    def __init__(self, source: Dataset, settings: DetectionSettings,
                 difficult: list[np.ndarray] | None = None):
        self.source, self.settings, self.difficult = source, settings, difficult

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, boxes = self.source[index]
        s = self.settings
        x = image.float().div(255) if image.dtype == torch.uint8 else image.float()
        # the same geometry as --detect (builders.boxes), as `detector map` and `detector test`
        view = letterbox_image(x, s.width, s.height) if s.letter_box else \
            resize_image(x, s.width, s.height)
        size = torch.tensor([image.shape[-1], image.shape[-2]], dtype=torch.int64)
        # every truth of the image: validate_detector_map reads all label lines (`max` only
        # truncates training truth)
        truth = pad_truth(boxes, max(len(boxes), s.max_boxes))
        if self.difficult is None:
            return view, truth, size
        # objects not scored (Darknet's difficult= list, VOC difficult, COCO iscrowd)
        hard = self.difficult[index]
        return view, truth, size, pad_truth(hard, max(len(hard), 1))


def collate(samples: list[tuple]) -> tuple[torch.Tensor, ...]:
    """Training samples -> (images (N, C, H, W) float32 in [0, 1], truth (N, M, 5));
    validation samples -> (images, truth, sizes (N, 2) = original width, height), and when the
    data has objects not to score, difficult (N, D, 5) in truth's layout.
    truth rows are [x, y, w, h, class] relative, zero rows after the last box, M = the last
    detection layer's `max` (Darknet's truth layout without the track id; validation truth keeps
    every object, so M is the larger of `max` and the most objects of an image in the batch)."""
    columns = list(zip(*samples, strict=True))
    images = torch.stack(columns[0])
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    # validation truth (an image may have more than `max` objects) and difficult boxes: as many
    # rows as the image with most of them
    for k in (1, 3) if len(columns) == 4 else (1,) if len(columns) == 3 else ():
        most = max(len(d) for d in columns[k])
        columns[k] = [torch.cat([d, d.new_zeros(most - len(d), 5)]) for d in columns[k]]
    batch = (images, *(torch.stack(c) for c in columns[1:]))
    if torch.utils.data.get_worker_info() is not None:
        # into shared memory here, as torch's default_collate puts its batches, not in the
        # thread that hands the batch over: a failure there (no file descriptor left) dropped the
        # batch with a traceback on stderr and left the main process waiting for it for good
        for t in batch:
            t.share_memory_()
    return batch


# -- entry point ----------------------------------------------------------------------------------
@dataclass
class DetectionSplits:
    train: DetectionTrain
    val: DetectionEval | None
    collate: Callable
    names: list[str]  # the data's classes (mAP averages over these)
    description: str  # one line for the banner / log
    settings: DetectionSettings
    backup: str | None = None
    embedded: bool = False
    warnings: list[str] = field(default_factory=list)  # lines to print (e.g. missing labels)
    # the .data file's `difficult` list (parallel to valid): per validation image, boxes (n, 5)
    # [x, y, w, h, class] that detector map neither rewards nor counts as missed; None: no list
    difficult: list[np.ndarray] | None = None
    augment: bool = False  # as darkcfg.data.DataSplits: augmentation is built into `train`
    in_memory: bool = False  # samples cost work (generation or decoding, and augmentation)

    def banner(self) -> str:
        if not self.embedded:
            return f"data: {self.description}"
        return ("=" * 78 + "\n  no --data: training on the embedded detection set\n  "
                + self.description + "\n" + "=" * 78)

    def stream(self, batch: int, world: int = 1, rank: int = 0, workers: int = 0,
               pin_memory: bool = False) -> DetectionStream:
        return DetectionStream(self.train, batch, world, rank, workers, pin_memory)


def detection_datasets(net, source: str | Path | None, seed: int, classes: int | None = None,
                       train_size: int = 0, val_size: int = 0, multiscale: bool = True
                       ) -> DetectionSplits:
    """Training and validation data for the detector `net` (a built builders.Network).

    source: None -> the embedded detection set (deterministic from `seed`; objects of the
    first `classes` classes, default min(network classes, 8)); a path to a Darknet detection
    `.data` file (classes, train, valid, names, backup; labels by replace_image_to_label), an
    ultralytics data.yaml, a COCO annotation JSON or a Pascal VOC folder
    (darkcfg.data.detection.formats; labels all checked before returning). Raises CfgError
    (located) for bad data or labels.

    Returns DetectionSplits: `train` indexed by Slot(iteration, slot) (use
    `.stream(batch, world, rank, workers)` for darkcfg.train.loop.fit: it has Stream's
    `batches(start_iteration)`), `val` indexed by image, and `collate`, which gives
      training:   images (N, C, H, W) float32 [0, 1] at the iteration's size, truth (N, M, 5)
      validation: images (N, C, h, w) at the cfg size, truth (N, M, 5) relative to the original
                  image, sizes (N, 2) original (width, height)
    with truth rows [x, y, w, h, class] relative and zero rows after the last box,
    M = the last detection layer's `max` (validation: at least that, every object kept).

    multiscale=False keeps every training batch at the cfg size whatever `random` says (for a
    network that cannot run at other input sizes)."""
    settings = DetectionSettings.from_network(net)
    if not multiscale and settings.random:
        settings = replace(settings, random=0.0)
    return open_detection_source(source, settings, seed, classes, train_size, val_size)


def open_detection_source(source: str | Path | None, settings: DetectionSettings, seed: int,
                          classes: int | None = None, train_size: int = 0, val_size: int = 0,
                          need: str = "all") -> DetectionSplits:
    """Where detection `--data` is dispatched: None is the embedded set, a `.data` file is
    Darknet's detection data (see detection_datasets). `need`: what open_set reads."""
    check_classes_option(classes, source)
    if source is None:
        return embedded_detection(settings, seed, classes, train_size, val_size)
    return file_detection(source, settings, seed, need)


def embedded_detection(settings: DetectionSettings, seed: int, classes: int | None = None,
                       train_size: int = 0, val_size: int = 0) -> DetectionSplits:
    net_classes = settings.classes
    check_classes_count(classes, net_classes, f"detects {net_classes} classes")
    k = classes or min(net_classes, DEFAULT_CLASSES)
    s = settings
    train_size, val_size = train_size or EMBEDDED_TRAIN, val_size or EMBEDDED_VAL
    train_src = EmbeddedDetection(train_size, k, s.channels, s.height, s.width, seed, 0)
    val_src = EmbeddedDetection(val_size, k, s.channels, s.height, s.width, seed, 1)
    used = f"{k} of the network's {net_classes} classes" if k < net_classes else f"{k} classes"
    more = f" (--classes K for up to {net_classes})" if k < net_classes else ""
    repeat = f", looks repeat beyond {DISTINCT}" if k > DISTINCT else ""
    description = (f"embedded detection set: {used}{more}{repeat}, {s.width}x{s.height}x"
                   f"{s.channels}, {train_size} train / {val_size} val images of 1-4 objects, "
                   f"seed {seed}; augment: {', '.join(s.honoured()) or 'none'}")
    return DetectionSplits(DetectionTrain(train_src, s, seed), DetectionEval(val_src, s),
                           collate, train_src.names, description, s, embedded=True,
                           warnings=list(s.notes))


def file_detection(source: str | Path, settings: DetectionSettings, seed: int,
                   need: str = "all") -> DetectionSplits:
    """Splits of a data set on disk in any format darkcfg.data.detection.formats reads (a
    Darknet .data file, a data.yaml, a COCO JSON, a VOC folder); every label checked first."""
    from darkcfg.data.detection.formats import open_set

    return set_detection(open_set(source, need=need), settings, seed)


def set_detection(data, settings: DetectionSettings, seed: int) -> DetectionSplits:
    """Splits of a read `formats.DetectionSet` (labels already checked)."""
    path = data.path
    mismatch = data.class_mismatch(settings.classes)  # the rule `data check --cfg` applies
    if mismatch is not None:
        raise CfgError(mismatch)
    train, valid = data.train, data.scored  # (each validation image scored once)
    warnings = list(settings.notes) + [w for w in [train.missing_warning("train images")] if w]
    if data.valid is not None and valid.missing_warning("valid images"):
        warnings.append(valid.missing_warning("valid images"))
    warnings += set_warnings(data.problems)
    # every image's header before the first iteration: a corrupt file is an error now
    check_image_headers(dict.fromkeys([*train.images, *valid.images]), str(path))
    c = settings.channels
    train_src = LabelledImages(train.images, Labels(train.boxes, train.missing), c)
    val_src = LabelledImages(valid.images, Labels(valid.boxes, valid.missing), c, scored=True)
    described = data.describe()
    description = (f"{described}; augment: {', '.join(settings.honoured()) or 'none'}")
    return DetectionSplits(DetectionTrain(train_src, settings, seed),
                           DetectionEval(val_src, settings, valid.difficult), collate,
                           data.names, description, settings, backup=data.backup,
                           warnings=warnings, difficult=valid.difficult)
