"""The command line (darkcfg.cli): one module per subcommand parsing into typed options, the flag
form of runner.py as a translation onto the same options, the one error handler; and the one data
stack (.data reader, path resolver, rand_scale, [net] reader, the --classes rule)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_detect import TINY

from darkcfg.cli import COMMANDS
from darkcfg.cli import flags as flag_form
from darkcfg.cli import main as darkcfg

DETECTOR = TINY.format(letter="max_batches=10")  # 64x64x3, [yolo] with classes=7

OWN_COMMANDS = ("train", "valid", "predict", "detect", "export", "emit", "summary", "weights")


def call(capsys, argv) -> tuple[int, str, str]:
    code = darkcfg([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def planned(flags: list) -> list[tuple[str, object]]:
    return flag_form.plan(flag_form.arg_parser().parse_args([str(a) for a in flags]))


def parsed(sub: list) -> tuple[str, object]:
    name, *argv = [str(a) for a in sub]
    return name, importlib.import_module(COMMANDS[name]).parse(argv)


# -- fixtures: a tiny classifier, a tiny detector, weights, images, an input -----------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_classifier) -> Path:
    from PIL import Image

    from builders.weights import save_weights
    from darkcfg.model import ModelSpec

    root = tmp_path_factory.mktemp("cli")
    tiny_classifier.write(root / "tiny.cfg", max_batches=4)
    (root / "det.cfg").write_text(DETECTOR)
    for name in ("tiny", "det"):
        save_weights(ModelSpec(str(root / f"{name}.cfg"), seed=3).build(), root / f"{name}.weights")
    images = root / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("1.jpg", (24, 40)), ("b.png", (32, 32))):
        Image.fromarray((rng.uniform(0, 255, (h, w, 3))).astype(np.uint8)).save(images / name)
    (root / "names.txt").write_text("a\nb\nc\nd\ne\nf\ng\n")
    np.save(root / "x.npy", rng.uniform(0, 1, (1, 3, 12, 12)).astype(np.float32))
    np.save(root / "xd.npy", rng.uniform(0, 1, (1, 3, 64, 64)).astype(np.float32))
    return root


# -- the house: one module per command, typed options, no argparse below the cli -------------------

def test_every_command_is_a_module_that_parses_into_typed_options(work):
    argv = {"train": ["tiny.cfg"], "valid": ["tiny.cfg"], "predict": ["tiny.cfg", "a.png"],
            "detect": ["det.cfg", "imgs"], "export": ["tiny.cfg", "--out", "m.onnx"],
            "emit": ["tiny.cfg", "--out", "m.py"], "summary": ["tiny.cfg"],
            "weights": ["tiny.cfg", "--weights", "w", "--save-weights", "o"]}
    assert set(OWN_COMMANDS) | {"check", "data", "anchors"} == set(COMMANDS)
    assert COMMANDS["check"] == "darkcfg.lint.cli"
    for name in OWN_COMMANDS:
        module = importlib.import_module(COMMANDS[name])
        assert callable(module.main) and callable(module.run)
        options = module.parse(argv[name])
        assert dataclasses.is_dataclass(options), name
        text = repr(options)
        assert "Namespace" not in text, name


# -- every README/docs line in flag form and its subcommand: the same options, the same result -----

#: (flag form, subcommand form): the lines of today's docs, on the tiny cfgs above.
SAME = [
    (["tiny.cfg", "--summary"], ["summary", "tiny.cfg"]),
    (["tiny.cfg", "--summary", "--format", "json"], ["summary", "tiny.cfg", "--format", "json"]),
    (["tiny.cfg", "--train", "--set", "batch=8", "--set", "max_batches=3", "--out", "runs/x"],
     ["train", "tiny.cfg", "--set", "batch=8", "--set", "max_batches=3", "--out", "runs/x"]),
    (["tiny.cfg", "--train", "--classes", "4", "--out", "r", "--no-progress", "--resume"],
     ["train", "tiny.cfg", "--classes", "4", "--out", "r", "--no-progress", "--resume"]),
    (["tiny.cfg", "--weights", "tiny.weights", "--valid", "--classes", "4"],
     ["valid", "tiny.cfg", "--weights", "tiny.weights", "--classes", "4"]),
    (["det.cfg", "--valid", "--weights", "W", "--format", "json", "--map-points", "101"],
     ["valid", "det.cfg", "--weights", "W", "--format", "json", "--map-points", "101"]),
    (["tiny.cfg", "--weights", "W", "--predict", "a.png", "b.png", "--top", "2"],
     ["predict", "tiny.cfg", "--weights", "W", "a.png", "b.png", "--top", "2"]),
    (["tiny.cfg", "--weights", "W", "--save-weights", "o.weights", "--cutoff", "2"],
     ["weights", "tiny.cfg", "--weights", "W", "--save-weights", "o.weights", "--cutoff", "2"]),
    (["tiny.cfg", "--weights", "W", "--input", "x.npy", "--dump-outputs", "out.npz"],
     ["weights", "tiny.cfg", "--weights", "W", "--input", "x.npy", "--dump-outputs", "out.npz"]),
    (["det.cfg", "--weights", "W", "--detect", "1.jpg", "imgs/", "--names", "n.txt"],
     ["detect", "det.cfg", "--weights", "W", "1.jpg", "imgs/", "--names", "n.txt"]),
    (["det.cfg", "--weights", "W", "--detect", "imgs/", "--data", "c.data", "--out", "o",
      "--thresh", ".5", "--save-labels"],
     ["detect", "det.cfg", "--weights", "W", "imgs/", "--data", "c.data", "--out", "o",
      "--thresh", ".5", "--save-labels"]),
    (["det.cfg", "--weights", "W", "--input", "x.npy", "--detections", "d.json"],
     ["detect", "det.cfg", "--weights", "W", "--input", "x.npy", "--detections", "d.json"]),
    (["tiny.cfg", "--weights", "W", "--export", "m.onnx"],
     ["export", "tiny.cfg", "--weights", "W", "--out", "m.onnx"]),
    (["tiny.cfg", "--export", "m.onnx", "--opset", "17", "--dynamic-batch", "--input-size",
      "608x608"], ["export", "tiny.cfg", "--out", "m.onnx", "--opset", "17", "--dynamic-batch",
                   "--input-size", "608x608"]),
    (["det.cfg", "--export", "m.onnx", "--decode"],
     ["export", "det.cfg", "--out", "m.onnx", "--decode"]),
    (["tiny.cfg", "--weights", "W", "--emit", "model.py"],
     ["emit", "tiny.cfg", "--weights", "W", "--out", "model.py"]),
]


@pytest.mark.parametrize("flags,sub", SAME, ids=[" ".join(f[1:3]) for f, _ in SAME])
def test_the_flag_form_plans_the_subcommands_options(flags, sub):
    def same(steps):  # the options but the name of the flag that gave them (for messages)
        return [(name, dataclasses.replace(opts, flag="") if hasattr(opts, "flag") else opts)
                for name, opts in steps]

    assert same(planned(flags)) == same([parsed(sub)])
    if "--export" in flags:
        assert planned(flags)[0][1].flag == "--export" and parsed(sub)[1].flag == "--out"


def test_several_flags_plan_several_commands_in_the_old_order():
    steps = planned(["tiny.cfg", "--train", "--valid", "--summary", "--plot-lr", "lr.png",
                     "--emit", "m.py", "--export", "m.onnx", "--predict", "a.png"])
    assert [name for name, _ in steps] == ["summary", "emit", "export", "train", "valid",
                                           "predict"]
    summary = steps[0][1]
    assert summary.table and summary.plot_lr == Path("lr.png")
    # --plot-lr alone plots without the table (as it always did); `summary --plot-lr` does both
    (alone,) = planned(["tiny.cfg", "--plot-lr", "lr.png"])
    assert alone[1].table is False and parsed(["summary", "tiny.cfg", "--plot-lr", "lr.png"]
                                              )[1].table is True


def test_train_then_valid_evaluates_the_network_just_trained(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    code, out, err = call(capsys, ["tiny.cfg", "--train", "--valid", "--out", "tv",
                                   "--no-progress", "--set", "max_batches=2"])
    assert code == 0 and "finished 2 iterations" in err
    assert "val_top1" in out and "loaded" not in err  # no weights file read back: the trainer's net


def run_both(capsys, monkeypatch, work, flags, sub, tmp_path):
    """Run the flag form in tmp_path/flag and the subcommand in tmp_path/sub (each a copy of the
    fixture folder): (code, stdout, stderr) of each."""
    results = []
    for name, argv in (("flag", flags), ("sub", sub)):
        here = tmp_path / name
        shutil.copytree(work, here)
        monkeypatch.chdir(here)
        results.append(call(capsys, argv))
    return results


def test_summary_and_plot_lr_alike(work, capsys, monkeypatch, tmp_path):
    (fc, fo, _), (sc, so, _) = run_both(capsys, monkeypatch, work,
                                        ["tiny.cfg", "--summary", "--plot-lr", "lr.png"],
                                        ["summary", "tiny.cfg", "--plot-lr", "lr.png"], tmp_path)
    assert fc == sc == 0 and fo == so and "connected" in fo
    plots = [(tmp_path / f / "lr.png").read_bytes() for f in ("flag", "sub")]
    assert plots[0][:8] == b"\x89PNG\r\n\x1a\n" and plots[0] == plots[1]


def test_weights_and_dump_outputs_alike(work, capsys, monkeypatch, tmp_path):
    common = ["--weights", "tiny.weights", "--save-weights", "o.weights", "--cutoff", "2",
              "--input", "x.npy", "--dump-outputs", "o.npz"]
    (fc, _, ferr), (sc, _, serr) = run_both(capsys, monkeypatch, work, ["tiny.cfg", *common],
                                            ["weights", "tiny.cfg", *common], tmp_path)
    assert fc == sc == 0 and ferr == serr and "wrote o.weights" in ferr
    a, b = (tmp_path / f for f in ("flag", "sub"))
    assert (a / "o.weights").read_bytes() == (b / "o.weights").read_bytes()
    with np.load(a / "o.npz") as x, np.load(b / "o.npz") as y:
        assert sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k]) for k in x)


def test_detect_alike(work, capsys, monkeypatch, tmp_path):
    flags = ["det.cfg", "--weights", "det.weights", "--detect", "imgs", "--names", "names.txt",
             "--out", "dets", "--thresh", "0.01", "--save-labels", "--no-progress"]
    sub = ["detect", "det.cfg", "--weights", "det.weights", "imgs", "--names", "names.txt",
           "--out", "dets", "--thresh", "0.01", "--save-labels", "--no-progress"]
    (fc, fo, _), (sc, so, _) = run_both(capsys, monkeypatch, work, flags, sub, tmp_path)
    assert fc == sc == 0
    assert fo.splitlines()[:-1] == so.splitlines()[:-1]  # the last line has the timing
    assert "imgs/1.jpg: " in fo
    a, b = (tmp_path / f / "dets" for f in ("flag", "sub"))
    assert json.loads((a / "detections.json").read_text()) == \
        json.loads((b / "detections.json").read_text())
    assert (a / "1.txt").read_text() == (b / "1.txt").read_text()


def test_raw_input_detections_alike(work, capsys, monkeypatch, tmp_path):
    common = ["--weights", "det.weights", "--input", "xd.npy", "--detections", "d.json",
              "--thresh", "0.01"]
    (fc, _, _), (sc, _, _) = run_both(capsys, monkeypatch, work, ["det.cfg", *common],
                                      ["detect", "det.cfg", *common], tmp_path)
    assert fc == sc == 0
    texts = [(tmp_path / f / "d.json").read_text() for f in ("flag", "sub")]
    assert texts[0] == texts[1] and json.loads(texts[0])


def test_emit_and_export_alike(work, capsys, monkeypatch, tmp_path):
    (fc, _, _), (sc, _, _) = run_both(
        capsys, monkeypatch, work,
        ["tiny.cfg", "--weights", "tiny.weights", "--emit", "m.py", "--export", "m.pt2"],
        ["emit", "tiny.cfg", "--weights", "tiny.weights", "--out", "m.py"], tmp_path)
    assert fc == sc == 0
    a, b = (tmp_path / f for f in ("flag", "sub"))
    assert (a / "m.py").read_text() == (b / "m.py").read_text()
    monkeypatch.chdir(b)
    assert call(capsys, ["export", "tiny.cfg", "--weights", "tiny.weights", "--out",
                         "m.pt2"])[0] == 0
    import torch

    x = torch.from_numpy(np.load(work / "x.npy"))
    outs = [torch.export.load(d / "m.pt2").module()(x) for d in (a, b)]
    assert all(torch.equal(p, q) for p, q in zip(outs[0], outs[1], strict=True))


def test_train_valid_predict_alike(work, capsys, monkeypatch, tmp_path):
    train = ["--set", "max_batches=3", "--out", "run", "--no-progress", "--valid-every", "0"]
    (fc, _, _), (sc, _, _) = run_both(capsys, monkeypatch, work, ["tiny.cfg", "--train", *train],
                                      ["train", "tiny.cfg", *train], tmp_path)
    assert fc == sc == 0
    a, b = (tmp_path / f for f in ("flag", "sub"))
    rows = [[r.split(",")[:3] for r in (d / "run" / "metrics.csv").read_text().splitlines()]
            for d in (a, b)]
    assert len(rows[0]) == 4 and rows[0] == rows[1]  # header + 3 iterations: the same losses
    assert (a / "run" / "tiny_final.weights").read_bytes() == \
        (b / "run" / "tiny_final.weights").read_bytes()
    monkeypatch.chdir(a)
    w = "run/tiny_final.weights"
    valid = [call(capsys, argv) for argv in (["tiny.cfg", "--weights", w, "--valid"],
                                             ["valid", "tiny.cfg", "--weights", w])]
    assert valid[0][0] == valid[1][0] == 0 and valid[0][1] == valid[1][1]
    assert "val_top1" in valid[0][1]
    image = str(work / "imgs" / "b.png")
    predicted = [call(capsys, argv) for argv in (
        ["tiny.cfg", "--weights", w, "--predict", image, "--top", "2"],
        ["predict", "tiny.cfg", "--weights", w, image, "--top", "2"])]
    assert predicted[0][1] == predicted[1][1] and predicted[0][1].count("%") == 2


def test_check_in_every_spelling(work, capsys, monkeypatch):
    bad = work / "bad.cfg"
    bad.write_text(DETECTOR.replace("activation=leaky", "activation=lekay"))
    results = [call(capsys, argv) for argv in (["check", bad], [bad, "--check"])]
    from darkcfg.lint.cli import main as lint_main

    assert lint_main([str(bad)]) == results[0][0] == results[1][0] == 1
    direct = capsys.readouterr().out
    assert results[0][1] == results[1][1] == direct and "did you mean 'leaky'" in direct


def test_darkcfg_check_stays_torch_free():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = ("import sys\nfrom darkcfg.cli import main\n"
              "code = main(['check', '--no-build', 'cfg/digits.cfg'])\n"
              "assert 'torch' not in sys.modules\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 file checked: 0 errors" in done.stdout


def test_top_level_help_lists_every_command_without_torch():
    """`darkcfg --help` is the list of commands (each with what it does) and the two forms;
    bare `darkcfg` prints it as a usage error (stderr, exit 2); `--version` the installed one.
    None of them imports torch (a second, not five)."""
    import subprocess
    import sys

    from darkcfg.cli import SUMMARIES

    assert list(SUMMARIES) == list(COMMANDS)
    root = Path(__file__).resolve().parents[1]
    script = ("import sys\nfrom darkcfg.cli import main\n"
              "code = main(sys.argv[1:])\n"
              "assert 'torch' not in sys.modules\nsys.exit(code)\n")
    runs = {args: subprocess.run([sys.executable, "-c", script, *args], cwd=root,
                                 capture_output=True, text=True, timeout=60)
            for args in (("--help",), ("-h",), (), ("--version",))}
    listing = runs[("--help",)].stdout
    assert runs[("--help",)].returncode == runs[("-h",)].returncode == 0
    assert runs[("-h",)].stdout == listing
    for name, summary in SUMMARIES.items():
        assert f"  {name} " in listing and summary in listing
    assert "darkcfg COMMAND --help" in listing and "darkcfg CFG --help" in listing
    # a checkout's own pages (a wheel's: tests/test_packaging.py)
    assert f"docs: {root / 'README.md'} and {root / 'docs' / 'commands.md'}" in listing
    assert runs[()].returncode == 2 and runs[()].stderr.strip() == listing.strip()
    assert runs[("--version",)].returncode == 0
    assert runs[("--version",)].stdout.startswith("darkcfg ")
    assert all("Traceback" not in r.stderr for r in runs.values())


def test_every_command_help_and_usage_error_come_without_torch():
    """`darkcfg COMMAND --help` and a mistyped option answer in a tenth of a second: no command
    module imports torch before its options are read (it took 2 s per `--help` before)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = ("import sys, contextlib, io\nfrom darkcfg.cli import COMMANDS, main\n"
              "def code(*argv):\n"
              "    try:\n"
              "        with contextlib.redirect_stdout(io.StringIO()):\n"
              "            return main(list(argv))\n"
              "    except SystemExit as stop:  # argparse's exit for --help and usage errors\n"
              "        return stop.code\n"
              "for name in COMMANDS:\n"
              "    assert code(name, '--help') == 0, name\n"
              "    assert 'torch' not in sys.modules, name + ' --help imported torch'\n"
              "for name in ('train', 'detect', 'export', 'weights', 'summary', 'emit'):\n"
              "    assert code(name, 'cfg/yolov3-tiny.cfg', '--no-such-flag') == 2, name\n"
              "    assert 'torch' not in sys.modules, name + ' usage error imported torch'\n"
              "assert code('cfg/yolov3-tiny.cfg', '--help') == 0\n"
              "assert 'torch' not in sys.modules, 'CFG --help imported torch'\n"
              "print('checked')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "checked\n", done.stderr[-2000:]


# -- errors: one handler, exit 2, located, no traceback --------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["summary", "/no/such.cfg"], "cannot read"),
    (["train", "tiny.cfg", "--data", "/no/such/data"], "does not exist"),
    (["train", "tiny.cfg", "--data", "digits", "--classes", "2"], "--classes is for the embedded"),
    (["valid", "tiny.cfg", "--weights", "/no/such.weights"], "does not exist"),
    (["predict", "tiny.cfg", "a.png", "--top", "0"], "--top 0"),
    # options that only shape how --weights loads did nothing without it (the run went on)
    (["train", "tiny.cfg", "--cutoff", "3"], "--cutoff 3 needs --weights"),
    (["valid", "tiny.cfg", "--partial"], "--partial needs --weights"),
    (["tiny.cfg", "--train", "--cutoff", "2"], "--cutoff 2 needs --weights"),
    (["detect", "tiny.cfg", "imgs"], "has no detection head"),
    (["detect", "det.cfg", "imgs", "--thresh", "1.5"], "--thresh 1.5"),
    (["detect", "det.cfg"], "nothing to detect in"),
    (["weights", "tiny.cfg", "--save-weights", "o.weights"], "need --weights"),
    (["weights", "tiny.cfg", "--weights", "tiny.weights", "--dump-outputs", "o.npz"],
     "needs --input"),
    (["weights", "tiny.cfg", "--weights", "tiny.weights", "--cutoff", "-1", "--save-weights",
      "o"], "--cutoff -1"),
    (["export", "tiny.cfg", "--out", "m.xyz"], "cannot tell the export format"),
    (["export", "tiny.cfg", "--out", "m.onnx", "--input-size", "big"], "WxH"),
    (["emit", "tiny.cfg", "--set", "batchz=3", "--out", "m.py"], "did you mean 'batch'"),
    (["tiny.cfg"], "nothing to do"),
    (["detekt", "det.cfg"], "did you mean 'detect'"),  # neither a command nor a cfg
    (["nonsense"], "neither a command nor a cfg file"),
])
def test_bad_input_is_exit_2_with_a_diagnostic(work, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(work)
    code, _, err = call(capsys, argv)
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv", [
    ["valid", "tiny.cfg", "--weights", "tiny.weights", "--map-points", "101"],
    ["valid", "tiny.cfg", "--map-points", "0"],
    ["tiny.cfg", "--weights", "tiny.weights", "--valid", "--map-points", "11"],
    ["train", "tiny.cfg", "--map-points", "101", "--no-progress"],
    ["train", "tiny.cfg", "--darknet-build", "native", "--no-progress"],
])
def test_detection_options_on_a_classifier_are_refused(work, capsys, monkeypatch, tmp_path, argv):
    """`valid CFG --map-points 101` on a classifier printed its top-1/top-5 as if the option had
    done something; `train --map-points` and `--darknet-build` were ignored the same way."""
    monkeypatch.chdir(work)
    flag = next(a for a in argv if a in ("--map-points", "--darknet-build"))
    code, out, err = call(capsys, [*argv, "--out", str(tmp_path / "run")] if "train" in argv
                          else argv)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert f"{flag}: error[E100]: {flag} sets " in err
    assert "'tiny.cfg' is a classifier (its metrics are top-1/top-5 accuracy): nothing would " \
        "read it" in err and f"help: leave {flag} out (it is for detectors" in err
    assert "top-1" not in out and "load" not in err  # refused before the weights are read


