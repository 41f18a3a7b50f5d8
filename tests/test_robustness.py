"""Issue 19, "Security" and "Nothing lost": what a hostile-but-realistic user can reach. Nothing
a cfg names is leaked, nothing cached is loaded unchecked, no plugin shadows the standard library,
no input is overwritten, no run is destroyed by a forgotten --resume, a stop signal sent to the
whole process group still checkpoints, a detector trains without pycocotools, a corrupt image is
found before the first iteration, and a kill mid-write / a torn line / a flipped bit never costs
or corrupts a run silently. docs/robustness.md says the same in prose."""

from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import darkcfg.cli.flags as runner
from builders import build, native
from cfgparse import CfgError
from darkcfg.lint.cli import main as check_main

ROOT = Path(__file__).resolve().parents[1]
SECRET = "HUNTER2-DO-NOT-PRINT"


def run(*argv) -> int:
    return runner.main([str(a) for a in argv])


def rows(out: Path) -> list[dict]:
    path = out / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# == Security =====================================================================================

def tree_cfg(folder: Path, tree: str) -> Path:
    cfg = folder / "net.cfg"
    cfg.write_text("[net]\nwidth=4\nheight=4\nchannels=3\n\n[connected]\noutput=3\n"
                   f"activation=linear\n\n[softmax]\ntree={tree}\n")
    return cfg


@pytest.mark.parametrize("fmt", ["text", "github"])
def test_the_linter_never_prints_a_file_the_cfg_names(tmp_path, capsys, fmt):
    # a file inside the cfg's folder, with the secret where a number should be
    (tmp_path / "bad.tree").write_text(f"a {SECRET}\nb 0\n")
    assert check_main([str(tree_cfg(tmp_path, "bad.tree")), "--format", fmt]) == 2
    out = capsys.readouterr()
    assert "line 1" in out.out + out.err  # it says where the file is wrong...
    assert SECRET not in out.out + out.err  # ...never what it holds
    assert "Traceback" not in out.err


def test_a_cfg_cannot_reach_outside_its_folders(tmp_path, monkeypatch, capsys):
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    secret = secret_dir / "secret.tree"
    secret.write_text(f"{SECRET} 0\nb 0\nc 0\n")  # a valid tree: only confinement stops it
    project = tmp_path / "a" / "b" / "project"
    project.mkdir(parents=True)
    monkeypatch.chdir(project)
    (project / "link.tree").symlink_to(secret)
    for name in (str(secret), "../../../elsewhere/secret.tree", "link.tree"):
        with pytest.raises(CfgError) as err:  # refused: located, with the way out
            build(tree_cfg(project, name))
        text = str(err.value)
        assert "outside the cfg's folders" in text or "absolute path" in text, text
        assert "DARKCFG_CFG_PATHS=any" in text and SECRET not in text
        assert err.value.first.line == 11 and err.value.code == "E901"
    # the linter says so too (without reading the file)
    assert check_main([str(tree_cfg(project, str(secret))), "--format", "github"]) == 2
    out = capsys.readouterr().out
    assert "::error file=" in out and "absolute path" in out and SECRET not in out
    # relative paths below the cfg's folder (or the one above: a Darknet checkout's data/) work
    (project / "data").mkdir()
    (project / "data" / "ok.tree").write_text("a -1\nb -1\nc 0\n")
    assert build(tree_cfg(project, "data/ok.tree")).layers[1].tree == [2, 1]
    # and the user may allow any path for a cfg they trust
    monkeypatch.setenv("DARKCFG_CFG_PATHS", "any")
    assert build(tree_cfg(project, str(secret))).layers[1].tree == [3]


def test_the_native_cache_is_private_and_checked(tmp_path, monkeypatch):
    # no home folder: a per-user folder under the temp dir, never one shared name
    monkeypatch.delenv("DARKCFG_CACHE", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(
        RuntimeError("no home"))))
    assert native.cache_dir().name == f"darkcfg-{os.getuid()}"
    # a folder others can write, or a link, is refused
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError):
        native.private_dir(shared)
    (tmp_path / "link").symlink_to(shared)
    with pytest.raises(PermissionError):
        native.private_dir(tmp_path / "link")
    mine = native.private_dir(tmp_path / "new" / "cache")
    assert (mine.stat().st_mode & 0o777) == 0o700


def test_a_planted_kernel_library_is_never_loaded(tmp_path):
    if native.library() is None:
        pytest.skip(native.status())
    cache = tmp_path / "cache"
    probe = ("from builders import native; print(native.status())")
    env = dict(os.environ, PYTHONPATH=str(ROOT), DARKCFG_CACHE=str(cache), DARKCFG_NATIVE="1")
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                           text=True, check=True).stdout
    assert first.startswith(f"native: {cache}/kernels-")
    library = next(cache.glob("kernels-*.so"))
    assert (library.parent / (library.name + ".sha256")).exists()
    good = library.read_bytes()
    library.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # not what was compiled
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                           text=True, check=True).stdout
    assert again == first  # rebuilt, not loaded
    assert library.read_bytes() == good


def test_plugins_never_shadow_the_standard_library(tmp_path):
    (tmp_path / "colorsys.py").write_text("raise SystemExit('the working folder shadowed the "
                                          "standard library')\n")
    (tmp_path / "my_sections.py").write_text("import colorsys\nLOADED = colorsys.__file__\n")
    code = ("import sys; from cfgparse.plugins import load_plugins; load_plugins(); "
            "import colorsys, my_sections; print(colorsys.__file__); print(my_sections.LOADED)")
    # -P: Python itself puts no working folder on sys.path (as the `darkcfg` script, runner.py)
    done = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                              DARKCFG_PLUGINS="my_sections"))
    assert done.returncode == 0, done.stderr
    stdlib, seen_by_plugin = done.stdout.split()
    assert not stdlib.startswith(str(tmp_path)) and seen_by_plugin == stdlib


