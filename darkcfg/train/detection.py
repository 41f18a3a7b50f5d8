"""The detection task: how a network with [yolo] (or other box-loss) heads trains and validates.

Loss: the sum of every head's `loss(x, truth, seen)` on its own input (its logged value the
mean over the heads, as Darknet prints it), `seen` = Darknet's
net.seen during that forward (images trained so far, this mini-batch included; the Trainer
passes it). Each head's loss returns `(loss, stats)`, stats being Darknet's printed line (avg IoU,
count, class/iou/total loss); they go to metrics.csv as `h<layer>_<stat>` and, the IoU and count,
to the progress bar.

Data: `darkcfg.data.detection.dataset` (the embedded detection set, or a Darknet `.data` file,
a data.yaml, a COCO JSON or a VOC folder: `darkcfg.data.detection.formats`),
batches indexed by (iteration, slot) so multi-scale (`random=`) sizes, augmentation and order
are pure functions of the seed and the iteration (exact resume).

Validation: Darknet's `-map` / `detector map` (darkcfg.detect.metrics): mAP@0.5 with the
per-class table, P/R/F1/avg IoU at 0.25, and COCO mAP@[.5:.95]; `<cfg>_best.weights` follows
mAP@0.5."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from cfgparse import CfgError
from darkcfg.console import warn
from darkcfg.data import DataSplits
from darkcfg.data.detection.augment import DetectionSettings
from darkcfg.data.detection.dataset import collate as detection_collate
from darkcfg.data.detection.dataset import open_detection_source
from darkcfg.detect.metrics import (
    MAP_CONF_THRESH,
    MAP_IOU_THRESH,
    DetectionMetrics,
    coco_available,
    evaluate,
    network_detections,
)
from darkcfg.train.tasks import TASKS, Task, TaskOptions

#: what each head's loss statistics contribute to metrics.csv (Darknet's per-layer line)
HEAD_STATS = ("avg_iou", "count", "class_loss", "iou_loss", "total_loss")


@dataclass
class DetectionTask(Task):
    """Boxes against detection heads (loss_target "boxes"): best = highest mAP@0.5."""

    settings: DetectionSettings | None = None
    map_points: int = 0  # 0 all-point, 11, 101 (--map-points)
    conf_thresh: float = MAP_CONF_THRESH
    iou_thresh: float = MAP_IOU_THRESH
    coco: bool = True  # COCO mAP@[.5:.95] (needs pycocotools)
    names: list[str] = field(default_factory=list)  # the data's classes (set by open_data)
    last: DetectionMetrics | None = field(default=None, repr=False)  # the last validation

    name: ClassVar[str] = "detect"
    kind: ClassVar[str] = "a detector"
    flags: ClassVar[tuple[str, ...]] = ("--map-points", "--darknet-build")
    metrics: ClassVar[tuple[str, ...]] = ("val_map50", "val_map50_95", "val_precision",
                                          "val_recall", "val_f1", "val_avg_iou")
    best: ClassVar[str] = "val_map50"
    higher_is_better: ClassVar[bool] = True
    best_on_tie: ClassVar[bool] = True  # src/detector.c train_detector: mAP >= best_map
    plots: ClassVar[tuple[tuple[str, str], ...]] = (("val_map50", "mAP@0.5"),
                                                    ("val_map50_95", "mAP@[.5:.95]"))
    plot_label: ClassVar[str] = "val mAP"

    def __post_init__(self):
        # per-head columns: known once the heads are
        self.stats = tuple(f"h{i}_{s}" for i in self.heads for s in HEAD_STATS)

    @classmethod
    def for_network(cls, net, heads: tuple[int, ...], cfg=None) -> DetectionTask:
        task = super().for_network(net, heads, cfg)
        task.settings = DetectionSettings.from_network(net)
        task.outputs = task.settings.classes
        return task

    def use_options(self, opts: TaskOptions) -> None:
        self.map_points = opts.map_points  # (checked by RunOptions)
        self.settings = self.settings.for_build(opts.darknet_build)
        if self.coco and not coco_available():  # said once, at start-up, not at a validation
            self.coco = False
            warn("pycocotools is not installed: validation reports Darknet's mAP@0.5, "
                 "precision, recall and F1 but not COCO mAP@[.5:.95] (pip install "
                 "'darkcfg[detect]' to add it)")

    def check_training(self, net) -> None:
        """`random=` multi-scale trains at sizes other than the cfg's: refuse (E305) a
        resize_step below 1 (Darknet divides by it) and a size the network cannot run at (a
        resize_step that is not a multiple of its stride, a [connected] layer), found by
        building it at each size on the meta device, instead of a crash at that iteration."""
        from builders import Network
        from darkcfg.data.detection.scales import possible_dims

        s = self.settings
        if not s.random:
            return
        head = [m for m in net.meta if m.index in self.heads][-1].block
        if s.resize_step < 1:
            raise net.net_block.error(
                "E305", f"resize_step={s.resize_step}: multi-scale training (random="
                f"{s.random:g} in the last [{head.name}]) steps sizes by it", "resize_step",
                hint="use resize_step=32 (Darknet's default), or random=0")
        blocks = [net.net_block, *(m.block for m in net.meta)]
        for w, h in possible_dims(s.width, s.height, s.random, s.resize_step):
            if (w, h) == (s.width, s.height):
                continue
            try:
                Network([blocks[0].with_values(width=w, height=h), *blocks[1:]],
                        flavor=net.info.flavor, device="meta")
            except CfgError as exc:
                inner = exc.first
                raise head.error(
                    "E305", f"multi-scale training (random={s.random:g}) trains at {w}x{h} "
                    f"(resize_step={s.resize_step}), where this network cannot run: "
                    f"{inner.path}:{inner.line}:{inner.column}: {inner.message}", "random",
                    hint="set [net] resize_step to a multiple of the network's stride (e.g. "
                    "32), or random=0") from None

    # -- data ---------------------------------------------------------------------------------
    def open_data(self, spec: str | None, seed: int, classes: int | None = None,
                  need: str = "all") -> DataSplits:
        splits = open_detection_source(spec, self.settings, seed, classes, need=need)
        for line in splits.warnings:
            warn(line)
        self.names = list(splits.names)
        return DataSplits(splits.train, splits.val, self.names, splits.description,
                          backup=splits.backup, augment=True, in_memory=False)

    def check_source(self, spec: str) -> None:
        from darkcfg.data.detection.formats import detect_format

        detect_format(Path(spec).expanduser())

    def prepare(self, splits: DataSplits, cfg, seed: int):
        """The detection sets augment (train) and resize (val) themselves."""
        return splits.train, splits.val

    collate = staticmethod(detection_collate)

    def stream(self, train_set, batch: int, world: int, rank: int, seed: int, device,
               workers: int):
        """(iteration, slot)-indexed batches: the seed is the dataset's."""
        from darkcfg.data.detection.dataset import DetectionStream

        return DetectionStream(train_set, batch, world, rank, workers,
                               pin_memory=torch.device(device).type == "cuda")

    # -- loss ---------------------------------------------------------------------------------
    def loss(self, net, x: torch.Tensor, targets: torch.Tensor, seen: int = 0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = self.head_inputs(net, x)
        total, stats = None, {}
        for i in self.heads:
            part, found = net.layers[i].loss(inputs[i].float(), targets, seen=seen)
            total = part if total is None else total + part
            for s in HEAD_STATS:
                stats[f"h{i}_{s}"] = torch.tensor(float(found.get(s, 0.0)))
        if len(self.heads) > 1:
            # Darknet's printed loss is the *mean* of the heads' costs (src/network.c
            # get_network_cost), while each head's delta reaches the network whole
            # (backward_yolo_layer): the value is shifted to the mean by a constant, the
            # gradient stays the sum's.
            value = total.detach()
            total = total + (value / len(self.heads) - value)
        return total, stats

    def progress(self, stats: dict) -> str:
        return "".join(f" h{i} iou {float(stats[f'h{i}_avg_iou']):.2f} "
                       f"n {float(stats[f'h{i}_count']):.0f}" for i in self.heads
                       if f"h{i}_avg_iou" in stats)

    # -- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, trainer, loader) -> dict[str, float]:
        detections, truths = network_detections(trainer.net, loader, trainer.device,
                                                classes=len(self.names), dist=trainer.dist)
        m = evaluate(detections, truths, self.names, self.iou_thresh, self.conf_thresh,
                     self.map_points, coco=self.coco)
        self.last = m
        found = {"val_map50": m.map50, "val_precision": m.precision, "val_recall": m.recall,
                 "val_f1": m.f1, "val_avg_iou": m.avg_iou}
        if m.map50_95 is not None:  # absent (an empty cell), not 0, when COCO mAP was skipped
            found["val_map50_95"] = m.map50_95
        return found

    def describe(self, metrics: dict[str, float]) -> str:
        """The per-class AP table and Darknet's summary lines (the last validation)."""
        if self.last is None:
            return super().describe(metrics)
        return self.last.table()

    def as_json(self, metrics: dict[str, float]) -> dict:
        return self.last.to_json() if self.last is not None else dict(metrics)

    def summary(self, row: dict) -> str:
        text = f"val mAP@0.5 {row['val_map50']:.3f}"
        if row.get("val_map50_95") is not None:
            text += f", mAP@[.5:.95] {row['val_map50_95']:.3f}"
        return text


TASKS["boxes"] = DetectionTask
