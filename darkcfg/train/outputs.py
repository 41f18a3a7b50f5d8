"""What a run leaves in --out: progress bar, settings.yaml, metrics.csv, chart.png, Darknet
.weights (_last, _N, _final, _best) and checkpoint.pt. Rank 0 writes; every rank takes part in
the collective steps (RNG gathering for checkpoints)."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from builders.atomic import atomic_write
from cfgparse import CfgError
from cfgparse.errors import plot_text
from cfgparse.yaml_io import load_yaml
from darkcfg.console import warn
from darkcfg.data.base import pyplot, write_figure
from darkcfg.model import non_finite
from darkcfg.train.checkpoint import rng_states, save_checkpoint
from darkcfg.train.distributed import Dist, broadcast_flag
from darkcfg.train.loop import NonFiniteLoss, NonFiniteWeights, Trainer
from darkcfg.train.tasks import Task

CHECKPOINT = "checkpoint.pt"
CHART_EVERY_S = 60  # redraw chart.png at checkpoints at most this often (and at the end)


def write_settings(path: Path, settings: dict) -> None:
    atomic_write(path, yaml.safe_dump(settings, sort_keys=False))


def run_cfg_replaces(path: Path, cfg_path: str, text: str) -> bool:
    """Whether writing the run's cfg `text` to `path` would replace a file that holds something
    else (the input cfg itself is never written: see write_run_cfg)."""
    if not path.is_file() or _is_input(path, cfg_path):
        return False
    try:
        return path.read_text(encoding="utf-8") != text
    except (OSError, UnicodeDecodeError):
        return True


def write_run_cfg(path: Path, cfg_path: str, text: str) -> None:
    """`<name>.cfg` beside the run's .weights: the cfg with the run's --set values written in,
    what Darknet and OpenCV need to read them (the cfg on disk may be another network: e.g.
    --set convolutional.batch_normalize=1). Never over the input cfg itself."""
    if not _is_input(path, cfg_path):
        atomic_write(path, text)


def _is_input(path: Path, cfg_path: str) -> bool:
    source = Path(cfg_path)
    return source.is_file() and path.exists() and path.resolve() == source.resolve()


def read_settings(path: Path) -> dict | None:
    """A run's settings.yaml, or None when it is missing or unreadable (damaged, edited into
    something else, an alias bomb: read with cfgparse's bounds, never a traceback)."""
    try:
        settings, _ = load_yaml(path.read_text(encoding="utf-8"), str(path), "")
    except (OSError, UnicodeDecodeError, CfgError):
        return None
    return settings if isinstance(settings, dict) else None


# what decides a run's samples and steps besides the cfg (whose max_batches and steps a resumed
# run may extend on purpose): changed on --resume, the run continues as another run would
RESUME_SETTINGS = ("data", "classes", "seed", "flavor", "amp", "darknet_build",
                   "images_per_iteration", "subdivisions", "world_size", "frozen_layers")


def resume_changes(path: Path, now: dict) -> list[str]:
    """The settings of `now` that differ from the run's settings.yaml at `path`, as
    'key: new (was old)' ([] when the file is missing or unreadable: nothing to compare)."""
    before = read_settings(path)
    if before is None:
        return []
    changed = [f"{key}: {now.get(key)} (was {before.get(key)})" for key in RESUME_SETTINGS
               if key in before and before.get(key) != now.get(key)]
    if not changed and before.get("data_description", now.get("data_description")) != \
            now.get("data_description"):  # the same path, other content (images added...)
        changed.append(f"the data: {now.get('data_description')} (was "
                       f"{before.get('data_description')})")
    return changed


def names_change(before, now: list[str]) -> list[str]:
    """The class list of a resume against its checkpoint's ('names'), as resume_changes words
    a change: an ImageFolder's classes are its sorted folder names, so a folder renamed or
    added moves every later class index (the run went on training them as the old classes).
    [] when they agree or the checkpoint has none."""
    if not isinstance(before, list) or list(before) == list(now):
        return []
    if len(before) != len(now):
        return [f"classes: {len(now)} names (was {len(before)})"]
    k = next(i for i, (a, b) in enumerate(zip(before, now, strict=True)) if a != b)
    return [f"class {k}: {now[k]!r} (was {before[k]!r}; later indices may have moved too)"]


