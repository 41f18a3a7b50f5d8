"""Bad values at the edges users reach (issue 19: "No traceback", "No silent wrong result",
"Scale"): each class gets a located error (exit 2, the one diagnostic format) or the right value.
"""

from __future__ import annotations

import errno
import gc
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfgparse import CfgError

TINY = """[net]
width=12
height=12
channels=3
batch=4
subdivisions=1
learning_rate=0.05
momentum=0.9
decay=0.0005
max_batches=2
policy=constant

[convolutional]
filters={filters}
size=3
pad=1
batch_normalize=1
activation={activation}

[maxpool]
size=2
stride=2

[connected]
output=4
activation=linear

[softmax]

[cost]
"""

# a small detector with a [crnn] trained at time_steps=4 (like yolov3-tiny_occlusion_track.cfg)
DETECTOR = """[net]
width=32
height=32
channels=3
batch=8
subdivisions=1
time_steps={time_steps}
max_batches=2

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[crnn]
batch_normalize=1
size=3
pad=1
output=8
hidden=8
activation=leaky

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=1
num=3
"""


def run(capsys, *argv) -> tuple[int, str]:
    from darkcfg.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return code, err


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY.format(filters=8, activation="leaky"))
    return path


@pytest.fixture
def detector(tmp_path) -> Path:
    path = tmp_path / "det.cfg"
    path.write_text(DETECTOR.format(time_steps=4))
    return path


def image(path: Path, size=(20, 16), mode="RGB") -> Path:
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


# -- cfg numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("filters", ["9" * 5000, "100000000000000000000000000", "3000000000"])
def test_integers_beyond_a_c_int_are_located_errors(capsys, tmp_path, filters):
    cfg = tmp_path / "big.cfg"
    cfg.write_text(TINY.format(filters=filters, activation="leaky"))
    code, err = run(capsys, cfg, "--summary")
    assert code == 2
    assert f"{cfg}:14:9: error[E203]" in err and "32-bit" in err
    from darkcfg.lint import check_file  # the linter's own verdict: no "darkcfg bug"

    found = check_file(str(cfg))
    assert [d.code for d in found if d.severity == "error"] == ["E203"]
    assert not any("darkcfg bug" in d.hint for d in found)


@pytest.mark.parametrize("section", [
    "[convolutional]\nfilters=4\nsize=2147483647\npad=1\nactivation=linear\n",
    "[connected]\noutput=2147483647\n[connected]\noutput=2147483647\n",
])
def test_a_layer_too_large_for_any_tensor_is_a_located_error(capsys, tmp_path, section):
    """C ints whose product overflows torch's 64-bit sizes: E401 at the value, in every command
    and in the linter, not a RuntimeError traceback (summary) or an E300 "darkcfg bug"."""
    cfg = tmp_path / "huge.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n" + section)
    code, err = run(capsys, "summary", cfg)
    assert code == 2 and "error[E401]" in err and "2147483647" in err.splitlines()[2]
    from darkcfg.lint import check_file

    found = check_file(str(cfg))
    assert [d.code for d in found if d.severity == "error"] == ["E401"]
    assert not any("darkcfg bug" in d.hint for d in found)


def test_a_superscript_digit_is_no_integer(tmp_path, capsys):
    cfg = tmp_path / "sup.cfg"
    cfg.write_text(TINY.format(filters="²", activation="leaky"))
    code, err = run(capsys, cfg, "--summary")
    assert code == 2 and "error[E202]" in err


def test_silu_names_darknets_swish(capsys, tmp_path):
    cfg = tmp_path / "silu.cfg"
    cfg.write_text(TINY.format(filters=8, activation="silu"))
    code, err = run(capsys, cfg, "--summary")
    assert code == 2
    assert "unknown activation 'silu'" in err and "activation=swish" in err
    assert "selu" not in err


# -- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--workers", "-1"], "--workers"),
    (["--seed", str(2**64 + 1)], "--seed"),
    (["--seed", "-3"], "--seed"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:99"], "--device"),
    (["--freeze", "1000"], "--freeze"),
    (["--freeze", "-2"], "--freeze"),
    (["--cutoff", "-1"], "--cutoff"),
    (["--classes", "0"], "--classes"),
    (["--resume", "--weights", "w.pt"], "--resume"),
    (["--set", "batch=2", "--set", "subdivisions=4"], "subdivisions=4 is larger than batch=2"),
])
def test_bad_options_are_refused_before_training(capsys, tiny, tmp_path, flags, named):
    out = tmp_path / "run"
    code, err = run(capsys, tiny, "--train", "--no-progress", "--out", out, *flags)
    assert code == 2
    assert named in err and "error[" in err and "help:" in err
    assert not (out / "checkpoint.pt").exists()


def test_settings_darknet_trains_not_as_written_are_warned(capsys, tiny, tmp_path):
    """A partial mini-batch or a burn-in past the end trains (as Darknet does) but says so,
    located at the key: before, the linter called them errors and the trainer said nothing."""
    code, err = run(capsys, tiny, "--train", "--no-progress", "--valid-every", "0", "--out",
                    tmp_path / "run", "--set", "batch=5", "--set", "subdivisions=2",
                    "--set", "burn_in=10")
    assert code == 0, err
    assert "--set subdivisions=2: warning[W306]: batch=5 is not divisible by subdivisions=2" in err
    assert "warning[W306]: burn_in=10 is not below max_batches=2" in err
    assert "error[" not in err


def test_layer_keys_the_trainer_ignores_are_warned(capsys, tmp_path):
    """onlyforward=1 (yolov4-tiny_contrastive.cfg), train_only_bn=1 ...: the graph marks every
    layer key read, so training ignored them without a word."""
    cfg = tmp_path / "t.cfg"
    cfg.write_text(TINY.format(filters=8, activation="leaky\ntrain_only_bn=1")
                   .replace("[softmax]", "[softmax]\nonlyforward=1"))
    code, err = run(capsys, cfg, "--train", "--no-progress", "--valid-every", "0", "--out",
                    tmp_path / "run")
    assert code == 0, err
    assert f"{cfg}:19:15: warning[W301]: train_only_bn=1 is not honoured" in err, err
    assert "warning[W301]: onlyforward=1 is not honoured" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, tiny, tmp_path):
    code, err = run(capsys, tiny, "--summary", "--train", "--device", "cuda",
                    "--out", tmp_path / "r")
    assert code == 2 and "--device: error[E100]" in err and "no CUDA GPU" in err


def test_options_are_checked_by_the_library_too(tiny):
    """Every command shares the typed options and the library entry points."""
    from darkcfg.model import pick_device, seed_everything
    from darkcfg.train.session import RunOptions

    with pytest.raises(CfgError, match="--workers"):
        RunOptions(str(tiny), "tiny", Path("x"), workers=-1)
    with pytest.raises(CfgError, match="--seed"):
        RunOptions(str(tiny), "tiny", Path("x"), seed=2**64)
    with pytest.raises(CfgError, match="both set the weights"):
        RunOptions(str(tiny), "tiny", Path("x"), resume=True, weights="w")
    with pytest.raises(CfgError, match="unknown device 'tpu'"):
        pick_device("tpu")
    with pytest.raises(CfgError, match="--seed"):
        seed_everything(-1)
    assert pick_device("cpu") == torch.device("cpu")


