"""The training step (`Trainer`) and the training loop (`fit`).

`Trainer(net, cfg, device).step(images, targets)` is one Darknet iteration: `batch` images in
`subdivisions` mini-batches, gradients accumulated, one optimizer update with `lr_at(k)` for the
k-th update. It is the runner's own step; benchmarks call it directly on in-memory data.
"""

from __future__ import annotations

import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from cfgparse import CfgError, Diagnostic

from .config import NetConfig
from .distributed import Dist, all_sum, broadcast_flag


class DetectionNotSupported(CfgError):
    pass


class NonFiniteLoss(RuntimeError):
    def __init__(self, iteration: int, value: float):
        super().__init__(f"the loss is {value} at iteration {iteration}")
        self.iteration, self.value = iteration, value


def loss_layer_index(net) -> int:
    """The layer whose loss trains `net` (Network.loss_index), or a clear error for heads that
    have none yet. Detection heads own a loss (loss_target "boxes", builders/head_loss.py) that
    this classifier/regressor loop does not feed yet."""
    index = net.loss_index
    if index is None or net.layers[index].loss_target == "boxes":
        heads = sorted({m.type for i, m in enumerate(net.meta) if i in net.output_indices})
        last = net.meta[-1].block if net.meta else net.net_block
        raise DetectionNotSupported(last.diagnostic(
            "E300", f"darkcfg cannot train this network yet: its output ({', '.join(heads)}) "
            "defines no loss; detection training is not supported yet",
            hint="classifiers ([softmax]) and regressors ([connected] + [cost]) train; a "
            "detector can still be built, summarised and run (--summary, --dump-outputs)"))
    return index


class LossModel(nn.Module):
    """images, targets -> the loss layer's loss on its input (what DDP and compile wrap).
    With [net] label_smooth_eps, class targets become Darknet's smoothed truth vectors
    (fill_truth_smooth: 1 - eps for the class, eps / (k - 1) for every other one)."""

    def __init__(self, net, loss_index: int, label_smooth_eps: float = 0.0):
        super().__init__()
        self.net, self.loss_index = net, loss_index
        layer = net.layers[loss_index]
        self.smooth = label_smooth_eps if layer.loss_target == "classes" else 0.0

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feature = self.loss_index - 1
        if feature >= 0:
            x = self.net(x, collect=[feature])[feature]
        if self.smooth and target.dim() == 1:
            k = x[0].numel()
            truth = torch.full((len(target), k), self.smooth / max(k - 1, 1), device=x.device)
            target = truth.scatter_(1, target.long().view(-1, 1), 1 - self.smooth)
        return self.net.layers[self.loss_index].loss(x, target)


@torch.no_grad()
def darknet_init(net) -> None:
    """Darknet's initial weights for training from scratch: convolution kernels N(0, 2/fan_in)
    (He), connected matrices U(-sqrt(2/inputs), +sqrt(2/inputs)), biases 0. torch's default
    init (uniform with a = sqrt(5)) starves deep plain nets such as VGG of signal."""
    for module in net.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            fan_in = module.weight[0].numel() if not module.transposed else \
                module.weight.shape[0] * module.weight[0, 0].numel() // module.groups
            module.weight.normal_(0, (2 / fan_in) ** 0.5)
        elif isinstance(module, nn.Linear):
            bound = (2 / module.in_features) ** 0.5
            module.weight.uniform_(-bound, bound)
        else:
            continue
        if module.bias is not None:
            module.bias.zero_()


def frozen_prefix(net, freeze: int = 0) -> int:
    """Layers 0..n-1 get no gradient: --freeze n, or Darknet's stopbackward=1 at layer n-1 (that
    layer and every earlier one are skipped by backward)."""
    marked = [m.index + 1 for m in net.meta if m.stopbackward == 1]
    return max([freeze, *marked])