def test_data_file_paths_keep_darknets_meaning(tmp_path, monkeypatch):
    """backup= and names= keep Darknet's meaning (docs/robustness.md): as written, relative to
    the working folder (`..` allowed: the user named the .data on the command line); names=, an
    input, is also looked up beside the .data file."""
    from PIL import Image

    from darkcfg.data.detection.labels import open_detection_data

    data = tmp_path / "d" / "obj.data"
    data.parent.mkdir()
    Image.new("RGB", (8, 8)).save(data.parent / "a.png")
    (data.parent / "train.txt").write_text("a.png\n")
    (data.parent / "obj.names").write_text("x\n")
    data.write_text("classes=1\ntrain=train.txt\nnames=obj.names\nbackup=../runs/b\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    opened = open_detection_data(data)
    assert Path(opened.backup).resolve() == (tmp_path / "runs" / "b").resolve()
    assert opened.names == ["x"]


# == Nothing lost =================================================================================

DETECTOR = """
[net]
width=32
height=32
channels=3
batch=2
subdivisions=1
learning_rate=0.001
burn_in=0
max_batches={max_batches}
policy=constant

[convolutional]
filters=8
size=3
stride=4
pad=1
activation=leaky

[convolutional]
filters=14
size=1
activation=linear

[yolo]
mask=0,1
anchors=6,8, 16,20
classes=2
num=2
"""


def detector_cfg(folder: Path, max_batches: int = 2) -> Path:
    path = folder / "det.cfg"
    path.write_text(DETECTOR.format(max_batches=max_batches))
    return path


def image_files(folder: Path, n: int = 3) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"im{i}.jpg"
        Image.fromarray((rng.uniform(0, 255, (40, 48, 3))).astype(np.uint8)).save(path)
        path.with_suffix(".txt").write_text(f"{i % 2} 0.5 0.5 0.3 0.4\n")
        paths.append(path)
    return paths


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_detect_never_writes_over_its_inputs(tmp_path, capsys):
    cfg = detector_cfg(tmp_path)
    images = tmp_path / "imgs"
    image_files(images)
    before = snapshot(images)
    assert run(cfg, "--detect", images, "--out", images, "--save-labels", "--thresh", "0.01",
               "--no-progress") == 2
    err = capsys.readouterr().err
    assert "holds the input image" in err and "--out" in err and "Traceback" not in err
    assert snapshot(images) == before  # images and ground-truth labels untouched
    # one input file named directly, --out its folder: the same
    assert run(cfg, "--detect", images / "im1.jpg", "--out", images, "--save-labels") == 2
    assert snapshot(images) == before
    # nor the labels/ folder Darknet reads a JPEGImages/ image's labels from
    voc = tmp_path / "voc"
    image_files(voc / "JPEGImages", 1)
    (voc / "labels").mkdir()
    (voc / "JPEGImages" / "im0.txt").rename(voc / "labels" / "im0.txt")
    truth = snapshot(voc / "labels")
    assert run(cfg, "--detect", voc / "JPEGImages", "--out", voc / "labels",
               "--save-labels") == 2
    assert "label files of the image" in capsys.readouterr().err
    assert snapshot(voc / "labels") == truth
    # elsewhere is fine
    assert run(cfg, "--detect", images, "--out", tmp_path / "o", "--save-labels",
               "--no-progress") == 0
    assert snapshot(images) == before and (tmp_path / "o" / "im0.jpg").exists()


@pytest.fixture
def classifier_run(tmp_path, tiny_classifier):
    """A finished 4-iteration classifier run (checkpoints at 2 and 4)."""
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=4,
                                burn_in=0, second_conv=False)
    out = tmp_path / "run"
    assert run(cfg, "--train", "--out", out, "--no-progress", "--workers", "0",
               "--checkpoint-every", "2", "--valid-every", "0") == 0
    return cfg, out


def resume(cfg: Path, out: Path, max_batches: int) -> int:
    return run(cfg, "--train", "--out", out, "--no-progress", "--workers", "0", "--resume",
               "--checkpoint-every", "2", "--valid-every", "0", "--set",
               f"max_batches={max_batches}")


def test_a_fresh_train_never_replaces_an_existing_run(classifier_run, capsys):
    cfg, out = classifier_run
    capsys.readouterr()
    before = snapshot(out)
    assert run(cfg, "--train", "--out", out, "--no-progress", "--workers", "0") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--out" in err
    assert snapshot(out) == before
    assert resume(cfg, out, 6) == 0  # what the hint says works
    assert [int(r["iteration"]) for r in rows(out)] == list(range(1, 7))


@pytest.mark.parametrize("name", ["chart.png", "c_last.weights", "settings.yaml", "c.cfg"])
def test_a_fresh_train_never_replaces_a_file_it_would_write(tmp_path, tiny_classifier, capsys,
                                                            name):
    """--out (or backup=) a folder with no run but a file under a name the run writes: a
    picture of the data set called chart.png, a Darknet run's c_last.weights in its backup
    folder. The run wrote over it; it is refused now, the file untouched."""
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=2,
                                burn_in=0, second_conv=False)
    out = tmp_path / "folder"
    out.mkdir()
    (out / name).write_bytes(b"precious")
    assert run(cfg, "--train", "--out", out, "--no-progress", "--workers", "0") == 2
    err = capsys.readouterr().err
    assert f"{out / name}: error[E901]: '{out}' already holds '{name}'" in err, err
    assert (out / name).read_bytes() == b"precious" and not (out / "checkpoint.pt").exists()
    assert sorted(p.name for p in out.iterdir()) == [name]  # no lock file left behind


def test_a_refused_train_leaves_no_trace(tmp_path, tiny_classifier, capsys):
    """A run refused after it locked its --out (here: --weights of another network) left the
    new folders and their .darkcfg.lock behind."""
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=2,
                                burn_in=0, second_conv=False)
    weights = tmp_path / "other.weights"
    weights.write_bytes(np.zeros(5, np.int32).tobytes() + np.zeros(7, np.float32).tobytes())
    out = tmp_path / "runs" / "new"
    assert run(cfg, "--train", "--out", out, "--weights", weights, "--no-progress",
               "--workers", "0") == 2
    assert "error[" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.cfg", "other.weights"]


def test_kill_leftovers_torn_rows_and_flipped_bits(classifier_run, capsys):
    cfg, out = classifier_run
    # SIGKILL during a checkpoint write leaves atomic_open's temp file; a resume removes it
    stale = out / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    # ... and a kill while a metrics row was written leaves a torn last line
    with open(out / "metrics.csv", "a") as fh:
        fh.write("5,1.2")
    assert resume(cfg, out, 6) == 0, capsys.readouterr().err
    assert not stale.exists() and "removed 1 temp file" in capsys.readouterr().err
    assert [int(r["iteration"]) for r in rows(out)] == list(range(1, 7))
    # one flipped bit anywhere in the checkpoint is found, located, and nothing is trained
    ckpt = out / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x10
    ckpt.write_bytes(bytes(data))
    before = snapshot(out)
    assert resume(cfg, out, 8) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: error[E901]" in err and "corrupt" in err and "Traceback" not in err
    assert snapshot(out) == before


