"""Puts a run together for runner.py: cfg + overrides -> network, data, Trainer, RunLog."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from builders.atomic import check_folder, ensure_folder, hold_folder, remove_stale_temps
from cfgparse import CfgError, Diagnostic
from cfgparse.errors import WARNING
from cfgparse.rules import net_rules
from darkcfg.config import cfg_with_overrides
from darkcfg.console import say, warn
from darkcfg.data import (
    Augment,
    DataError,
    DataSplits,
    Samples,
    default_workers,
    eval_loader,
    read_image,
)
from darkcfg.data.base import undecodable_warning
from darkcfg.model import (
    build_network,
    check_count,
    check_seed,
    device_memory,
    load_any_weights,
    named_device,
    non_finite,
    option_error,
    pick_device,
)
from darkcfg.train import distributed
from darkcfg.train.allocator import keep_freed_memory
from darkcfg.train.checkpoint import format_problem, load_checkpoint, set_rng_states
from darkcfg.train.loop import Schedule, Trainer, darknet_init, fit, make_deterministic
from darkcfg.train.outputs import (
    CHECKPOINT,
    RunLog,
    names_change,
    read_settings,
    resume_changes,
    run_cfg_replaces,
    write_run_cfg,
    write_settings,
)
from darkcfg.train.tasks import Task, ranked, task_for


def workers_for(opts, splits: DataSplits, train_set: Samples, device, world: int) -> int:
    if opts.workers is not None:
        return opts.workers
    return default_workers(device, world,
                           busy=getattr(train_set, "random", False) or not splits.in_memory)


@dataclass
class RunOptions:
    cfg_path: str
    name: str
    out: Path
    data: str | None = None
    classes: int | None = None  # embedded data: use only this many of the network's classes
    seed: int = 0
    device: str | None = None
    flavor: str = "alexeyab"
    sets: tuple[str, ...] = ()
    weights: str | None = None
    cutoff: int | None = None
    freeze: int = 0
    resume: str | bool = False
    compile: bool = False
    amp: bool | None = None
    workers: int | None = None
    batch_per_process: bool = False
    schedule: Schedule = None  # type: ignore[assignment]
    progress: bool = True
    explicit_out: bool = False
    explicit_seed: bool = False  # --seed given (else valid/predict take a run's recorded seed)
    map_points: int = 0  # detectors' mAP: 0 all-point, 11 or 101 (--map-points)
    darknet_build: str = "opencv"  # detectors: whose augmentation (--darknet-build)
    max_memory: int | None = None  # bytes; None: the device's memory
    force: bool = False  # train even when the estimate is over max_memory
    deterministic: bool = False  # the same bits on CUDA too (make_deterministic)
    partial: bool = False  # --weights may leave tensors unfilled (transfer learning)
    # the task-specific options given on the command line (--map-points, --darknet-build):
    # refused when the network's task does not read them (refuse_unread_options)
    given: tuple[str, ...] = ()
    # a validation follows the training (the flag form's --train --valid): a data set without
    # a validation split is refused before the training, not after it
    then_valid: bool = False

    def __post_init__(self) -> None:
        """Values no run can use are refused here, whichever command built the options."""
        check_seed(self.seed)
        if self.device and self.device != "auto":
            named_device(self.device)  # every command: a device this machine does not have
        check_count("--workers", self.workers, "the number of loader processes")
        check_count("--freeze", self.freeze, "the number of frozen layers")
        check_count("--cutoff", self.cutoff, "the number of layers")
        if self.classes is not None and self.classes < 1:
            raise option_error("--classes", f"--classes {self.classes}: need at least 1",
                               "use --classes 1 or more (or leave it out: all)")
        from darkcfg.detect.metrics import MAP_POINTS

        if self.map_points not in MAP_POINTS:
            raise option_error("--map-points", f"--map-points {self.map_points}: use 0 "
                               "(all-point), 11 or 101", "see --help")
        if self.resume and self.weights:
            # one would silently replace the other: --resume restores every weight
            raise option_error("--resume", "--resume and --weights both set the weights",
                               "--resume continues a run (its checkpoint has the weights); "
                               "--weights starts a new one: pass one of them")


#: what each task-specific option sets, for the refusal of one the task does not read
TASK_OPTIONS = {"--map-points": "the AP interpolation of detectors' mAP",
                "--darknet-build": "whose augmentation detectors train with"}


def refuse_unread_options(opts: RunOptions, task: Task) -> None:
    """E100 at a task-specific option the network's task does not read (`--map-points` on a
    classifier was silently ignored)."""
    for flag in opts.given:
        if flag not in task.flags:
            what = TASK_OPTIONS.get(flag, "a setting of another kind of network")
            raise option_error(flag, f"{flag} sets {what}, but '{Path(opts.cfg_path).name}' is "
                               f"{task.kind}: nothing would read it",
                               f"leave {flag} out (it is for detectors: [yolo], [region], "
                               "[detection] heads)")


def refuse_endless(net, cfg) -> None:
    if cfg.max_batches <= 0:
        raise net.net_block.error("E305", "max_batches is 0 (Darknet: train forever); darkcfg "
                                  "needs a stop", "max_batches",
                                  hint="set max_batches=N in [net] or pass --set max_batches=N")


def check_before_ranks(opts: RunOptions) -> None:
    """What every rank of `train --processes N` would refuse alike, said once before they
    start: the cfg with its --set values, a network no task trains, an option its task does not
    read, a --data that is not there (the data itself is read by each rank)."""
    net, cfg, _ = build_network(opts.cfg_path, list(opts.sets), opts.flavor, opts.seed,
                                device="meta", guard=False)
    refuse_endless(net, cfg)
    task = task_for(net, cfg)
    refuse_unread_options(opts, task)
    if opts.data is not None:
        task.check_source(opts.data)


def check_memory(opts: RunOptions, device: torch.device) -> tuple[int, int] | None:
    """Refuse, before allocating anything, a network whose training would not fit (the
    checker's estimate from a meta build: E401), unless --force. Returns (the estimated bytes
    training needs, the limit), or None when forced."""
    if opts.force:
        return None
    from builders.memory import guard_memory

    meta, _, _ = build_network(opts.cfg_path, list(opts.sets), opts.flavor, opts.seed,
                               device="meta")
    limit = opts.max_memory or device_memory(device)
    return guard_memory(meta, limit)["training_bytes"], limit


RUN_FILES = (CHECKPOINT, "metrics.csv")  # a folder holding either already holds a run


def recorded_settings(out: Path) -> dict:
    """The settings.yaml of a run in `out` ({} when there is none or it does not read)."""
    return read_settings(out / "settings.yaml") or {}


def recorded_data(out: Path, flag: str) -> str | None:
    """The --data a run in `out` recorded (settings.yaml) for `flag` (--resume, --weights) to
    take, if it was not the embedded set; else None. A recorded path that does not open from
    here (moved, or relative to another working folder) is E901: --resume went on with the
    embedded set behind a one-line warning, and valid scored it without a word."""
    data = recorded_settings(out).get("data")
    if not isinstance(data, str) or data == "embedded":
        return None
    if data == "digits" or data.startswith("torchvision:") or os.path.exists(data):
        return data
    raise CfgError(Diagnostic(
        "E901", f"{flag}: the run in '{out}' trained on '{data}' (its settings.yaml), which "
        "does not exist from here", str(out / "settings.yaml"),
        hint=f"pass --data with where '{data}' is now (a relative path is taken from the "
        "working folder; the run started in another one, or the data moved)"))


def _embedded_classes(out: Path) -> int | None:
    """The --classes of a run in `out` on the embedded set (settings.yaml), else None."""
    classes = recorded_settings(out).get("classes")
    return classes if isinstance(classes, int) and not isinstance(classes, bool) and \
        classes > 0 else None


def run_folder(resume: str | bool, out: Path) -> Path:
    """The folder of the run `--resume` continues: its own --out, or the folder of the
    checkpoint (or the run folder) named."""
    if not isinstance(resume, str):
        return out
    source = Path(resume)
    return source if source.is_dir() else source.parent


def refuse_existing_run(out: Path, dist: distributed.Dist, device) -> None:
    """A fresh --train (no --resume) never reuses a run folder: it would drop that run's
    metrics.csv and replace its checkpoint, so forgetting --resume after a crash would lose
    the run. Refuse before anything is written; the user chooses --resume or a new --out. Under
    DDP every rank looks before any rank writes (the flag is a collective), and all refuse."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if distributed.broadcast_flag(dist, bool(found), device):
        resumable = CHECKPOINT in found or not found  # (nothing found: rank 0 found it)
        raise CfgError(Diagnostic(
            "E901", f"'{out}' already holds a run ({', '.join(found) or 'on rank 0'}): a fresh "
            "--train there would replace it", str(out),
            hint="continue it with --resume, or start a new run with --out NEW_FOLDER (or "
            "delete the folder)" if resumable else "that run stopped before its first "
            "checkpoint, so there is nothing to resume: start a new run with --out NEW_FOLDER, "
            "or delete the folder"))


