"""bench/detect_train.py: which schedule a run follows. A `--data` run trains as
`darknet detector train X.data CFG` does, with the cfg's own [net] schedule; the flags given
apply over it; `--iterations N` other than the cfg's max_batches is the bench's schedule."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cfgparse import parse

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load("detect_train")


def written_for_run(tmp_path: Path, iterations: int = 900, size: int = 160,
                    batch: int = 16) -> Path:
    """yolov3-tiny with the [net] schedule of issue 22's run written in it."""
    text = (ROOT / "cfg" / "yolov3-tiny.cfg").read_text()
    net = {"batch": batch, "subdivisions": 2, "width": size, "height": size,
           "learning_rate": 0.002, "burn_in": 100, "max_batches": iterations,
           "steps": f"{int(iterations * .8)},{int(iterations * .9)}"}
    lines = []
    for line in text.split("\n"):
        key = line.partition("=")[0].strip()
        lines.append(f"{key}={net[key]}" if key in net and "=" in line else line)
    path = tmp_path / "run.cfg"
    path.write_text("\n".join(lines))
    return path


def planned(bench, cfg: Path, *argv: str):
    args = bench.parser().parse_args(["--cfg", str(cfg), *argv])
    return bench.plan(next(iter(parse(str(cfg)))), args)


def test_a_data_run_keeps_the_cfgs_own_schedule(bench, tmp_path):
    cfg = written_for_run(tmp_path)
    sets, iterations, where = planned(bench, cfg, "--data", "x.data", "--random", "0")
    assert iterations == 900
    assert sets == ["yolo.random=0"]  # nothing of [net] replaced
    assert "the cfg's own" in where and "burn_in=100" in where and "steps=720,810" in where
    # the cfg's own max_batches given as --iterations: still the cfg's schedule
    assert planned(bench, cfg, "--data", "x.data", "--iterations", "900")[:2] == ([], 900)


def test_flags_given_apply_over_the_cfgs_schedule(bench, tmp_path):
    cfg = written_for_run(tmp_path)
    sets, iterations, _ = planned(bench, cfg, "--data", "x.data", "--batch", "8", "--lr",
                                  "0.001", "--burn-in", "50", "--size", "128")
    assert iterations == 900
    assert sets == ["width=128", "height=128", "batch=8", "learning_rate=0.001", "burn_in=50"]


def test_other_iterations_are_the_benchs_schedule(bench, tmp_path):
    cfg = written_for_run(tmp_path)
    sets, iterations, where = planned(bench, cfg, "--data", "x.data", "--iterations", "500",
                                      "--burn-in", "100")
    assert iterations == 500 and "the bench's" in where
    assert sets == ["width=160", "height=160", "batch=16", "subdivisions=1",
                    "learning_rate=0.001", "max_batches=500", "burn_in=100", "policy=steps",
                    "steps=400,450", "scales=.1,.1"]
    # the embedded set without --iterations: the time budget decides (after a probe)
    sets, iterations, where = planned(bench, ROOT / "cfg" / "yolov3-tiny.cfg")
    assert iterations is None and "budget" in where
    assert "max_batches" not in " ".join(sets)


def test_a_net_set_is_read_before_the_schedule_is_chosen(bench, tmp_path, capsys):
    cfg = written_for_run(tmp_path, iterations=0)
    code = bench.main(["--cfg", str(cfg), "--data", "x.data", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "max_batches is 0" in err and "--iterations N" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_data_run_end_to_end(bench, tmp_path, capsys):
    data = load("darknet_set").write_set(tmp_path / "set", size=64, classes=3, train=6, valid=3,
                                         seed=1, png=False)
    cfg = written_for_run(tmp_path, iterations=4, size=64, batch=4)
    code = bench.main(["--cfg", str(cfg), "--data", str(data), "--random", "0",
                       "--out", str(tmp_path / "runs"), "--no-progress", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "schedule: the cfg's own (max_batches=4, burn_in=100" in out
    row = json.loads(out.strip().split("\n")[-1])[0]
    assert row["iterations"] == 4 and row["batch"] == 4 and row["size"] == 64
    assert row["stopped"] == "done" and len(row["map50_curve"]) == 4
    assert 0 <= row["map50"] <= 1 and row["wall_images_per_s"] > 0