def start_training(cfg, out, **popen) -> subprocess.Popen:
    """A training run in its own process group (as a shell job is), one loader process, no
    periodic checkpoint or validation: a stop signal's checkpoint is the only one."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--out", str(out),
         "--no-progress", "--workers", "1", "--checkpoint-every", "1000", "--valid-every", "0"],
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def test_sigterm_to_the_process_group_checkpoints_and_exits_0(tmp_path, tiny_classifier):
    """systemd, Slurm and `kill -- -PGID` signal every process of the group, the loader workers
    too: they must leave the stop to the trainer."""
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=8, max_batches=100000, angle=10,
                                second_conv=False)
    out = tmp_path / "run"
    proc = start_training(cfg, out)
    deadline = time.monotonic() + 120
    while len(rows(out)) < 3:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no progress: {proc.communicate()[1]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    from darkcfg.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == int(rows(out)[-1]["iteration"])


def test_an_output_onto_a_device_or_fifo_is_refused(tmp_path, tiny_classifier, capsys):
    """`emit --out /dev/null` (or --save-weights, --export, --detections ...) wrote a temp file
    in /dev and renamed it over /dev/null: as root, every program's /dev/null became a regular
    file. A device, FIFO or socket under an output's name is now E901, and left as it is (a
    FIFO here: any user may make one)."""
    from builders.atomic import atomic_write

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cfg = tiny_classifier.write(tmp_path / "c.cfg")
    for flag in ("--emit", "--plot-lr"):
        assert run(cfg, flag, fifo) == 2
        err = capsys.readouterr().err
        assert f"{fifo}: error[E901]: cannot write {flag} '{fifo}': it is a FIFO, not a file" \
            in err, err
    with pytest.raises(CfgError) as caught:
        atomic_write(fifo, "x")  # the library's writer too
    assert caught.value.code == "E901"
    assert [p.name for p in tmp_path.iterdir() if p.name != "c.cfg"] == ["pipe.png"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path, monkeypatch):
    """SIGKILL during `export`, `emit`, `weights --save-weights`, `anchors --write` or an INT8
    export left its temp file beside the output (`.m.onnx.x8k2q1zz.onnx`, `.m.py.*.tmp`) or its
    work folder in $TMPDIR (`darkcfg-int8-*`, a copy of the model) for good. Temp files and
    folders are now locked while written; the next write of that output removes the unlocked
    ones and leaves a live writer's alone."""
    import fcntl

    from builders.atomic import atomic_write, staged_file, work_folder

    def held(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    out = tmp_path / "out"
    out.mkdir()
    for name in (".m.py.k1ll3d.tmp", ".m.py.l1ve.tmp", ".m.onnx.k1ll3d.onnx",
                 ".m.onnx.l1ve.onnx", ".other.py.k1ll3d.tmp"):
        (out / name).write_bytes(b"half")
    (out / ".m.py.link.tmp").symlink_to(out / ".other.py.k1ll3d.tmp")
    live = [held(out / ".m.py.l1ve.tmp"), held(out / ".m.onnx.l1ve.onnx")]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp" / "darkcfg-int8-k1ll3d").mkdir(parents=True)
    (tmp_path / "tmp" / "darkcfg-int8-k1ll3d" / "fp32.onnx").write_bytes(b"model")
    try:
        atomic_write(out / "m.py", "x = 1\n", sweep=True)
        with staged_file(out / "m.onnx") as tmp:
            Path(tmp).write_bytes(b"onnx")
        with work_folder("darkcfg-int8-") as work:
            assert os.listdir(tmp_path / "tmp") == [Path(work).name]
    finally:
        for fd in live:
            os.close(fd)
    assert sorted(p.name for p in out.iterdir()) == [
        ".m.onnx.l1ve.onnx", ".m.py.l1ve.tmp", ".m.py.link.tmp", ".other.py.k1ll3d.tmp",
        "m.onnx", "m.py"]
    assert os.listdir(tmp_path / "tmp") == []
    # anchors --write lints the new text from a temp file beside the cfg
    from darkcfg.cli.anchors import lint_text

    cfg = tree_cfg(tmp_path, "x.tree")
    (tmp_path / ".net.cfg.k1ll3d.cfg").write_text("half")
    lint_text(cfg.read_text(), cfg)
    assert not (tmp_path / ".net.cfg.k1ll3d.cfg").exists()


def test_a_stop_signal_while_the_run_finishes_keeps_its_last_checkpoint(tmp_path,
                                                                         tiny_classifier,
                                                                         monkeypatch, capsys):
    """The final checkpoint and `_final.weights` were written after training's signal handler
    was gone: a SIGTERM then (a scheduler's stop at the very end) interrupted the write, exit
    130, and every iteration since the last periodic checkpoint was lost (with
    --checkpoint-every above max_batches, the whole run: nothing to --resume). Now the run
    finishes its writes and exits 0."""
    from darkcfg.cli import main
    from darkcfg.train.outputs import RunLog

    real = RunLog.finish

    def finish(self, trainer):
        os.kill(os.getpid(), signal.SIGTERM)  # as the last checkpoint is about to be written
        real(self, trainer)

    monkeypatch.setattr(RunLog, "finish", finish)
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=3,
                                burn_in=0, second_conv=False)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process: main() installs its own
    try:
        code = main(["train", str(cfg), "--out", str(out), "--no-progress", "--workers", "0",
                     "--checkpoint-every", "1000", "--valid-every", "0"])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 0, capsys.readouterr().err
    from darkcfg.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 3
    assert (out / "c_final.weights").exists()