# Layer keys Darknet's training reads that darkcfg's trainer does not act on, with what Darknet
# does with them (every layer's keys are marked read by the graph, so nothing else reports them).
UNHONOURED_LAYER_KEYS = {
    "onlyforward": "Darknet does not backpropagate through this layer",
    "train_only_bn": "Darknet trains only the batch-norm parameters of this and earlier layers",
    "burnin_update": "an AlexeyAB option of this layer's update during burn_in",
    "clip": "AlexeyAB constrains this layer's weights to +-clip after each update",
}


def unhonoured_layer_keys(net) -> list[Diagnostic]:
    """A W301 warning at each layer key (set to non-zero) that training would silently ignore."""
    found = []
    for meta in net.meta:
        for key, darknet in UNHONOURED_LAYER_KEYS.items():
            opt = meta.block.options.get(key)
            if opt is not None and opt.value:
                found.append(meta.block.diagnostic(
                    "W301", f"{key}={opt.raw} is not honoured by darkcfg's trainer ({darknet}): "
                    "it trains as if the key were not set", key, severity=WARNING,
                    hint=f"remove {key}= to silence this, or use --freeze / stopbackward= / "
                    "dont_update=1 to keep layers from training"))
    return found


def refuse_resuming_over_another_run(resume: str | bool, out: Path, dist: distributed.Dist,
                                     device) -> None:
    """`--resume CKPT` of a run in another folder continues it in `out`: into a new folder
    (a copy that goes its own way) that is fine, but a folder that holds another run would have
    its checkpoint replaced and its metrics.csv mixed with this run's rows."""
    if not isinstance(resume, str):
        return  # out's own checkpoint.pt
    folder = run_folder(resume, out)
    try:
        elsewhere = folder.resolve() != out.resolve()
    except OSError:
        return
    found = [name for name in RUN_FILES if (out / name).exists()] if elsewhere else []
    if distributed.broadcast_flag(dist, bool(found), device):
        raise CfgError(Diagnostic(
            "E901", f"--resume '{resume}' continues a run of '{folder}', but '{out}' already "
            f"holds another run ({', '.join(found) or 'on rank 0'}): its checkpoint and "
            "metrics would be replaced", str(out),
            hint=f"continue it in its own folder (--out {folder}), or give a new --out"))