def test_out_that_is_a_file(capsys, tiny, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code, err = run(capsys, tiny, "--train", "--no-progress", "--out", afile)
    assert code == 2 and "it is a file" in err
    code, err = run(capsys, tiny, "--train", "--no-progress", "--out", afile / "run")
    assert code == 2 and "not a folder" in err
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("flag, target", [
    ("--emit", "afile/m.py"), ("--emit", "."), ("--export", "afile/m.pt2"),
    ("--save-weights", "afile/w.weights"),
])
def test_unwritable_outputs(capsys, tiny, tmp_path, flag, target, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    extra = []
    if flag == "--save-weights":
        from builders.weights import save_weights
        from darkcfg.model import build_network

        save_weights(build_network(str(tiny), [], "alexeyab", 0)[0], tmp_path / "w0.weights")
        extra = ["--weights", tmp_path / "w0.weights"]
    code, err = run(capsys, tiny, flag, target, *extra)
    assert code == 2 and "error[E901]: cannot write" in err
    assert (tmp_path / "afile").read_text() == "keep me"


def test_detect_outputs_and_inputs(capsys, detector, tmp_path, monkeypatch):
    """--detect into a file, --detections into a folder or at a size the net cannot take, an
    image named '².jpg', and a [crnn] at time_steps=4 (run at 1 as Darknet's detector)."""
    monkeypatch.chdir(tmp_path)
    pic = image(tmp_path / "².jpg")
    (tmp_path / "afile").write_text("x")
    code, err = run(capsys, detector, "--detect", pic, "--out", "afile")
    assert code == 2 and "it is a file" in err
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    code, err = run(capsys, detector, "--input", "x.npy", "--detections", tmp_path)
    assert code == 2 and "it is a folder" in err
    np.save(tmp_path / "odd.npy", np.zeros((1, 3, 1, 1), np.float32))
    code, err = run(capsys, detector, "--input", "odd.npy", "--detections", "d.json")
    assert code == 2 and "error[E302]" in err and "32x32" in err
    code, err = run(capsys, detector, "--detect", pic, "--out", "det", "--thresh", "0.9")
    assert code == 0, err
    found = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert all(d["image_id"] == "²" for d in found)


@pytest.mark.parametrize("flags", [["--thresh", "nan"], ["--thresh", "-1"], ["--nms", "7"]])
def test_detect_thresholds_are_fractions(capsys, detector, tmp_path, flags):
    pic = image(tmp_path / "a.jpg")
    if flags[1] == "nan":  # refused as the flag is read (cfgparse.usage: decimal digits)
        with pytest.raises(SystemExit) as exit_:
            run(capsys, detector, "--detect", pic, "--out", tmp_path / "d", *flags)
        code, err = exit_.value.code, capsys.readouterr().err
        said = "argument --thresh: 'nan' is not a number"
    else:
        code, err = run(capsys, detector, "--detect", pic, "--out", tmp_path / "d", *flags)
        said = f"{flags[0]} {flags[1]}"
    assert code == 2 and "error[E100]" in err and said in err


@pytest.mark.parametrize("flags", [["--checkpoint-every", "-1"], ["--save-every", "-3"],
                                   ["--valid-every", "-2"]])
def test_negative_periods_are_refused(capsys, tiny, tmp_path, flags):
    code, err = run(capsys, tiny, "--train", "--no-progress", "--out", tmp_path / "r", *flags)
    assert code == 2 and f"{flags[0]}: error[E100]" in err


def test_detect_memory_guard(capsys, detector, tmp_path):
    pic = image(tmp_path / "a.jpg")
    code, err = run(capsys, detector, "--detect", pic, "--out", tmp_path / "d",
                    "--set", "width=100000", "--set", "height=100000")
    assert code == 2 and "error[E401]" in err and "inference" in err


def test_detect_subcommand_takes_the_memory_limit(capsys, detector, tmp_path):
    """`darkcfg detect` has the flag form's --max-memory and --force."""
    from darkcfg.cli import main

    pic = image(tmp_path / "a.jpg")
    code = main(["detect", str(detector), str(pic), "--out", str(tmp_path / "d"),
                 "--max-memory", "1K", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "error[E401]" in err and "limit" in err
    code = main(["detect", str(detector), str(pic), "--out", str(tmp_path / "e"),
                 "--max-memory", "1K", "--force", "--no-progress"])
    assert code == 0, capsys.readouterr().err


# -- writes that fail -----------------------------------------------------------------------------
def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    from builders.atomic import atomic_write

    target = tmp_path / "settings.yaml"
    atomic_write(target, "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CfgError) as info:
        atomic_write(target, "new\n")
    message = str(info.value)
    assert "no space left on the device" in message and "previous file is intact" in message
    assert str(target) in message
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.yaml"]


def test_torch_write_failure_and_a_full_disk_under_a_checkpoint(tmp_path, monkeypatch):
    """torch.save into a file reports a full disk as a RuntimeError from inline_container.cc;
    the checkpoint writer's own write fails with OSError 28. Both keep the previous file."""
    from builders.atomic import atomic_open
    from darkcfg.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1})

    def failing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                           "failed writing file data/3: file write failed")

    with pytest.raises(CfgError, match="previous file is intact"):
        with atomic_open(path) as fh:
            failing_save({"iteration": 2}, fh)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CfgError, match="no space left.*previous file is intact"):
        save_checkpoint(path, {"iteration": 3})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_file_size_limit_under_a_checkpoint_says_so(tmp_path):
    """A real EFBIG from the kernel (`ulimit -f`; FAT32's 4 GiB cap is the same error): the
    hint said 'check that the folder exists and is writable'. The old checkpoint stays whole."""
    import subprocess
    import sys

    from darkcfg.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1})
    script = ("import resource, sys, torch\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
              "from cfgparse import CfgError\n"
              "from darkcfg.train.checkpoint import save_checkpoint\n"
              "try:\n"
              f"    save_checkpoint({str(path)!r}, {{'iteration': 2, 'w': torch.zeros(10000)}})\n"
              "except CfgError as exc:\n"
              "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ,
                                            "PYTHONPATH": str(Path(__file__).parents[1])})
    assert "error[E901]: cannot write" in done.stdout, done.stdout + done.stderr
    assert "larger than this process may write (a file size limit" in done.stdout \
        and "the previous file is intact" in done.stdout and "ulimit -f" in done.stdout, done.stdout
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_full_disk_under_metrics_csv_is_reported_as_its(tiny, tmp_path, monkeypatch, capsys):
    """metrics.csv's rows stop fitting after one: the error names metrics.csv (it named
    chart.png, whose write in the cleanup replaced the first error, or no file at all), and
    the checkpoint written before stays loadable."""
    import builtins

    from darkcfg.cli import main
    from darkcfg.train import outputs
    from darkcfg.train.checkpoint import load_checkpoint

    class FillingUp:
        def __init__(self, fh):
            self.fh, self.lines = fh, 0

        def write(self, text):
            self.lines += 1
            if self.lines > 2:  # the header and one row fit
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(text)

        def close(self):
            self.fh.close()

    def opening(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        return FillingUp(fh) if str(path).endswith("metrics.csv") and "a" in mode else fh

    monkeypatch.setattr(outputs, "open", opening, raising=False)
    out = tmp_path / "run"
    assert main([str(tiny), "--train", "--no-progress", "--out", str(out),
                 "--checkpoint-every", "1", "--valid-every", "0"]) == 2
    err = capsys.readouterr().err
    assert f"error[E901]: No space left on device: '{out / 'metrics.csv'}'" in err, err
    assert "chart.png" not in err and "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 1


# -- --resume and --weights -----------------------------------------------------------------------
@pytest.fixture
def trained(tiny, tmp_path) -> Path:
    from darkcfg.cli import main

    out = tmp_path / "run"
    assert main([str(tiny), "--train", "--no-progress", "--out", str(out),
                 "--checkpoint-every", "1", "--valid-every", "0"]) == 0
    return out


def test_resume_from_what_is_not_this_runs_checkpoint(capsys, tiny, trained, tmp_path):
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    plain = tmp_path / "plain.pt"
    torch.save(state["model"], plain)
    no_opt = tmp_path / "no_opt.pt"
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, no_opt)
    other = tmp_path / "other.cfg"
    other.write_text(TINY.format(filters=16, activation="leaky"))
    for cfg, ckpt, why in ((tiny, plain, "plain state_dict"), (tiny, no_opt, "'optimizer'"),
                           (other, trained / "checkpoint.pt", "another network")):
        code, err = run(capsys, cfg, "--train", "--no-progress", "--out", tmp_path / "r2",
                        "--resume", ckpt, "--set", "max_batches=4")
        assert code == 2, err
        assert f"cannot resume from '{ckpt}'" in err and why in err


