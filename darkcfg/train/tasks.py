"""What a network learns, as an object: the data it reads, how samples become a batch, its loss
over the network's loss layers, its validation metrics, the metrics.csv columns and what "best"
means.

`task_for(net, cfg)` picks the task from what the loss layers compare with (`Layer.loss_target`:
"classes" -> ClassifyTask, "values" -> RegressTask). A new kind of head (detection: "boxes")
adds one Task subclass and one entry in `TASKS`; the trainer, the loop, the log and the session
only call the methods below and never ask a layer its type.

The interface, in the order a run uses it:
  open_data(spec, seed, classes)   DataSplits from a --data argument (None: embedded data)
  prepare(splits, cfg, seed)       (train, val) datasets with the task's augmentations
  collate(samples)                 DataLoader collate_fn -> (images, targets tensors)
  loss(net, x, targets, seen)      (summed loss of every head, {stat: tensor}) for one mini-batch
  evaluate(trainer, loader)        {metric: float} over a validation loader (all ranks)
  score(metrics)                   a number where higher is better ("best" weights)
  describe(metrics)                the line --valid prints; summary(row) the end-of-run words
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch.utils.data import default_collate

from cfgparse import CfgError
from darkcfg.data import (
    Augment,
    DataSplits,
    Samples,
    check_classes_option,
    class_csv,
    data_error,
    data_path,
    embedded_shapes,
    open_images,
    regression_csv,
)
from darkcfg.train.distributed import all_sum


class TaskOptions(Protocol):
    """The run's options a task reads (session.RunOptions has them, checked)."""

    map_points: int  # detectors' mAP: 0 all-point, 11 or 101
    darknet_build: str  # detectors: whose augmentation is reproduced

#: Columns every task's metrics.csv starts with.
STEP_COLUMNS = ("iteration", "epoch", "loss", "avg_loss", "lr", "images_per_s")


class NoLossError(CfgError):
    """The network has no layer with a loss darkcfg can train (or none of a known kind)."""