def refuse_replacing_files(out: Path, name: str, dist: distributed.Dist, device,
                           replaces_cfg=lambda path: True) -> None:
    """A fresh run writes settings.yaml, chart.png, `<name>.cfg` (where `replaces_cfg` says
    that would replace another file) and `<name>_{last,final,best,N}.weights`:
    an --out (or backup=) folder that already holds one of them without a run (an image of the
    data set named chart.png, the weights of a Darknet run in its backup folder) would lose it.
    Refused before anything is written, as a folder holding a run is."""
    def written(path: Path) -> bool:
        if path.name in ("settings.yaml", "chart.png"):
            return True
        if path.name == f"{name}.cfg":
            return replaces_cfg(path)
        suffix = path.stem[len(name) + 1:] if path.stem.startswith(f"{name}_") else ""
        return path.suffix == ".weights" and (suffix in ("last", "final", "best")
                                              or suffix.isdecimal())

    found = sorted(p.name for p in out.iterdir() if written(p)) if out.is_dir() else []
    if distributed.broadcast_flag(dist, bool(found), device):
        shown = f"'{found[0]}'" + (f" (and {len(found) - 1} more)" if len(found) > 1 else "") \
            if found else "files (on rank 0)"
        raise CfgError(Diagnostic(
            "E901", f"'{out}' already holds {shown}, which a fresh --train there would "
            "replace", str(out / found[0]) if found else str(out),
            hint="give a new --out (or move those files away)"))


