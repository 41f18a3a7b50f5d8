"""runner.py end to end, in-process: training outputs, evaluation, transfer, the model tools and
the command line's error handling (exit 2, located message, no traceback)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import darkcfg.cli.flags as runner
from builders.weights import load_weights
from darkcfg.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = runner.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory, tiny_classifier) -> Path:
    return tiny_classifier.write(tmp_path_factory.mktemp("cfg") / "tiny.cfg")


@pytest.fixture(scope="module")
def trained(tiny_cfg, tmp_path_factory) -> Path:
    """One training run shared by the output checks (30 iterations on the embedded data)."""
    out = tmp_path_factory.mktemp("run")
    code = runner.main([str(tiny_cfg), "--train", "--out", str(out), "--no-progress",
                        "--save-every", "10", "--checkpoint-every", "10", "--valid-every", "15",
                        "--set", "momentum=0.8"])
    assert code == 0
    return out


def metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_writes_the_cfg_its_weights_go_with(tmp_path, tiny_classifier, capsys):
    """--set may change the network (filters, batch-norm): the run's <name>.cfg has the values
    written in, comments kept, so Darknet and OpenCV read its .weights; the input cfg is never
    written over, even when --out is its folder."""
    from cfgparse import CfgError
    from darkcfg.model import build_network

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text("# my classifier\n" + tiny_classifier.text())
    source = cfg.read_bytes()
    out = tmp_path / "run"
    code, _, _ = run(capsys, cfg, "--train", "--out", out, "--no-progress", "--valid-every", "0",
                     "--set", "max_batches=2", "--set", "convolutional.filters=6",
                     "--set", "connected.batch_normalize=1")
    assert code == 0
    written = (out / "tiny.cfg").read_text()
    assert written.startswith("# my classifier\n") and "max_batches=2\n" in written
    assert written.count("filters=6\n") == 2 and "batch_normalize=1\n\n[softmax]" in written
    net, _, _ = build_network(str(out / "tiny.cfg"), [], "alexeyab", 0)
    assert load_weights(net, out / "tiny_final.weights")["seen"] == 32
    with pytest.raises(CfgError, match="E902"):  # the cfg on disk is another network
        load_weights(build_network(str(cfg), [], "alexeyab", 0)[0], out / "tiny_final.weights")
    code, _, _ = run(capsys, cfg, "--train", "--out", tmp_path, "--no-progress",
                     "--valid-every", "0", "--set", "max_batches=1")
    assert code == 0 and cfg.read_bytes() == source and (tmp_path / "tiny_final.weights").exists()


def test_training_learns_the_embedded_data(trained):
    rows = metrics(trained)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 31))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    val = [r for r in rows if r["val_top1"]]
    assert [int(r["iteration"]) for r in val] == [15, 30]
    assert float(val[-1]["val_top1"]) > 0.4  # 4 classes: chance is 0.25
    assert float(val[-1]["val_top5"]) == 1.0  # only 4 classes
    # the schedule as Darknet's: burn_in 3 (power 4), then steps=20 scales=0.1
    lrs = {int(r["iteration"]): float(r["lr"]) for r in rows}
    assert lrs[1] == pytest.approx(0.05 / 81) and lrs[10] == 0.05
    assert lrs[25] == pytest.approx(0.005)
    assert all(float(r["images_per_s"]) > 0 for r in rows)


def test_run_outputs(trained, tiny_cfg):
    names = {p.name for p in trained.iterdir()}
    assert {"settings.yaml", "tiny.cfg", "metrics.csv", "chart.png", "checkpoint.pt",
            "tiny_last.weights",
            "tiny_final.weights", "tiny_best.weights", "tiny_10.weights", "tiny_20.weights",
            "tiny_30.weights"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (trained / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = yaml.safe_load((trained / "settings.yaml").read_text())
    assert settings["overrides"] == {"momentum": "0.8"}
    assert settings["net"]["momentum"] == 0.8 and settings["net"]["max_batches"] == 30
    assert settings["images_per_iteration"] == 16 and settings["subdivisions"] == 2
    # Darknet .weights: header with seen = images trained, then every float of the network
    from darkcfg.model import build_network

    net, _, _ = build_network(str(tiny_cfg), [], "alexeyab", 0)
    info = load_weights(net, trained / "tiny_final.weights")
    assert info["seen"] == 30 * 16
    assert (trained / "tiny_final.weights").stat().st_size == 20 + 4 * net.num_weight_floats()
    assert load_weights(net, trained / "tiny_10.weights")["seen"] == 160
    state = load_checkpoint(trained / "checkpoint.pt")
    assert state["iteration"] == 30 and state["images_seen"] == 480


def test_save_weights_of_a_runs_checkpoint_keeps_its_seen(trained, tiny_cfg, capsys, tmp_path):
    """The run's checkpoint rewritten as .weights is the run's _final.weights: the same floats
    and the same seen (it was 0)."""
    out = tmp_path / "from_ckpt.weights"
    code, _, err = run(capsys, tiny_cfg, "--weights", trained / "checkpoint.pt",
                       "--save-weights", out)
    assert code == 0 and "seen=480" in err, err
    assert out.read_bytes() == (trained / "tiny_final.weights").read_bytes()


def test_valid_and_predict_with_trained_weights(trained, tiny_cfg, capsys, tmp_path):
    final = trained / "tiny_final.weights"
    code, out, _ = run(capsys, tiny_cfg, "--valid", "--weights", final)
    assert code == 0
    top1 = float(out.split("val_top1")[1].split()[0])
    last = [r for r in metrics(trained) if r["val_top1"]][-1]
    assert top1 == pytest.approx(float(last["val_top1"]), abs=1e-4)  # same model, same val set

    from darkcfg.data import open_data
    from darkcfg.data.base import write_image
    from darkcfg.train.tasks import ClassifyTask

    data = open_data(None, ClassifyTask(4, (3, 12, 12)), 0)
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.png")
        write_image(str(paths[-1]), data.val[i][0])
    code, out, _ = run(capsys, tiny_cfg, "--weights", final, "--predict", *paths, "--top", "2")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 8 and all(line.count("%") == 2 for line in lines)
    right = sum(data.names[data.val[i][1]] in line.split(",")[0] for i, line in enumerate(lines))
    assert right >= 4  # chance would be 2 of 8


def test_regression_csv_trains_the_howto_example(capsys, tmp_path):
    code, _, err = run(capsys, ROOT / "cfg/linear_regression.cfg", "--train", "--data",
                       ROOT / "cfg/linear_regression.csv", "--out", tmp_path, "--no-progress")
    assert code == 0, err
    losses = [float(r["loss"]) for r in metrics(tmp_path)]
    assert len(losses) == 60 and losses[-1] < losses[0] / 5
    assert not [r for r in metrics(tmp_path) if r.get("val_top1")]  # a regressor has no top-1
    assert (tmp_path / "linear_regression_final.weights").stat().st_size == 20 + 4 * 2


def test_image_folder_training_and_an_unreadable_image(tiny_cfg, capsys, tmp_path):
    from PIL import Image

    for split, n in (("train", 6), ("val", 2)):
        for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            for i in range(n):
                folder = tmp_path / "data" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 16), colour).save(folder / f"{i}.png")
    code, _, err = run(capsys, tiny_cfg, "--train", "--data", tmp_path / "data", "--out",
                       tmp_path / "run", "--set", "max_batches=4", "--no-progress")
    assert code == 0, err
    assert "ImageFolder" in err and "2 classes, 12 train / 4 val images" in err
    assert (tmp_path / "run" / "tiny_final.weights").exists()
    (tmp_path / "data" / "train" / "red" / "5.png").write_bytes(b"garbage")
    code, _, err = run(capsys, tiny_cfg, "--train", "--data", tmp_path / "data", "--out",
                       tmp_path / "run2", "--set", "max_batches=4", "--no-progress")
    broken = tmp_path / "data" / "train" / "red" / "5.png"
    assert code == 2 and "Traceback" not in err
    # located, before the first iteration (every header is read, not only the first image's)
    assert f"{broken}: error[E901]: 1 of the 16 images of " in err, err
    assert not (tmp_path / "run2").exists()


def test_transfer_from_a_state_dict_takes_partial(tiny_cfg, trained, tmp_path):
    from cfgparse import CfgError
    from darkcfg.model import build_network, load_any_weights

    donor, _, _ = build_network(str(tiny_cfg), ["width=16"], "alexeyab", 1)
    torch.save(donor.state_dict(), tmp_path / "donor.pt")
    net, _, _ = build_network(str(tiny_cfg), [], "alexeyab", 0)
    with pytest.raises(CfgError, match="add --partial"):  # strict unless asked
        load_any_weights(net, tmp_path / "donor.pt")
    report = load_any_weights(net, tmp_path / "donor.pt", partial=True)
    # the conv layers match; the first [connected] sees 16*3*3 inputs instead of 16*4*4
    assert "shape mismatch: 1 (layers.5.unit.linear.weight)" in report
    torch.testing.assert_close(net.layers[0].conv.weight, donor.layers[0].conv.weight)
    torch.testing.assert_close(net.layers[5].unit.linear.bias, donor.layers[5].unit.linear.bias)
    assert net.layers[5].unit.linear.weight.shape == (4, 16 * 3 * 3)  # kept its own
    report = load_any_weights(net, trained / "checkpoint.pt")  # a darkcfg checkpoint works too
    assert report.startswith(f"loaded {len(net.state_dict())}/{len(net.state_dict())}")


def test_freeze_keeps_the_first_layers(tiny_cfg, trained, tmp_path, capsys):
    code, _, err = run(capsys, tiny_cfg, "--train", "--weights", trained / "tiny_final.weights",
                       "--freeze", "3", "--set", "max_batches=3", "--out", tmp_path,
                       "--no-progress")
    assert code == 0, err
    from darkcfg.model import build_network

    before, _, _ = build_network(str(tiny_cfg), [], "alexeyab", 0)
    after, _, _ = build_network(str(tiny_cfg), [], "alexeyab", 0)
    load_weights(before, trained / "tiny_final.weights")
    load_weights(after, tmp_path / "tiny_final.weights")
    for i in (0, 2):  # parameters of frozen convs are untouched (BN statistics still roll)
        for a, b in zip(before.layers[i].parameters(), after.layers[i].parameters(), strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(before.layers[5].unit.linear.weight, after.layers[5].unit.linear.weight)


def test_stopbackward_in_the_cfg_freezes_that_layer_and_earlier(tmp_path, tiny_classifier):
    from darkcfg.model import build_network
    from darkcfg.train.loop import Trainer

    path = tmp_path / "s.cfg"
    path.write_text(tiny_classifier.text().replace("[maxpool]\nsize=2\nstride=2\n\n[conv",
                                 "[maxpool]\nsize=2\nstride=2\nstopbackward=1\n\n[conv"))
    net, cfg, _ = build_network(str(path), [], "alexeyab", 0)
    trainer = Trainer(net, cfg, "cpu")
    assert trainer.frozen == 2
    assert not any(p.requires_grad for p in net.layers[0].parameters())
    assert all(p.requires_grad for p in net.layers[2].parameters())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, ROOT / "cfg/linear_regression.cfg", "--train", "--data",
                       ROOT / "cfg/linear_regression.csv", "--set", "learning_rate=1000",
                       "--checkpoint-every", "1", "--out", tmp_path, "--no-progress")
    assert code == 1
    bad = int(err.split("at iteration ")[1].split(";")[0])
    assert f"is inf at iteration {bad}" in err or f"is nan at iteration {bad}" in err
    assert "<training>: error[E500]: the loss is" in err and "help: lower learning_rate" in err
    assert "Traceback" not in err
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["iteration"] == bad - 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "linear_regression_final.weights").exists()


def test_a_finite_loss_whose_update_diverged_is_not_checkpointed(capsys, tmp_path,
                                                                  tiny_classifier):
    """The last step with a finite loss can leave Inf in a batch-norm's running_var (here at
    lr 1e6): it was checkpointed as "the last good checkpoint", and --resume from it with a
    sane learning rate was NaN at once."""
    cfg = tiny_classifier.write(tmp_path / "d.cfg", batch=8, burn_in=0)
    out = tmp_path / "run"
    code, _, err = run(capsys, cfg, "--train", "--set", "learning_rate=1e6", "--checkpoint-every",
                       "1", "--valid-every", "0", "--out", out, "--no-progress")
    assert code == 1 and "<training>: error[E500]: the network is not finite after iteration" \
        in err and "NaN or Inf (first: layers." in err, err
    state = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values()
               if t.is_floating_point())


def test_non_finite_reads_a_sum_that_overflows_as_finite():
    """non_finite (checked at every checkpoint) sums each tensor first: a NaN or Inf makes the
    sum non-finite, and a sum of finite floats that overflows is counted exactly."""
    from darkcfg.model import non_finite

    net = torch.nn.Module()
    net.register_buffer("big", torch.tensor([3e38, 3e38]))
    net.register_buffer("low", torch.ones(3, dtype=torch.float16))
    assert non_finite(net) == ""
    net.low[1] = float("-inf")
    assert non_finite(net) == "1 of its 5 floats are NaN or Inf (first: low)"


def test_plot_lr(tiny_cfg, tmp_path, capsys):
    code, _, _ = run(capsys, tiny_cfg, "--plot-lr", tmp_path / "lr.png", "--set", "policy=sgdr")
    assert code == 0 and (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


# -- model tools ---------------------------------------------------------------------------------
def test_summary_text_and_json(tiny_cfg, capsys):
    code, out, _ = run(capsys, tiny_cfg, "--summary")
    assert code == 0 and "convolutional" in out and "softmax" in out
    code, out, _ = run(capsys, tiny_cfg, "--summary", "--format", "json", "--set", "width=24")
    layers = json.loads(out)["layers"]
    assert code == 0 and layers[0]["output"] == [8, 12, 24]


def test_convert_partial_weights_and_dump(tiny_cfg, trained, tmp_path, capsys):
    out = tmp_path / "partial.weights"
    code, _, err = run(capsys, tiny_cfg, "--weights", trained / "tiny_final.weights",
                       "--save-weights", out, "--cutoff", "3")
    assert code == 0, err
    full = (trained / "tiny_final.weights").read_bytes()
    part = out.read_bytes()
    conv_floats = (8 * 4 + 8 * 27) + (16 * 4 + 16 * 72)  # biases, BN, kernels of both convs
    assert len(part) == 20 + 4 * conv_floats and part[20:] == full[20:len(part)]
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32))
    code, _, err = run(capsys, tiny_cfg, "--weights", trained / "tiny_final.weights", "--input",
                       x, "--dump-outputs", tmp_path / "o.npz", "--all-layers")
    assert code == 0, err
    assert len(np.load(tmp_path / "o.npz").files) == 8


def test_check_both_spellings(tiny_cfg, tmp_path, capsys):
    assert run(capsys, tiny_cfg, "--check")[0] == 0
    assert run(capsys, "check", tiny_cfg)[0] == 0
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=x\n")
    assert run(capsys, "check", bad)[0] != 0


# -- errors -------------------------------------------------------------------------------------
DETECTOR = """
[net]
width=32
height=32
channels=3
batch=2
max_batches=10

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,13,16,30,33,23
classes=1
num=3
"""


@pytest.mark.parametrize("argv,message", [
    (["--train", "--set", "learnig_rate=0.1"], "did you mean 'learning_rate'"),
    (["--train", "--set", "batch=0"], "out of range"),
    (["--train", "--set", "max_batches=0"], "max_batches"),
    (["--train", "--data", "/no/such/data"], "does not exist"),
    (["--train", "--data", "torchvision:CIFAR10:/no/root"], "does not exist"),
    (["--save-weights", "x.weights"], "need --weights"),
    (["--train", "--resume", "/no/such.pt"], "no checkpoint"),
    (["--weights", "/no/such.weights", "--valid"], "does not exist"),
    (["--train", "--classes", "9"], "the network has 4 outputs"),
    ([], "nothing to do"),
])
def test_bad_input_is_exit_2_with_a_message(tiny_cfg, capsys, argv, message):
    code, _, err = run(capsys, tiny_cfg, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_network_without_a_loss_says_so(tmp_path, capsys):
    path = tmp_path / "noloss.cfg"
    path.write_text(DETECTOR.split("[yolo]")[0])  # the detector without its head
    code, _, err = run(capsys, path, "--train", "--out", tmp_path)
    assert code == 2 and "defines no loss" in err
    assert f"{path}:" in err and "[convolutional]" in err  # located at the output


def test_missing_cfg(capsys):
    code, _, err = run(capsys, "/no/such.cfg", "--train")
    assert code == 2 and "cannot read" in err


def test_training_refuses_a_network_over_the_memory_limit_unless_forced(tiny_cfg, capsys,
                                                                         tmp_path):
    huge = tmp_path / "huge.cfg"
    huge.write_text(tiny_cfg.read_text().replace("filters=16", "filters=1000000000", 1))
    code, _, err = run(capsys, huge, "--train", "--out", tmp_path / "run", "--no-progress")
    assert code == 2
    assert "error[E401]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    code, _, err = run(capsys, tiny_cfg, "--train", "--max-memory", "64K", "--out",
                       tmp_path / "small", "--no-progress")
    assert code == 2 and "error[E401]" in err
    code, _, _ = run(capsys, tiny_cfg, "--train", "--max-memory", "64K", "--force", "--set",
                     "max_batches=1", "--out", tmp_path / "forced", "--no-progress")
    assert code == 0 and (tmp_path / "forced" / "tiny_final.weights").exists()


def test_the_make_train_line_builds_what_the_readme_says(capsys):
    """`make train`'s overrides (section-wide --set included) give VGG-16 with batch-norm after
    every convolution and hidden [connected] layer, at 32x32 (the summary, not a run)."""
    recipe = (ROOT / "Makefile").read_text().split("\ntrain:", 1)[1].split("\n\n", 1)[0]
    args = recipe.replace("\\\n", " ").split("runner.py", 1)[1].split()
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert "convolutional.batch_normalize=1" in sets and "hue=0" in sets
    code, out, _ = run(capsys, ROOT / "cfg" / "vgg16.cfg", "--summary", "--format", "json",
                       *[x for s in sets for x in ("--set", s)])
    layers = json.loads(out)["layers"]
    assert code == 0 and layers[0]["output"] == [64, 32, 32]
    convs = [la for la in layers if la["type"] == "convolutional"]
    # batch-norm adds a scale per filter to the bias Darknet counts (running stats are buffers)
    assert len(convs) == 13 and convs[0]["params"] == 3 * 9 * 64 + 2 * 64
    hidden = [la for la in layers if la["type"] == "connected"][:2]
    assert [la["params"] for la in hidden] == [512 * 49 * 4096 + 2 * 4096, 4096 * 4096 + 2 * 4096]


def test_loss_chart_goes_log_when_the_loss_spans_decades():
    from darkcfg.train.outputs import loss_axis_scale

    assert loss_axis_scale([420.0, 60.0, 8.0, 3.1]) == "log"  # a detector's first iterations
    assert loss_axis_scale([2.3, 1.1, 0.4]) == "linear"  # a classifier's
    assert loss_axis_scale([5.0, 0.0, 0.01]) == "linear"  # a zero: no log axis
    assert loss_axis_scale([]) == "linear"


def test_a_long_run_keeps_a_few_bytes_a_step_for_its_chart(tmp_path, tiny_classifier):
    """RunLog kept every metrics.csv row as a dict for chart.png: 430 bytes a step (a
    classifier) to 860 (yolov3-tiny): 430 MB by the end of a yolov3's 500k iterations, read back
    whole at --resume. The chart's columns are float arrays now; it still shows every step."""
    import tracemalloc

    from builders import build
    from darkcfg.config import NetConfig
    from darkcfg.train.distributed import Dist
    from darkcfg.train.outputs import RunLog
    from darkcfg.train.tasks import task_for

    net = build(tiny_classifier.text())
    task = task_for(net, NetConfig.from_block(net.net_block))
    loss = torch.tensor(1.5)

    def run(start: int, stop: int, measured: int = 0) -> tuple[RunLog, float]:
        log = RunLog(tmp_path / "run", "tiny", Dist(), stop, 16, task, start=start,
                     progress=False)
        log.save_weights = lambda trainer, suffix: None  # (no trainer here)
        for k in range(start + 1, stop + 1):
            if k == stop - measured:
                tracemalloc.start()
            log.step(k, loss, 0.01, 16, float(k))
        grown = tracemalloc.get_traced_memory()[0] / max(measured, 1)
        tracemalloc.stop()
        log.validated(stop, {"val_top1": 0.5, "val_top5": 1.0, "val_loss": 0.7}, trainer=None)
        return log, grown

    log, per_step = run(0, 3000, measured=2000)
    log.close()
    assert per_step < 100, per_step  # 410 with a dict a row (measured: 50 now)
    resumed, _ = run(2000, 2100)  # --resume from iteration 2000 reads rows 1..2000 back
    assert len(resumed.history) == 2100
    assert list(resumed.history.curve["iteration"][-2:]) == [2099, 2100]
    assert [r["iteration"] for r in resumed.history.validations] == [2100]
    resumed.close()  # draws the chart of every row
    assert (tmp_path / "run" / "chart.png").stat().st_size > 0


def test_a_validation_is_not_counted_in_its_iterations_img_per_s(tmp_path, tiny_cfg, capsys,
                                                                 monkeypatch):
    """Each step is timed to the next one's start; a validation between them was counted in
    the validated iteration's img/s (metrics.csv, the bar), 10x too low in a detector run."""
    import time

    from darkcfg.train.tasks import Task

    validate = Task.evaluate

    def slow(self, trainer, loader):
        time.sleep(2.0)  # far longer than a tiny step
        return validate(self, trainer, loader)

    monkeypatch.setattr(Task, "evaluate", slow)
    code, _, _ = run(capsys, tiny_cfg, "--train", "--out", tmp_path / "r", "--no-progress",
                     "--valid-every", "2", "--set", "max_batches=6", "--workers", "0")
    assert code == 0
    rows = metrics(tmp_path / "r")
    validated = [float(r["images_per_s"]) for r in rows if r["val_top1"]]
    assert [int(r["iteration"]) for r in rows if r["val_top1"]] == [2, 4, 6]
    # 16 images a step: a step that took the validation's 2 s would show at most 8 img/s
    assert min(validated) > 10, rows