@pytest.mark.parametrize("flags, flag, message, hint", [
    (["--map-points", "101"], "--map-points",  # no step at all: not "nothing to do"
     "--map-points is read by --train or --valid, neither of which is given",
     "add --train (or --valid), or drop --map-points"),
    (["--summary", "--thresh", "0.3"], "--thresh",
     "--thresh is read by --detect or --export --decode --nms, neither of which is given",
     "add --detect IMG_OR_DIR... (or --export --decode --nms), or drop --thresh"),
    (["--train", "--nms", ".5"], "--nms", "--nms is read by --detect or --export --decode", ""),
    (["--summary", "--names", "n.txt"], "--names", "--names is read by --detect, which", ""),
    (["--summary", "--letter-box"], "--letter-box", "--letter-box is read by --detect", ""),
    (["--train", "--save-labels"], "--save-labels", "--save-labels is read by --detect", ""),
    (["--summary", "--top", "3"], "--top", "--top is read by --predict, which is not given",
     "add --predict IMG_OR_DIR..., or drop --top"),
    (["--summary", "--top", "5"], "--top", "--top is read by --predict", ""),  # the default
    (["--train", "--calib-images", "8"], "--calib-images",
     "--calib-images is read by --export --int8, which is not given",
     "add --export MODEL.onnx|MODEL.pt2 --int8, or drop --calib-images"),
    (["--valid", "--freeze", "2"], "--freeze", "--freeze is read by --train, which", ""),
    (["--valid", "--max-memory", "8G"], "--max-memory", "--max-memory is read by --detect or "
     "--train", ""),
    (["--train", "--format", "json"], "--format", "--format is read by --summary or --valid", ""),
    (["--emit", "m.py", "--out", "d"], "--out", "--out is read by --detect or --train", ""),
    (["--summary", "--input", "x.npy"], "--input",
     "--input is read by --dump-outputs or --detections", ""),
    (["--summary", "--weights", "W"], "--weights",
     "--weights is read by every step but --summary and --plot-lr: here nothing reads it", ""),
])
def test_a_flag_no_planned_step_reads_is_an_error_at_the_flag(flags, flag, message, hint):
    """The flag form planned the steps it was asked for and silently dropped the options of
    steps it was not (`runner.py CFG --summary --thresh 0.3`, `--map-points 101` alone was
    "nothing to do"); a value equal to the default (`--top 5`) counts as given."""
    from cfgparse import CfgError

    with pytest.raises(CfgError) as err:
        planned(["det.cfg", *flags])
    d = err.value.first
    assert (d.code, d.path) == ("E100", flag) and d.message.startswith(message), d.format()
    assert d.hint.startswith(hint or "add ") and d.hint.endswith(f"drop {flag}")