def refuse_non_finite_weights(net, weights: str) -> None:
    """Weights with NaN or Inf make the first loss NaN (E500, whose hint blames the learning
    rate and the data): refused before the run writes anything, naming the file."""
    bad = non_finite(net)
    if bad:
        raise CfgError(Diagnostic(
            "E902", f"--weights '{weights}': {bad}: training from them stops at its first "
            "iteration with a NaN loss", str(weights),
            hint="use weights saved before the run diverged (an earlier <cfg>_N.weights), or "
            "train without --weights"))


def refuse_weights_the_run_replaces(weights: str | None, out: Path, name: str) -> None:
    """--weights may not be a file this run writes (`OUT/<name>_{last,final,best,N}.weights`,
    e.g. a pretrained file copied into the --out or backup= folder): its first save would
    replace the weights it started from."""
    if not weights:
        return
    source = Path(weights)
    try:
        inside = source.resolve().parent == out.resolve()
    except OSError:
        return
    suffix = source.stem[len(name) + 1:] if source.stem.startswith(f"{name}_") else ""
    if inside and source.suffix == ".weights" and (suffix in ("last", "final", "best")
                                                   or suffix.isdecimal()):
        raise CfgError(Diagnostic(
            "E901", f"--weights '{weights}' is a name this run writes in '{out}': its first "
            "save would replace the weights it starts from", str(weights),
            hint="copy the file out of that folder (or rename it), or give another --out; to "
            "continue a darkcfg run, use --resume"))


def train(opts: RunOptions) -> tuple[str, Trainer]:
    dist, device = distributed.setup(opts.device)
    try:
        with contextlib.ExitStack() as held:
            return _train(opts, dist, device, held)
    finally:
        distributed.teardown(dist)


