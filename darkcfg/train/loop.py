"""The training step (`Trainer`) and the training loop (`fit`).

`Trainer(net, cfg, device).step(images, targets)` is one Darknet iteration: `batch` images in
`subdivisions` mini-batches, gradients accumulated, one optimizer update with `lr_at(k)` for the
k-th update. It is the runner's own step; benchmarks call it directly on in-memory data.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from cfgparse import CfgError, Diagnostic
from cfgparse.rules import subdivisions_rule
from darkcfg.config import NetConfig
from darkcfg.stopping import drop_hung_up_terminal, stop_signals, takes_over
from darkcfg.train.distributed import Dist, broadcast_flag
from darkcfg.train.tasks import Task, task_for


class NonFiniteLoss(RuntimeError):
    def __init__(self, iteration: int, value: float):
        super().__init__(f"the loss is {value} at iteration {iteration}")
        self.iteration, self.value = iteration, value


class NonFiniteWeights(NonFiniteLoss):
    """The loss of the last step was finite but its update left NaN or Inf in the weights or
    batch-norm statistics (a diverging run's last finite step): not checkpointed."""

    def __init__(self, iteration: int, found: str):
        RuntimeError.__init__(self, f"the network is not finite after iteration {iteration} "
                              f"({found})")
        self.iteration, self.value = iteration, float("nan")


class _NoCudaRuntimeNotice(logging.Filter):
    """torch.compile on a CPU-only host makes torch.utils.cpp_extension log 'No CUDA runtime is
    found, using CUDA_HOME=...' (a warning meant for CUDA extension builds) into a training run's
    output; every other record of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


_NO_CUDA_RUNTIME_NOTICE = _NoCudaRuntimeNotice()  # one instance: addFilter adds it once


def make_deterministic() -> None:
    """--deterministic: the same run gives the same bits on CUDA too (the CPU already does). cuDNN
    autotuning picks kernels by timing, and atomic-add reductions (convolution weight gradients,
    scatter-adds) sum in arrival order: measured on an H200, a straight and a killed-and-resumed
    run ended with different final weights without this. Ops with no deterministic CUDA kernel
    warn (torch names them) rather than stop the run. Call before the first CUDA matrix product
    (cuBLAS reads its workspace setting when it starts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


class LossModel(nn.Module):
    """(images, targets, seen) -> the task's (loss, stats): what DDP and torch.compile wrap."""

    def __init__(self, net, task: Task):
        super().__init__()
        self.net, self.task = net, task

    def forward(self, x: torch.Tensor, target: torch.Tensor, seen: int = 0):
        return self.task.loss(self.net, x, target, seen)


@torch.no_grad()
def darknet_init(net, flavor: str | None = None) -> None:
    """Darknet's initial weights for training from scratch, scale s = sqrt(2/fan_in) (He):
    convolution kernels s * U(-1, 1) in AlexeyAB's fork (src/convolutional_layer.c
    make_convolutional_layer; its rand_normal is commented out there) and s * N(0, 1) in
    pjreddie's, connected matrices s * U(-1, 1) in both (src/connected_layer.c
    make_connected_layer), biases 0. The uniform kernels have a sqrt(3) smaller norm than normal
    ones: behind batch-norm that is a 3x larger effective step (the output does not depend on
    the kernel's norm, its gradient scales with 1/norm), and the [yolo] inputs start smaller.
    torch's default init (uniform with a = sqrt(5)) starves deep plain nets such as VGG of
    signal. `flavor` None: the network's own (net.info.flavor)."""
    flavor = flavor or getattr(getattr(net, "info", None), "flavor", "alexeyab")
    for module in net.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            fan_in = module.weight[0].numel() if not module.transposed else \
                module.weight.shape[0] * module.weight[0, 0].numel() // module.groups
            scale = (2 / fan_in) ** 0.5
            if flavor == "pjreddie":
                module.weight.normal_(0, scale)
            else:
                module.weight.uniform_(-scale, scale)
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
                 amp: bool | torch.dtype | None = None, channels_last: bool | None = None,
                 batch_is_global: bool = True, task: Task | None = None):
        self.device = device = torch.device(device)
        self.dist = dist = dist or Dist()
        self.cfg, self.net = cfg, net
        self.task = task = task or task_for(net, cfg)
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
        self.stats: dict[str, torch.Tensor] = {}  # the last step's task statistics (device)

        self.frozen = frozen_prefix(net, freeze)
        self.temporarily_frozen = [(m.index, m.stopbackward) for m in net.meta
                                   if m.stopbackward > 1]
        for i, layer in enumerate(net.layers):
            if i < self.frozen or i > max(task.heads) or net.meta[i].block.bool("dont_update"):
                layer.requires_grad_(False)
        net.to(device)
        shape = net.input_shape
        self.amp_dtype = amp_dtype_for(device, amp)
        if channels_last is None:
            # oneDNN's bfloat16 kernels (AMX, AVX512-BF16) want NHWC: yolov3-tiny 160 b16 step
            # 133 ms channels-last vs 164 ms NCHW; in float32 the CPU gains little (0.98-1.1x)
            channels_last = device.type == "cuda" or self.amp_dtype is not None
        self.channels_last = channels_last and shape.c * shape.h * shape.w > 0  # image input
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        if dist.enabled and device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(net)

        self.optimizer = make_optimizer(net, cfg, device, self.global_batch)
        # GradScaler only matters for float16 (bfloat16 has float32's range); torch runs it on
        # the CPU too, so the CUDA path's scaling logic is exercised by CPU tests
        # Darknet's deltas are O(1) per output and summed over the mini-batch: torch's default
        # initial scale (65536) overflows float16 on the first steps (measured on the CPU), each
        # overflow a skipped update; 1024 leaves headroom and still grows every 2000 steps.
        self.scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 10,
                                           enabled=self.amp_dtype == torch.float16)
        if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True  # --deterministic keeps cuDNN's fixed choice

        # torch.compile: the network only. The heads' losses have data-dependent shapes (truth
        # counts), and compiling them crashed Inductor in torch 2.14 (aten.set_ in a fake-tensor
        # meta kernel; measured on yolov3-tiny). The compiled wrapper shares the parameters, so
        # checkpoints and .weights still read `self.net`.
        if compile and device.type != "cuda":
            logging.getLogger("torch.utils.cpp_extension").addFilter(_NO_CUDA_RUNTIME_NOTICE)
        self.model: nn.Module = LossModel(torch.compile(net) if compile else net, task)
        self.ddp = None
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # buffers (BN statistics) follow rank 0 at every forward; SyncBN does better on CUDA
            self.ddp = self.model = DDP(self.model, device_ids=[device] if device.type == "cuda"
                                        else None)

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
        """One iteration; returns the mean loss as a device tensor (no host sync). The task's
        statistics, averaged over the mini-batches, are left in `self.stats`."""
        # the k-th update uses batch_num = k (src/network.c get_current_rate, update_network)
        k = self.iteration + 1
        lr = self.cfg.lr_at(k)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.task.check_targets(self.net, targets)
        x, y = self.to_device(images), targets.to(self.device, non_blocking=True)
        parts = self.subdivisions
        xs, ys = (x.chunk(parts), y.chunk(parts)) if parts > 1 else ((x,), (y,))
        total, stats, seen = None, {}, self.images_seen
        for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)):
            sync = self.ddp.no_sync() if self.ddp is not None and j < len(xs) - 1 \
                else nullcontext()
            seen += len(xj) * self.dist.world  # Darknet's net.seen counts this mini-batch
            with sync, self.autocast():
                loss, part = self.model(xj, yj, seen)
            if len(xs) > 1:
                loss = loss / len(xs)
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
            for name, value in part.items():
                stats[name] = stats.get(name, 0) + value.detach() / len(xs)
        for index, until in self.temporarily_frozen:  # AlexeyAB: stopbackward=N for N updates
            if k - 1 < until:
                for layer in self.net.layers[: index + 1]:
                    for p in layer.parameters():
                        p.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration, self.stats = k, stats
        self.images_seen += self.global_batch
        return total

    @property
    def lr(self) -> float:
        return self.cfg.lr_at(max(self.iteration, 1))

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "optimizer_params": self._param_names(),  # what each optimizer index is
                "scaler": self.scaler.state_dict(), "iteration": self.iteration,
                "images_seen": self.images_seen}

    def checkpoint_problem(self, state) -> str:
        """Why `state` is not a checkpoint of this network ('' when it is one)."""
        if not isinstance(state, dict):
            return "it holds no checkpoint"
        needed = ("model", "optimizer", "scaler", "iteration", "images_seen")
        missing = [k for k in needed if k not in state]
        if "model" not in state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return "it is a plain state_dict (weights only, no training state)"
        if missing:
            return f"it has no {', '.join(repr(k) for k in missing)}"
        for key in ("iteration", "images_seen"):
            value = state[key]
            if type(value) is not int or value < 0:
                return f"its {key!r} is {value!r}, not a count"
        if state["images_seen"] >= 2**64:  # (each save writes it in the .weights header)
            return (f"its 'images_seen' is {state['images_seen']}, more than the 64-bit 'seen' "
                    "of a .weights file holds")
        model = state["model"]
        if not isinstance(model, dict):
            return "its 'model' is not a state_dict"
        own = self.net.state_dict()
        differ = [k for k in own if k not in model or not isinstance(model[k], torch.Tensor)
                  or model[k].shape != own[k].shape]
        extra = [k for k in model if k not in own]
        if differ or extra:
            first = (differ or extra)[0]
            return (f"it was saved from another network ({len(differ)} of {len(own)} tensors "
                    f"missing or of another shape, {len(extra)} unknown; first: {first})")
        optimizer = state["optimizer"]
        groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
        if isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups):
            saved, own_kind = optimizer_kind(groups[0]), optimizer_kind(
                self.optimizer.param_groups[0])
            if saved != own_kind:  # (torch's load then failed on a missing 'step' or 'momentum')
                return (f"its optimizer state is {saved}'s and this run's optimizer is "
                        f"{own_kind} (adam={int(own_kind == 'Adam')}): the state of one does "
                        "not continue the other")
        slots = self._optimizer_slots(state)
        if isinstance(slots, str):
            return slots
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for index, slot in slots.items():
            if not isinstance(slot, dict):
                return "its optimizer state is damaged"
            for name, value in slot.items():
                if isinstance(value, torch.Tensor) and value.dim() and \
                        value.shape != params[index].shape:
                    return (f"its optimizer's {name} of parameter {index} has shape "
                            f"{tuple(value.shape)}, the parameter {tuple(params[index].shape)}")
        return ""

    def _param_names(self) -> list[str]:
        """The network's name of each parameter the optimizer holds, in its order (the indices
        of its state_dict); '' for the placeholder of a network with nothing to train."""
        names = {id(p): name for name, p in self.net.named_parameters()}
        return [names.get(id(p), "") for group in self.optimizer.param_groups
                for p in group["params"]]

    def _optimizer_slots(self, state: dict) -> dict | str:
        """The checkpoint's per-parameter optimizer state keyed by this optimizer's indices
        (or why it cannot be). A checkpoint names its optimizer's parameters, so a resume with
        other frozen layers, per-layer learning_rate= or decay= groups its parameters
        differently and still finds each one's momentum (a newly trained one starts without,
        as Darknet's always do); one without the names needs the same groups."""
        optimizer = state["optimizer"]
        slots = optimizer.get("state", {}) if isinstance(optimizer, dict) else None
        groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
        names = state.get("optimizer_params")
        if not isinstance(slots, dict) or not isinstance(groups, list) or \
                not all(isinstance(g, dict) for g in groups):
            return "its optimizer state is damaged"
        count = sum(len(g.get("params", ())) for g in groups)
        if names is None:  # (written before the names: the groups must match one to one)
            if len(groups) != len(self.optimizer.param_groups) or any(
                    len(a.get("params", ())) != len(b["params"])
                    for a, b in zip(groups, self.optimizer.param_groups, strict=True)):
                return ("its optimizer state belongs to another setup (other frozen layers, "
                        "per-layer learning_rate=, or decay switched between 0 and not 0)")
            names = self._param_names()
        if not isinstance(names, list) or len(names) != count or \
                not all(isinstance(n, str) for n in names):
            return "its optimizer's parameter names ('optimizer_params') are damaged"
        where = {name: i for i, name in enumerate(self._param_names()) if name}
        mapped = {}
        for index, slot in slots.items():
            if not isinstance(index, int) or not 0 <= index < count:
                return "its optimizer state is damaged"
            if names[index] in where:  # (a parameter frozen now keeps no state)
                mapped[where[names[index]]] = slot
        return mapped

    def check_trainable(self, freeze: int = 0) -> None:
        """Training needs one layer that takes a gradient (else backward has nothing to do)."""
        net = self.net
        empty_steps = subdivisions_rule(net.net_block) if net.net_block is not None else None
        if empty_steps is not None:  # the linter's E305: train on what the cfg says, or refuse
            raise CfgError(empty_steps)
        if not any(p.requires_grad for p in net.parameters()):
            last = max((i for i, layer in enumerate(net.layers)
                        if any(True for _ in layer.parameters())), default=-1)
            why = (f"--freeze {freeze}" if freeze > last else
                   "stopbackward/dont_update in the cfg") if last >= 0 else "it has no weights"
            raise CfgError(Diagnostic(
                "E100", f"nothing to train: no layer of the network takes a gradient ({why})",
                "--freeze" if freeze > last >= 0 else str(net.net_block.path
                                                          if net.net_block else "[net]"),
                hint=f"freeze fewer layers (--freeze {last} or less leaves layer {last} "
                "trainable)" if last >= 0 else "add a layer with weights"))

    def load_state_dict(self, state: dict, where: str = "<checkpoint>") -> None:
        """Continue from a darkcfg checkpoint; anything else (a plain state_dict, another cfg's
        checkpoint, one without the optimizer) is a located E901 before anything changes."""
        problem = self.checkpoint_problem(state)
        if problem:
            raise CfgError(Diagnostic(
                "E901", f"cannot resume from '{where}': {problem}", where,
                hint="--resume takes the checkpoint.pt of a darkcfg run of this cfg; to start "
                "from other weights use --weights (without --resume)"))
        self.net.load_state_dict(state["model"])
        # this run's groups: torch's load would put back the saved groups' settings too, and a
        # momentum=, decay=, B1= ... changed in the cfg or by --set for the resume was silently
        # the old one (Darknet reads them from the cfg it resumes with); only the
        # per-parameter state (momentum, Adam's moments) is the run's
        slots = self._optimizer_slots(state)
        params = [(p, group) for group in self.optimizer.param_groups for p in group["params"]]
        for index, (p, group) in enumerate(params):
            if slots and index not in slots and group.get("momentum"):
                # a layer trained only from now on (unfrozen): torch's fused SGD takes no
                # mixture of buffers and none; a zero buffer is the first step's own value
                slots[index] = {"momentum_buffer": torch.zeros_like(p)}
        self.optimizer.load_state_dict({"state": slots, "param_groups":
                                        self.optimizer.state_dict()["param_groups"]})
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.images_seen = state["iteration"], state["images_seen"]