def test_a_stop_signal_in_the_last_iteration_finishes_the_run(tmp_path, tiny_classifier,
                                                              monkeypatch, capsys):
    """A SIGTERM during the last iteration 'stopped' the run (continue with --resume) without
    its _final.weights; the resume then had nothing to train. The run is complete: it
    finishes (the final weights, 'finished 3 iterations') and exits 0."""
    from darkcfg.cli import main
    from darkcfg.train.loop import Trainer

    real = Trainer.step

    def step(self, images, targets):
        if self.iteration == 2:  # the step that makes iteration 3 = max_batches
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, images, targets)

    monkeypatch.setattr(Trainer, "step", step)
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=3,
                                burn_in=0, second_conv=False)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        code = main(["train", str(cfg), "--out", str(out), "--no-progress", "--workers", "0",
                     "--checkpoint-every", "1000", "--valid-every", "0"])
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert code == 0 and "finished 3 iterations" in err and "stopped by" not in err, err
    assert (out / "c_final.weights").exists()


def test_a_data_loader_process_that_died_is_one_diagnostic(monkeypatch, capsys):
    """A loader process killed under training (the out-of-memory killer's SIGKILL) was torch's
    RuntimeError traceback, raised wherever the main process was (in backward), or, when it
    died while passing a batch over, '<file>: error[E901]: Connection reset by peer' with the
    hint 'check the path'. Now E501, exit 1, whichever way it surfaces."""
    import multiprocessing

    import darkcfg.data.base  # noqa: F401 - loaded in any run that has loader processes
    from darkcfg.cli import main
    from darkcfg.cli import summary as command

    def sigchld(argv):  # what torch's SIGCHLD handler raises in the main process
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")

    def broken_pipe(argv):  # a batch's connection to the dead process
        ours, theirs = multiprocessing.Pipe()
        theirs.close()
        ours.recv()

    for fails in (sigchld, broken_pipe):
        monkeypatch.setattr(command, "main", fails)
        assert main(["summary", "x.cfg"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("<data loader>: error[E501]: a data loader process died (") and \
            "out-of-memory killer" in err and "Traceback" not in err, err
    assert "pid 4242" not in err  # (the second one)

    def reset_elsewhere(argv):  # not a loader's: the file error it was
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(command, "main", reset_elsewhere)
    assert main(["summary", "x.cfg"]) == 2 and "E501" not in capsys.readouterr().err


def test_a_full_shared_memory_is_one_diagnostic_saying_what_to_do(monkeypatch, capsys):
    """Docker's 64 MB /dev/shm under --workers: a batch that did not fit was the worker's
    'unable to allocate shared memory(shm)' RuntimeError, a Python traceback; a worker killed
    by SIGBUS (a write past a full /dev/shm) was E501 with the out-of-memory killer's hint.
    Both are E501 now, whose hint says --workers 0 and docker's --shm-size."""
    import darkcfg.data.base as base
    from darkcfg.cli import main
    from darkcfg.cli import summary as command

    worker = ("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most "
              "recent call last):\n  File \"x.py\", line 1, in f\nRuntimeError: unable to "
              "allocate shared memory(shm) for file </torch_7_8_2>: No space left on device (28)"
              "\n")
    errs = []
    for text in (worker, "DataLoader worker (pid 4242) is killed by signal: Bus error. It is "
                 "possible that dataloader's workers are out of shared memory."):
        def fails(argv, text=text):
            raise RuntimeError(text)

        monkeypatch.setattr(command, "main", fails)
        assert main(["summary", "x.cfg"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("<data loader>: error[E501]: a data loader process ") and \
            "--workers 0" in err and "--shm-size" in err and "out-of-memory" not in err and \
            "Traceback" not in err, err
        errs.append(err)
    assert "the shared memory is full (unable to allocate shared memory(shm)" in errs[0]
    assert "(DataLoader worker (pid 4242) is killed by signal: Bus error); the command" in errs[1]

    # no signal named ('exited unexpectedly'): both causes where /dev/shm is small
    def unexpected(argv):
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")

    monkeypatch.setattr(command, "main", unexpected)
    monkeypatch.setattr(base, "_shm_total", lambda: 64 << 20)
    assert main(["summary", "x.cfg"]) == 1
    err = capsys.readouterr().err
    assert "/dev/shm, 64.0 MiB here" in err and "--shm-size" in err and "out-of-memory" in err
    monkeypatch.setattr(base, "_shm_total", lambda: 64 << 30)  # large: the killer's hint only
    assert main(["summary", "x.cfg"]) == 1
    err = capsys.readouterr().err
    assert "out-of-memory killer" in err and "--shm-size" not in err, err


def _tiny_shm_available() -> bool:
    """A private mount namespace with its own /dev/shm (root, or user namespaces allowed)."""
    probe = ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_training_with_a_tiny_dev_shm_is_e501_not_a_traceback(tmp_path, tiny_classifier):
    """The real thing: --workers 2 with a 1 MB /dev/shm (Docker's is 64 MB) and batches of 1.7
    MB, in a mount namespace of its own."""
    if not _tiny_shm_available():
        pytest.skip("cannot mount a private /dev/shm here (unshare -m)")
    cfg = tiny_classifier.write(tmp_path / "s.cfg", batch=64, subdivisions=1, width=48,
                                height=48, max_batches=5, second_conv=False)
    command = (f"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} "
               f"{ROOT / 'runner.py'} {cfg} --train --out {tmp_path / 'run'} --no-progress "
               "--workers 2 --valid-every 0")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=ROOT, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    err = proc.stderr
    assert proc.returncode == 1 and "error[E501]" in err and "--workers 0" in err and \
        "/dev/shm, 1.0 MiB here" in err and "Traceback" not in err, err

@pytest.mark.slow
def test_a_killed_loader_process_leaves_no_temp_folder(tmp_path):
    """A loader process makes multiprocessing's TMPDIR/pymp-* folder (a socket in it) for the
    batches it passes over; killed (the out-of-memory killer), it left the folder in TMPDIR for
    good, one per kill. The folder is the training process's now, which removes it at exit."""
    script = """if True:
        import os, signal, torch
        from darkcfg.data.sampling import eval_loader
        loader = eval_loader(torch.utils.data.TensorDataset(torch.zeros(64, 3)), 4,
                             torch.device("cpu"), 1)
        batches = iter(loader)
        next(batches)  # the worker has passed a batch over
        os.kill(batches._workers[0].pid, signal.SIGKILL)
        batches._workers[0].join()
        """
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, TMPDIR=str(tmp),
                                                           PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pymp-")] == []

@pytest.mark.slow
def test_a_loader_process_killed_mid_run_keeps_the_checkpoint(tmp_path, tiny_classifier):
    """The real thing: SIGKILL to a --workers process of a running training."""
    cfg = tiny_classifier.write(tmp_path / "w.cfg", batch=4, subdivisions=1, burn_in=0,
                                max_batches=100000, second_conv=False)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--out", str(out),
         "--no-progress", "--workers", "2", "--valid-every", "0", "--checkpoint-every", "3"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    os.kill(int(children[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "error[E501]" in err and "Traceback" not in err, err
    from darkcfg.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt")["iteration"] >= 3


@pytest.mark.slow
def test_a_closed_terminal_stops_training_as_sigterm_does(tmp_path, tiny_classifier):
    """Closing the terminal (or losing the ssh session) sends SIGHUP, which killed a run on the
    spot, its iterations since the last checkpoint lost. Now it is a stop signal: the run
    checkpoints and exits 0, although every write to the closed terminal fails (EIO)."""
    import pty

    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=8, max_batches=100000,
                                second_conv=False)
    out = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--out", str(out),
            "--workers", "1", "--checkpoint-every", "1000", "--valid-every", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    pid, terminal = pty.fork()  # the child: a session of its own on this terminal
    if pid == 0:
        os.execve(sys.executable, argv, env)
    os.set_blocking(terminal, False)
    deadline = time.monotonic() + 120
    try:
        while len(rows(out)) < 3 and time.monotonic() < deadline:
            try:
                os.read(terminal, 1 << 16)  # (the progress bar: a full terminal would block)
            except OSError:
                time.sleep(0.05)
    finally:
        os.close(terminal)  # the hang-up
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    from darkcfg.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == int(rows(out)[-1]["iteration"])
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("ignored", ["SIGHUP", "SIGINT"])
def test_an_ignored_signal_keeps_a_run_going(tmp_path, tiny_classifier, ignored):
    """`nohup darkcfg train ...` ignores SIGHUP, and a shell script's background job (`cmd &`)
    SIGINT (Ctrl-C then stops the script's foreground command, not the run): darkcfg keeps it
    ignored (the loop took SIGINT over before), and SIGTERM still stops the run cleanly."""
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=8, max_batches=100000,
                                second_conv=False)
    out = tmp_path / "run"
    sig = getattr(signal, ignored)
    proc = start_training(cfg, out,  # what nohup / the shell does:
                          preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN))

    def wait_for(n):
        deadline = time.monotonic() + 120
        while len(rows(out)) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no progress: {proc.communicate()[1]}")
            time.sleep(0.05)

    wait_for(2)
    os.killpg(proc.pid, sig)  # the loader process too
    wait_for(len(rows(out)) + 3)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped by SIGTERM" in err, err


def entry_with_exit_handler(tmp_path, entry: str, handler: str, *argv) -> list[str]:
    """A command line through a real entry point (runner.py or `python -m darkcfg`) whose
    process gets `handler` as its last exit handler: the last Python code before it ends."""
    script = tmp_path / "entry.py"
    target = (f"runpy.run_path({str(ROOT / 'runner.py')!r}, run_name='__main__')"
              if entry == "runner.py" else "runpy.run_module('darkcfg', run_name='__main__')")
    script.write_text(
        "import atexit, os, runpy, signal, sys, time\n"
        f"atexit.register(lambda: {handler})  # first registered: runs last\n"
        f"sys.argv = ['darkcfg', *{[str(a) for a in argv]!r}]\n"
        f"{target}\n")
    return [sys.executable, str(script)]


@pytest.mark.parametrize("entry", ["runner.py", "-m darkcfg"])
def test_a_stop_signal_as_the_process_ends_is_exit_130(tmp_path, entry):
    """A stop that came after the command's last output, while the process ended (its exit
    handlers; Python's teardown, 1-2 s with torch, where Python has reset the signals to their
    default action), ended it by the signal (exit -15) or, in an exit handler, with a
    KeyboardInterrupt traceback and exit 0. Now it is the documented exit 130, outputs whole."""
    cfg = detector_cfg(tmp_path)
    done = subprocess.run(
        entry_with_exit_handler(tmp_path, entry, "os.kill(os.getpid(), signal.SIGTERM)",
                                "summary", cfg),
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert "interrupted (after the command had finished" in done.stderr
    assert "BFLOPs" in done.stdout and done.stdout.rstrip().splitlines()[-1].startswith("Total")


def test_a_hung_exit_still_ends_at_a_second_stop_signal(tmp_path):
    """The first stop signal in the exit is noted (exit 130 once the exit is done); an exit that
    hangs there (here an exit handler that sleeps) ends at the second one, as Ctrl-C twice."""
    hang = ("(os.kill(os.getpid(), signal.SIGTERM), print('hung', file=sys.stderr, flush=True),"
            " time.sleep(60))")
    proc = subprocess.Popen(entry_with_exit_handler(tmp_path, "runner.py", hang, "--version"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stderr.readline() == "hung\n"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.communicate()


def test_a_detector_trains_and_validates_without_pycocotools(tmp_path, monkeypatch, capsys):
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed (even if imported)
    cfg = detector_cfg(tmp_path, max_batches=2)
    out = tmp_path / "run"
    assert run(cfg, "--train", "--out", out, "--no-progress", "--workers", "0",
               "--valid-every", "2") == 0
    err = capsys.readouterr().err
    assert err.count("pycocotools is not installed") == 1 and "--no-coco" not in err
    assert err.index("pycocotools is not installed") < err.index("iteration 2:")  # at start-up
    validated = rows(out)[-1]
    assert validated["val_map50"] != "" and validated["val_map50_95"] == ""  # absent, not 0
    assert (out / "chart.png").exists()
    assert run(cfg, "--valid", "--weights", out / "det_final.weights") == 0
    assert "mean average precision" in capsys.readouterr().out


def detection_data(tmp_path: Path) -> tuple[Path, list[Path]]:
    paths = image_files(tmp_path / "images", 3)
    (tmp_path / "train.txt").write_text("".join(f"{p}\n" for p in paths))
    data = tmp_path / "obj.data"
    data.write_text("classes=2\ntrain=train.txt\nvalid=train.txt\n")
    return data, paths


def test_a_corrupt_image_anywhere_is_found_before_the_first_iteration(tmp_path, capsys):
    data, paths = detection_data(tmp_path)
    paths[1].write_bytes(b"\xff\xd8 not really a jpeg")  # the second, not the first
    out = tmp_path / "run"
    assert run(detector_cfg(tmp_path), "--train", "--data", data, "--out", out,
               "--no-progress", "--workers", "0") == 2
    err = capsys.readouterr().err
    assert "1 of the 3 images" in err and str(paths[1]) in err and "Traceback" not in err
    assert not out.exists()  # nothing ran, nothing written


@pytest.mark.parametrize("kind", ["folder", "data"])
def test_a_classifiers_corrupt_image_anywhere_is_found_before_the_first_iteration(
        tmp_path, capsys, tiny_classifier, kind):
    """ImageFolders and classifier .data files read only their first image at start: a corrupt
    one further on stopped the run when first drawn (hours in, on a big set)."""
    images = []
    for label in ("cat", "dog"):
        images += image_files(tmp_path / "set" / label, 2)
    images[-1].write_bytes(b"")  # a zero-byte .jpg, the last of the list
    data = tmp_path / "set"
    if kind == "data":
        (tmp_path / "labels.txt").write_text("cat\ndog\n")
        (tmp_path / "train.txt").write_text("".join(f"{p}\n" for p in images))
        data = tmp_path / "c.data"
        data.write_text("classes=2\ntrain=train.txt\nlabels=labels.txt\n")
    cfg = tiny_classifier.write(tmp_path / "c.cfg", max_batches=2, burn_in=0)
    out = tmp_path / "run"
    assert run(cfg, "--train", "--out", out, "--no-progress", "--data", data,
               "--workers", "0") == 2
    err = capsys.readouterr().err
    assert f"{images[-1]}: error[E901]: 1 of the 4 images of " in err, err
    assert "Traceback" not in err and not out.exists()
    # --valid reads the validation images only (none here: 4 images split 90/10, no valid=)
    assert run(cfg, "--valid", "--data", data, "--workers", "0") == 2
    err = capsys.readouterr().err
    assert "has no validation split" in err and str(images[-1]) not in err, err


def test_an_image_that_fails_to_decode_later_is_skipped_with_a_warning(tmp_path, capsys):
    from darkcfg.data.detection.dataset import LabelledImages, check_image_headers
    from darkcfg.data.detection.labels import validate_labels

    _, paths = detection_data(tmp_path)
    whole = paths[1].read_bytes()
    paths[1].write_bytes(whole[:len(whole) * 4 // 5])  # the header is intact, the pixels are not
    check_image_headers([str(p) for p in paths], "list")  # cheap check: passes
    labels = validate_labels([str(p.with_suffix(".txt")) for p in paths], 2)
    images = LabelledImages([str(p) for p in paths], labels, 3)
    image, boxes = images[1]
    err = capsys.readouterr().err
    assert err.startswith(f"{paths[1]}: warning[W901]: cannot read image") and "skipped" in err
    expected, expected_boxes = images[2]  # the next readable image takes its place
    assert image.equal(expected) and np.array_equal(boxes, expected_boxes)
    images[1]
    assert capsys.readouterr().err == ""  # said once
    # validation keeps its place (a blank image with its own truths, as Darknet's
    # load_image_cv): the next image was scored twice and this one's truths never
    scored = LabelledImages([str(p) for p in paths], labels, 3, scored=True)
    for _ in range(2):
        image, boxes = scored[1]
        assert image.shape == (3, 10, 10) and not image.any()
        assert np.array_equal(boxes, labels.boxes[1])
    assert capsys.readouterr().err.count("scored as a blank image") == 1


def cut_folder(root: Path, cut: tuple[str, ...]) -> dict[str, Path]:
    """An ImageFolder with train/ and val/ of 3 noise JPEGs per class (cat, dog); the images
    named in `cut` ('train/dog/2.jpg') keep their header but lose their last pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.jpg")
    paths = {}
    for name in cut:
        path = paths[name] = root / name
        whole = path.read_bytes()
        path.write_bytes(whole[:len(whole) * 4 // 5])  # the header is intact, the pixels not
    return paths


def test_a_classifiers_undecodable_image_is_skipped_in_training_and_blank_in_validation(
        tmp_path, capsys):
    """A classifier's image whose header reads but whose pixels do not decode stopped training
    and `valid` with E901 (ImageFiles had no W901 path; detection's had). Training now skips it
    (the next image of the list, with its label, takes its place) and validation scores it as
    the blank 10x10 image of its own label that Darknet's validate_classifier gets from
    load_image; each said once."""
    from darkcfg.data import image_folder, read_image

    cut = cut_folder(tmp_path / "set", ("train/cat/1.jpg", "val/dog/0.jpg"))
    splits = image_folder(tmp_path / "set", 3, 0)  # headers checked: they pass
    train, val = splits.train, splits.val
    at = [p for p, _ in train.items].index(str(cut["train/cat/1.jpg"]))
    for _ in range(2):
        image, label = train[at]
        assert image.equal(read_image(train.items[at + 1][0], 3)) and label == 0
    err = capsys.readouterr().err
    assert err.startswith(f"{cut['train/cat/1.jpg']}: warning[W901]: cannot read image")
    assert err.count("W901") == 1 and "skipped; the next image of the list" in err
    at = [p for p, _ in val.items].index(str(cut["val/dog/0.jpg"]))
    for _ in range(2):
        image, label = val[at]
        assert image.shape == (3, 10, 10) and not image.any() and label == 1
    err = capsys.readouterr().err
    assert err.count("W901") == 1 and "scored as a blank image of its class" in err
    assert [val[i][1] for i in range(len(val))] == [0, 0, 0, 1, 1, 1]  # every image scored


def test_a_classifier_trains_and_validates_past_an_undecodable_image(tmp_path, capsys,
                                                                     tiny_classifier):
    cut = cut_folder(tmp_path / "set", ("train/dog/2.jpg", "val/cat/1.jpg"))
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=2,
                                burn_in=0)
    out = tmp_path / "run"
    assert run(cfg, "--train", "--data", tmp_path / "set", "--out", out, "--no-progress",
               "--workers", "0") == 0
    err = capsys.readouterr().err
    assert f"{cut['train/dog/2.jpg']}: warning[W901]" in err and "error" not in err, err
    assert f"{cut['val/cat/1.jpg']}: warning[W901]" in err
    assert run(cfg, "--valid", "--data", tmp_path / "set", "--weights",
               out / "c_final.weights", "--workers", "0") == 0
    err = capsys.readouterr().err
    assert f"{cut['val/cat/1.jpg']}: warning[W901]" in err and "error" not in err, err


def test_predict_leaves_out_an_undecodable_image_and_goes_on(tmp_path, capsys,
                                                             tiny_classifier):
    """`predict` stopped with E901 at an image whose pixels do not decode, the images after it
    unclassified; it now leaves it out with W901 and goes on, as `detect` does. A file whose
    header does not read is still E901 before any work."""
    cut = cut_folder(tmp_path / "set", ("val/cat/1.jpg",))
    cfg = tiny_classifier.write(tmp_path / "c.cfg")
    folder = tmp_path / "set" / "val" / "cat"
    assert run(cfg, "--predict", folder, "--data", tmp_path / "set") == 0
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [
        str(folder / "0.jpg"), str(folder / "2.jpg")]
    assert f"{cut['val/cat/1.jpg']}: warning[W901]" in err and "left out; predict goes on" in err
    (folder / "3.jpg").write_bytes(b"not an image")
    assert run(cfg, "--predict", folder, "--data", tmp_path / "set") == 2
    out, err = capsys.readouterr()
    assert out == "" and "error[E901]" in err and "3.jpg" in err


def test_native_cache_survives_a_bad_compiler_and_an_unwritable_home(tmp_path):
    """`CC=/bin/true` (exits 0, writes nothing) keeps the good library and says why it falls
    back (before: an empty "library" replaced it); a cache folder that cannot be written uses
    one per-user folder under the temp dir, not a new temp folder left behind by every
    process."""
    if native.library() is None:
        pytest.skip(native.status())
    probe = "from builders import native; print(native.status())"
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT), DARKCFG_CACHE=str(cache), DARKCFG_NATIVE="1")

    def status(**extra) -> str:
        return subprocess.run([sys.executable, "-c", probe], env={**env, **extra},
                              capture_output=True, text=True, check=True).stdout.strip()

    assert status().startswith(f"native: {cache}/kernels-")
    before = sorted(p.name for p in cache.iterdir())
    bad = status(CC="/bin/true")
    assert "exited 0 but wrote no library" in bad, bad
    assert sorted(p.name for p in cache.iterdir()) == before
    assert status().startswith(f"native: {cache}/kernels-")  # the good one, loaded again
    # a cache folder that is a file (as unwritable as it gets, even for root)
    temp = tmp_path / "temp"
    temp.mkdir()
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    for _ in range(2):
        fallback = status(DARKCFG_CACHE=str(blocked), TMPDIR=str(temp))
        assert fallback.startswith(f"native: {temp}/darkcfg-{os.getuid()}/kernels-"), fallback
    assert [p.name for p in temp.iterdir()] == [f"darkcfg-{os.getuid()}"]
    # nowhere to keep it (the per-user name is a file): built in a temp folder, removed once
    # loaded
    (temp / f"darkcfg-{os.getuid()}").rename(tmp_path / "moved")
    (temp / f"darkcfg-{os.getuid()}").write_text("")
    once = status(DARKCFG_CACHE=str(blocked), TMPDIR=str(temp))
    assert once.startswith(f"native: {temp}/darkcfg-"), once
    assert [p.name for p in temp.iterdir()] == [f"darkcfg-{os.getuid()}"]


@pytest.mark.parametrize("text", [
    "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10))
    + "data: *a9\nseed: *a9\n",  # printing 'seed: 0 (was ...)' ran out of memory
    "data: " + "[" * 100_000 + "]" * 100_000 + "\n",  # a RecursionError traceback
    "data: x\ndata: y\n",
])
def test_a_hostile_settings_yaml_on_resume_is_an_unreadable_one(tmp_path, text):
    """--resume compares the run's settings.yaml with the new settings and may continue on its
    recorded data: a damaged or hostile one is read as no settings (nothing to compare)."""
    from darkcfg.train.outputs import resume_changes
    from darkcfg.train.session import recorded_data

    (tmp_path / "settings.yaml").write_text(text)
    assert resume_changes(tmp_path / "settings.yaml", {"data": "digits", "seed": 0}) == []
    assert recorded_data(tmp_path, "--resume") is None
    (tmp_path / "settings.yaml").write_text("data: digits\nseed: 3\n")
    assert resume_changes(tmp_path / "settings.yaml", {"data": "digits", "seed": 0}) == [
        "seed: 0 (was 3)"]
    assert recorded_data(tmp_path, "--resume") == "digits"


def test_an_output_name_that_fits_is_written_whatever_its_temp_names_length(tmp_path):
    """A name of 241-255 bytes fits a file name, but `.NAME.XXXXXXXX.tmp` did not: E901 'File
    name too long' naming the hidden temp file. The temp name is now cut to fit (by bytes, not
    inside a UTF-8 character); a killed writer's cut temp file is still swept."""
    from builders.atomic import atomic_write, fitting

    for name in ("x" * 250 + ".txt", "é" * 121 + ".jpg"):
        assert len(os.fsencode(name)) <= 255
        leftover = tmp_path / f".{fitting(name, 14)}.k1ll3d0.tmp"
        leftover.write_text("half")
        atomic_write(tmp_path / name, "done\n", sweep=True)
        assert (tmp_path / name).read_text() == "done\n"
        assert not leftover.exists()
    assert fitting("é" * 200, 14).encode() == "é".encode() * 120


def test_header_check_of_a_long_list_submits_chunks_not_one_task_per_image(tmp_path,
                                                                          monkeypatch):
    # 200k images were 200k futures: the pool's locks cost 7x the header reads
    from concurrent.futures import ThreadPoolExecutor

    from darkcfg.data.base import check_image_headers

    _, paths = detection_data(tmp_path)
    good = [str(p) for p in paths]
    listed = [good[i % len(good)] for i in range(20_000)]
    listed[7000] = str(tmp_path / "gone-b.jpg")
    listed[3] = str(tmp_path / "gone-a.jpg")
    submitted = []
    real_submit = ThreadPoolExecutor.submit
    monkeypatch.setattr(ThreadPoolExecutor, "submit",
                        lambda self, *a, **k: submitted.append(1) or real_submit(self, *a, **k))
    with pytest.raises(CfgError) as caught:
        check_image_headers(listed, "list")
    assert len(submitted) < 100
    text = str(caught.value)
    # the bad ones in list order, every image counted
    assert "2 of the 20000 images of 'list'" in text
    assert text.index("gone-a.jpg") < text.index("gone-b.jpg")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_open_image_tries_the_common_formats_first(tmp_path, monkeypatch, suffix):
    # in plugin order a JPEG was parsed by IM, IMT and IPTC before JPEG (4 opens, not 1): the
    # header check of 200k images paid it 200k times
    from PIL import Image, ImageFile

    from darkcfg.data.base import _readable_formats, open_image

    path = tmp_path / f"x{suffix}"
    Image.new("RGB", (8, 6)).save(path)
    # the plugins as a fresh process registers them (by name), whatever this one imported
    Image.init()
    monkeypatch.setattr(Image, "OPEN", dict(sorted(Image.OPEN.items())))
    _readable_formats.cache_clear()
    made = []
    real_init = ImageFile.ImageFile.__init__
    monkeypatch.setattr(ImageFile.ImageFile, "__init__",
                        lambda self, *a, **k: made.append(type(self).__name__)
                        or real_init(self, *a, **k))
    try:
        with open_image(path) as im:
            assert im.size == (8, 6)
    finally:
        _readable_formats.cache_clear()  # the next caller reads the real plugin order
    assert len(made) == 1, made


def test_synced_together_syncs_each_folder_once_at_the_end(tmp_path, monkeypatch):
    """Inside `synced_together` (data convert's many files) a file's bytes are synced before
    its rename and its folder at the end of the outermost block, also when the block fails."""
    from builders import atomic

    folders = []
    monkeypatch.setattr(atomic, "sync_folder", lambda folder: folders.append(folder))
    with pytest.raises(KeyboardInterrupt), atomic.synced_together():
        for i in range(3):
            atomic.atomic_write(tmp_path / "a" / f"{i}.txt", "x")
        with atomic.synced_together():
            atomic.atomic_write(tmp_path / "b" / "0.txt", "y")
        assert folders == []
        raise KeyboardInterrupt
    assert folders == [tmp_path / "a", tmp_path / "b"]
    atomic.atomic_write(tmp_path / "c.txt", "z")  # outside a block: at once
    assert folders[-1] == tmp_path and (tmp_path / "a" / "2.txt").read_text() == "x"


def test_a_process_forked_while_training_waits_leaves_the_stop_to_the_trainer():
    """A loader process is a fork of the trainer, with its stop handler until its init sets the
    stop signals aside: a stop signal to the process group in between ran the trainer's handler
    there, whose SIGALRM retry raised StopWhileWaiting in the loader 50 ms later (its traceback,
    then torch's 'DataLoader worker exited unexpectedly' one; 1 stop in 56 of a stress run)."""
    from darkcfg.train.loop import StopFlag

    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process
    try:
        with StopFlag() as stop, stop.waiting():
            pid = os.fork()
            if pid == 0:  # the loader process, before its init
                code = 1
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.3)  # (past the retry)
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert not stop.requested
    finally:
        signal.signal(signal.SIGTERM, before)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("wait", ["batch", "validation", "receiving", "step"])
def test_a_stop_signal_while_waiting_for_data_stops_at_once(tmp_path, tiny_classifier,
                                                           monkeypatch, capsys, wait):
    """A loader that never delivers (its batch lost: `ulimit -n 32` did that) or a slow one held
    the stop: SIGTERM only set the flag checked after the next step, which never came. A stop
    signal during the wait for the next batch or a validation now checkpoints the iterations
    done and exits 0 at once; one that comes half way through receiving a batch (the loader
    process's end then printed a BrokenPipeError traceback) ends the wait right after it. One
    that comes during the step before a validation skips it (the whole validation ran)."""
    import threading

    from darkcfg.cli import main
    from darkcfg.data.sampling import Stream
    from darkcfg.train.loop import Trainer
    from darkcfg.train.tasks import Task

    receiving = {}  # a function that runs as multiprocessing's code does, by its file name
    exec(compile("import os, signal\ndef receive():\n    os.kill(os.getpid(), signal.SIGTERM)\n"
                 "    sum(range(10000))\n", "/lib/multiprocessing/connection.py", "exec"),
         receiving)

    def stuck():
        if wait == "receiving":
            receiving["receive"]()
        else:
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(20)  # (never set: only the signal can end the wait)
        raise AssertionError("the stop signal did not end the wait")

    real, real_step = Stream.batches, Trainer.step

    def batches(self, start):
        for k, batch in enumerate(real(self, start)):
            if k == 2 and wait in ("batch", "receiving"):
                stuck()
            yield batch

    def step(self, images, targets):
        if wait == "step" and self.iteration == 1:  # the step of iteration 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, images, targets)

    def evaluate(self, trainer, loader):
        if wait == "step":  # a long validation that the signal came before
            threading.Event().wait(20)
            raise AssertionError("the validation ran after the stop signal")
        stuck()

    monkeypatch.setattr(Stream, "batches", batches)
    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Task, "evaluate", evaluate)
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=100,
                                burn_in=0, second_conv=False)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process: main() installs its own
    started = time.monotonic()
    try:
        code = main(["train", str(cfg), "--out", str(out), "--no-progress", "--workers", "0",
                     "--checkpoint-every", "1000",
                     "--valid-every", "2" if wait in ("validation", "step") else "0"])
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert code == 0 and "stopped by SIGTERM at iteration 2" in err, err
    assert time.monotonic() - started < 15
    from darkcfg.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 2


def test_a_loader_process_of_a_rank_ends_when_the_rank_does(tmp_path):
    """A rank's loader processes are children of a forkserver, which outlives a rank killed by
    SIGKILL; torch's loader process watches only its parent, so they ran on for good (with the
    forkserver and resource tracker, holding the command's stderr open). `owner` ends them."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    script = ("import sys, time\nfrom darkcfg.data.base import loader_worker_init\n"
              f"loader_worker_init(0, owner={owner.pid})\nprint('watching', flush=True)\n"
              "time.sleep(60)\n")
    loader = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert loader.stdout.readline() == "watching\n"
        time.sleep(0.5)
        assert loader.poll() is None  # the owner lives: so does the loader
        owner.kill()
        owner.wait()
        assert loader.wait(timeout=20) == 0
    finally:
        owner.kill()
        loader.kill()