class Trainer:
    def __init__(self, net, cfg: NetConfig, device: torch.device | str = "cpu", *,
                 dist: Dist | None = None, freeze: int = 0, compile: bool = False,
                 amp: bool | None = None, channels_last: bool | None = None,
                 batch_is_global: bool = True):
        self.device = device = torch.device(device)
        self.dist = dist = dist or Dist()
        self.cfg, self.net = cfg, net
        self.loss_index = loss_layer_index(net)
        # Darknet's `batch` is images per iteration; with DDP it is split over the processes
        # (the default, so results do not depend on the process count) or taken per process.
        share = dist.world if batch_is_global else 1
        if cfg.images_per_iteration % (share * cfg.subdivisions) and share > 1:
            raise CfgError(Diagnostic(
                "E305", f"batch={cfg.batch} does not split into {share} processes x "
                f"{cfg.subdivisions} subdivisions", "[net]",
                hint=f"use a batch divisible by {share * cfg.subdivisions}, or "
                "--batch-per-process"))
        self.batch = cfg.images_per_iteration // share  # this process's images per iteration
        self.subdivisions = min(cfg.subdivisions, self.batch)
        self.global_batch = self.batch * dist.world
        self.iteration, self.images_seen = 0, 0

        self.frozen = frozen_prefix(net, freeze)
        self.temporarily_frozen = [(m.index, m.stopbackward) for m in net.meta
                                   if m.stopbackward > 1]
        for i, layer in enumerate(net.layers):
            if i < self.frozen or i > self.loss_index or net.meta[i].block.bool("dont_update"):
                layer.requires_grad_(False)
        net.to(device)
        shape = net.input_shape
        if channels_last is None:
            channels_last = device.type == "cuda"
        self.channels_last = channels_last and shape.c * shape.h * shape.w > 0  # image input
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        if dist.enabled and device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(net)

        self.optimizer = make_optimizer(net, cfg, device, self.global_batch)
        if amp is None:
            amp = device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
            if amp and device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self.model: nn.Module = LossModel(net, self.loss_index, cfg.label_smooth_eps)
        self.ddp = None
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # buffers (BN statistics) follow rank 0 at every forward; SyncBN does better on CUDA
            self.ddp = self.model = DDP(self.model, device_ids=[device] if device.type == "cuda"
                                        else None)
        if compile:
            self.model = torch.compile(self.model)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)  # images travel as bytes; Darknet feeds [0, 1] floats
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One iteration; returns the mean loss as a device tensor (no host sync)."""
        k = self.iteration + 1  # the k-th update uses batch_num = k (SEMANTICS.md §4)
        lr = self.cfg.lr_at(k)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x, y = self.to_device(images), targets.to(self.device, non_blocking=True)
        parts = self.subdivisions
        xs, ys = (x.chunk(parts), y.chunk(parts)) if parts > 1 else ((x,), (y,))
        total = None
        for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)):
            sync = self.ddp.no_sync() if self.ddp is not None and j < len(xs) - 1 \
                else nullcontext()
            with sync, self.autocast():
                loss = self.model(xj, yj)
            if len(xs) > 1:
                loss = loss / len(xs)
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        for index, until in self.temporarily_frozen:  # AlexeyAB: stopbackward=N for N updates
            if k - 1 < until:
                for layer in self.net.layers[: index + 1]:
                    for p in layer.parameters():
                        p.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration = k
        self.images_seen += self.global_batch
        return total

    @property
    def lr(self) -> float:
        return self.cfg.lr_at(max(self.iteration, 1))

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "iteration": self.iteration,
                "images_seen": self.images_seen}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.images_seen = state["iteration"], state["images_seen"]


def make_optimizer(net, cfg: NetConfig, device: torch.device,
                   images_per_iteration: int) -> torch.optim.Optimizer:
    """Darknet's update as a torch optimizer, one param group per (layer lr scale, decay):
    decay only on weight matrices/kernels (ndim > 1), never on biases or BN scales (§4)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for meta, layer in zip(net.meta, net.layers, strict=True):
        for p in layer.parameters():
            if p.requires_grad and id(p) not in seen:  # [conv] share_index reuses parameters
                seen.add(id(p))
                decay = cfg.decay if p.dim() > 1 else 0.0
                groups.setdefault((meta.lr_scale, decay), []).append(p)
    param_groups = [{"params": ps, "lr_scale": scale, "weight_decay": decay,
                     "lr": cfg.learning_rate * scale} for (scale, decay), ps in groups.items()]
    if not param_groups:  # everything frozen: keep a valid optimizer with nothing to do
        param_groups = [{"params": [torch.zeros(0, device=device, requires_grad=True)],
                         "lr_scale": 1.0}]
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.adam:
        # Darknet's Adam runs on gradients summed over the batch: its eps is eps/B on the mean
        return torch.optim.Adam(param_groups, lr=cfg.learning_rate, betas=(cfg.B1, cfg.B2),
                                eps=cfg.eps / images_per_iteration, **fused)
    return torch.optim.SGD(param_groups, lr=cfg.learning_rate, momentum=cfg.momentum,
                           dampening=0, **fused)


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(trainer: Trainer, loader, classify: bool) -> dict:
    """Top-1 / top-5 accuracy (classifiers) and the mean loss over `loader` (this rank's share;
    summed over ranks)."""
    net, index = trainer.net, trainer.loss_index
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=trainer.device)  # n, top1, top5, loss
    for images, targets in loader:
        x, y = trainer.to_device(images), targets.to(trainer.device)
        with trainer.autocast():
            out = net(x, collect=[index - 1, index] if index > 0 else [index])
        feats = (out[index - 1] if index > 0 else x).float()
        sums[0] += len(x)
        sums[3] += net.layers[index].loss(feats, y).double() * len(x)
        if classify:
            scores = out[index].float().reshape(len(x), -1)
            top = scores.topk(min(5, scores.shape[1]), 1).indices
            hit = top == y.view(-1, 1)
            sums[1] += hit[:, :1].sum()
            sums[2] += hit.any(1).sum()
    net.train()
    n, top1, top5, loss = all_sum(trainer.dist, sums).tolist()
    n = max(n, 1)
    result = {"val_loss": loss / n}
    if classify:
        result.update(val_top1=top1 / n, val_top5=top5 / n)
    return result


