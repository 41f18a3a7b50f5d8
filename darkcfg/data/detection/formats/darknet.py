"""Darknet `.data` sets: read through darkcfg.data.detection.labels (paths, label files and
their checks are Darknet's), written as a `.data` file, a names file, image lists and a label
file next to each image (a plain `images/` folder keeps the labels beside the images, Darknet's
`replace_image_to_label`)."""

from __future__ import annotations

from pathlib import Path

from darkcfg.data.detection.formats.base import DetectionSet, Split
from darkcfg.data.detection.labels import collect_labels, open_detection_data


def read_darknet(path: Path, need: str = "all") -> DetectionSet:
    data = open_detection_data(path, need)
    problems = list(data.repeats)
    train_labels, bad = collect_labels(data.train_labels, data.classes)
    problems += bad
    train = Split.labelled(data.train, data.train_labels, train_labels)
    valid = None
    if not data.valid_is_train and data.valid:
        labels, bad = collect_labels(data.valid_labels, data.classes)
        problems += bad
        valid = Split.labelled(data.valid, data.valid_labels, labels)
    if data.difficult_labels:
        hard, bad = collect_labels(data.difficult_labels, data.classes)
        problems += bad
        target = valid if valid is not None else train
        if len(hard.boxes) != len(target.images):
            from cfgparse import CfgError, Diagnostic

            raise CfgError(Diagnostic("E901", f"the difficult list of '{path}' has "
                                      f"{len(hard.boxes)} images, the valid list "
                                      f"{len(target.images)}", str(path),
                                      hint="list the difficult images parallel to valid="))
        target.difficult = hard.boxes
    return DetectionSet(Path(path), "darknet", list(data.names), train, valid,
                        backup=data.backup, problems=problems, train_read=data.train_read)