@dataclass
class Task:
    """Base: a network's loss layers and its input shape; subclasses say what they learn."""

    outputs: int  # classes, or regression targets
    inputs: tuple[int, ...]  # per-sample input shape: (C, H, W) or (N,)
    heads: tuple[int, ...] = ()  # indices of the loss layers (Network.loss_layers)

    name: ClassVar[str] = "task"  # settings.yaml's `task`
    kind: ClassVar[str] = "a network without a known task"  # what the network is, for messages
    #: command-line flags only this kind of task reads (session.refuse_unread_options refuses
    #: them for the others, instead of ignoring them)
    flags: ClassVar[tuple[str, ...]] = ()
    #: validation metrics, in metrics.csv order; `best` is the one "best" weights follow
    metrics: ClassVar[tuple[str, ...]] = ("val_loss",)
    best: ClassVar[str] = "val_loss"
    higher_is_better: ClassVar[bool] = False
    #: a validation that ties the best so far replaces `<cfg>_best.weights` (Darknet's
    #: `mAP >= best_map` for detectors); False: the first of equal scores stays
    best_on_tie: ClassVar[bool] = False
    #: what `batch_sums` adds up per validation batch, each divided by the sample count at the
    #: end (fixed names: every rank reduces the same shape, even with an empty share)
    sums: ClassVar[tuple[str, ...]] = ("val_loss",)
    #: per-step statistics `loss` returns beside the loss (progress bar and metrics.csv)
    stats: ClassVar[tuple[str, ...]] = ()
    #: chart.png's third panel: (metric, label) pairs and the axis label; () for none
    plots: ClassVar[tuple[tuple[str, str], ...]] = ()
    plot_label: ClassVar[str] = ""

    @classmethod
    def options(cls, cfg) -> dict:
        """Constructor arguments this task reads from [net] (a NetConfig)."""
        return {}

    @classmethod
    def for_network(cls, net, heads: tuple[int, ...], cfg=None) -> Task:
        """The task for `net` whose loss layers are `heads` (task_for picked the class)."""
        shape = net.input_shape
        inputs = (shape.c, shape.h, shape.w) if shape.c * shape.h * shape.w else (shape.size,)
        outputs = net.meta[heads[-1]].input.size
        return cls(outputs, inputs, heads, **(cls.options(cfg) if cfg is not None else {}))

    def use_options(self, opts: TaskOptions) -> None:
        """Read the run's command-line options that concern this task (RunOptions)."""

    def use_top(self, top: int | None) -> None:
        """A .data file's top= (Darknet's validate_classifier reports top-k with k = top=):
        tasks that rank classes add it to what `evaluate` reports."""

    @property
    def summed(self) -> tuple[str, ...]:
        """The names of `batch_sums`' values: `sums`, and what the run's options add."""
        return self.sums

    def check_training(self, net) -> None:
        """Raise a located CfgError, before any data is read, for what `net` cannot train with
        this task (validation does not call it)."""

    @property
    def columns(self) -> tuple[str, ...]:
        """metrics.csv header."""
        return (*STEP_COLUMNS, *self.stats, *self.metrics)

    # -- data ---------------------------------------------------------------------------------
    def open_data(self, spec: str | None, seed: int, classes: int | None = None,
                  need: str = "all") -> DataSplits:
        """`need`: what the command uses ("all", "valid", "names": darkcfg.data.datafile.NEEDS);
        a source may read less for less."""
        raise NotImplementedError

    def check_source(self, spec: str) -> None:
        """open_data's error for a --data naming nothing there, without reading any data (for
        `train --processes N`, whose ranks would each say it)."""
        if spec != "digits" and not spec.startswith("torchvision:"):
            data_path(spec)

    def prepare(self, splits: DataSplits, cfg, seed: int):
        """(train, val) datasets: [net]'s augmentations on training images, the evaluation
        resize on validation images; plain samples for non-image data."""
        if not splits.augment:
            return Samples(splits.train, None, seed), \
                (Samples(splits.val, None, seed) if splits.val is not None else None)
        train_aug, val_aug = Augment(cfg, True), Augment(cfg, False)
        train = Samples(splits.train, train_aug, seed, random=train_aug.random)
        val = Samples(splits.val, val_aug, seed) if splits.val is not None else None
        return train, val

    def collate(self, samples: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """DataLoader collate_fn: same-sized targets stack (a detection task pads boxes)."""
        return default_collate(samples)

    def stream(self, train_set, batch: int, world: int, rank: int, seed: int, device,
               workers: int):
        """The endless training batches `fit` reads (`.batches(start_iteration)`)."""
        from darkcfg.data import make_stream

        return make_stream(train_set, batch, world, rank, seed, device, workers, self.collate)

    # -- loss ---------------------------------------------------------------------------------
    @property
    def collect(self) -> list[int]:
        """Layers whose outputs the loss needs: each head's input (layer i-1; none for i = 0)."""
        return sorted({i - 1 for i in self.heads if i > 0})

    def head_inputs(self, net, x: torch.Tensor, out: dict | None = None) -> dict[int, torch.Tensor]:
        """{head index: that head's input} from one forward (or from `out` already computed)."""
        if out is None:
            out = net(x, collect=self.collect) if self.collect else {}
        return {i: out[i - 1] if i > 0 else x for i in self.heads}

    def loss(self, net, x: torch.Tensor, targets: torch.Tensor, seen: int = 0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss Darknet trains with: the sum of every head's `Layer.loss` on its input,
        and the per-step statistics named in `stats` (device tensors, no host sync). `seen` is
        Darknet's net.seen during this forward (images trained so far, this batch included)."""
        inputs = self.head_inputs(net, x)
        truth = self.truth(targets, inputs[self.heads[-1]])
        total = sum(self.head_loss(net.layers[i], inputs[i], truth, seen) for i in self.heads)
        return total, {}

    def check_targets(self, net, targets: torch.Tensor) -> None:
        """Raise a ValueError for targets this task cannot train on (Trainer.step calls it on
        the targets as given, before they move to the device)."""

    def truth(self, targets: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """What the heads' `loss` compares with (the targets as collated, by default)."""
        return targets

    def head_loss(self, layer, x: torch.Tensor, truth: torch.Tensor, seen: int) -> torch.Tensor:
        return layer.loss(x, truth)

    # -- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, trainer, loader) -> dict[str, float]:
        """The validation metrics over `loader` (this rank's share, summed over ranks)."""
        net = trainer.net
        net.eval()
        sums = torch.zeros(1 + len(self.summed), dtype=torch.float64, device=trainer.device)
        for images, targets in loader:
            x, y = trainer.to_device(images), targets.to(trainer.device)
            with trainer.autocast():
                out = net(x, collect=sorted({*self.collect, *self.heads}))
            sums[0] += len(x)
            sums[1:] += self.batch_sums(net, x, y, out)
        net.train()
        totals = all_sum(trainer.dist, sums).tolist()
        n = max(totals[0], 1)
        return {name: total / n for name, total in zip(self.summed, totals[1:], strict=True)}

    def batch_sums(self, net, x, y, out: dict) -> torch.Tensor:
        """One validation batch's sums, in `summed` order (float64 tensor)."""
        inputs = {i: v.float() for i, v in self.head_inputs(net, x, out).items()}
        # against the targets as given (no label smoothing): the loss a reader expects
        loss = sum(self.head_loss(net.layers[i], inputs[i], y, 0) for i in self.heads)
        return loss.double().reshape(1) * len(x)

    def score(self, metrics: dict[str, float]) -> float:
        """Higher is better: what `<cfg>_best.weights` follows."""
        value = metrics[self.best]
        return value if self.higher_is_better else -value

    def describe(self, metrics: dict[str, float]) -> str:
        """What --valid prints."""
        return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())

    def as_json(self, metrics: dict[str, float]) -> dict:
        """What --valid --format json prints."""
        return dict(metrics)

    def progress(self, stats: dict) -> str:
        """The step statistics on the progress bar."""
        return "".join(f" {k} {float(v):.3g}" for k, v in stats.items())

    def summary(self, row: dict) -> str:
        """The end-of-run words about the last validation ('' for none)."""
        return ""

    @property
    def predicts(self) -> bool:
        """Whether --predict (top-k class names of image files) applies."""
        return False

    def scores(self, trainer, x: torch.Tensor) -> torch.Tensor:
        """Per-sample class probabilities of images `x` for --predict (when `predicts`)."""
        raise NotImplementedError


@dataclass
class ClassifyTask(Task):
    """Class indices against [softmax] heads: top-1/top-5, best = highest top-1. With [net]
    label_smooth_eps the heads see Darknet's smoothed truth (fill_truth_smooth: 1 - eps for the
    class, eps / (k - 1) for every other one)."""

    label_smooth_eps: float = 0.0
    top_k: int | None = None  # a .data file's top= besides 1 and 5: validation adds top-k

    name = "classify"
    kind = "a classifier (its metrics are top-1/top-5 accuracy)"
    metrics = ("val_top1", "val_top5", "val_loss")
    best = "val_top1"
    higher_is_better = True
    plots = (("val_top1", "top-1"), ("val_top5", "top-5"))
    plot_label = "val accuracy"
    sums = ("val_loss", "val_top1", "val_top5")

    @classmethod
    def options(cls, cfg) -> dict:
        return {"label_smooth_eps": cfg.label_smooth_eps}

    def open_data(self, spec: str | None, seed: int, classes: int | None = None,
                  need: str = "all") -> DataSplits:
        check_classes_option(classes, spec)
        if spec is None:
            if len(self.inputs) != 3:
                raise data_error("the embedded dataset is images for a classifier; this "
                                 "network takes flat inputs", "--data",
                                 "pass --data X.csv (each row: the inputs, then the class)")
            return embedded_shapes(self.inputs, self.outputs, seed, classes)
        if len(self.inputs) == 1 and not spec.startswith("torchvision:") and \
                data_path(spec).suffix == ".csv":
            return class_csv(data_path(spec), self.inputs, self.outputs)
        splits = open_images(spec, self.inputs, seed, need)
        if len(splits.names) > self.outputs:
            raise data_error(f"the data has {len(splits.names)} classes but the network "
                             f"outputs {self.outputs}", spec,
                             f"set the last [connected]/[convolutional] to "
                             f"{len(splits.names)} outputs")
        return splits

    def check_targets(self, net, targets: torch.Tensor) -> None:
        """Class indices (N,) lie in 0..outputs-1: torch's cross-entropy said "Target 7 is out of
        bounds" (an IndexError; a device-side assert on CUDA) and took -100 as "ignore this
        sample". Checked on CPU tensors only (as a loader gives them): a device tensor's check
        would wait for the device every step."""
        if targets.dim() != 1 or targets.device.type != "cpu" or not len(targets) or \
                targets.dtype == torch.bool:
            return
        low, high = (float(v) for v in targets.aminmax())
        if low >= 0 and high < self.outputs:
            return
        bad = low if low < 0 else high
        head = self.heads[-1]
        raise ValueError(f"class target {bad:g} is out of range: layer {head} "
                         f"([{net.meta[head].type}]) has {self.outputs} classes, numbered "
                         f"0..{self.outputs - 1}")

    def truth(self, targets: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not self.label_smooth_eps or targets.dim() != 1:
            return targets
        k, eps = like[0].numel(), self.label_smooth_eps
        smooth = torch.full((len(targets), k), eps / max(k - 1, 1), device=like.device)
        return smooth.scatter_(1, targets.long().view(-1, 1), 1 - eps)

    def use_top(self, top: int | None) -> None:
        self.top_k = top if top not in (None, 1, 5) else None

    @property
    def summed(self) -> tuple[str, ...]:
        return (*self.sums, f"val_top{self.top_k}") if self.top_k else self.sums

    def batch_sums(self, net, x, y, out: dict) -> torch.Tensor:
        loss = super().batch_sums(net, x, y, out)
        scores = out[self.heads[-1]].float().reshape(len(x), -1)
        _, top = ranked(scores, max(5, self.top_k or 0))
        hit = top == y.view(-1, 1)
        found = [loss[0], hit[:, :1].sum().double(), hit[:, :5].any(1).sum().double()]
        if self.top_k:
            found.append(hit[:, :self.top_k].any(1).sum().double())
        return torch.stack(found)

    def summary(self, row: dict) -> str:
        return f"val top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"

    @property
    def predicts(self) -> bool:
        return len(self.inputs) == 3

    def scores(self, trainer, x: torch.Tensor) -> torch.Tensor:
        head = self.heads[-1]
        return trainer.net(trainer.to_device(x), collect=[head])[head].float()


def ranked(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest scores of each row and their classes, best first. Of equal scores the lower
    class comes first, as in Darknet's top_k (src/utils.c); torch.topk picks any of them, which
    moved top-1/top-5 of tied outputs (an untrained or saturated net) with the kernel."""
    values, classes = scores.sort(dim=-1, descending=True, stable=True)
    return values[..., :k], classes[..., :k]


@dataclass
class RegressTask(Task):
    """Vectors against [cost] (or [logistic]) heads: best = lowest validation loss."""

    name = "regress"
    kind = "a regressor (its metric is the loss)"
    logistic: bool = False  # the last head is a [logistic] (Darknet's multi-label classifier)

    @classmethod
    def for_network(cls, net, heads: tuple[int, ...], cfg=None) -> RegressTask:
        task = super().for_network(net, heads, cfg)
        task.logistic = net.meta[heads[-1]].type == "logistic"
        return task

    def open_data(self, spec: str | None, seed: int, classes: int | None = None,
                  need: str = "all") -> DataSplits:
        check_classes_option(classes, spec)
        if spec is None:
            raise data_error("the embedded dataset is images for a classifier; this network "
                             "regresses", "--data",
                             "pass --data X.csv (regression) or another data source")
        if not spec.startswith("torchvision:") and data_path(spec).suffix == ".csv":
            return regression_csv(data_path(spec), self.inputs, self.outputs)
        splits = open_images(spec, self.inputs, seed)
        raise data_error(f"{splits.description.split(':')[0]} holds labelled images, but this "
                         "network regresses", spec,
                         "a [logistic] head (Darknet's multi-label classifier) trains here on "
                         "X.csv rows only (the inputs, then a 0/1 target per output): for one "
                         "class per image end the network with [softmax]" if self.logistic
                         else "pass --data X.csv")


#: Layer.loss_target -> the task that trains such heads.
TASKS: dict[str, type[Task]] = {"classes": ClassifyTask, "values": RegressTask}
#: Tasks of packages above this module, imported (once) when first asked for: the detection task
#: lives with its data and metrics in darkcfg/train/detection, which builds on this module.
LAZY_TASKS = {"boxes": "darkcfg.train.detection"}


def _known(target: str) -> bool:
    module = LAZY_TASKS.pop(target, None)
    if module is not None:
        importlib.import_module(module)  # it adds itself to TASKS
    return target in TASKS


def task_for(net, cfg=None) -> Task:
    """The task that trains `net`: from its loss layers (Network.loss_layers) and, for the
    options a task reads from [net], its NetConfig."""
    heads = tuple(net.loss_layers)
    if not heads:
        outs = sorted({m.type for i, m in enumerate(net.meta) if i in net.output_indices})
        last = net.meta[-1].block if net.meta else net.net_block
        raise NoLossError(last.diagnostic(
            "E300", f"darkcfg cannot train this network: its output ({', '.join(outs)}) "
            "defines no loss",
            hint="classifiers ([softmax]), regressors ([connected] + [cost]) and detectors "
            "([yolo]) train; any network can be built, summarised and run (--summary, "
            "--dump-outputs)"))
    targets = [net.layers[i].loss_target for i in heads]
    odd = next((i for i, t in zip(heads, targets, strict=True)
                if t != targets[-1] or not _known(t)), None)
    if odd is not None:
        raise NoLossError(net.meta[odd].block.diagnostic(
            "E300", f"darkcfg cannot train this network: this layer's loss compares with "
            f"'{net.layers[odd].loss_target}' but the last loss layer's with "
            f"'{targets[-1]}'" if targets[-1] in TASKS else
            f"darkcfg has no training task for losses against '{targets[-1]}'",
            hint=f"one network trains one task: {', '.join(sorted({*TASKS, *LAZY_TASKS}))}"))
    return TASKS[targets[-1]].for_network(net, heads, cfg)

