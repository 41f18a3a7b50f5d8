"""The detection heads, one module per section type: its layer, builder (registered in the
section registry), typed loss settings, loss returning `(loss, stats)` and decoding. What they
share is in `base` (the `DetectionHead` protocol); box geometry is `builders.boxes`.

Importing this package registers the built-in heads."""

from __future__ import annotations

from . import contrastive, detection, gaussian_yolo, region, yolo
from .base import DataOptions, Deltas, DetectionHead, HeadDecoding, HeadParts, Stats
from .contrastive import Contrastive
from .detection import Detection, DetectionLoss
from .gaussian_yolo import GaussianYoloHead
from .region import Region, RegionLoss
from .yolo import YoloHead, YoloLoss

__all__ = ["Contrastive", "DataOptions", "Deltas", "Detection", "DetectionHead",
           "DetectionLoss", "GaussianYoloHead", "HeadDecoding", "HeadParts", "Region",
           "RegionLoss", "Stats", "YoloHead", "YoloLoss", "contrastive", "detection",
           "gaussian_yolo", "region", "yolo"]