def optimizer_kind(group: dict) -> str:
    """'Adam' or 'SGD' from a param group's settings (make_optimizer makes one or the other)."""
    return "Adam" if "betas" in group else "SGD"


def amp_dtype_for(device: torch.device, amp: bool | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype: `amp` None = on for CUDA only (bfloat16 where the GPU has it, else
    float16), True = on (the CPU autocasts to bfloat16), False = off, or a dtype to use."""
    if isinstance(amp, torch.dtype):
        return amp
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


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
    # torch's fused kernels: one pass over each parameter instead of a Python loop of small
    # ops; on the CPU 4x faster than the default update for yolov3-tiny (bench: 341 -> 83 ms)
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if cfg.adam:
        # Darknet's Adam runs on gradients summed over the batch: its eps is eps/B on the mean
        return torch.optim.Adam(param_groups, lr=cfg.learning_rate, betas=(cfg.B1, cfg.B2),
                                eps=cfg.eps / images_per_iteration, **fused)
    return torch.optim.SGD(param_groups, lr=cfg.learning_rate, momentum=cfg.momentum,
                           dampening=0, **fused)


# -- the loop -------------------------------------------------------------------------------------
@dataclass
class Schedule:
    valid_every: int = 0  # 0: no validation
    checkpoint_every: int = 100
    save_every: int = 0  # 0: no numbered weights
    sync_every: int = 10  # DDP: how often ranks agree on a stop request

    def __post_init__(self) -> None:
        # valid_every -1 is "the default" (four validations); other negatives mean nothing
        for flag, value, low in (("--valid-every", self.valid_every, -1),
                                 ("--checkpoint-every", self.checkpoint_every, 0),
                                 ("--save-every", self.save_every, 0),
                                 ("--sync-every", self.sync_every, 1)):
            if value < low:
                raise CfgError(Diagnostic("E100", f"{flag} {value}: must be {max(low, 0)} or "
                                          "more", flag, hint=f"use {flag} N with N >= "
                                          f"{max(low, 0)} (0: never)" if low < 1 else
                                          f"use {flag} 1 or more"))


class StopWhileWaiting(BaseException):  # noqa: N818 - a signal, as KeyboardInterrupt is
    """A stop signal that came while the run waited for data (the next batch, a validation):
    raised by the handler, so that a loader that is slow or stuck cannot hold up the stop.
    A BaseException, so that no `except Exception` on the way (torch's loader has some) eats it."""


class StopFlag:
    """SIGTERM, SIGINT and SIGHUP ask for a clean stop at the end of the current iteration, or
    at once while the run waits for data (`waiting`)."""

    RETRY_S = 0.05  # a signal that came while a batch was being received: look again then

    def __init__(self):
        self.requested, self.signal = False, None
        self._old, self._pid = {}, os.getpid()
        self._waiting = self._retrying = False

    @contextmanager
    def waiting(self, interruptible: bool = True):
        """A wait for data that a stop signal ends (StopWhileWaiting), the last iteration
        complete. Not under DDP (`interruptible` False): a rank that stopped there would miss
        the collectives the others are in, the checkpoint's included."""
        if interruptible and self.requested:  # asked for before it: no wait (a validation
            raise StopWhileWaiting  # after the signal's step ran in full)
        self._waiting = interruptible
        try:
            yield
        finally:
            self._waiting = False
            self._stop_retrying()

    def __enter__(self):
        for sig in stop_signals():
            if not takes_over(sig):  # nohup: a closed terminal does not stop the run
                continue
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        alarm = getattr(signal, "SIGALRM", None)
        if self._old and alarm is not None and signal.getsignal(alarm) is signal.SIG_DFL:
            self._old[alarm] = signal.signal(alarm, lambda signum, frame: self._end_wait(frame))
        return self

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a loader process forked here, before its init ignores
            return  # the stop signals (loader_worker_init): the stop is the trainer's
        drop_hung_up_terminal(signum)
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested, self.signal = True, signal.Signals(signum).name
        self._end_wait(frame)

    def _end_wait(self, frame) -> None:
        """StopWhileWaiting, where the wait may end (a stop was asked for during `waiting`);
        elsewhere in the wait, a SIGALRM to look again shortly."""
        self._retrying = False
        if not (self._waiting and self.requested):
            return
        if _may_end_wait_at(frame):
            self._waiting = False
            raise StopWhileWaiting
        if getattr(signal, "SIGALRM", None) in self._old:
            self._retrying = True
            signal.setitimer(signal.ITIMER_REAL, self.RETRY_S)

    def _stop_retrying(self) -> None:
        if self._retrying:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._retrying = False

    def __exit__(self, *exc):
        self._stop_retrying()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _may_end_wait_at(frame) -> bool:
    """Whether an exception raised at `frame` (where a signal's handler runs) leaves no transfer
    half done: blocked on the loader's pipe (selectors) or queue (threading: pin_memory's), or
    outside the loader's and multiprocessing's code (a validation's forward). Half way through
    receiving a batch it is not: the loader process's side of the connection then printed a
    BrokenPipeError traceback."""
    code = frame.f_code if frame is not None else None
    if code is not None and (os.path.basename(code.co_filename), code.co_name) in (
            ("selectors.py", "select"), ("threading.py", "wait")):
        return True
    while frame is not None:
        where = frame.f_code.co_filename
        if "multiprocessing" in where or os.path.join("torch", "utils", "data") in where:
            return False
        frame = frame.f_back
    return True


def fit(trainer: Trainer, stream, val_loader, log, schedule: Schedule) -> str:
    """Train until max_batches; returns "done" or the name of the signal that stopped it.
    `log` (darkcfg.train.outputs.RunLog) records, plots and saves; only rank 0 writes files."""
    cfg, dist = trainer.cfg, trainer.dist
    batches = stream.batches(trainer.iteration)
    alone = not dist.enabled
    with closing(batches), StopFlag() as stop:  # closing: the loader's workers stop
        while trainer.iteration < cfg.max_batches:
            try:
                with stop.waiting(alone):
                    images, targets = next(batches)
            except StopWhileWaiting:  # (a loader that never delivered used to hold the run)
                log.checkpoint(trainer)
                return stop.signal or "signal"
            started = time.perf_counter()
            loss = trainer.step(images, targets)
            log.step(trainer.iteration, loss, trainer.lr, trainer.global_batch, started,
                     trainer.stats)
            k = trainer.iteration
            val = None
            if val_loader is not None and schedule.valid_every and (
                    k % schedule.valid_every == 0 or k == cfg.max_batches):
                log.pause()
                try:
                    with stop.waiting(alone):
                        val = trainer.task.evaluate(trainer, val_loader)
                except StopWhileWaiting:  # the validation is dropped; the step is kept below
                    trainer.net.train()
            if val is not None:
                log.validated(k, val, trainer)
            stopping = (stop.requested if not dist.enabled else
                        k % schedule.sync_every == 0 and
                        broadcast_flag(dist, stop.requested, trainer.device))
            if schedule.save_every and k % schedule.save_every == 0:
                log.save_numbered(trainer)
            if stopping and k >= cfg.max_batches:
                break  # stopped in the last iteration: the run is complete, finish it (below)
            if stopping or (schedule.checkpoint_every and k % schedule.checkpoint_every == 0):
                log.checkpoint(trainer)
            if stopping:
                return stop.signal or "signal"
        # under the flag too: a stop signal while the last checkpoint and the final weights are
        # written lets them finish (it used to cost every iteration since the last checkpoint)
        log.finish(trainer)
    return "done"