#: the options above with a step that reads them
READ = [
    ["--valid", "--map-points", "101"], ["--train", "--map-points", "11"],
    ["--detect", "a.jpg", "--thresh", ".3", "--nms", ".5", "--names", "n.txt", "--letter-box",
     "--save-labels", "--out", "o"],
    ["--predict", "a.png", "--top", "3"], ["--valid", "--format", "json", "--data", "d"],
    ["--export", "m.onnx", "--int8", "--calibrate", "embedded", "--calib-images", "8"],
    ["--export", "m.onnx", "--decode", "--nms", "--thresh", ".3", "--input-size", "32x32"],
    ["--weights", "W", "--input", "x.npy", "--dump-outputs", "o.npz", "--all-layers"],
    ["--summary", "--plot-lr", "lr.png", "--format", "json", "--seed", "3"],
]


def test_unread_flags_through_the_command_line(work, capsys, monkeypatch):
    """Exit 2, every unread flag located, nothing run; with no step at all the flag says what
    it was for (not "nothing to do"), unless only model options were given. With a step that
    reads them they plan."""
    assert all(planned(["det.cfg", *flags]) for flags in READ)
    monkeypatch.chdir(work)
    code, out, err = call(capsys, ["det.cfg", "--summary", "--thresh", "0.3", "--top", "3"])
    assert code == 2 and out == "" and "Traceback" not in err
    lines = sorted(err.splitlines())
    assert lines[0].startswith("--thresh: error[E100]: --thresh is read by --detect")
    assert lines[1].startswith("--top: error[E100]: --top is read by --predict")
    assert lines[2].startswith("help: add --detect") and lines[3].startswith("help: add --predict")
    code, _, err = call(capsys, ["det.cfg", "--thresh", "0.3"])
    assert code == 2 and err.startswith("--thresh: error[E100]: --thresh is read by --detect")
    code, _, err = call(capsys, ["det.cfg", "--weights", "det.weights"])
    assert code == 2 and "nothing to do" in err
    with pytest.raises(SystemExit) as stop:  # the subcommand: an option it does not take
        darkcfg(["valid", "det.cfg", "--thresh", "0.3"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --thresh 0.3" in capsys.readouterr().err


def test_an_unknown_option_after_a_sub_subcommand_is_that_subcommands_error(capsys):
    """`darkcfg data check SRC --plott x` was the top parser's error ("darkcfg data: ...",
    `darkcfg data --help`), which knows no `--plot` to suggest."""
    with pytest.raises(SystemExit) as stop:
        darkcfg(["data", "check", "obj.data", "--plott", "x.png"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "<command line>: error[E100]: darkcfg data check: " \
        "unrecognized arguments: --plott x.png\nhelp: did you mean '--plot'?\n"


@pytest.mark.parametrize("argv, flag, reader", [
    (["weights", "tiny.cfg", "--weights", "tiny.weights", "--save-weights", "o.weights",
      "--input", "x.npy"], "--input", "--dump-outputs"),
    (["weights", "tiny.cfg", "--weights", "tiny.weights", "--save-weights", "o.weights",
      "--all-layers"], "--all-layers", "--dump-outputs"),
    (["detect", "det.cfg", "imgs", "--input", "xd.npy", "--out", "dets"], "--input",
     "--detections"),
    (["tiny.cfg", "--weights", "tiny.weights", "--save-weights", "o.weights", "--input",
      "x.npy"], "--input", "--dump-outputs or --detections"),
    (["det.cfg", "--detect", "imgs", "--input", "xd.npy", "--out", "dets"], "--input",
     "--dump-outputs or --detections"),
])
def test_an_option_its_step_reads_only_with_another_is_refused_without_it(
        work, capsys, monkeypatch, argv, flag, reader):
    """`weights --save-weights O --input X` wrote O and never read X; `--all-layers` without
    --dump-outputs and `detect IMGS --input X` without --detections went on the same way."""
    monkeypatch.chdir(work)
    code, _, err = call(capsys, argv)
    assert code == 2 and err.startswith(f"{flag}: error[E100]: {flag} is read by {reader}"), err
    assert f"or drop {flag}" in err
    assert not (work / "o.weights").exists() and not (work / "dets").exists()


def test_the_flag_forms_input_goes_to_the_step_that_reads_it():
    """--input serves --dump-outputs and --detections: each step gets it only with its flag."""
    steps = dict(planned(["det.cfg", "--weights", "W", "--save-weights", "o.weights",
                          "--input", "x.npy", "--detections", "d.json"]))
    assert steps["weights"].input is None and steps["detect"].input == "x.npy"
    steps = dict(planned(["det.cfg", "--weights", "W", "--detect", "imgs", "--input", "x.npy",
                          "--dump-outputs", "o.npz"]))
    assert steps["weights"].input == "x.npy" and steps["detect"].input is None


def test_a_flag_forms_default_valued_thresh_alone_with_export_is_the_exports():
    """`--export m.onnx --thresh 0.25` (the default's value) was dropped as if not typed; the
    export then refuses it without --decode --nms, as it does --thresh 0.3."""
    (step,) = planned(["det.cfg", "--export", "m.onnx", "--thresh", "0.25"])
    assert step[1].thresh == 0.25
    (step,) = planned(["det.cfg", "--export", "m.onnx"])
    assert step[1].thresh is None


def test_valid_without_a_validation_split_gives_a_hint_for_that_kind_of_data(work, capsys,
                                                                           monkeypatch):
    """The hint was "add a val/ folder or a valid= list" for every source, a .csv included,
    where neither exists; the message began with the data's description."""
    monkeypatch.chdir(work)
    root = Path(__file__).resolve().parents[1]
    code, _, err = call(capsys, ["valid", root / "cfg/linear_regression.cfg", "--data",
                                 root / "cfg/linear_regression.csv"])
    assert code == 2 and "linear_regression.csv' has no validation split (CSV " in err, err
    assert "val/" not in err and "valid=" not in err and "trains on every row" in err
    shutil.copytree(work / "imgs", work / "only-train/train/a")
    code, _, err = call(capsys, ["valid", "tiny.cfg", "--data", "only-train"])
    assert code == 2 and "'only-train' has no validation split" in err
    assert "help: add a val/<class>/ folder beside train/" in err


def test_valid_and_predict_without_weights_say_so(work, capsys, monkeypatch):
    """Like detect: untrained weights are named, not scored silently as if they were a model."""
    monkeypatch.chdir(work)
    for argv in (["valid", "tiny.cfg"], ["predict", "tiny.cfg", "imgs/b.png"]):
        code, _, err = call(capsys, argv)
        assert code == 0 and "warning: no --weights: the initial weights of seed 0" in err, err
    code, _, err = call(capsys, ["valid", "tiny.cfg", "--weights", "tiny.weights"])
    assert code == 0 and "no --weights" not in err


def test_predict_of_a_network_that_does_not_classify_images_says_what_to_use(work, capsys,
                                                                            monkeypatch):
    """The E300 had no help line; a detector is pointed at detect."""
    monkeypatch.chdir(work)
    code, _, err = call(capsys, ["predict", "det.cfg", "--weights", "det.weights", "imgs/b.png"])
    assert code == 2 and "error[E300]: --predict is for image classifiers" in err, err
    assert "this network is a detector" in err and "help: use detect" in err


def test_dump_outputs_of_a_flat_input_network_hints_a_shape_that_works(work, capsys,
                                                                       monkeypatch):
    """The hint said '(N, 0, 0, 0)' for a network of [net] inputs= (no width/height/channels)."""
    monkeypatch.chdir(work)
    from builders.weights import save_weights
    from darkcfg.model import ModelSpec

    cfg = Path(__file__).resolve().parents[1] / "cfg/linear_regression.cfg"
    save_weights(ModelSpec(str(cfg)).build(), work / "flat.weights")
    np.save(work / "flat.npy", np.ones((2, 1), np.float32))
    argv = ["weights", cfg, "--weights", "flat.weights", "--input", "flat.npy",
            "--dump-outputs", "flat.npz"]
    code, _, err = call(capsys, argv)
    assert code == 2 and "help: save a float32 array of shape (N, 1, 1, 1)" in err, err
    np.save(work / "flat.npy", np.ones((2, 1, 1, 1), np.float32))
    code, _, err = call(capsys, argv)
    assert code == 0 and (work / "flat.npz").exists(), err


def test_a_usage_error_of_argparse_is_exit_2(work, capsys):
    with pytest.raises(SystemExit) as stop:
        darkcfg(["export", str(work / "tiny.cfg")])  # --out is required
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--out" in err
    assert err.startswith("<command line>: error[E100]: darkcfg export: ") and "usage:" not in err


@pytest.mark.parametrize("argv, hint", [
    (["train", "X.cfg", "--wokers", "2"], "help: did you mean '--workers'?"),
    (["X.cfg", "--train", "--resme"], "help: did you mean '--resume'?"),  # the flag form
    (["check", "--formt", "json", "X.cfg"], "help: did you mean '--format'?"),
    (["data", "convrt", "a", "b"], "help: did you mean 'convert'?"),
    (["train", "X.cfg", "--flavor", "pjredie"], "help: did you mean 'pjreddie'?"),
    (["train", "X.cfg", "--workers", "x"], "help: --workers N: DataLoader processes"),
    (["anchors", "X.cfg", "--clases", "4"], "help: did you mean '--classes'?"),
    (["summary", "X.cfg", "--bogus"], "help: `darkcfg summary --help` lists the options"),
])
def test_usage_errors_are_one_e100_diagnostic_with_a_hint(work, capsys, argv, hint):
    """argparse's own errors (unknown option, bad value, bad choice) in darkcfg's format: one
    E100 line and a help: line (the nearest option or choice, or what the option takes), not
    argparse's usage dump; exit 2."""
    argv = [str(work / "tiny.cfg") if a == "X.cfg" else a for a in argv]
    try:
        code = darkcfg(argv)
    except SystemExit as stop:
        code = stop.code
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(lines) == 2 and lines[0].startswith("<command line>: error[E100]: darkcfg"), lines
    assert lines[1].startswith(hint), lines


# -- one data stack --------------------------------------------------------------------------------

def test_rand_scale_is_darknets_for_s_below_one():
    """src/utils.c rand_scale: x = rand_uniform(1, s) (bounds swapped for s < 1), x or 1/x. For
    s = .5 the half below 1 is uniform on [.5, 1] (mean .75), the half above is 1/x (mean
    2 ln 2); the old classifier copy drew x in [1, 2] instead (means ln 2 and 1.5)."""
    from darkcfg.data import rand_scale

    rng = np.random.default_rng(0)
    half = np.array([rand_scale(0.5, rng) for _ in range(20000)])
    assert half.min() >= 0.5 and half.max() <= 2.0
    assert abs((half < 1).mean() - 0.5) < 0.02
    assert half[half < 1].mean() == pytest.approx(0.75, abs=0.01)
    assert half[half >= 1].mean() == pytest.approx(2 * np.log(2), abs=0.01)
    rng = np.random.default_rng(0)
    double = np.array([rand_scale(2.0, rng) for _ in range(20000)])
    assert double[double >= 1].mean() == pytest.approx(1.5, abs=0.01)  # uniform on [1, 2]
    assert rand_scale(1.0, np.random.default_rng(0)) == 1.0


def test_rand_scale_has_one_home():
    from darkcfg.data import augment, draws
    from darkcfg.data.detection import augment as detection_augment
    from darkcfg.data.detection import scales

    assert augment.rand_scale is draws.rand_scale is detection_augment.rand_scale \
        is scales.rand_scale


def test_one_data_reader_and_resolver_for_classifier_and_detector_data(tmp_path, monkeypatch):
    """A list path resolves as Darknet opens it (the current directory first), then next to the
    .data file, for classifier data, detection data and detect's names= alike."""
    from darkcfg.data.datafile import read_data_file, resolve
    from darkcfg.data.detection.labels import open_detection_data
    from darkcfg.data.sources import darknet_data
    from darkcfg.detect.run import read_names

    here, cwd = tmp_path / "set", tmp_path / "cwd"
    (here / "img").mkdir(parents=True)
    cwd.mkdir()
    from PIL import Image

    for name in ("a_cat.png", "b_dog.png"):
        Image.new("RGB", (4, 4)).save(here / "img" / name)
    (here / "train.txt").write_text("img/a_cat.png\nimg/b_dog.png\n")
    (here / "labels.txt").write_text("cat\ndog\n")
    (here / "names.txt").write_text("near-cat\nnear-dog\n")
    (cwd / "names.txt").write_text("cwd-cat\ncwd-dog\n")
    data = here / "x.data"
    data.write_text("classes = 2\n# comment\ntrain=train.txt\nlabels=labels.txt\n"
                    "names=names.txt\nclasses=7\n")
    monkeypatch.chdir(cwd)
    assert read_data_file(data)["classes"] == "2"  # the first occurrence wins
    assert resolve("names.txt", here) == Path("names.txt")  # the current directory first
    assert resolve("train.txt", here) == here / "train.txt"
    assert darknet_data(data, 3).names == ["cwd-cat", "cwd-dog"]
    assert read_names(None, str(data))[0] == ["cwd-cat", "cwd-dog"]
    assert open_detection_data(data).names == ["cwd-cat", "cwd-dog"]
    (cwd / "names.txt").unlink()
    assert darknet_data(data, 3).names == ["near-cat", "near-dog"]
    assert read_names(None, str(data))[0] == ["near-cat", "near-dog"]


def test_one_net_reader_for_classifier_and_detection_settings():
    from builders import build
    from darkcfg.config import NOT_HONOURED, NetConfig
    from darkcfg.data.detection.augment import MOSAIC, DetectionSettings

    text = DETECTOR.replace("max_batches=10", "max_batches=10\nmosaic=1\nletter_box=1\nblur=2\n"
                            "gaussian_noise=5\nresize_step=16\nsaturation=1.5\nhue=.1\nflip=0")
    net = build(text, device="meta")
    cfg = NetConfig.from_block(net.net_block)
    settings = DetectionSettings.from_network(net)
    assert (cfg.mosaic, cfg.letter_box, cfg.blur, cfg.gaussian_noise, cfg.resize_step) == \
        (True, True, 2, 5, 16)
    assert (settings.mix, settings.letter_box, settings.blur, settings.gaussian_noise,
            settings.resize_step, settings.saturation, settings.hue, settings.flip) == \
        (MOSAIC, cfg.letter_box, cfg.blur, cfg.gaussian_noise, cfg.resize_step,
         cfg.saturation, cfg.hue, cfg.flip)
    assert not {"mosaic", "letter_box", "mixup", "cutmix", "blur"} & set(NOT_HONOURED)


@pytest.mark.parametrize("cfg", ["tiny", "det", "regress"])
def test_the_classes_rule_has_one_wording_for_every_task(tmp_path, tiny_classifier, cfg):
    from builders import build
    from cfgparse import CfgError
    from darkcfg.config import NetConfig
    from darkcfg.train.tasks import task_for

    text = {"tiny": tiny_classifier.text(), "det": DETECTOR,
            "regress": "[net]\ninputs=3\nbatch=2\nmax_batches=2\n\n[connected]\noutput=1\n"
                       "activation=linear\n\n[cost]\ntype=sse\n"}[cfg]
    net = build(text)
    task = task_for(net, NetConfig.from_block(net.net_block))
    with pytest.raises(CfgError) as err:
        task.open_data("somewhere.data", 0, classes=2)
    (d,) = err.value.diagnostics
    assert (d.code, d.message, d.path) == ("E100", "--classes is for the embedded dataset",
                                           "--classes")


def test_an_error_about_a_set_value_is_located_at_the_set(capsys):
    """A rule broken by a --set value was located at the file's line with the file's value under
    the caret (`layers=-4` for --set route.layers=-40), later with the value set shown as if the
    file held it: it is located at the --set, naming the layer it is about."""
    cfg = Path(__file__).resolve().parents[1] / "cfg" / "yolov3-tiny.cfg"
    assert darkcfg(["summary", str(cfg), "--set", "route.layers=-40"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("--set route.layers=-40: error[E301]: 'layers' refers to layer "
                               "-40 (absolute -23), but layer 17 [route] has 17 layers")
    assert darkcfg(["summary", str(cfg), "--set", "upsample.stride=0"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("--set upsample.stride=0: error[")
    assert f"(layer 19 [upsample], {cfg}:" in first


def test_predict_takes_folders_and_its_probabilities_sum_to_one(work, capsys, monkeypatch):
    """A folder stands for its images (sorted, recursive), as for detect; it was E901 'is a
    folder'. Every class shown (--top past the class count) sums to 100%."""
    monkeypatch.chdir(work)
    code, out, err = call(capsys, ["predict", "tiny.cfg", "--weights", "tiny.weights", "imgs",
                                   "imgs/b.png", "--top", "9"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["imgs/1.jpg", "imgs/b.png", "imgs/b.png"]
    for line in lines:
        shares = [float(part.split("%")[0]) for part in line.split(": ")[1].split(", ")]
        assert len(shares) == 4 and sum(shares) == pytest.approx(100, abs=0.03)
        assert shares == sorted(shares, reverse=True)
    assert lines[1] == lines[2]
    code, _, err = call(capsys, ["predict", "tiny.cfg", "--weights", "tiny.weights", "nope.png"])
    assert code == 2 and "'nope.png' does not exist" in err and "--detect" not in err


def test_valid_and_predict_of_a_runs_weights_read_that_runs_data(work, capsys, monkeypatch,
                                                                  tmp_path):
    """Without --data they scored a model of other classes on the embedded set and named its
    classes after the embedded shapes; now they take the data in the run's settings.yaml (as
    --resume does), and say so."""
    import shutil

    from PIL import Image

    monkeypatch.chdir(work)
    for split in ("train", "val"):
        for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            folder = tmp_path / "pets" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (12, 12), colour).save(folder / "0.png")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(work / "tiny.weights", run / "tiny_final.weights")
    (run / "settings.yaml").write_text(f"data: {tmp_path / 'pets'}\n")
    weights = str(run / "tiny_final.weights")
    code, out, err = call(capsys, ["predict", "tiny.cfg", "--weights", weights, "imgs/b.png"])
    assert code == 0 and f"data: {tmp_path / 'pets'}, the data of the run" in err, err
    assert set(n.split("% ")[1] for n in out.strip().split(": ")[1].split(", ")) >= {"cat", "dog"}
    code, out, err = call(capsys, ["valid", "tiny.cfg", "--weights", weights])
    ours = call(capsys, ["valid", "tiny.cfg", "--weights", weights, "--data",
                         str(tmp_path / "pets")])
    assert code == 0 and "the data of the run" in err and out == ours[1]
    assert "the data of the run" not in ours[2]  # --data given: as given


def test_valid_of_a_runs_weights_takes_that_runs_seed(work, capsys, monkeypatch, tmp_path):
    """An ImageFolder without val/ is split by the seed: valid of a run's weights with the
    default seed 0 scored a run of --seed 3 on another split, images it had trained on among
    them. Without --seed it takes the run's (its settings.yaml); a --seed of another value
    is taken, with a warning."""
    import shutil

    from PIL import Image

    monkeypatch.chdir(work)
    for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        folder = tmp_path / "pets" / name
        folder.mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (12, 12), (colour[0], i * 12, colour[2])).save(folder / f"{i}.png")
    shutil.copy(work / "tiny.weights", tmp_path / "tiny_final.weights")
    (tmp_path / "settings.yaml").write_text(f"data: {tmp_path / 'pets'}\nseed: 3\n")
    weights = str(tmp_path / "tiny_final.weights")
    code, out, err = call(capsys, ["valid", "tiny.cfg", "--weights", weights])
    assert code == 0 and "--seed 3: the seed of the run that wrote" in err, err
    code, _, err = call(capsys, ["valid", "tiny.cfg", "--weights", weights, "--seed", "0"])
    assert code == 0 and "warning: --seed 0: the run that wrote" in err
    code, same, err = call(capsys, ["valid", "tiny.cfg", "--weights", weights, "--seed", "3"])
    assert code == 0 and "seed of the run" not in err and "warning" not in err and same == out


def test_valid_of_a_run_on_some_embedded_classes_takes_that_class_count(work, capsys,
                                                                        monkeypatch, tmp_path):
    """`make train` trains 10 of VGG-16's 1000 embedded classes; its weights were then validated
    on all 1000 (chance scores) unless --classes was repeated."""
    import shutil

    monkeypatch.chdir(work)
    shutil.copy(work / "tiny.weights", tmp_path / "tiny_final.weights")
    (tmp_path / "settings.yaml").write_text("data: embedded\nclasses: 2\n")
    weights = str(tmp_path / "tiny_final.weights")
    code, out, err = call(capsys, ["valid", "tiny.cfg", "--weights", weights])
    assert code == 0 and "the embedded set's first 2 classes" in err, err
    assert out == call(capsys, ["valid", "tiny.cfg", "--weights", weights, "--classes", "2"])[1]
    assert out != call(capsys, ["valid", "tiny.cfg", "--weights", weights, "--classes", "4"])[1]


def test_valid_of_a_runs_weights_builds_the_network_that_run_trained(work, capsys, monkeypatch,
                                                                     tmp_path):
    """`make train` trains VGG-16 with --set width=32 ... convolutional.batch_normalize=1: its
    weights fit only that network, and `valid` of them was E902 unless every --set was
    repeated. Without --set, the run's own (its settings.yaml) build it; a --set chooses."""
    from builders.weights import save_weights
    from darkcfg.model import ModelSpec

    monkeypatch.chdir(work)
    sets = ["convolutional.batch_normalize=0", "connected.batch_normalize=1"]
    save_weights(ModelSpec(str(work / "tiny.cfg"), sets=tuple(sets), seed=3).build(),
                 tmp_path / "tiny_final.weights")
    (tmp_path / "settings.yaml").write_text(
        "cfg: elsewhere/tiny.cfg\noverrides:\n  convolutional.batch_normalize: '0'\n"
        "  connected.batch_normalize: '1'\n")
    weights = str(tmp_path / "tiny_final.weights")
    code, out, err = call(capsys, ["valid", "tiny.cfg", "--weights", weights])
    assert code == 0, err
    assert f"--set {' --set '.join(sets)}: the settings of the run that wrote" in err
    assert out == call(capsys, ["valid", "tiny.cfg", "--weights", weights,
                                *[a for s in sets for a in ("--set", s)]])[1]
    code, _, err = call(capsys, ["valid", "tiny.cfg", "--weights", weights, "--set", "hue=0"])
    assert code == 2 and "error[E902]" in err  # a --set of its own: the cfg as it says


def test_predict_lines_escape_line_breaks_in_file_names(work, capsys, monkeypatch, tmp_path):
    """`path: p% name, ...` is one line per image: a name with a line break or a tab is written
    with escapes (`\\n`, `\\t`), as diagnostics and detect write it."""
    import shutil

    monkeypatch.chdir(work)
    odd = tmp_path / "a\nb\tc.png"
    shutil.copy(work / "imgs" / "b.png", odd)
    code, out, err = call(capsys, ["predict", "tiny.cfg", "--weights", "tiny.weights", str(odd),
                                   "--top", "2"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path}/a\\nb\\tc.png: "), lines


def test_a_name_stdout_cannot_encode_is_escaped_not_a_traceback(tmp_path):
    """`darkcfg detect été.jpg` with an ASCII stdout (a redirect on a cp1252 Windows console,
    PYTHONIOENCODING=ascii) printed half its lines, then a UnicodeEncodeError traceback, exit 1:
    every command line lets stdout escape what it cannot encode (errors.tolerant_output)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(DETECTOR)
    Image.new("RGB", (64, 48), (90, 20, 20)).save(tmp_path / "été.jpg")
    env = {**os.environ, "PYTHONIOENCODING": "ascii",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "darkcfg", "detect", str(cfg), "été.jpg",
                           "--out", "out", "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr
    assert done.stdout.startswith(b"\\xe9t\\xe9.jpg: ")


def test_predict_takes_top_from_the_data_file(work, capsys, monkeypatch, tmp_path):
    """A classifier .data's top= (Darknet's classifier predict default) was ignored: 5 classes
    shown whatever it said."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in "abcd":
        Image.new("RGB", (12, 12), (9, 9, 9)).save(f"{name}.png")
    Path("labels.txt").write_text("a\nb\nc\nd\n")
    Path("train.list").write_text("a.png\nb.png\nc.png\nd.png\n")
    Path("c.data").write_text("classes=4\ntrain=train.list\nlabels=labels.txt\ntop=2\n")
    model = [work / "tiny.cfg", "--weights", work / "tiny.weights", "--data", "c.data"]
    for argv, shown in (([*model[:1], "--predict", "a.png", *model[1:]], 2),
                        (["predict", *model, "a.png"], 2),
                        (["predict", *model, "a.png", "--top", "3"], 3)):
        code, out, _ = call(capsys, argv)
        assert code == 0 and out.count("%") == shown, (argv, out)
    Path("c.data").write_text("classes=4\ntrain=train.list\nlabels=labels.txt\ntop=0\n")
    code, _, err = call(capsys, ["predict", *model, "a.png"])
    assert code == 2 and "c.data:4:1: error[E901]: top=0" in err


def test_train_says_outputs_no_class_of_the_data_reaches(work, capsys, monkeypatch, tmp_path):
    """cfg/vgg16.cfg (1000 outputs) on a 2-class set trained without a word, where Darknet needs
    classes= to equal the outputs: 998 outputs never a target."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in ("cat", "dog"):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.new("RGB", (12, 12), (9, 9, 9)).save(tmp_path / "set" / name / "a.png")
    code, _, err = call(capsys, ["train", work / "tiny.cfg", "--data", "set", "--set",
                                 "max_batches=1", "--out", "run", "--no-progress"])
    assert code == 0, err
    assert "warning: the data has 2 classes but the network outputs 4" in err


def test_train_then_valid_refuses_data_without_validation_first(work, capsys, monkeypatch,
                                                                 tmp_path):
    """`--train --valid` on a .data without valid=: the whole training ran, then valid said
    "no validation split"."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in "ab":
        Image.new("RGB", (12, 12), (9, 9, 9)).save(f"{name}.png")
    Path("labels.txt").write_text("a\nb\n")
    Path("train.list").write_text("a.png\nb.png\n")
    Path("c.data").write_text("classes=2\ntrain=train.list\nlabels=labels.txt\n")
    code, out, err = call(capsys, [work / "tiny.cfg", "--train", "--valid", "--data", "c.data",
                                   "--out", "run", "--no-progress", "--set", "max_batches=1"])
    assert code == 2 and "has no validation split" in err
    assert "finished" not in out + err and not Path("run").exists()


def test_predict_and_valid_of_a_data_file_read_only_the_lists_they_use(work, capsys,
                                                                       monkeypatch, tmp_path):
    """predict and valid of a classifier .data checked every training image's header (and
    stopped at a bad one) to get the class names: minutes on ImageNet's list. Now predict reads
    the labels (and top=), valid the valid= list; what they read keeps its located errors."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in ("cat", "dog", "owl", "elk"):
        Image.new("RGB", (12, 12), (9, 9, 9)).save(f"{name}.png")
    Path("cat_bad.png").write_text("not an image")  # in the train list only
    Path("labels.txt").write_text("cat\ndog\nowl\nelk\n")
    Path("train.list").write_text("cat.png\ncat_bad.png\ndog_missing.png\n")
    Path("valid.list").write_text("cat.png\ndog.png\nowl.png\nelk.png\n")
    Path("c.data").write_text("classes=4\ntrain=train.list\nvalid=valid.list\n"
                              "labels=labels.txt\ntop=2\n")
    model = [work / "tiny.cfg", "--weights", work / "tiny.weights", "--data", "c.data"]
    code, out, err = call(capsys, ["predict", *model, "cat.png"])
    assert code == 0 and out.count("%") == 2, err
    code, out, err = call(capsys, ["valid", *model])
    assert code == 0 and "val_top1" in out, err
    code, _, err = call(capsys, ["train", *model, "--out", "run", "--no-progress"])
    assert code == 2 and "train.list:3:1: error[E901]: image 'dog_missing.png'" in err
    Path("valid.list").write_text("cat.png\ncat_bad.png\n")  # what valid reads is still checked
    code, _, err = call(capsys, ["valid", *model])
    assert code == 2 and "error[E901]: 1 of the 2 images of 'c.data' cannot be read" in err
    code, out, err = call(capsys, ["predict", *model, "cat.png"])
    assert code == 0, err


def test_predict_and_valid_of_an_image_folder_check_only_the_headers_they_use(
        work, capsys, monkeypatch, tmp_path):
    """An ImageFolder's bad training image stopped predict and valid too (E901)."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / "set" / split / name).mkdir(parents=True)
            Image.new("RGB", (12, 12), (9, 9, 9)).save(f"set/{split}/{name}/1.png")
    Path("set/train/cat/bad.png").write_text("not an image")
    model = [work / "tiny.cfg", "--weights", work / "tiny.weights", "--data", "set"]
    code, out, err = call(capsys, ["predict", *model, "set/val/cat/1.png"])
    assert code == 0 and "cat" in out, err
    code, out, err = call(capsys, ["valid", *model])
    assert code == 0 and "val_top1" in out, err
    Path("set/val/dog/bad.png").write_text("not an image")
    code, _, err = call(capsys, ["valid", *model])
    assert code == 2 and "bad.png" in err and "error[E901]" in err


def test_valid_reports_top_k_of_the_data_files_top(work, capsys, monkeypatch, tmp_path):
    """Darknet's classifier valid prints top-1 and top-k with k = the .data's top=; darkcfg's
    valid ignored top= (top-1/top-5 only). top=1 and top=5 add nothing."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in ("cat", "dog", "owl", "elk"):
        Image.new("RGB", (12, 12), (9, 9, 9)).save(f"{name}.png")
    Path("labels.txt").write_text("cat\ndog\nowl\nelk\n")
    Path("valid.list").write_text("cat.png\ndog.png\nowl.png\nelk.png\n")
    model = [work / "tiny.cfg", "--weights", work / "tiny.weights", "--data", "c.data"]
    for top in (3, 2, 5, 1, None):
        Path("c.data").write_text("classes=4\nvalid=valid.list\nlabels=labels.txt\n" +
                                  (f"top={top}\n" if top else ""))
        code, out, err = call(capsys, ["valid", *model])
        assert code == 0, err
        assert ("val_top1" in out and "val_top5" in out and
                ("  val_top3 " in out) == (top == 3) and ("val_top2" in out) == (top == 2)), out
        code, out, err = call(capsys, ["valid", *model, "--format", "json"])
        found = json.loads(out)
        assert set(found) == {"val_loss", "val_top1", "val_top5",
                              *([f"val_top{top}"] if top in (2, 3) else [])}, found
        if top in (2, 3):
            assert found["val_top1"] <= found[f"val_top{top}"] <= found["val_top5"]


def test_classify_task_counts_top_k_hits(monkeypatch):
    """top-k counts an image whose class is among its k highest scores (ties: lower class)."""
    import torch

    from darkcfg.train.tasks import ClassifyTask, Task

    monkeypatch.setattr(Task, "batch_sums", lambda *a: torch.zeros(1, dtype=torch.float64))
    task = ClassifyTask(6, (3, 8, 8), heads=(0,))
    task.use_top(2)
    assert task.summed == ("val_loss", "val_top1", "val_top5", "val_top2")
    scores = torch.tensor([[0.9, 0.5, 0.1, 0, 0, 0],   # class 1: 2nd
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # class 2: 4th
                           [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]])  # class 1: tied, 2nd
    y = torch.tensor([1, 2, 1])
    got = task.batch_sums(None, scores, y, {0: scores}).tolist()
    assert got == [0.0, 0.0, 3.0, 2.0]
    task.use_top(5)
    assert task.summed == ClassifyTask.sums