def test_weights_from_another_network_need_partial(tiny, tmp_path):
    from darkcfg.model import build_network, load_any_weights

    net, _, _ = build_network(str(tiny), [], "alexeyab", 0)
    state = net.state_dict()
    one = tmp_path / "one.pt"
    torch.save({"layers.0.conv.weight": state["layers.0.conv.weight"],
                **{f"other.{i}": torch.zeros(3) for i in range(30)}}, one)
    with pytest.raises(CfgError, match="--partial") as info:
        load_any_weights(net, one)
    assert f"leaves {len(state) - 2} of the network's {len(state)} tensors unfilled" \
        in str(info.value)  # (num_batches_tracked, a counter no output reads, is not asked for)
    assert "loaded 1/" in load_any_weights(net, one, partial=True)
    whole = tmp_path / "whole.pt"
    torch.save(state, whole)
    assert f"loaded {len(state)}/{len(state)}" in load_any_weights(net, whole)


def test_a_state_dict_that_fills_most_but_not_all_tensors_is_refused(capsys, tiny, tmp_path):
    """Strict as torch's load_state_dict: a checkpoint of the same cfg trained with another
    `--set classes=`-like change (here the [connected] output) filled 6 of 8 tensors and loaded
    with a report line and exit 0 (the 50% rule): export then wrote its random tensors."""
    from darkcfg.model import build_network, load_any_weights

    other = tmp_path / "other.cfg"
    other.write_text(TINY.format(filters=8, activation="leaky").replace("output=4", "output=6"))
    donor, _, _ = build_network(str(other), [], "alexeyab", 1)
    torch.save(donor.state_dict(), tmp_path / "six.pt")
    net, _, _ = build_network(str(tiny), [], "alexeyab", 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CfgError) as info:
        load_any_weights(net, tmp_path / "six.pt")
    d = info.value.first
    assert d.code == "E902" and d.path == str(tmp_path / "six.pt")
    assert "leaves 2 of the network's 8 tensors unfilled: 2 of another shape" in d.message
    assert "layers.2.unit.linear.weight: (6, 288) in the file, (4, 288) here" in d.message
    assert "--partial" in d.hint and "classes=" in d.hint
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing loaded
    # a tensor missing (an older file, a hand-made one) is refused the same way
    torch.save({k: v for k, v in before.items() if k != "layers.0.conv.weight"},
               tmp_path / "short.pt")
    with pytest.raises(CfgError, match=r"1 missing \(layers\.0\.conv\.weight\)"):
        load_any_weights(net, tmp_path / "short.pt")
    # the commands: a located E902, no output written; --partial loads the 6 (transfer learning)
    out = tmp_path / "m.py"
    code, err = run(capsys, "emit", tiny, "--weights", tmp_path / "six.pt", "--out", out)
    assert code == 2 and f"{tmp_path / 'six.pt'}: error[E902]: " in err and not out.exists()
    assert "help: " in err and "add --partial" in err
    code, err = run(capsys, "emit", tiny, "--weights", tmp_path / "six.pt", "--out", out,
                    "--partial")
    assert code == 0 and "loaded 6/8 tensors" in err and "shape mismatch: 2" in err, err


def test_extra_names_and_absent_batch_norm_counters_load(tiny, tmp_path):
    """What leaves no tensor of the network unset loads: names it does not have (a warning line
    names them) and batch-norm num_batches_tracked left out (older files; no output reads it)."""
    from darkcfg.model import build_network, load_any_weights

    donor, _, _ = build_network(str(tiny), [], "alexeyab", 1)
    state = donor.state_dict()
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
               tmp_path / "old.pt")
    net, _, _ = build_network(str(tiny), [], "alexeyab", 0)
    report = load_any_weights(net, tmp_path / "old.pt")
    assert report.startswith("loaded 7/8 tensors") and "1 batch-norm num_batches_tracked" in report
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items()
               if not k.endswith("num_batches_tracked"))
    torch.save({**state, "layers.9.conv.weight": torch.zeros(2)}, tmp_path / "more.pt")
    report = load_any_weights(net, tmp_path / "more.pt")
    assert report.startswith("loaded 8/8 tensors")
    assert "warning: " in report and "1 tensor(s) this network does not have, left out: " \
        "layers.9.conv.weight" in report


# -- images and data ------------------------------------------------------------------------------
def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from darkcfg.data import read_image
    from darkcfg.detect.decode import load_image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    got = read_image(str(path), 3)
    want = np.rint(ramp / 257.0).astype(np.uint8)
    assert got.shape == (3, 64, 64)
    assert np.array_equal(got[0].numpy(), want)
    assert float((got == 255).float().mean()) < 0.01  # clipping made ~99.6% white
    assert torch.allclose(load_image(str(path)) * 255, got.float(), atol=0.5)


@pytest.mark.parametrize("channels", [3, 1])
def test_a_palette_image_with_alpha_bytes_reads_without_pillows_warning(tmp_path, channels):
    """A PNG palette with a per-entry alpha (tRNS): Pillow's P -> RGB printed a UserWarning
    with its own source line in training, validation and detect. The colours are P -> RGB's."""
    import warnings

    from darkcfg.data import read_image
    from darkcfg.detect.decode import load_pixels

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=8)
    path = tmp_path / "p.png"
    picture.save(path, transparency=bytes([0, 128, 255, 255, 255, 255, 255, 255]))
    with Image.open(path) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_image(str(path), channels)
        shown = load_pixels(str(path), channels)
    assert np.array_equal(got.permute(1, 2, 0).numpy().squeeze(-1) if channels == 1 else
                          got.permute(1, 2, 0).numpy(), want)
    assert torch.equal(shown, got)


