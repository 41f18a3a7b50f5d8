"""What every data source shares: errors, the splits a source returns, and the one conversion of
a decoded image (PIL or tensor) into the uint8 CHW tensor the loaders carry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from cfgparse import CfgError, Diagnostic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """A data problem found while loading (possibly in a worker): the runner prints it, exit 2.
    A plain-string exception, so it survives the trip back from DataLoader workers."""


def data_error(message: str, where: str, hint: str = "") -> CfgError:
    return CfgError(Diagnostic("E901", message, where, hint=hint))


def check_classes_option(classes: int | None, spec) -> None:
    """`--classes N` picks N of the network's classes for the embedded data; any other data
    brings its own classes. Every task's data dispatch asks here."""
    if classes is not None and spec is not None:
        raise data_error("--classes is for the embedded dataset", "--classes",
                         "the classes of --data come from the data")


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset | None
    names: list[str]  # class names (empty for regression)
    description: str
    backup: str | None = None  # a .data file's backup directory
    augment: bool = True  # image data takes [net] augmentations
    in_memory: bool = False  # samples cost no decoding (the loader needs no helper process)


def image_tensor(image, channels: int) -> torch.Tensor:
    """A PIL image or an image tensor as a contiguous uint8 (C, H, W) tensor with `channels`
    channels. PIL images decode to grey (1 channel) or RGB; a grey image is repeated to more
    channels, a colour one averaged to grey for 1 and repeated cyclically for other counts (a
    4-channel net sees R, G, B, R)."""
    if not isinstance(image, torch.Tensor):
        arr = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        image = torch.from_numpy(arr.copy())
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    have = image.shape[0]
    if have != channels:
        if have > 1 and channels == 1:
            image = image.float().mean(0, keepdim=True).to(image.dtype)
        else:
            image = image.repeat(-(-channels // have), 1, 1)[:channels]
    return image.contiguous()


def loader_worker_init(worker_id: int) -> None:
    """DataLoader worker_init_fn: loader processes ignore SIGTERM and SIGINT. A stop signal sent
    to the whole process group (systemd, Slurm, `kill -- -PGID`, Ctrl-C in a terminal) must not
    kill them under the training process, which finishes its iteration, checkpoints and then
    stops them itself (and they exit on their own should it die)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def read_image(path: str, channels: int) -> torch.Tensor:
    """An image file as uint8 CHW; an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return image_tensor(im, channels)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}") from None


def write_image(path: str, tensor: torch.Tensor) -> None:
    """A uint8 CHW tensor as PNG (examples of the embedded data for tests and docs)."""
    from PIL import Image

    arr = tensor.permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)