class History:
    """What the chart and the last words need of metrics.csv, held compactly: each step's
    iteration, loss, avg loss and lr as float arrays (32 bytes a step), the validation rows
    whole, the last row. A dict a step was 430 bytes (a classifier) to 860 (yolov3-tiny's two
    heads' statistics): 430 MB of a yolov3's 500k iterations, and read back at --resume."""

    CURVE = ("iteration", "loss", "avg_loss", "lr")

    def __init__(self, metrics: tuple[str, ...]):
        self.metrics = metrics
        self.curve = {key: array("d") for key in self.CURVE}
        self.validations: list[dict] = []
        self.last: dict | None = None

    def add(self, row: dict) -> None:
        for key, column in self.curve.items():
            column.append(row[key])
        if any(row.get(m) is not None for m in self.metrics):
            self.validations.append(row)
        self.last = row

    def __len__(self) -> int:
        return len(self.curve["iteration"])


class RunLog:
    """metrics.csv (the task's columns), the progress bar, chart.png and every file of a run;
    `<cfg>_best.weights` follows `task.score` of each validation."""

    def __init__(self, out: Path, name: str, dist: Dist, max_batches: int, epoch_images: int,
                 task: Task, start: int = 0, state: dict | None = None, progress: bool = True,
                 meta: dict | None = None):
        self.out, self.name, self.dist, self.task = out, name, dist, task
        self.columns = task.columns
        self.main = dist.main
        self.epoch_images = max(epoch_images, 1)
        self.meta = meta or {}  # saved into checkpoints (settings, names, ...)
        self.pending = None  # the last step, read one step late: no host sync in the step
        self.pending_end: float | None = None  # when the pending step's time stopped (a pause)
        self.avg_loss = -1.0
        self.best: float | None = None
        self.speed = 0.0
        self.history = History(task.metrics)
        self.charted = time.monotonic()  # when chart.png was last drawn
        self.charted_rows = 0  # and how many rows it showed
        if state:
            self.avg_loss, self.best = state["avg_loss"], state["best"]
        if self.main:
            out.mkdir(parents=True, exist_ok=True)
            self._read_metrics(start)
            self._csv = open(out / "metrics.csv", "a", newline="", buffering=1)
            self._writer = csv.DictWriter(self._csv, self.columns, extrasaction="ignore")
            if not self.history:
                with self._naming_metrics():
                    self._writer.writeheader()
        from tqdm import tqdm

        self.bar = tqdm(total=max_batches, initial=start, desc=name, unit="it",
                        dynamic_ncols=True, mininterval=0.5, file=sys.stderr,
                        disable=not (self.main and progress))

    @contextlib.contextmanager
    def _naming_metrics(self):
        """A failed write to metrics.csv (a full disk: a buffered write's error names no file)
        reported as that file's."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror or str(exc),
                          str(self.out / "metrics.csv")) from exc

    def _read_metrics(self, start: int) -> None:
        """On resume keep the rows up to the checkpoint (later ones are redone). A row that does
        not parse -- the torn last line of a run killed while writing it -- is dropped."""
        path = self.out / "metrics.csv"
        if not start or not path.exists():
            path.unlink(missing_ok=True)
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, extrasaction="ignore")
        writer.writeheader()
        lines = 0
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            for line in csv.DictReader(fh):  # one at a time: a long run's file is large
                lines += 1
                row = parse_metrics_row(line)
                if row is not None and row["iteration"] <= start:
                    writer.writerow(row)
                    self.history.add(row)
        if not self.history:  # nothing of it parses: started over (the caller writes the header)
            if lines:
                warn(f"{path} has no readable row up to iteration {start}; it starts over "
                     "from this iteration")
            path.unlink()
            return
        atomic_write(path, buf.getvalue())

    # -- per step ----------------------------------------------------------------------------------
    def step(self, iteration: int, loss: torch.Tensor, lr: float, images: int,
             started: float, stats: dict | None = None) -> None:
        self.flush(next_started=started)
        self.pending = (iteration, loss, lr, images, started, stats or {})

    def pause(self) -> None:
        """The pending step's time ends here: what comes before the next step (a validation)
        is not training, and counting it made the validated iteration's img/s 10x too low."""
        if self.pending is not None and self.pending_end is None:
            float(self.pending[1])  # the device has finished the step (the deferred read)
            self.pending_end = time.perf_counter()

    def flush(self, val: dict | None = None, next_started: float | None = None) -> None:
        """Record the pending step (the .item() here is one step behind the device). Its time
        runs from its start to the next step's start (or to a pause, or now when flushed early:
        checkpoints), so every step is timed once, whenever it is recorded."""
        if self.pending is None:
            return
        iteration, loss, lr, images, started, stats = self.pending
        ended, self.pending, self.pending_end = self.pending_end, None, None
        value = float(loss)
        if not math.isfinite(value):
            raise NonFiniteLoss(iteration, value)
        if ended is None:
            ended = next_started if next_started is not None else time.perf_counter()
        elapsed = ended - started
        rate = images / max(elapsed, 1e-9)
        self.speed = rate if self.speed == 0 else 0.9 * self.speed + 0.1 * rate
        self.avg_loss = value if self.avg_loss < 0 else 0.9 * self.avg_loss + 0.1 * value
        row = {"iteration": iteration, "epoch": round(iteration * images / self.epoch_images, 4),
               "loss": value, "avg_loss": self.avg_loss, "lr": lr, "images_per_s": round(rate, 2),
               **{k: float(v) for k, v in stats.items()}, **(val or {})}
        if self.main:
            self.history.add(row)
            with self._naming_metrics():
                self._writer.writerow(row)
            shown = self.task.progress(stats)
            self.bar.set_postfix_str(
                f"epoch {row['epoch']:.2f} loss {value:.4f} avg {self.avg_loss:.4f}{shown} "
                f"lr {lr:.3g} {self.speed:.1f} img/s", refresh=False)
            self.bar.update(iteration - self.bar.n)

    def validated(self, iteration: int, val: dict, trainer: Trainer) -> None:
        self.flush(val)
        score = self.task.score(val)
        if self.main:
            shown = self.task.describe(val)
            sep = "\n" if "\n" in shown else " "  # a table starts on its own line
            self.bar.write(f"iteration {iteration}:{sep}{shown}", file=sys.stderr)
        if self.best is None or score > self.best or (self.task.best_on_tie
                                                      and score == self.best):
            self.best = score
            if self.main:
                self.save_weights(trainer, "best")

    # -- files -----------------------------------------------------------------------------------
    def path(self, suffix: str) -> Path:
        return self.out / f"{self.name}_{suffix}.weights"

    def save_weights(self, trainer: Trainer, suffix: str) -> None:
        from builders.weights import save_weights

        save_weights(trainer.net, self.path(suffix), seen=trainer.images_seen)

    def save_numbered(self, trainer: Trainer) -> None:
        self.flush()
        if self.main:
            self.save_weights(trainer, str(trainer.iteration))

    def checkpoint(self, trainer: Trainer) -> None:
        """Checkpoint + _last.weights + chart, after checking the pending loss is finite."""
        self.flush()
        # a finite loss does not make the update that followed it finite: a diverging run's
        # last finite step left Inf in a batch-norm's running_var, and --resume from that
        # "last good checkpoint" was NaN at once (checked on every rank: buffers differ)
        bad = non_finite(trainer.net)
        if broadcast_flag(self.dist, bool(bad), trainer.device):
            raise NonFiniteWeights(trainer.iteration, bad or "on another rank")
        states = gather(self.dist, rng_states())
        if not self.main:
            return
        state = trainer.state_dict()
        state.update(rng=states, world=self.dist.world, format="darkcfg-checkpoint-1",
                     log={"avg_loss": self.avg_loss, "best": self.best}, **self.meta)
        save_checkpoint(self.out / CHECKPOINT, state)
        self.save_weights(trainer, "last")
        if time.monotonic() - self.charted > CHART_EVERY_S:
            self.chart()

    def finish(self, trainer: Trainer) -> None:
        self.checkpoint(trainer)
        if self.main:
            self.save_weights(trainer, "final")
        self.close()

    def close(self, failing: bool = False) -> None:
        """Draw the last chart and close the files. `failing`: the run is ending on an error,
        which is the one to report (a full disk fails the chart too): errors here are dropped."""
        if not self.main:
            return
        try:
            if len(self.history) != self.charted_rows:
                self.chart()
        except (OSError, CfgError):
            if not failing:
                raise
        finally:
            self.bar.close()
            try:
                with self._naming_metrics():
                    self._csv.close()
            except OSError:
                if not failing:
                    raise

    def chart(self) -> None:
        if not self.history:
            return
        plt = pyplot()
        curve = self.history.curve
        its = curve["iteration"]
        val = [(r["iteration"], r) for r in self.history.validations]
        losses = [(i, r) for i, r in val if r.get("val_loss") is not None]
        plots = self.task.plots
        scored = [(i, r) for i, r in val if plots and r.get(plots[0][0]) is not None]
        panels = 3 if scored else 2
        fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), sharex=True)
        axes[0].plot(its, curve["loss"], lw=0.6, alpha=0.5, label="loss")
        axes[0].plot(its, curve["avg_loss"], lw=1.5, label="avg loss")
        if losses:
            axes[0].plot([i for i, _ in losses], [r["val_loss"] for _, r in losses], "o-",
                         label="val loss")
        axes[0].set_ylabel("loss")
        if loss_axis_scale(curve["loss"]) == "log":
            axes[0].set_yscale("log")
            axes[0].set_ylabel("loss (log scale)")
        axes[0].legend(loc="upper right")
        axes[1].plot(its, curve["lr"], color="tab:green")
        axes[1].set_ylabel("learning rate")
        if scored:
            for key, label in plots:
                points = [(i, r[key]) for i, r in scored if r.get(key) is not None]
                if points:  # e.g. no COCO mAP without pycocotools
                    axes[2].plot(*zip(*points, strict=True), "o-", label=label)
            axes[2].set_ylabel(self.task.plot_label)
            axes[2].set_ylim(0, 1)
            axes[2].legend(loc="lower right")
        axes[-1].set_xlabel("iteration")
        axes[0].set_title(plot_text(self.name))
        fig.tight_layout()
        write_figure(fig, self.out / "chart.png", dpi=100)
        self.charted, self.charted_rows = time.monotonic(), len(self.history)