def test_decompression_bomb_is_a_located_data_error(tmp_path, monkeypatch):
    from darkcfg.data import DataError, read_image
    from darkcfg.detect.decode import load_image

    path = image(tmp_path / "big.png", size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x40 is over twice the limit
    with pytest.raises(DataError, match="big.png.*more pixels than darkcfg reads"):
        read_image(str(path), 3)
    with pytest.raises(OSError, match="big.png"):
        load_image(str(path))


def detection_set(tmp_path: Path, data_text: str, ext: str = ".jpg") -> Path:
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(2):
        image(folder / f"im{i}{ext}", size=(32, 32))
        (folder / f"im{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (folder / "train.txt").write_text("".join(f"{folder}/im{i}{ext}\n" for i in range(2)))
    data = tmp_path / "obj.data"
    data.write_text(data_text.format(folder=folder), encoding="utf-8")
    return data


def test_a_data_path_with_spaces_says_darknet_removes_them(tmp_path):
    """Darknet strips every space of a .data line ('names = my names.txt' opens
    'mynames.txt'); darkcfg reads it the same way, and the error says so, at the line."""
    from darkcfg.data.detection.labels import open_detection_data

    data = detection_set(tmp_path, "classes=1\ntrain={folder}/train.txt\n"
                         "names = {folder}/my names.txt\n")
    (tmp_path / "set" / "my names.txt").write_text("cat\n")
    with pytest.raises(CfgError) as err:
        open_detection_data(data)
    d = err.value.first
    assert (d.code, d.line) == ("E901", 3) and "mynames.txt" in d.message
    assert "Darknet removes every space of a .data line" in d.hint


def test_a_blank_line_in_a_data_files_names_keeps_the_next_names_classes(tmp_path):
    """Darknet's get_labels keeps a blank line as a class: the names after it keep their
    classes (they were shifted one class down, so validation's per-class table lied)."""
    from darkcfg.data.detection.labels import open_detection_data

    data = detection_set(tmp_path, "classes=3\ntrain={folder}/train.txt\n"
                         "names={folder}/obj.names\n")
    (tmp_path / "set" / "obj.names").write_text("cat\n\nbird\n\n")
    assert open_detection_data(data).names == ["cat", "1", "bird"]


@pytest.mark.parametrize("text, line", [
    ("train={folder}/train.txt\nclasses=x\n", 2),  # not an integer
    ("classes=0\ntrain={folder}/train.txt\n", 1),
    ("classes=3\ntrain={folder}/train.txt\nnames={folder}/two.names\n", 1),  # 2 names
    ("classes=1\n\ntrain={folder}/missing.txt\n", 3),
])
def test_data_file_errors_are_at_their_line(tmp_path, text, line):
    """A .data file's errors named the file only: they point at the line to fix."""
    from darkcfg.data.detection.labels import open_detection_data

    data = detection_set(tmp_path, text)
    (tmp_path / "set" / "two.names").write_text("cat\ndog\n")
    with pytest.raises(CfgError) as err:
        open_detection_data(data)
    d = err.value.first
    assert (d.path, d.line, d.column) == (str(data), line, 1), d.format()


def test_data_file_with_a_bom_keeps_its_first_key(tmp_path):
    from darkcfg.data.detection.labels import open_detection_data

    data = detection_set(tmp_path, "\ufeffclasses=3\ntrain={folder}/train.txt\n")
    assert open_detection_data(data).classes == 3


def test_data_file_without_classes_counts_its_names(tmp_path, capsys):
    from darkcfg.data.detection.labels import open_detection_data

    data = detection_set(tmp_path, "train={folder}/train.txt\nnames={folder}/obj.names\n")
    (tmp_path / "set" / "obj.names").write_text("cat\ndog\nbird\n")
    assert open_detection_data(data).classes == 3  # not Darknet's silent 20
    err = capsys.readouterr().err
    assert f"{data}: warning[W904]: " in err and "no classes= line: using the 3 names" in err
    assert "help: add classes=3" in err
    bare = tmp_path / "bare.data"
    bare.write_text(f"train={tmp_path / 'set' / 'train.txt'}\n")
    assert open_detection_data(bare).classes == 20  # nothing better known: Darknet's default
    assert "Darknet's default, 20" in capsys.readouterr().err


@pytest.mark.parametrize("ext", [".tif", ".Jpg", ".webp"])
def test_labels_of_every_image_type_are_read(tmp_path, ext):
    from darkcfg.data.detection.labels import label_path, open_detection_data, validate_labels

    data = detection_set(tmp_path, "classes=1\ntrain={folder}/train.txt\n", ext)
    opened = open_detection_data(data)
    assert opened.train_labels == [label_path(p) for p in opened.train]
    assert all(p.endswith(".txt") for p in opened.train_labels)
    assert validate_labels(opened.train_labels, 1).objects == 2


# -- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure, says", [
    (ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript"),
     "onnxscript is not installed"),
    (ImportError("libonnxruntime.so.1: cannot open shared object file"),
     "onnxruntime (ImportError: libonnxruntime.so.1: cannot open shared object file) does not "
     "import"),
])
def test_missing_export_package_has_its_own_code(monkeypatch, failure, says):
    """Missing, or installed but broken (its import fails): E905 naming it and the extra, not
    a traceback from deep in the export."""
    import importlib

    from darkcfg.export.onnx import require_onnx_packages

    real = importlib.import_module
    culprit = "onnxscript" if isinstance(failure, ModuleNotFoundError) else "onnxruntime"

    def imported(name, *args):
        if name == culprit:
            raise failure
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", imported)
    with pytest.raises(CfgError) as info:
        require_onnx_packages("m.onnx")
    (d,) = info.value.diagnostics
    assert d.code == "E905" and says in d.message and "pip install" in d.hint


