"""torchrun: two CPU processes on gloo train one model; DDP keeps every rank's parameters equal
and only rank 0 writes the run's files."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]


def run_with_stacks_on_hang(argv: list[str], env: dict, timeout: float = 300):
    """subprocess.run, but a run past `timeout` fails with every rank's Python stacks (SIGABRT
    to the process group: faulthandler prints them) instead of a bare TimeoutExpired: this
    test hung twice in a day under load (2026-12-05) and never when looped alone."""
    import signal

    proc = subprocess.Popen(argv, cwd=ROOT, env={**env, "PYTHONFAULTHANDLER": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun hung past {timeout} s; the ranks' stacks:\n{stderr[-12000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch built without gloo")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_two_processes_on_gloo_keep_equal_parameters(tmp_path, tiny_classifier, amp):
    # amp: bfloat16 autocast + channels-last under DDP, the CUDA run's combination, on the CPU
    cfg = tiny_classifier.write(tmp_path / "ddp.cfg", max_batches=6, burn_in=2, policy=None,
                                steps=None, scales=None, second_conv=False, dropout=0.2,
                                cost=False)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = run_with_stacks_on_hang(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "runner.py"), str(cfg), "--train", "--device", "cpu", "--out", str(out),
         "--no-progress", "--checkpoint-every", "3", "--valid-every", "6"]
        + (["--amp"] if amp else []), env)
    assert result.returncode == 0, result.stderr[-3000:]
    fingerprints = (out / "ranks.txt").read_text().split()
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert "parameters identical on all 2 ranks" in result.stderr
    # rank 0 alone logs: one banner, one row per iteration; batch 16 is global (8 per process)
    assert result.stderr.count("no --data: training on the embedded dataset") == 1
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 7))
    assert rows[-1]["val_top1"] != ""
    import yaml

    settings = yaml.safe_load((out / "settings.yaml").read_text())
    assert settings["world_size"] == 2 and settings["per_process_batch"] == 8
    assert settings["amp"] == ("torch.bfloat16" if amp else "None")
    from builders.weights import read_header

    header = read_header((out / "ddp_final.weights").read_bytes()[:20], "ddp_final.weights")
    assert header.seen == 6 * 16


def test_a_worker_ends_with_its_code_after_exit_handlers_and_flushed_streams(tmp_path):
    # end_process skips the interpreter's teardown (gloo threads DDP leaves running), so it
    # must itself run what a normal exit would have: atexit handlers, buffered output
    script = tmp_path / "worker.py"
    script.write_text(
        "import atexit, sys\n"
        "from darkcfg.train import distributed\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "sys.stdout.write('unflushed line')\n"
        "distributed.end_process(3)\n"
        "print('never reached')\n")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 3
    assert result.stdout == "unflushed line"
    assert "handler ran" in result.stderr


def test_only_a_process_that_joined_a_group_ends_early():
    # main() in an ordinary process returns its code (library callers and tests go on)
    from darkcfg.cli import main
    from darkcfg.train import distributed

    assert not distributed.joined()
    assert main(["--version"]) == 0