# -- the loop -------------------------------------------------------------------------------------
@dataclass
class Schedule:
    valid_every: int = 0  # 0: no validation
    checkpoint_every: int = 100
    save_every: int = 0  # 0: no numbered weights
    sync_every: int = 10  # DDP: how often ranks agree on a stop request


class StopFlag:
    """SIGTERM/SIGINT ask for a clean stop at the end of the current iteration."""

    def __init__(self):
        self.requested, self.signal = False, None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested, self.signal = True, signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def fit(trainer: Trainer, stream, val_loader, log, schedule: Schedule, classify: bool) -> str:
    """Train until max_batches; returns "done" or the name of the signal that stopped it.
    `log` (training.outputs.RunLog) records, plots and saves; only rank 0 writes files."""
    cfg, dist = trainer.cfg, trainer.dist
    batches = stream.batches(trainer.iteration)
    with StopFlag() as stop:
        while trainer.iteration < cfg.max_batches:
            images, targets = next(batches)
            started = time.perf_counter()
            loss = trainer.step(images, targets)
            log.step(trainer.iteration, loss, trainer.lr, trainer.global_batch, started)
            k = trainer.iteration
            val = evaluate(trainer, val_loader, classify) if val_loader is not None and (
                schedule.valid_every and (k % schedule.valid_every == 0 or
                                          k == cfg.max_batches)) else None
            if val is not None:
                log.validated(k, val, trainer)
            stopping = (stop.requested if not dist.enabled else
                        k % schedule.sync_every == 0 and
                        broadcast_flag(dist, stop.requested, trainer.device))
            if schedule.save_every and k % schedule.save_every == 0:
                log.save_numbered(trainer)
            if stopping or (schedule.checkpoint_every and k % schedule.checkpoint_every == 0):
                log.checkpoint(trainer)
            if stopping:
                return stop.signal or "signal"
    log.finish(trainer)
    return "done"