def test_emitted_loader_reads_a_weight_free_network(tmp_path):
    import importlib.util

    from builders.weights import save_weights
    from darkcfg.export.emit import write_module
    from darkcfg.model import build_network

    cfg = tmp_path / "pool.cfg"
    cfg.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n\n[maxpool]\nsize=2\nstride=2\n")
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    save_weights(net, tmp_path / "pool.weights")
    write_module(net, tmp_path / "pool_net.py")
    spec = importlib.util.spec_from_file_location("pool_net", tmp_path / "pool_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.load_darknet_weights(module.Net(), str(tmp_path / "pool.weights"))["floats"] == 0


# -- scale ----------------------------------------------------------------------------------------
def deep_cfg(path: Path, layers: int) -> Path:
    """`layers` cheap layers (so that a per-layer cost growing with the depth shows): maxpools,
    a 1x1 convolution every 16, and shortcuts, each with an unknown key."""
    parts = ["[net]\nwidth=4\nheight=4\nchannels=2\nbatch=1\n"]
    for i in range(layers):
        if i % 4 == 3:
            parts.append("[shortcut]\nfrom=-2\nactivation=linear\nnot_a_key=1\n")
        elif i % 16 == 0:
            parts.append("[convolutional]\nfilters=2\nsize=1\nactivation=leaky\n")
        else:
            parts.append("[maxpool]\nsize=1\nstride=1\n")
    path.write_text("\n".join(parts))
    return path


@pytest.mark.slow
def test_build_and_check_grow_linearly_with_the_layer_count(tmp_path):
    from darkcfg.lint import check_file
    from darkcfg.model import build_network

    def seconds(n: int) -> float:
        """The best of three (a busy machine only adds time), with the cyclic collector paused:
        when its full passes run depends on the whole heap's history (torch's import is most of
        it), not on the code measured."""
        cfg = deep_cfg(tmp_path / f"deep{n}.cfg", n)
        best = float("inf")
        for _ in range(3):
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                build_network(str(cfg), [], "alexeyab", 0, device="meta")
                found = check_file(str(cfg))
                best = min(best, time.perf_counter() - start)
            finally:
                gc.enable()
        assert sum(d.code == "W201" for d in found) == n // 4
        return best

    seconds(200)  # warm up (imports, caches)
    small, large = seconds(2000), seconds(8000)
    print(f"2k layers {small:.2f} s, 8k layers {large:.2f} s: x{large / small:.2f}")
    # linear is x4, quadratic x16: x8 leaves room for a loaded machine (x6.2 seen under load)
    assert large / small < 8, f"2k layers {small:.2f} s, 8k layers {large:.2f} s"


def test_amp_on_a_cpu_without_bfloat16_warns(capsys, tiny, tmp_path, monkeypatch):
    """--amp trains anyway (oneDNN emulates bfloat16), but says it will likely be slower."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    from darkcfg.cli import main

    code = main([str(tiny), "--train", "--amp", "--no-progress", "--out", str(tmp_path / "r"),
                 "--valid-every", "0", "--device", "cpu"])  # a GPU machine would pick CUDA
    out, err = capsys.readouterr()
    assert code == 0 and "without native bfloat16" in out + err
    assert "amp: torch.bfloat16" in (tmp_path / "r" / "settings.yaml").read_text()


def test_compile_failure_is_a_message(capsys, tiny, tmp_path, monkeypatch):
    """torch.compile failing inside a step (an Inductor bug, no compiler) ends the run with a
    message naming --compile, not a traceback."""
    from torch._dynamo.exc import TorchDynamoException

    from darkcfg.train import loop

    def broken(self, images, targets):
        raise TorchDynamoException("backend='inductor' raised: RuntimeError: boom")

    monkeypatch.setattr(loop.Trainer, "step", broken)
    code, err = run(capsys, tiny, "--train", "--compile", "--no-progress", "--out",
                    tmp_path / "r", "--valid-every", "0")
    assert code == 2 and "--compile: error[E100]: torch.compile could not compile" in err
    assert "run (or --resume) without --compile" in err


# -- outputs never written over inputs ----------------------------------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["weights", "{cfg}", "--weights", "{w}", "--save-weights", "{cfg}"], "--save-weights"),
    (["weights", "{cfg}", "--weights", "{w}", "--save-weights", "{w}"], "--save-weights"),
    (["weights", "{cfg}", "--weights", "{w}", "--input", "{x}", "--dump-outputs", "{x}"],
     "--dump-outputs"),
    (["summary", "{cfg}", "--plot-lr", "{cfg}"], "--plot-lr"),
    (["emit", "{cfg}", "--out", "{link}"], "--out"),  # through a link to the cfg
    (["export", "{cfg}", "--out", "{w}", "--weights", "{w}"], "--out"),
    (["{cfg}", "--save-weights", "{cfg}", "--weights", "{w}"], "--save-weights"),  # flag form
])
def test_an_output_onto_an_input_is_refused_and_the_input_kept(capsys, tiny, tmp_path, argv,
                                                               flag):
    """No command writes over a file it reads (the cfg, --weights, --input), links followed:
    E100 before any work, every input byte for byte as it was."""
    from builders import build
    from builders.weights import save_weights

    weights, x = tmp_path / "w.weights", tmp_path / "x.npy"
    save_weights(build(str(tiny)), weights)
    np.save(x, np.zeros((1, 3, 12, 12), np.float32))
    (tmp_path / "link.cfg").symlink_to(tiny)
    before = {p: p.read_bytes() for p in (tiny, weights, x)}
    names = {"cfg": tiny, "w": weights, "x": x, "link": tmp_path / "link.cfg"}
    code, err = run(capsys, *[a.format(**names) for a in argv])
    assert code == 2 and f"error[E100]: {flag} " in err and "this command reads" in err, err
    assert {p: p.read_bytes() for p in before} == before


def test_training_never_replaces_the_weights_it_starts_from(capsys, tiny, tmp_path):
    """--weights inside --out under a name the run saves (a pretrained file copied into the
    backup folder) is refused: the first save would replace it."""
    from builders import build
    from builders.weights import save_weights

    out = tmp_path / "run"
    out.mkdir()
    start = out / "tiny_final.weights"
    save_weights(build(str(tiny)), start)
    before = start.read_bytes()
    code, err = run(capsys, "train", tiny, "--weights", start, "--out", out, "--no-progress")
    assert code == 2 and "error[E901]" in err and "a name this run writes" in err, err
    assert start.read_bytes() == before and not (out / "metrics.csv").exists()
    other = out / "pretrained.weights"  # another name in the same folder is fine
    start.rename(other)
    code, err = run(capsys, "train", tiny, "--weights", other, "--out", out, "--no-progress")
    assert code == 0, err


def test_a_run_that_stopped_before_its_first_checkpoint_gets_a_hint_that_works(capsys, tiny,
                                                                              tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("iteration,loss\n")
    code, err = run(capsys, "train", tiny, "--out", out, "--no-progress")
    assert code == 2 and "nothing to resume" in err and "--out NEW_FOLDER" in err, err


def test_detections_onto_the_input_array_is_refused(capsys, detector, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    before = x.read_bytes()
    code, err = run(capsys, "detect", detector, "--input", x, "--detections", x)
    assert code == 2 and "error[E100]: --detections " in err and x.read_bytes() == before, err


@pytest.mark.parametrize("exc, expected", [
    (PermissionError(errno.EACCES, "Permission denied", "runs/d/w.weights"),
     "runs/d/w.weights: error[E901]: Permission denied: 'runs/d/w.weights'\nhelp: check the "
     "file's and its folder's permissions"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "runs/x/metrics.csv"),
     "runs/x/metrics.csv: error[E901]: Is a directory: 'runs/x/metrics.csv'\nhelp: name a file"),
    (OSError(errno.ENOSPC, "No space left on device"), "<file>: error[E901]: No space left on "
     "device: '<file>'\nhelp: free some space"),
])
def test_a_file_error_no_check_foresaw_is_a_diagnostic(capsys, exc, expected):
    """The last net under every command (`guarded`): an OSError that slipped past the early
    checks (an unreadable --weights, a metrics.csv that is a folder, a full disk) prints the
    path and the reason, exit 2, no traceback."""
    from darkcfg.cli.common import guarded

    def fail():
        raise exc

    assert guarded(fail) == 2
    assert capsys.readouterr().err.startswith(expected)


def test_ctrl_c_while_a_command_loads_is_exit_130(capsys, monkeypatch):
    import importlib

    from darkcfg.cli import main

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert main(["summary", "x.cfg"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("command", [["export", "--out", "m.pt2"], ["emit", "--out", "m.py"]])
def test_export_and_emit_refuse_a_size_that_cannot_fit(capsys, tiny, tmp_path, monkeypatch,
                                                       command):
    """--input-size beyond the machine's memory: E401 from the shapes (on the meta device)
    before anything is allocated, not the allocator's RuntimeError."""
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, command[0], tiny, *command[1:], "--input-size", "200000x200000")
    assert code == 2 and "error[E401]" in err and not list(tmp_path.glob("m.*")), err


@pytest.mark.parametrize("change, why", [
    ({"iteration": "x"}, "its 'iteration' is 'x', not a count"),
    ({"iteration": -5}, "its 'iteration' is -5, not a count"),
    ({"images_seen": None}, "its 'images_seen' is None, not a count"),
    ({"rng": []}, "random generator states ('rng') are missing or damaged"),
    ({"format": "other-9"}, "its format is 'other-9'"),
    ({"optimizer_params": ["x"]}, "its optimizer's parameter names ('optimizer_params') are "
     "damaged"),
    ("momentum", "its optimizer's momentum_buffer of parameter 0 has shape (3,)"),
])
def test_resume_from_a_checkpoint_with_damaged_fields(capsys, tiny, trained, tmp_path, change,
                                                      why):
    """A checkpoint without the checksum trailer (older, or edited by hand) whose fields are
    wrong: a located E901 naming the field, not a TypeError/IndexError deep in the trainer."""
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    if change == "momentum":
        slot = state["optimizer"]["state"][0]
        slot["momentum_buffer"] = torch.zeros(3)
    else:
        state.update(change)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    code, err = run(capsys, "train", tiny, "--out", tmp_path / "again", "--no-progress",
                    "--resume", bad, "--set", "max_batches=4")
    assert code == 2 and f"cannot resume from '{bad}'" in err and why in err, err


def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_so(capsys, tiny, tmp_path):
    """Its hint said 'run --train first (or without --resume)', which that folder refuses."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("iteration,epoch,loss\n1,0.1,1.5\n")
    code, err = run(capsys, "train", tiny, "--out", out, "--no-progress", "--resume")
    assert code == 2 and "no checkpoint to resume from" in err, err
    assert f"help: the run in '{out}' stopped before its first checkpoint, so there is " \
        "nothing to resume" in err and "run --train first" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]


@pytest.mark.parametrize("cut", [1, 40, 70, 83, 100, 2000])
def test_a_checkpoint_cut_short_anywhere_is_refused_as_cut(tmp_path, cut):
    """A copy cut inside the checksum line (the last 82 bytes) loaded unverified, and one cut
    inside the zip's end record was 'negative seek value -2443'."""
    from darkcfg.train.checkpoint import load_checkpoint, save_checkpoint

    whole = tmp_path / "checkpoint.pt"
    save_checkpoint(whole, {"iteration": 3, "w": torch.arange(1000.0)})
    assert load_checkpoint(whole)["iteration"] == 3
    data = whole.read_bytes()
    whole.write_bytes(data[:-cut])
    with pytest.raises(CfgError, match=f"is cut short \\({len(data) - cut:,} bytes\\)"):
        load_checkpoint(whole)


def test_resume_uses_the_optimizer_settings_it_is_given(capsys, tiny, trained):
    """torch's Optimizer.load_state_dict restores the saved groups' momentum, decay, betas...:
    a `--set momentum=` (or a cfg edit) for the resume was silently the run's old value. And a
    resume that switched adam= was torch's KeyError 'step' (or 'momentum') traceback."""
    from darkcfg.model import build_network
    from darkcfg.train.checkpoint import load_checkpoint
    from darkcfg.train.loop import Trainer

    net, cfg, _ = build_network(str(tiny), ["momentum=0.5", "decay=0.01"], "alexeyab", 0)
    trainer = Trainer(net, cfg, "cpu")
    trainer.load_state_dict(load_checkpoint(trained / "checkpoint.pt"))
    assert [(g["momentum"], g["weight_decay"]) for g in trainer.optimizer.param_groups] == \
        [(0.5, 0.01), (0.5, 0.0)]
    assert trainer.optimizer.state  # the run's momentum buffers are still loaded
    code, err = run(capsys, "train", tiny, "--out", trained, "--no-progress", "--resume",
                    "--set", "adam=1", "--set", "max_batches=4")
    assert code == 2 and "its optimizer state is SGD's and this run's optimizer is Adam" in err


