"""Detectors train through the DetectionTask: the loss is the sum of every head's loss with
Darknet's `seen`, per-head statistics reach metrics.csv, validation is Darknet's -map (mAP,
per-class table, JSON), `_best.weights` follows mAP, and a killed run resumes byte-identically."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import darkcfg.cli.flags as runner
from builders import build
from darkcfg.config import NetConfig
from darkcfg.train.detection import DetectionTask
from darkcfg.train.loop import Trainer
from darkcfg.train.tasks import task_for

ROOT = Path(__file__).resolve().parents[1]

# two [yolo] heads (8x8 and 4x4 grids at 64x64), multi-scale and Darknet's augmentations on
CFG = """
[net]
width=64
height=64
channels=3
batch=4
subdivisions=2
learning_rate=0.002
momentum=0.9
decay=0.0005
burn_in=3
max_batches={max_batches}
policy=steps
steps=100
scales=0.1
hue=.1
saturation=1.5
exposure=1.5

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=6,6, 12,12, 20,20, 32,32, 44,44, 60,60
classes=2
num=6
jitter=.2
random=1

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
filters=21
activation=linear

[yolo]
mask=3,4,5
anchors=6,6, 12,12, 20,20, 32,32, 44,44, 60,60
classes=2
num=6
jitter=.2
random=1
"""


@pytest.fixture
def cfg(tmp_path) -> Path:
    path = tmp_path / "tiny.cfg"
    path.write_text(CFG.format(max_batches=12))
    return path


def test_the_loss_gradient_is_the_heads_sum_its_value_their_mean_with_seen_and_stats(
        cfg, monkeypatch):
    net = build(str(cfg))
    task = task_for(net, NetConfig.from_block(net.net_block))
    assert isinstance(task, DetectionTask) and task.heads == (4, 8)
    seen_by_head = []
    for i in task.heads:
        original = net.layers[i].loss

        def spy(x, truth, seen=0, _original=original, _i=i):
            seen_by_head.append((_i, seen))
            return _original(x, truth, seen=seen)

        monkeypatch.setattr(net.layers[i], "loss", spy)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    truth = torch.zeros(2, 5, 5)
    truth[0, 0] = torch.tensor([0.3, 0.4, 0.2, 0.3, 1])
    truth[1, :2] = torch.tensor([[0.7, 0.6, 0.5, 0.4, 0], [0.2, 0.2, 0.1, 0.1, 1]])
    loss, stats = task.loss(net, x, truth, seen=64)
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    out = net(x, collect=[3, 7])
    (loss4, stats4), (loss8, stats8) = (net.layers[i].loss(out[i - 1], truth, seen=64)
                                        for i in (4, 8))
    expected = loss4 + loss8
    # Darknet prints the mean of the heads' costs (get_network_cost); each head's delta counts
    torch.testing.assert_close(loss, expected / 2)
    for got, want in zip(grads, torch.autograd.grad(expected, list(net.parameters()),
                                                    allow_unused=True), strict=True):
        if want is not None:
            torch.testing.assert_close(got, want)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # the task's statistics are the heads' own (loss, stats) return values, nothing read aside
    assert float(stats["h4_count"]) == stats4["count"]
    assert float(stats["h8_avg_iou"]) == pytest.approx(stats8["avg_iou"])
    assert seen_by_head[:2] == [(4, 64), (8, 64)]
    assert set(stats) == {f"h{i}_{s}" for i in (4, 8) for s in
                          ("avg_iou", "count", "class_loss", "iou_loss", "total_loss")}
    assert float(stats["h4_count"]) + float(stats["h8_count"]) >= 1  # some truth matched
    assert "h4 iou" in task.progress(stats)


def test_the_trainer_passes_seen_per_mini_batch_and_runs_other_sizes(cfg, monkeypatch):
    net = build(str(cfg))
    trainer = Trainer(net, NetConfig.from_block(net.net_block))
    seen = []
    original = trainer.task.loss

    def spy(net, x, targets, seen_now=0):
        seen.append((seen_now, tuple(x.shape[-2:])))
        return original(net, x, targets, seen_now)

    monkeypatch.setattr(trainer.task, "loss", spy)
    truth = torch.zeros(4, 5, 5)
    truth[:, 0] = torch.tensor([0.5, 0.5, 0.3, 0.3, 0])
    trainer.step(torch.rand(4, 3, 64, 64), truth)
    trainer.step(torch.rand(4, 3, 96, 96), truth)  # a multi-scale size: the net follows
    assert seen == [(2, (64, 64)), (4, (64, 64)), (6, (96, 96)), (8, (96, 96))]


def rows(out: Path) -> list[dict]:
    path = out / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_train_validate_and_json(cfg, tmp_path, capsys):
    out = tmp_path / "run"
    code = runner.main([str(cfg), "--train", "--out", str(out), "--no-progress", "--workers",
                        "0", "--valid-every", "6"])
    assert code == 0
    err = capsys.readouterr().err
    assert "embedded detection set" in err and "mean average precision (mAP@0.50)" in err
    log = rows(out)
    assert [int(r["iteration"]) for r in log] == list(range(1, 13))
    validated = [r for r in log if r["val_map50"]]
    assert [int(r["iteration"]) for r in validated] == [6, 12]
    for r in validated:
        assert 0 <= float(r["val_map50"]) <= 1 and 0 <= float(r["val_map50_95"]) <= 1
    assert all(r["h4_avg_iou"] != "" and r["h8_total_loss"] != "" for r in log)
    for name in ("chart.png", "tiny_best.weights", "tiny_final.weights", "checkpoint.pt"):
        assert (out / name).exists(), name
    settings = (out / "settings.yaml").read_text()
    assert "task: detect" in settings

    weights = str(out / "tiny_final.weights")
    assert runner.main([str(cfg), "--valid", "--weights", weights, "--format", "json",
                        "--map-points", "101"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= {"map50", "map50_95", "per_class", "precision", "recall", "f1",
                           "avg_iou", "thresholds"}
    assert len(result["per_class"]) == 2
    assert result["thresholds"] == {"detection": 0.005, "nms": 0.45, "iou": 0.5, "conf": 0.25,
                                    "map_points": 101}
    assert runner.main([str(cfg), "--valid", "--weights", weights]) == 0
    text = capsys.readouterr().out
    assert "mean average precision (mAP@0.50)" in text and "truths" in text
    # the same weights evaluated twice give the same all-point mAP as the training run's last
    assert f"= {float(validated[-1]['val_map50']):.6f}" in text


def command(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--out", str(out),
            "--no-progress", "--checkpoint-every", "3", "--valid-every", "10", "--workers", "0",
            *extra]


def start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("device", [
    ("--device", "cpu"),
    # CUDA sums atomically in arrival order unless --deterministic (seen on an H200)
    pytest.param(("--device", "cuda", "--deterministic"), marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device"))], ids=["cpu", "cuda"])
def test_a_killed_detector_resumes_byte_identically(tmp_path, device):
    import time

    cfg = tmp_path / "resume.cfg"
    cfg.write_text(CFG.format(max_batches=20))  # crosses a multi-scale period (10)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = start(command(cfg, killed, *device))
    deadline = time.monotonic() + 300
    while len(rows(killed)) < 8:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run made no progress")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "resume_final.weights").exists(), "killed too late to test anything"
    reference = start(command(cfg, straight, *device))
    resumed = start(command(cfg, killed, *device, "--resume"))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    assert "resuming from" in err
    for name in ("resume_final.weights", "resume_best.weights"):
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    keys = ("iteration", "loss", "h4_avg_iou", "val_map50", "val_map50_95")
    assert [[r[k] for k in keys] for r in rows(killed)] == \
        [[r[k] for k in keys] for r in rows(straight)]


def test_valid_on_darknet_detection_data(cfg, tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    lines = []
    for i, rows in enumerate(([(0, 0.3, 0.3, 0.2, 0.2)], [(1, 0.6, 0.5, 0.3, 0.4),
                                                           (0, 0.2, 0.8, 0.1, 0.1)])):
        path = images / f"im{i}.png"
        Image.new("RGB", (80, 60), (20 * i, 40, 60)).save(path)
        path.with_suffix(".txt").write_text("".join(f"{c} {x} {y} {w} {h}\n"
                                                    for c, x, y, w, h in rows))
        lines.append(str(path))
    (tmp_path / "data" / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "data" / "obj.names").write_text("cat\ndog\n")
    data = tmp_path / "data" / "obj.data"
    data.write_text("classes=2\ntrain=list.txt\nvalid=list.txt\nnames=obj.names\n"
                    f"backup={tmp_path / 'backup'}\n")
    assert runner.main([str(cfg), "--valid", "--data", str(data), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["per_class"]) == {"cat", "dog"}
    assert result["fn"] + result["tp"] == 3  # every label line is a truth
    # a bad label is a located error before anything runs
    (images / "im1.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    assert runner.main([str(cfg), "--valid", "--data", str(data)]) == 2
    assert "im1.txt:1" in capsys.readouterr().err


def test_valid_reads_only_the_validation_list_of_detection_data(cfg, tmp_path, capsys):
    """Detector valid read the train= list too (its images, labels and headers): a copied
    validation split without the training images was an E901, a 100k-image list minutes.
    Now it reads valid= (as Darknet's detector map), and train= only where there is no valid=;
    a data.yaml alike. Training still reads (and checks) the train list."""
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (80, 60), (20, 40, 60)).save(folder / "v0.png")
    (folder / "v0.txt").write_text("1 0.5 0.5 0.3 0.4\n")
    (folder / "valid.txt").write_text("v0.png\n")
    (folder / "obj.names").write_text("cat\ndog\n")
    data = folder / "obj.data"
    data.write_text("classes=2\ntrain=missing.txt\nvalid=valid.txt\nnames=obj.names\n")
    assert runner.main([str(cfg), "--valid", "--data", str(data), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fn"] + result["tp"] == 1
    data.write_text("classes=2\nvalid=valid.txt\nnames=obj.names\n")  # no train= at all
    assert runner.main([str(cfg), "--valid", "--data", str(data)]) == 0
    capsys.readouterr()
    yaml = folder / "data.yaml"
    yaml.write_text(f"path: {folder}\ntrain: gone/\nval: valid.txt\nnames: [cat, dog]\n")
    (folder / "labels").mkdir()
    (folder / "labels" / "v0.txt").write_text("1 0.5 0.5 0.3 0.4\n")
    assert runner.main([str(cfg), "--valid", "--data", str(yaml), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fn"] + result["tp"] == 1
    # without valid=, the train list is what valid scores (Darknet's fallback): still read
    data.write_text("classes=2\ntrain=missing.txt\nnames=obj.names\n")
    assert runner.main([str(cfg), "--valid", "--data", str(data)]) == 2
    assert "missing.txt" in capsys.readouterr().err
    data.write_text("classes=2\ntrain=missing.txt\nvalid=valid.txt\nnames=obj.names\n")
    assert runner.main([str(cfg), "--train", "--data", str(data), "--out",
                        str(tmp_path / "run"), "--no-progress"]) == 2
    assert "missing.txt" in capsys.readouterr().err


@pytest.mark.parametrize("flavor", ["alexeyab", "pjreddie"])
def test_darknet_init_draws_the_forks_kernels(flavor):
    """AlexeyAB: sqrt(2/fan_in) * U(-1, 1) (make_convolutional_layer); pjreddie: * N(0, 1)."""
    from darkcfg.train.loop import darknet_init

    net = build("\n".join(["[net]", "width=32", "height=32", "channels=3",
                           "[convolutional]", "filters=64", "size=3", "stride=1", "pad=1",
                           "activation=leaky", "batch_normalize=1",
                           "[convolutional]", "filters=64", "size=3", "stride=1", "pad=1",
                           "activation=linear"]) + "\n", flavor=flavor)
    torch.manual_seed(0)
    darknet_init(net)
    w = next(p for p in net.layers[1].parameters() if p.dim() == 4).detach()
    scale = (2 / (64 * 9)) ** 0.5
    if flavor == "alexeyab":
        assert float(w.abs().max()) <= scale
        assert abs(float(w.std()) / (scale / 3 ** 0.5) - 1) < 0.03
    else:
        assert float(w.abs().max()) > scale  # a normal's tails pass the bound
        assert abs(float(w.std()) / scale - 1) < 0.03
    biases = [p for n, p in net.layers[1].named_parameters() if n.endswith("bias")]
    assert biases and all(float(b.abs().sum()) == 0 for b in biases)


def test_darknet_build_native_trains_and_is_recorded(cfg, tmp_path, capsys):
    """--darknet-build native: the augmentation of Darknet built without OpenCV, in both forms
    of the command line; settings.yaml records it; mosaic with it is a located error."""
    from darkcfg.cli import main

    out = tmp_path / "native"
    assert main(["train", str(cfg), "--darknet-build", "native", "--out", str(out),
                 "--no-progress", "--workers", "0", "--valid-every", "0", "--set",
                 "max_batches=2"]) == 0
    err = capsys.readouterr().err
    assert "as Darknet built without OpenCV" in err
    assert "darknet_build: native" in (out / "settings.yaml").read_text()
    assert [int(r["iteration"]) for r in rows(out)] == [1, 2]
    # resumed with other options: it continues, and says which setting changed
    assert main(["train", str(cfg), "--resume", "--out", str(out), "--no-progress",
                 "--workers", "0", "--valid-every", "0", "--set", "max_batches=3"]) == 0
    err = capsys.readouterr().err
    assert "warning: resuming with other settings than the run had: darknet_build: opencv " \
        "(was native)" in err
    assert main(["train", str(cfg), "--resume", "--darknet-build", "opencv", "--out", str(out),
                 "--no-progress", "--workers", "0", "--valid-every", "0", "--set",
                 "max_batches=4"]) == 0
    assert "other settings" not in capsys.readouterr().err  # extending max_batches is no change
    out2 = tmp_path / "mosaic"
    assert runner.main([str(cfg), "--train", "--darknet-build", "native", "--out", str(out2),
                        "--no-progress", "--workers", "0", "--set", "mosaic=1", "--set",
                        "max_batches=2"]) == 2
    err = capsys.readouterr().err
    assert "error[E305]" in err and "mosaic needs OpenCV" in err and "Traceback" not in err


@pytest.mark.parametrize("step, message", [
    ("16", "multi-scale training (random=1) trains at 80x80 (resize_step=16), where this "
     "network cannot run:"),
    ("0", "resize_step=0: multi-scale training (random=1 in the last [yolo]) steps sizes by it")])
def test_multiscale_sizes_the_network_cannot_run_are_refused_before_training(
        tmp_path, capsys, step, message):
    """random=1 trains at sizes resize_step apart: one the network cannot run at (its routes
    join maps of other sizes) is a located E305 before any data is read, not a traceback at the
    first iteration of that size; the cfg size alone (random=0) trains."""
    from darkcfg.cli import main

    out = tmp_path / "run"
    args = ["train", str(ROOT / "cfg" / "yolov3-tiny.cfg"), "--out", str(out), "--no-progress",
            "--workers", "0", "--valid-every", "0", "--set", "width=64", "--set", "height=64",
            "--set", "batch=2", "--set", "subdivisions=1", "--set", "max_batches=1",
            "--set", f"resize_step={step}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error[E305]: {message}" in err and "Traceback" not in err
    if step == "16":
        assert "yolov3-tiny.cfg:180:8: [route] inputs differ" in err
        assert "yolov3-tiny.cfg:208:8: error[E305]" in err  # the last [yolo]'s random=
    assert not (out / "checkpoint.pt").exists()
    assert main([*args, "--set", "yolo.random=0"]) == 0


def test_an_error_in_a_loader_process_ends_the_run(cfg, tmp_path):
    """Loader processes ignore SIGTERM (a stop signal to the process group is the trainer's to
    handle), so one that raised must be stopped by the stream itself: the run ends with the
    error instead of waiting at exit, forever, on a process multiprocessing cannot terminate."""
    script = tmp_path / "boom.py"
    script.write_text(
        "import sys\n"
        "import darkcfg.data.detection.dataset as dataset\n"
        "def boom(boxes, rows):\n"
        "    raise RuntimeError('boom in a loader process')\n"
        "dataset.pad_truth = boom\n"
        "from darkcfg.cli import main\n"
        f"sys.exit(main(['train', {str(cfg)!r}, '--out', {str(tmp_path / 'run')!r}, "
        "'--no-progress', '--workers', '1', '--valid-every', '0']))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "boom in a loader process" in done.stderr


def test_a_data_error_in_a_validation_loader_process_is_reported_and_ends(cfg, tmp_path):
    """`valid` whose loader process raises a data error: the located error, exit 2, no
    traceback, and the process ends (the loop's iterator, alive in the error's frames, left a
    SIGTERM-ignoring loader process for multiprocessing's exit handler to wait on forever)."""
    script = tmp_path / "boom.py"
    script.write_text(
        "import sys\n"
        "import darkcfg.data.detection.dataset as dataset\n"
        "from darkcfg.data import DataError\n"
        "def boom(self, index):\n"
        "    raise DataError(\"cannot read image 'x.png': broken\")\n"
        "dataset.DetectionEval.__getitem__ = boom\n"
        "from darkcfg.cli import main\n"
        f"sys.exit(main(['valid', {str(cfg)!r}, '--workers', '1']))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "x.png: error[E901]: cannot read image 'x.png': broken" in done.stderr
    assert "Traceback" not in done.stderr


def test_best_weights_follow_darknets_greater_or_equal_map(cfg, tmp_path, monkeypatch):
    """Darknet saves `_best.weights` when `mAP >= best_map` (src/detector.c train_detector):
    a validation that ties the best replaces it; a classifier keeps the first of equal scores."""
    from darkcfg.train.distributed import Dist
    from darkcfg.train.outputs import RunLog
    from darkcfg.train.tasks import ClassifyTask

    net = build(str(cfg))
    task = task_for(net, NetConfig.from_block(net.net_block))
    assert isinstance(task, DetectionTask) and task.best_on_tie and not ClassifyTask.best_on_tie
    log = RunLog(tmp_path / "run", "tiny", Dist(), 12, 10, task, progress=False)
    saved = []
    monkeypatch.setattr(log, "save_weights", lambda trainer, suffix: saved.append(suffix))
    for k, map50 in ((3, 0.5), (6, 0.5), (9, 0.25), (12, 0.75)):
        log.validated(k, {"val_map50": map50}, trainer=None)
        saved.append(k)
    assert saved == ["best", 3, "best", 6, 9, "best", 12]
    log.close()
