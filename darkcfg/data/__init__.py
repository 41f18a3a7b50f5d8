"""Training data: where samples come from, how [net] augments them, and a resumable order.

  base.py       DataSplits, DataError, the one image -> uint8 CHW tensor conversion
  embedded.py   the embedded, procedurally generated shapes (deterministic from the seed)
  datafile.py   the one Darknet .data reader and path resolver (classifier and detector data)
  sources.py    ImageFolder, Darknet classifier .data files, regression CSV, torchvision:NAME:ROOT
  augment.py    [net]'s classifier augmentations and the evaluation resize (transforms.v2)
  draws.py      Darknet's shared random draws (rand_scale)
  sampling.py   per-sample seeding, the resumable sampler, training stream and eval loader

Which sources a network can use is its task's business (`darkcfg.train.tasks`: `task.open_data`).
"""

from __future__ import annotations

from darkcfg.data.augment import Augment
from darkcfg.data.base import (
    DataError,
    DataSplits,
    check_classes_option,
    data_error,
    image_tensor,
    read_image,
)
from darkcfg.data.draws import rand_scale
from darkcfg.data.embedded import EmbeddedShapes, embedded_shapes
from darkcfg.data.sampling import (
    Repeated,
    ResumableSampler,
    Samples,
    Stream,
    default_workers,
    eval_loader,
    make_stream,
)
from darkcfg.data.sources import (
    Converted,
    ImageFiles,
    Tensors,
    class_csv,
    darknet_data,
    data_path,
    image_folder,
    open_images,
    read_data_file,
    regression_csv,
    torchvision_data,
)


def open_data(spec: str | None, task, seed: int, classes: int | None = None) -> DataSplits:
    """The data for `task` (a darkcfg.train.tasks.Task) from a --data argument: None is the embedded
    data (optionally only `classes` of the network's classes)."""
    return task.open_data(spec, seed, classes)


__all__ = [
    "Augment", "Converted", "DataError", "DataSplits", "EmbeddedShapes", "ImageFiles",
    "Repeated", "ResumableSampler", "Samples", "Stream", "Tensors", "check_classes_option",
    "darknet_data", "data_error",
    "data_path", "default_workers", "embedded_shapes", "eval_loader", "image_folder",
    "image_tensor", "make_stream", "open_data", "open_images", "rand_scale", "read_data_file",
    "read_image", "class_csv", "regression_csv", "torchvision_data",
]