@pytest.mark.parametrize("first, then", [(["--freeze", "1"], []), ([], ["--freeze", "1"]),
                                         ([], ["--set", "decay=0"])],
                         ids=["unfreeze", "freeze", "decay-0"])
def test_resume_with_other_frozen_layers_or_decay_groups_continues(capsys, tiny, tmp_path,
                                                                   first, then):
    """Documented to continue with a warning, a resume with other frozen layers was refused
    ('its optimizer state belongs to another setup'), and so was decay=0: the optimizer's
    state is found by parameter name now (a layer trained from now on starts without)."""
    out = tmp_path / "run"
    common = ("--out", out, "--no-progress", "--valid-every", "0")
    assert run(capsys, "train", tiny, *common, *first)[0] == 0
    code, err = run(capsys, "train", tiny, *common, "--resume", "--set", "max_batches=4", *then)
    assert code == 0 and "finished 4 iterations" in err, err
    if "--freeze" in first + then:
        assert "frozen_layers: " in err, err


def test_resume_takes_the_run_folder_and_explains_a_weights_file(capsys, tiny, trained,
                                                                 tmp_path):
    code, err = run(capsys, "train", tiny, "--out", trained, "--no-progress", "--resume",
                    trained, "--set", "max_batches=4")
    assert code == 0, err  # the folder holding checkpoint.pt, as the hint says
    weights = next(trained.glob("*_last.weights"))
    code, err = run(capsys, "train", tiny, "--out", tmp_path / "x", "--no-progress", "--resume",
                    weights)
    assert code == 2 and "is not a darkcfg checkpoint" in err and "--weights" in err, err
    assert weights.exists()


def test_resume_of_a_named_run_continues_it_in_its_folder(capsys, tiny, trained, tmp_path,
                                                         monkeypatch):
    """`--resume RUN` without --out continued into runs/<cfg-name>: a new folder without the
    run's metrics, and RUN stayed at its iteration."""
    from darkcfg.train.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, "train", tiny, "--no-progress", "--resume", trained / "checkpoint.pt",
                    "--set", "max_batches=3", "--valid-every", "0")
    assert code == 0 and err.rstrip().endswith(f"outputs in {trained}"), err
    assert "finished 3 iterations" in err and not (tmp_path / "runs").exists()
    assert load_checkpoint(trained / "checkpoint.pt")["iteration"] == 3
    # a kept copy in the folder is not the run's checkpoint: resuming it goes elsewhere
    (trained / "old.pt").write_bytes((trained / "checkpoint.pt").read_bytes())
    code, err = run(capsys, "train", tiny, "--no-progress", "--resume", trained / "old.pt",
                    "--set", "max_batches=4", "--valid-every", "0")
    assert code == 0 and err.rstrip().endswith("outputs in runs/tiny"), err
    assert load_checkpoint(trained / "checkpoint.pt")["iteration"] == 3


def test_resume_never_replaces_another_run(capsys, tiny, trained, tmp_path):
    """--resume A --out B, B holding a run of its own: B's checkpoint was replaced and its
    metrics.csv mixed with A's rows. Into a new folder (or A's own) it continues."""
    other = tmp_path / "other"
    code, err = run(capsys, "train", tiny, "--out", other, "--no-progress", "--seed", "5",
                    "--valid-every", "0")
    assert code == 0, err
    before = {name: (other / name).read_bytes() for name in ("checkpoint.pt", "metrics.csv")}
    code, err = run(capsys, "train", tiny, "--out", other, "--no-progress", "--resume",
                    trained / "checkpoint.pt", "--set", "max_batches=4")
    assert code == 2 and f"{other}: error[E901]" in err and "holds another run" in err, err
    assert f"--out {trained}" in err
    assert {name: (other / name).read_bytes() for name in before} == before
    code, err = run(capsys, "train", tiny, "--out", tmp_path / "new", "--no-progress",
                    "--resume", trained, "--set", "max_batches=3", "--valid-every", "0")
    assert code == 0 and (tmp_path / "new" / "checkpoint.pt").exists(), err