def parse_metrics_row(raw: dict) -> dict | None:
    """A metrics.csv row as numbers (empty cells None), or None when it is not a whole row:
    missing or extra cells, or a cell that is not a number (a line cut short by a kill)."""
    if None in raw or any(v is None for v in raw.values()):  # extra / missing cells
        return None
    try:
        row = {k: (float(v) if v != "" else None) for k, v in raw.items()}
    except ValueError:
        return None
    if row.get("iteration") is None or not math.isfinite(row["iteration"]):
        return None
    row["iteration"] = int(row["iteration"])
    return row


def gather(dist: Dist, obj):
    """[obj of rank 0, obj of rank 1, ...] (collective under DDP)."""
    if not dist.enabled:
        return [obj]
    import torch.distributed as tdist

    out = [None] * dist.world
    tdist.all_gather_object(out, obj)
    return out


def loss_axis_scale(losses: Sequence[float]) -> str:
    """"log" when every loss is positive and they span over two decades (a detector's loss
    falls from hundreds to a few units: a linear axis flattens the whole tail), else "linear"."""
    if losses and min(losses) > 0 and max(losses) > 100 * min(losses):
        return "log"
    return "linear"


LR_POINTS = 20_000


def plot_lr(cfg, path: Path, title: str = "") -> None:
    """The learning rate of the updates 1..max_batches: every one up to LR_POINTS, else
    LR_POINTS evenly spaced plus the first ones (burn-in) and both sides of every step (a
    figure 800 pixels wide shows no more; max_batches=2**31 would need tens of GB)."""
    plt = pyplot()
    n = max(cfg.max_batches, 1)
    if n <= LR_POINTS:
        its = list(range(1, n + 1))
    else:
        marks = {k + d for k in cfg.steps for d in (-1, 0, 1) if 1 <= k + d <= n}
        its = sorted({*range(1, min(n, 2000) + 1), n, *marks,
                      *(1 + (n - 1) * i // (LR_POINTS - 1) for i in range(LR_POINTS))})
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(its, [cfg.lr_at(k) for k in its])
    ax.set_xlabel("iteration (batch_num)")
    ax.set_ylabel("learning rate")
    ax.set_title(plot_text(title or f"policy={cfg.policy}"))
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