def _train(opts: RunOptions, dist, device, held: contextlib.ExitStack) -> tuple[str, Trainer]:
    if opts.explicit_out and dist.main:
        check_folder(opts.out, "--out")  # a file in the way fails now, not after the build
    source = run_folder(opts.resume, opts.out)  # (its settings.yaml says how it ran)
    if opts.resume and opts.data is None:
        data = recorded_data(source, "--resume")
        if data is not None:  # `--resume` continues the run: on its data, unless told otherwise
            say(f"--resume: the run's data, {data} (its settings.yaml)")
            opts = replace(opts, data=data)
        elif opts.classes is None and (classes := _embedded_classes(source)):
            # (`make train` trains the embedded set's first 10 of VGG-16's 1000 classes)
            say(f"--resume: the run's data, the embedded set's first {classes} classes (its "
                "settings.yaml)")
            opts = replace(opts, classes=classes)
    if opts.deterministic:
        make_deterministic()
    need = check_memory(opts, device)
    if device.type == "cpu" and need is not None and 2 * need[0] <= need[1]:
        # the step's big tensors keep their pages (darkcfg.train.allocator); that raises the
        # peak (up to +38% measured), so only with room for it, and not under --force
        keep_freed_memory()
    net, cfg, overrides = build_network(opts.cfg_path, list(opts.sets), opts.flavor, opts.seed,
                                        guard=False)  # check_memory's is training's
    for w in net.warnings:
        warn(w)
    refuse_endless(net, cfg)
    task = task_for(net, cfg)
    refuse_unread_options(opts, task)
    task.use_options(opts)
    task.check_training(net)
    splits = task.open_data(opts.data, opts.seed, opts.classes)
    if opts.then_valid and (splits.val is None or not len(splits.val)):
        raise no_validation_error(opts, splits)
    out, named = opts.out, "--out"
    if splits.backup and not opts.explicit_out:
        out, named = Path(splits.backup), "backup="
    elif isinstance(opts.resume, str) and not opts.explicit_out and (
            Path(opts.resume).is_dir() or Path(opts.resume).name == CHECKPOINT):
        # `--resume RUN` continues RUN where it is: it went on in runs/<cfg-name>, a new
        # folder without the run's history, and RUN stayed where it was. (Not from a copy
        # such as RUN/old.pt: that would rewind RUN and replace its newer checkpoint.pt.)
        out, named = source, "--resume"
    lock = hold_folder(out, named) if dist.main else None
    if lock is not None:  # released when the run ends (left to the collector, a ResourceWarning)
        held.callback(lock.handle.close)
    try:  # until the run writes: a run refused here leaves no trace (lock file, new folders)
        if not opts.resume:
            refuse_existing_run(out, dist, device)
        else:
            refuse_resuming_over_another_run(opts.resume, out, dist, device)
        refuse_weights_the_run_replaces(opts.weights, out, opts.name)
        run_cfg = cfg_with_overrides(opts.cfg_path, opts.sets)  # <name>.cfg, the weights' cfg
        if not opts.resume:  # (after the --weights check: it says more about that file)
            refuse_replacing_files(out, opts.name, dist, device,
                                   lambda p: run_cfg_replaces(p, opts.cfg_path, run_cfg))
        say(("=" * 78 + f"\n  no --data: training on the embedded dataset\n  {splits.description}\n"
             + "=" * 78) if opts.data is None else f"data: {splits.description}")
        if task.name == "classify" and opts.data is not None and \
                0 < len(splits.names) < task.outputs:  # (Darknet needs them equal)
            warn(f"the data has {len(splits.names)} classes but the network outputs "
                 f"{task.outputs}: the last {task.outputs - len(splits.names)} outputs are never "
                 f"a target (set the last [connected]/[convolutional] to "
                 f"{len(splits.names)} outputs)")
        darknet_init(net)  # before --weights, which may load only some layers
        if opts.weights:
            report = load_any_weights(net, opts.weights, opts.cutoff, opts.partial)
            refuse_non_finite_weights(net, opts.weights)  # (its error says what the warning would)
            say(report)
        trainer = Trainer(net, cfg, device, dist=dist, freeze=opts.freeze, compile=opts.compile,
                          amp=opts.amp, batch_is_global=not opts.batch_per_process, task=task)
        trainer.check_trainable(opts.freeze)
        for problem in unhonoured_layer_keys(net):
            warn(problem)
        for problem in net_rules(net.net_block):  # the fatal ones were refused by NetConfig.check
            # settings Darknet trains with, but not as written (a partial mini-batch, burn_in past
            # the end, steps without scales...): the linter's E305 errors, the trainer's W306
            warn(replace(problem, code="W306", severity=WARNING))
        if trainer.amp_dtype == torch.bfloat16 and device.type == "cpu" and \
                not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            warn("--amp on a CPU without native bfloat16 (AVX512-BF16 or AMX): oneDNN "
                 "emulates it, which is usually slower than float32; drop --amp here")
        train_set, val_set = task.prepare(splits, cfg, opts.seed)
        workers = workers_for(opts, splits, train_set, device, dist.world)
        stream = task.stream(train_set, trainer.batch, dist.world, dist.rank, opts.seed, device,
                             workers)
        val_loader = eval_loader(val_set, max(trainer.batch // trainer.subdivisions, 1), device,
                                 workers, dist.world, dist.rank, task.collate) \
            if val_set is not None and len(val_set) else None

        state = None
        if opts.resume:
            path = Path(opts.resume) if isinstance(opts.resume, str) else out / CHECKPOINT
            state = load_checkpoint(path)
            problem = trainer.checkpoint_problem(state) or format_problem(state)
            if problem:
                raise CfgError(Diagnostic(
                    "E901", f"cannot resume from '{path}': {problem}", str(path),
                    hint="--resume takes the checkpoint.pt of a darkcfg run of this cfg; to "
                    "start from other weights use --weights (without --resume)"))
            trainer.load_state_dict(state, str(path))
            say(f"resuming from {path} at iteration {trainer.iteration}")
            if trainer.iteration >= cfg.max_batches:  # the run is over: say so, not "finished"
                say(f"nothing to train: the checkpoint is at iteration {trainer.iteration} and "
                    f"max_batches={cfg.max_batches} (raise max_batches, e.g. --set max_batches="
                    f"{max(2 * trainer.iteration, trainer.iteration + 1)}, to train on)")
        settings = {"cfg": str(opts.cfg_path), "overrides": overrides, "net": cfg.to_dict(),
                    "data": opts.data or "embedded", "classes": opts.classes,
                    "data_description": splits.description,
                    "task": task.name, "outputs": task.outputs, "seed": opts.seed,
                    "device": str(device), "world_size": dist.world,
                    "images_per_iteration": trainer.global_batch,
                    "per_process_batch": trainer.batch, "subdivisions": trainer.subdivisions,
                    "frozen_layers": trainer.frozen, "amp": str(trainer.amp_dtype),
                    "compile": opts.compile, "weights": opts.weights, "flavor": opts.flavor,
                    "darknet_build": opts.darknet_build}
        if opts.resume and dist.main:
            changed = resume_changes(source / "settings.yaml", settings) + \
                names_change(state.get("names"), splits.names)
            if changed:
                warn("resuming with other settings than the run had: " + "; ".join(changed)
                     + " (the continuation differs from the run it would have been; pass the "
                     "run's options to continue it exactly)")
    except BaseException:
        if lock is not None:
            lock.release_unused()
        raise
    if dist.main:
        ensure_folder(out, named)
        stale = remove_stale_temps(out, [CHECKPOINT, "metrics.csv", "settings.yaml", "chart.png",
                                         "ranks.txt", "*.weights",
                                         f"{glob.escape(opts.name)}.cfg"])
        if stale:  # a run killed (SIGKILL, power) while writing one of them
            say(f"removed {len(stale)} temp file(s) left by an interrupted write in {out}")
        if not (opts.resume and trainer.iteration >= cfg.max_batches) or \
                not (out / "settings.yaml").exists():
            # (a resume with nothing left to train keeps the run's record as it was; into a
            # new folder it writes one, or a later --resume there lost the run's data)
            write_settings(out / "settings.yaml", settings)
            write_run_cfg(out / f"{opts.name}.cfg", opts.cfg_path, run_cfg)
    log = RunLog(out, opts.name, dist, cfg.max_batches, len(splits.train), task,
                 start=trainer.iteration, state=state and state.get("log"),
                 progress=opts.progress, meta={"names": splits.names})
    if state is not None:  # last, so that nothing above draws from the restored generators
        rng = state["rng"]
        set_rng_states(rng[dist.rank] if len(rng) == dist.world else rng[0])
    schedule = opts.schedule or Schedule()
    if val_loader is None:
        schedule.valid_every = 0
    elif schedule.valid_every < 0:  # the default: four validations over the run
        schedule.valid_every = max(-(-cfg.max_batches // 4), 1)
    try:
        how = fit(trainer, stream, val_loader, log, schedule)
    except BaseException:
        log.pending = None
        log.close(failing=True)
        raise
    if how != "done":
        log.close()
        say(f"stopped by {how} at iteration {trainer.iteration}; checkpoint saved in {out} "
            "(continue with --resume)")
    else:
        last = log.history.last or {}
        summary = f"finished {trainer.iteration} iterations"
        if last:
            summary += f": loss {last['loss']:.4f}, avg loss {last['avg_loss']:.4f}"
        val = [r for r in log.history.validations if r.get(task.best) is not None]
        if val and task.summary(val[-1]):
            summary += ", " + task.summary(val[-1])
            if val[-1]["iteration"] != trainer.iteration:  # no validation at the end
                summary += f" (at iteration {val[-1]['iteration']})"
        say(summary + f"; outputs in {out}")
        if dist.enabled:
            prints = distributed.parameter_fingerprints(dist, trainer.net)
            if dist.main:
                same = len(set(prints)) == 1
                say(f"DDP: parameters {'identical' if same else 'DIFFER'} on all "
                    f"{dist.world} ranks")
                from builders.atomic import atomic_write

                atomic_write(out / "ranks.txt", "\n".join(prints) + "\n")
    return how, trainer


# -- evaluation and prediction without training ---------------------------------------------------
def prepare_eval(opts: RunOptions):
    dist, device = distributed.Dist(), pick_device(opts.device)
    net, cfg, _ = build_network(opts.cfg_path, list(opts.sets), opts.flavor, opts.seed,
                                guard=not opts.force, forceable=True)
    task = task_for(net, cfg)
    refuse_unread_options(opts, task)  # before the weights are read
    if opts.weights:
        say(load_any_weights(net, opts.weights, opts.cutoff, opts.partial))
    else:  # as detect says: scores of untrained weights are easily taken for a model's
        warn(f"no --weights: the initial weights of seed {opts.seed} (the scores are "
             "chance)")
    task.use_options(opts)
    trainer = Trainer(net, cfg, device, dist=dist, amp=opts.amp, task=task)
    return trainer, cfg


def weights_run_data(opts: RunOptions) -> RunOptions:
    """Without --data, valid and predict of a run's weights read the data that run recorded
    (its settings.yaml beside --weights), as --resume does: the embedded set scored a model of
    other classes as if it were its own, and named its classes wrongly. Without --set, the
    run's own --set values build the network it trained (`make train`'s 32x32 VGG-16 with
    batch-norm: the cfg as written does not take its weights)."""
    if not opts.weights:
        return opts
    run = Path(opts.weights).parent
    recorded = recorded_settings(run)
    overrides = recorded.get("overrides")
    if not opts.sets and isinstance(overrides, dict) and overrides and \
            Path(str(recorded.get("cfg", ""))).name == Path(opts.cfg_path).name:
        sets = tuple(f"{key}={value}" for key, value in overrides.items())
        say(f"--set {' --set '.join(sets)}: the settings of the run that wrote {opts.weights} "
            "(its settings.yaml; give --set to choose)")
        opts = replace(opts, sets=sets)
    opts = _run_seed(opts, recorded.get("seed"))
    if opts.data is not None:
        return opts
    data = recorded_data(run, "--weights")
    if data is not None:
        say(f"data: {data}, the data of the run that wrote {opts.weights} (its settings.yaml; "
            "--data to choose other data)")
        return replace(opts, data=data)
    classes = _embedded_classes(run)
    if opts.classes is None and classes:  # `make train`: 10 of VGG-16's 1000 embedded classes
        say(f"data: the embedded set's first {classes} classes, as the run that wrote "
            f"{opts.weights} trained (its settings.yaml; --classes to choose)")
        return replace(opts, classes=classes)
    return opts


def _run_seed(opts: RunOptions, seed) -> RunOptions:
    """The seed splits the data that comes without a validation split (an ImageFolder without
    val/, the digits, the embedded set): validating a run's weights on another seed's split
    scores images that run trained on."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed == opts.seed:
        return opts
    if opts.explicit_seed:
        warn(f"--seed {opts.seed}: the run that wrote {opts.weights} trained with seed "
             f"{seed} (its settings.yaml); data split by the seed then validates on other images, "
             "some of which it trained on")
        return opts
    say(f"--seed {seed}: the seed of the run that wrote {opts.weights} (its settings.yaml: "
        "the same validation split; give --seed to choose)")
    return replace(opts, seed=seed)


def validate(opts: RunOptions, trainer: Trainer | None = None) -> tuple[Task, dict]:
    """The task's validation metrics on the validation split (and the task, which says how to
    show them: `task.describe`)."""
    if trainer is None:  # (chained after --train: the data it trained on)
        opts = weights_run_data(opts)
        trainer, _ = prepare_eval(opts)
    cfg, task = trainer.cfg, trainer.task
    splits = task.open_data(opts.data, opts.seed, opts.classes, need="valid")
    task.use_top(splits.top)  # (Darknet's validate_classifier: top-k with k = top=)
    _, val_set = task.prepare(splits, cfg, opts.seed)
    if val_set is None or not len(val_set):
        raise no_validation_error(opts, splits)
    loader = eval_loader(val_set, max(cfg.mini_batch, 1), trainer.device,
                         workers_for(opts, splits, val_set, trainer.device, 1),
                         collate=task.collate)
    return task, task.evaluate(trainer, loader)


def no_validation_error(opts: RunOptions, splits: DataSplits) -> CfgError:
    return CfgError(Diagnostic("E901", f"'{opts.data}' has no validation split "
                               f"({splits.description})", opts.data or "--data",
                               hint=no_validation_hint(opts.data or "")))


def no_validation_hint(spec: str) -> str:
    """How to give data of this kind a validation split."""
    if spec.endswith(".csv"):
        return ("darkcfg takes no validation split from a .csv (it trains on every row), so "
                "there is nothing to validate on: the training loss is in the run's metrics.csv")
    if spec.endswith(".data"):
        return f"add valid=path/to/valid.list (one image path per line) to '{spec}'"
    if spec.startswith("torchvision:"):
        return "this dataset has no test/val split under its root"
    return "add a val/<class>/ folder beside train/ (or drop train/ for a seeded 90/10 split)"


def predict(opts: RunOptions, images: list[str], top: int | None, trainer: Trainer | None = None
            ) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """Each image's `top` classes with their names, as it is classified (a folder of
    thousands prints from its first image on). A missing or unreadable image is an E901
    before the build and the weights."""
    from darkcfg.detect.run import checked_images  # the one expansion of files and folders

    # a folder: its images, as for detect
    paths = [str(p) for p in checked_images([str(i) for i in images])[0]]
    yield from _predicted(opts, paths, top, trainer)


@torch.no_grad()  # (torch re-enters it at each resume of a generator, and leaves it at a yield)
def _predicted(opts: RunOptions, paths: list[str], top: int | None, trainer: Trainer | None):
    if trainer is None:  # (chained after --train: the data it trained on)
        opts = weights_run_data(opts)
        trainer, _ = prepare_eval(opts)
    net, cfg, task = trainer.net, trainer.cfg, trainer.task
    if not task.predicts:
        kind, hint = {
            "detect": ("a detector", "use detect (or --detect) for a detector's boxes"),
            "regress": ("a regressor", "run it on inputs with --input X.npy --dump-outputs "
                        "OUT.npz"),
        }.get(task.name, ("a classifier of flat inputs", "--predict reads image files: give "
                          "[net] width, height and channels"))
        raise CfgError(Diagnostic("E300", f"--predict is for image classifiers; this network "
                                  f"is {kind}", opts.cfg_path, hint=hint))
    splits = class_data(opts, task)
    names = splits.names if splits else []
    if top is None:  # (Darknet: a .data file's top=)
        top = splits.top if splits and splits.top else 5
    view = Augment(cfg, train=False)
    net.eval()
    for path in paths:
        try:
            pixels = read_image(path, task.inputs[0])
        except DataError as exc:  # its header reads, its pixels do not (a JPEG cut short)
            warn(undecodable_warning(exc, path, "left out; predict goes on"))
            continue
        x = view(pixels)[None]
        probs = task.scores(trainer, x).reshape(-1)
        p, i = ranked(probs, top)
        yield path, [(names[j] if j < len(names) else f"class {j}", float(q))
                     for q, j in zip(p.tolist(), i.tolist(), strict=True)]


def class_data(opts: RunOptions, task: Task) -> DataSplits | None:
    """The data whose class names predict shows (None: none opens, and no --data asked)."""
    try:
        return task.open_data(opts.data, opts.seed, opts.classes, need="names")
    except CfgError:
        if opts.data is not None:
            raise
        return None