def test_resume_over_an_unreadable_metrics_csv_says_so(capsys, tiny, trained):
    (trained / "metrics.csv").write_bytes(bytes(range(256)) * 8)
    code, err = run(capsys, "train", tiny, "--out", trained, "--no-progress", "--resume",
                    "--set", "max_batches=4")
    assert code == 0 and "has no readable row" in err, err
    lines = (trained / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("iteration") and sum(li == lines[0] for li in lines) == 1


def test_export_decode_of_a_classifier_is_a_usage_error(capsys, tiny, tmp_path):
    code, err = run(capsys, "export", tiny, "--out", tmp_path / "m.pt2", "--decode")
    assert code == 2 and "error[E100]: --decode:" in err and "no detection head" in err, err


def test_a_detection_data_file_for_a_classifier_says_so(capsys, tiny, tmp_path):
    data = tmp_path / "obj.data"
    data.write_text("classes=2\ntrain=train.txt\nnames=obj.names\nbackup=backup/\n")
    code, err = run(capsys, "train", tiny, "--data", data, "--out", tmp_path / "r")
    assert code == 2 and "has no labels= line" in err and "no detection head" in err, err


def test_plot_lr_of_a_huge_schedule_samples_it(tmp_path):
    """max_batches=2**31-1 once asked for two billion points (tens of GB)."""
    from darkcfg.config import NetConfig
    from darkcfg.train.outputs import plot_lr

    cfg = NetConfig(max_batches=2**31 - 1, policy="steps", steps=(1000,), scales=(0.1,))
    plot_lr(cfg, tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_an_input_that_is_not_a_npy_file_is_named(capsys, detector, tmp_path):
    code, err = run(capsys, "detect", detector, "--input", detector, "--detections",
                    tmp_path / "d.json")
    assert code == 2 and "is not a .npy file" in err and "pickled" not in err, err


def test_an_empty_names_file_is_refused_like_a_wrong_one(capsys, tmp_path):
    from test_detect import tiny_cfg

    cfg = tiny_cfg(tmp_path)
    names = tmp_path / "none.names"
    names.write_text("")
    pic = image(tmp_path / "a.jpg")
    code, err = run(capsys, "detect", cfg, pic, "--names", names, "--out", tmp_path / "o")
    assert code == 2 and "error[E304]" in err and "lists 0 class names" in err, err


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the export extra")
def test_an_opset_onnx_cannot_write_is_refused_before_the_build(capsys, tiny, tmp_path):
    code, err = run(capsys, "export", tiny, "--out", tmp_path / "m.onnx", "--opset", "0")
    assert code == 2 and "error[E100]: --opset 0" in err and not (tmp_path / "m.onnx").exists()


def test_a_plot_is_named_png_so_it_never_lands_on_a_data_file(capsys, tiny, tmp_path):
    """`--plot images/im0.jpg` or `--plot labels/x.txt` would write a PNG over a file of the
    data set: a plot flag takes a .png name."""
    label = tmp_path / "x.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    code, err = run(capsys, "summary", tiny, "--plot-lr", label)
    assert code == 2 and "the plot is a PNG file" in err and "name it x.png" in err, err
    assert label.read_text() == "0 0.5 0.5 0.1 0.1\n"


def four_class_folder(root) -> None:
    """An ImageFolder of 4 classes (a-d), 4 small PNGs each, of distinct colours."""
    from PIL import Image as PILImage

    for cls in ("a", "b", "c", "d"):
        (root / cls).mkdir(parents=True)
        for k in range(4):
            PILImage.fromarray(np.full((12, 12, 3), 60 * "abcd".index(cls) + k, np.uint8)).save(
                root / cls / f"{k}.png")


def test_resume_continues_on_the_runs_recorded_data(capsys, tiny, tmp_path, monkeypatch):
    """`--resume` without --data takes the data the run recorded (settings.yaml), as a
    continuation should; before, it went on with the embedded set and a warning."""
    monkeypatch.chdir(tmp_path)
    four_class_folder(tmp_path / "imgs")
    code, err = run(capsys, "train", tiny, "--data", "imgs", "--out", "run", "--no-progress",
                    "--valid-every", "0")
    assert code == 0, err
    code, err = run(capsys, "train", tiny, "--out", "run", "--resume", "--no-progress",
                    "--set", "max_batches=4", "--valid-every", "0")
    assert code == 0 and "the run's data, imgs" in err and "other settings" not in err, err


def test_resume_takes_the_data_of_the_run_it_continues(capsys, tiny, tmp_path, monkeypatch):
    """`--resume RUN --out NEW` read the data record of NEW (none) and trained RUN on the
    embedded set without a word; a run whose data moved went on with the embedded set behind a
    one-line warning; a run on the embedded set's first N classes went on with all of them."""
    from PIL import Image as PILImage

    monkeypatch.chdir(tmp_path)
    four_class_folder(tmp_path / "imgs")
    common = ("--no-progress", "--valid-every", "0")
    assert run(capsys, "train", tiny, "--data", "imgs", "--out", "run", *common)[0] == 0
    code, err = run(capsys, "train", tiny, "--out", "copy", "--resume", "run", *common)
    assert code == 0 and "nothing to train" in err and "embedded" not in err, err
    code, err = run(capsys, "train", tiny, "--out", "copy", "--resume", *common,
                    "--set", "max_batches=3")  # (its settings.yaml was written, though idle)
    assert code == 0 and "the run's data, imgs" in err and "embedded" not in err, err
    (tmp_path / "imgs").rename(tmp_path / "moved")
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    code, err = run(capsys, "train", tiny, "--out", "run", "--resume", *common,
                    "--set", "max_batches=3")
    assert code == 2 and "run/settings.yaml: error[E901]: --resume: the run in 'run' trained " \
        "on 'imgs'" in err and "pass --data" in err, err
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    code, err = run(capsys, "valid", tiny, "--weights", "run/tiny_final.weights")
    assert code == 2 and "error[E901]: --weights: the run in 'run' trained on 'imgs'" in err, \
        err  # (it scored the embedded set instead, without a word)
    code, err = run(capsys, "train", tiny, "--out", "run", "--resume", "--data", "moved",
                    *common, "--set", "max_batches=3")
    assert code == 0 and "data: moved (was imgs)" in err and "class 0" not in err, err
    (tmp_path / "moved" / "a").rename(tmp_path / "moved" / "z")  # every class index moves
    code, err = run(capsys, "train", tiny, "--out", "run", "--resume", *common,
                    "--set", "max_batches=4")
    assert code == 0 and "class 0: 'b' (was 'a'; later indices may have moved too)" in err, err
    for cls in ("b", "c", "d", "z"):  # the same folder, more images: another epoch, order
        PILImage.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "moved" / cls /
                                                                 "new.png")
    code, err = run(capsys, "train", tiny, "--out", "run", "--resume", *common,
                    "--set", "max_batches=5")
    assert code == 0 and "the data: ImageFolder moved (split 90/10 by seed 0): 4 classes, 18 " \
        "train / 2 val images (was ImageFolder moved (split 90/10 by seed 0): 4 classes, 15 " \
        "train / 1 val images)" in err, err
    assert run(capsys, "train", tiny, "--classes", "2", "--out", "two", *common)[0] == 0
    code, err = run(capsys, "train", tiny, "--out", "two", "--resume", *common,
                    "--set", "max_batches=3")
    assert code == 0 and "embedded set's first 2 classes" in err, err
    assert "other settings" not in err, err


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_stops_any_command_as_ctrl_c_does(capsys, monkeypatch, tmp_path, name):
    """Outside training's loop SIGTERM used to kill a command on the spot, its temp files left
    behind; now it raises KeyboardInterrupt like Ctrl-C: the writers' cleanup runs, exit 130.
    SIGHUP (a closed terminal) did so until it was handled the same way."""
    import signal

    from builders.atomic import atomic_open
    from darkcfg.cli import main
    from darkcfg.cli import summary as command

    sig = getattr(signal, name)

    def terminated_midway(argv):
        with atomic_open(tmp_path / "out.bin") as fh:
            fh.write(b"half")
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler interrupts this
        return 0

    monkeypatch.setattr(command, "main", terminated_midway)
    before = signal.getsignal(sig)
    signal.signal(sig, signal.SIG_DFL)
    try:
        assert main(["summary", "x.cfg"]) == 130
    finally:
        signal.signal(sig, before)
    assert capsys.readouterr().err == "interrupted\n" and list(tmp_path.iterdir()) == []


def test_a_second_run_into_a_folder_a_run_is_writing_is_refused(capsys, tiny, tmp_path):
    """Two runs started into one --out at the same moment both passed the "already holds a
    run" check and mixed their files; the folder is now locked for the run (by the process:
    another process holds it here)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from builders.atomic import hold_folder; "
         f"held = hold_folder(Path({str(out)!r})); print('held', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run(capsys, "train", tiny, "--out", out, "--no-progress")
        assert code == 2 and f"process {holder.pid}) is writing to '{out}'" in err, err
        assert not (out / "metrics.csv").exists()
    finally:
        holder.communicate("")
    code, err = run(capsys, "train", tiny, "--out", out, "--no-progress")
    assert code == 0, err  # free again once the holder is gone


def test_a_second_detect_into_a_folder_a_detect_is_writing_is_refused(capsys, detector,
                                                                     tmp_path):
    """Two detects into one --out mixed their files: the folder itself is locked (flock) while
    one writes, and nothing is left in it for the lock."""
    import subprocess
    import sys

    out = tmp_path / "detected"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from builders.atomic import lock_folder; "
         f"held = lock_folder({str(out)!r}); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    picture = image(tmp_path / "a.png")
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run(capsys, "detect", detector, picture, "--out", out, "--no-progress")
        assert code == 2 and f"another darkcfg run is writing to '{out}'" in err, err
        assert list(out.iterdir()) == []
    finally:
        holder.communicate("")
    code, err = run(capsys, "detect", detector, picture, "--out", out, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "detections.json"]


@pytest.mark.slow
def test_a_stdout_that_takes_no_more(detector, tmp_path):
    """`> /dev/full`: detect called its failed print an image it could not read ('im1.png:
    error[E901]: [Errno 28] No space left on device', hint: convert it to JPEG), other commands
    said '<file>', --help and --version printed a traceback. Now: E901 at <stdout>, exit 2.
    `| head` (the reader left; here a pipe whose reading end is closed): exit 0, as summary."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        image(images / f"im{i}.png")

    def darkcfg(*argv, stdout):
        done = subprocess.run([sys.executable, "-m", "darkcfg", *map(str, argv)], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(root)})
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        return done.returncode, done.stderr

    detect = ["detect", detector, images, "--thresh", "0", "--no-progress"]
    with open("/dev/full", "w") as full:
        for argv in (["--version"], ["check", "--format", "json", detector],
                     [*detect, "--out", tmp_path / "full"]):
            code, err = darkcfg(*argv, stdout=full)
            assert code == 2, err
            assert err.endswith("<stdout>: error[E901]: cannot write the output to stdout: No "
                                "space left on device\nhelp: free some space where stdout goes,"
                                " or redirect it elsewhere\n"), err
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        code, err = darkcfg(*detect, "--out", tmp_path / "piped", stdout=write)
    finally:
        os.close(write)
    assert code == 0 and "E901" not in err, err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_buffered_stdout_that_takes_no_more(tmp_path):
    """Where stdout is buffered (a redirect, without PYTHONUNBUFFERED) a short output is written
    at the end: `> /dev/full` was Python's 'Exception ignored ... No space left on device' and
    exit 120 (and `| head`'s broken pipe alike), not the E901 of a stdout that takes no more."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(root)

    def darkcfg(stdout):
        return subprocess.run([sys.executable, "-m", "darkcfg", "--version"], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=60, env=env)

    with open("/dev/full", "w") as full:
        done = darkcfg(full)
    assert done.returncode == 2 and done.stderr == (
        "<stdout>: error[E901]: cannot write the output to stdout: No space left on device\n"
        "help: free some space where stdout goes, or redirect it elsewhere\n")
    read, write = os.pipe()
    os.close(read)  # the reader left
    try:
        done = darkcfg(write)
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == ""


def test_a_rewritten_file_keeps_its_permissions(tmp_path):
    """anchors --write (any atomic rewrite) once turned a private 0600 cfg into 0644."""
    from builders.atomic import atomic_write

    private = tmp_path / "secret.cfg"
    private.write_text("[net]\n")
    private.chmod(0o600)
    atomic_write(private, "[net]\nwidth=8\n")
    assert private.stat().st_mode & 0o777 == 0o600 and private.read_text().endswith("8\n")


def test_a_resumes_summary_and_record_say_what_ran(capsys, tiny, tmp_path):
    """The end-of-run line showed the last validation's score as the final one when no
    validation ran at the end: it says at which iteration it was measured. A resume with
    nothing left to train (its settings differ) no longer rewrites settings.yaml, whose
    record of the run was lost to the options of a resume that trained nothing."""
    out = tmp_path / "run"
    code, err = run(capsys, tiny, "--train", "--no-progress", "--out", out, "--valid-every", "2")
    assert code == 0 and "finished 2 iterations" in err and "(at iteration" not in err, err
    code, err = run(capsys, tiny, "--train", "--no-progress", "--out", out, "--resume",
                    "--set", "max_batches=3", "--valid-every", "0")
    assert code == 0 and "finished 3 iterations" in err and "(at iteration 2)" in err, err
    record = (out / "settings.yaml").read_text()
    code, err = run(capsys, tiny, "--train", "--no-progress", "--out", out, "--resume",
                    "--set", "max_batches=3", "--seed", "7")
    assert code == 0 and "resuming with other settings" in err, err
    assert "nothing to train: the checkpoint is at iteration 3 and max_batches=3" in err, err
    assert (out / "settings.yaml").read_text() == record


class _RunsCode:
    """A pickle that would create `sentinel` when unpickled (torch.load without weights_only)."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.mknod, (self.sentinel,))


@pytest.mark.parametrize("name", ["model.pt", "model.weights", "checkpoint.pt"])
def test_a_pickle_that_would_run_code_is_refused_and_never_run(capsys, tiny, tmp_path, name):
    """--weights and --resume load torch files with weights_only=True: the file is refused with
    the global it wanted (torch's 600-character advice was the message), and nothing runs."""
    sentinel = tmp_path / "ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bad = run_dir / name
    torch.save({"model": _RunsCode(sentinel)}, bad)
    flag = "--resume" if name == "checkpoint.pt" else "--weights"
    code, err = run(capsys, "train", tiny, "--out", tmp_path / "out", "--no-progress", flag, bad,
                    "--set", "max_batches=2")
    assert code == 2 and f"{bad}: error[E901]: '{bad}' holds Python objects besides tensors " \
        "(posix.mknod): loading them could run code" in err, err
    assert "In PyTorch 2.6" not in err and not sentinel.exists()


def test_an_empty_checkpoint_says_so(capsys, tiny, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    code, err = run(capsys, "train", tiny, "--out", tmp_path / "run", "--no-progress",
                    "--resume", tmp_path / "run")
    assert code == 2 and "checkpoint.pt' is empty (0 bytes)" in err, err


@pytest.mark.parametrize("suffix", [".weights", ".pt"])
def test_weights_with_nan_warn_and_training_refuses_them(capsys, tiny, tmp_path, suffix):
    """A file holding NaN or Inf loads as Darknet loads it, with a warning (every output is
    NaN); training refuses it before it writes anything: it stopped at iteration 1 with E500,
    whose hint blames the learning rate, and left a run folder a fresh --train then refused."""
    from builders.weights import save_weights
    from darkcfg.model import build_network, load_any_weights

    net, _, _ = build_network(str(tiny), [], "alexeyab", 0)
    with torch.no_grad():
        net.layers[0].conv.weight[0, 0, 0, 0] = float("nan")
    bad = tmp_path / f"nan{suffix}"
    save_weights(net, bad) if suffix == ".weights" else torch.save(net.state_dict(), bad)
    fresh, _, _ = build_network(str(tiny), [], "alexeyab", 0)
    assert "\nwarning: '" + str(bad) + "': 1 of its " in load_any_weights(fresh, bad)
    code, err = run(capsys, "train", tiny, "--out", tmp_path / "out", "--no-progress",
                    "--weights", bad, "--set", "max_batches=2")
    assert code == 2 and "error[E902]: --weights" in err and "are NaN or Inf (first: " \
        "layers.0.conv.weight): training from them stops" in err, err
    assert not (tmp_path / "out").exists()


def test_weights_named_like_darknet_but_torch_say_what_they_are(tiny, tmp_path):
    """A checkpoint.pt or state_dict renamed .weights loads (by its bytes), and the report says
    which file it really was rather than only 'tensors from x.weights'."""
    from darkcfg.model import build_network, load_any_weights

    net, _, _ = build_network(str(tiny), [], "alexeyab", 0)
    torch.save({"model": net.state_dict(), "format": "darkcfg-checkpoint-1"},
               tmp_path / "ck.weights")
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    assert load_any_weights(net, tmp_path / "ck.weights").endswith(
        "(a darkcfg checkpoint: its weights only, not Darknet .weights)")
    assert load_any_weights(net, tmp_path / "sd.pt").endswith("(a torch state_dict)")


def test_a_checkpoint_cut_short_says_so(capsys, tiny, trained, tmp_path):
    """A copy that stopped half way was 'cannot read checkpoint: negative seek value -3079'."""
    torn = tmp_path / "torn" / "checkpoint.pt"
    torn.parent.mkdir()
    whole = (trained / "checkpoint.pt").read_bytes()
    torn.write_bytes(whole[: len(whole) // 2])
    code, err = run(capsys, "train", tiny, "--out", torn.parent, "--no-progress", "--resume",
                    torn.parent)
    assert code == 2 and f"'{torn}' is cut short ({len(whole) // 2:,} bytes): the end of its " \
        "torch archive is missing" in err, err


def test_weights_or_a_checkpoint_that_is_a_pipe_says_so(tmp_path):
    """A FIFO given to --weights or --resume was said not to exist (it does: it is no file)."""
    from cfgparse import CfgError
    from darkcfg.model import load_any_weights
    from darkcfg.train.checkpoint import load_checkpoint

    fifo = tmp_path / "w.weights"
    os.mkfifo(fifo)
    for load in (lambda: load_any_weights(None, fifo), lambda: load_checkpoint(fifo)):
        with pytest.raises(CfgError) as err:
            load()
        assert "is not a regular file (a pipe or a device)" in err.value.first.message


@pytest.mark.parametrize("which", ["tiny", "detector"])
def test_classes_above_the_networks_count_is_a_usage_error(capsys, tmp_path, which, request):
    """`train --classes 99` on the embedded data of a 4-output classifier (or a 2-class
    detector) was an E901 from the data, as if a file were bad; it is a usage error, E100 at
    --classes, as --classes 0 is."""
    cfg = request.getfixturevalue(which)
    out = tmp_path / "run"
    code, err = run(capsys, cfg, "--train", "--no-progress", "--out", out, "--classes", "99")
    assert code == 2 and err.startswith("--classes: error[E100]: --classes 99: the network "), err
    assert "help: use --classes 1.." in err and "(or leave it out)" in err, err
    assert not (out / "checkpoint.pt").exists()
