"""torchrun: two CPU processes on gloo train one model; DDP keeps every rank's parameters equal
and only rank 0 writes the run's files."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from darkcfg.train.launch import child_processes

ROOT = Path(__file__).resolve().parents[1]


def run_with_stacks_on_hang(argv: list[str], env: dict, timeout: float = 300):
    """subprocess.run, but a run past `timeout` fails with every rank's Python stacks instead
    of a bare TimeoutExpired: this test hung twice in a day under load (2026-12-05) and never
    when looped alone. torchrun starts each rank in a session of its own, so the ranks are
    found as its children and sent SIGABRT (faulthandler prints their stacks to the stderr
    they share with torchrun), then everything is killed."""
    import signal
    import time

    proc = subprocess.Popen(argv, cwd=ROOT, env={**env, "PYTHONFAULTHANDLER": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ranks = child_processes(proc.pid)
        for pid in ranks:
            os.kill(pid, signal.SIGABRT)
        time.sleep(5)
        for pid in [*ranks, -proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"torchrun hung past {timeout} s; ranks {ranks}' stacks:\n"
                    f"{stderr[-12000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def clean_environment(tmp_path: Path) -> dict:
    """No torchrun variables, and a temp dir of the test's own (torch's launcher would leave a
    `torchelastic_*` folder there per run)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_SIGNALS_TO_HANDLE"):
        env.pop(key, None)
    return env


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch built without gloo")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_two_processes_on_gloo_keep_equal_parameters(tmp_path, tiny_classifier, amp):
    # amp: bfloat16 autocast + channels-last under DDP, the CUDA run's combination, on the CPU
    cfg = tiny_classifier.write(tmp_path / "ddp.cfg", max_batches=6, burn_in=2, policy=None,
                                steps=None, scales=None, second_conv=False, dropout=0.2,
                                cost=False)
    out = tmp_path / "run"
    env = clean_environment(tmp_path)
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
    # end_process (every command's process ends through it) skips the interpreter's teardown
    # (gloo threads DDP leaves running), so it must itself run what a normal exit would have:
    # threads still running, atexit handlers, buffered output
    script = tmp_path / "worker.py"
    script.write_text(
        "import atexit, sys, threading, time\n"
        "from darkcfg import stopping\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('thread ran', file=sys.stderr))"
        ").start()\n"
        "sys.stdout.write('unflushed line')\n"
        "stopping.end_process(3)\n"
        "print('never reached')\n")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 3
    assert result.stdout == "unflushed line"
    assert "handler ran" in result.stderr
    assert "thread ran" in result.stderr  # a thread still running is joined, as Python does


def test_only_a_process_that_joined_a_group_ends_early():
    # main() in an ordinary process returns its code (library callers and tests go on)
    from darkcfg.cli import main
    from darkcfg.train import distributed

    assert not distributed.joined()
    assert main(["--version"]) == 0


def test_loader_processes_start_from_a_forkserver_in_a_process_group(tmp_path, tiny_classifier):
    """In a rank (a process that joined a group: gloo's and DDP's threads run), loader
    processes are not forked from it: CPython before 3.11.10 can leave such a fork stuck in
    os.fork() (gh-112275; seen under torchrun: a validation loader hung the run). Classifier
    and detector training still run with forkserver processes (their datasets pickle)."""
    from test_detection_train import CFG

    classifier = tiny_classifier.write(tmp_path / "c.cfg", max_batches=2, second_conv=False)
    detector = tmp_path / "d.cfg"
    detector.write_text(CFG.format(max_batches=2))
    script = tmp_path / "rank.py"
    script.write_text(
        "import sys, torch.distributed as dist\n"
        "from torch.utils.data import DataLoader\n"
        "from darkcfg.cli import main\n"
        "if __name__ == '__main__':  # loader processes import this file again\n"
        f"    dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}',\n"
        "                            rank=0, world_size=1)\n"
        "    starts, init = [], DataLoader.__init__\n"
        "    def recording(self, *args, **kwargs):\n"
        "        init(self, *args, **kwargs)\n"
        "        if self.num_workers:\n"
        "            starts.append(self.multiprocessing_context.get_start_method())\n"
        "    DataLoader.__init__ = recording\n"
        "    for cfg, out in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):\n"
        "        code = main(['train', cfg, '--out', out, '--no-progress', '--workers', '1',\n"
        "                     '--device', 'cpu', '--valid-every', '2'])\n"
        "        assert code == 0, code\n"
        "    print(' '.join(starts))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, str(script), str(classifier), str(tmp_path / "c"),
                           str(detector), str(tmp_path / "d")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    starts = done.stdout.split()
    assert len(starts) >= 3 and set(starts) == {"forkserver"}, starts
    assert (tmp_path / "c" / "c_final.weights").exists()
    assert (tmp_path / "d" / "d_final.weights").exists()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch built without gloo")
def test_under_torchrun_rank_0_says_a_warning_and_an_error_every_rank_has(tmp_path,
                                                                          tiny_classifier):
    """Both ranks read the data: its warning (a class folder without images) came twice, one
    per rank; now rank 0 says it. So the error that follows (no validation split for --valid):
    every rank stops on it, and it was said once a rank; rank 0 says it, the others find it
    the same (darkcfg.train.distributed.error_said_by_rank_0) and exit non-zero in silence."""
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
    for k in range(3):  # 3 images: a 90/10 split leaves no validation image
        Image.new("RGB", (12, 12), (40 * k, 0, 0)).save(tmp_path / "set" / "a" / f"{k}.png")
    cfg = tiny_classifier.write(tmp_path / "c.cfg", max_batches=2, second_conv=False)
    env = clean_environment(tmp_path)
    result = run_with_stacks_on_hang(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "runner.py"), str(cfg), "--train", "--valid", "--data", str(tmp_path / "set"),
         "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress", "--workers", "0"],
        env, timeout=180)
    assert result.returncode != 0
    assert result.stderr.count("warning: 1 class(es) of") == 1, result.stderr[-3000:]
    assert result.stderr.count("error[E901]: ") == 1, result.stderr[-3000:]
    assert result.stderr.count("has no validation split") == 1


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch built without gloo")
def test_train_processes_runs_the_ranks_itself_without_torchruns_traceback(tmp_path,
                                                                           tiny_classifier):
    """`darkcfg train CFG --processes 2` is torchrun's two-rank run in one command; a rank's
    error is its own diagnostic and exit code, without torchrun's ChildFailedError traceback
    and log lines after it, and no `torchelastic_*` folder is left in the temp dir."""
    cfg = tiny_classifier.write(tmp_path / "ddp.cfg", max_batches=4, second_conv=False)
    env = clean_environment(tmp_path)
    done = run_with_stacks_on_hang(
        [sys.executable, "-m", "darkcfg", "train", str(cfg), "--processes", "2", "--device",
         "cpu", "--out", str(tmp_path / "run"), "--no-progress", "--valid-every", "4"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    fingerprints = (tmp_path / "run" / "ranks.txt").read_text().split()
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert done.stderr.count("no --data: training on the embedded dataset") == 1
    assert "finished 4 iterations" in done.stderr

    failed = run_with_stacks_on_hang(  # said before any rank starts: no such --data
        [sys.executable, "-m", "darkcfg", "train", str(cfg), "--processes", "2", "--device",
         "cpu", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run2")], env)
    assert failed.returncode == 2
    assert "error[E901]" in failed.stderr
    for noise in ("Traceback", "ChildFailedError", "torch/distributed", "exitcode"):
        assert noise not in failed.stderr, failed.stderr[-3000:]
    assert list((tmp_path / "tmp").glob("torchelastic_*")) == []  # (torch caches may be there)

    usage = subprocess.run([sys.executable, "-m", "darkcfg", "train", str(cfg), "--processes",
                            "0"], env=env, capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "error[E100]: --processes 0: must be 1 or more" in \
        usage.stderr


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch built without gloo")
@pytest.mark.parametrize("stop", ["SIGINT"])  # (SIGTERM and SIGHUP take the same handler)
def test_a_stop_signal_to_train_processes_reaches_every_rank(tmp_path, tiny_classifier, stop):
    """torch starts the ranks in sessions of their own, so Ctrl-C reaches the launching
    process alone: it passes the signal on, the ranks checkpoint, and the command exits 0 as
    a single process's training does (torch's own handling raised in the launcher: 130)."""
    import signal
    import time

    cfg = tiny_classifier.write(tmp_path / "ddp.cfg", max_batches=100000, second_conv=False)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "darkcfg", "train", str(cfg), "--processes", "2", "--device",
         "cpu", "--out", str(out), "--no-progress", "--valid-every", "0"],
        env=clean_environment(tmp_path), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "metrics.csv").exists() or \
            len((out / "metrics.csv").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(getattr(signal, stop))
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert f"stopped by {stop} at iteration" in stderr
    assert (out / "checkpoint.pt").exists()
    assert "Traceback" not in stderr


def test_train_processes_takes_no_more_ranks_than_gpus(monkeypatch):
    """One GPU to a rank: a third rank on two GPUs would share one (NCCL refuses it deep in
    the run); said before any rank starts. --device cpu takes any number."""
    import torch

    from cfgparse import CfgError
    from darkcfg.cli.train import checked_processes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert checked_processes(2) == 2 and checked_processes(3, "cpu") == 3
    with pytest.raises(CfgError, match=r"--processes 3: this machine has 2 GPU\(s\)"):
        checked_processes(3, "cuda")
    with pytest.raises(CfgError, match="must be 1 or more"):
        checked_processes(0)
    monkeypatch.setenv("WORLD_SIZE", "4")  # a rank of torchrun's (or of --processes 4)
    assert checked_processes(4) == 1 and checked_processes(1) == 1
    with pytest.raises(CfgError, match="but torchrun started 4"):
        checked_processes(2)


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch built without gloo")
def test_a_rank_killed_under_train_processes_is_e501(tmp_path, tiny_classifier):
    """A rank the out-of-memory killer ends says nothing itself: the launcher says which rank
    and how (E501, exit 1), and the others are stopped, saying nothing either: torch's agent
    SIGTERMs their process groups, and the surviving rank said "interrupted" (its failed gloo
    collective's unwinding turned into Ctrl-C's KeyboardInterrupt) or "a data loader process
    died" (the SIGTERM killed its forkserver, and its loader processes with it), and the killed
    rank's loader process a resource sharer's traceback. Its loader processes' semaphores are
    freed without the resource tracker's warning (Python source lines after the E501). The
    last checkpoint on disk still loads."""
    import signal
    import time

    from darkcfg.train.checkpoint import load_checkpoint

    cfg = tiny_classifier.write(tmp_path / "ddp.cfg", max_batches=100000, second_conv=False)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "darkcfg", "train", str(cfg), "--processes", "2", "--device",
         "cpu", "--out", str(out), "--no-progress", "--valid-every", "0", "--checkpoint-every",
         "2", "--workers", "2"], env=clean_environment(tmp_path), stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists():  # (the loaders are passing batches over)
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    ranks = child_processes(proc.pid)
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    said = [line for line in stderr.splitlines() if line.strip() and not line.startswith(
        ("=====", "  no --data: training on the embedded dataset", "  embedded shapes:"))]
    assert len(said) == 2, stderr[-3000:]  # the E501 and its help, nothing else
    assert re.match(r"<rank (\d)>: error\[E501\]: rank \1 of 2 was killed by SIGKILL", said[0])
    assert said[1].startswith("help: ") and said[1].endswith("then --resume")
    assert child_processes(proc.pid) == []
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["iteration"] >= 2 and state["iteration"] % 2 == 0


@pytest.mark.parametrize("extra, said", [
    (["--data", "nope.data"], "error[E901]: 'nope.data' does not exist"),
    (["--set", "bogus_key=3"], "error[E205]: [net] has no key 'bogus_key'"),
    (["--set", "max_batches=0"], "error[E305]: max_batches is 0"),
    (["--map-points", "11"], "error[E100]: --map-points sets"),
])
def test_train_processes_says_what_every_rank_would_refuse_once_before_they_start(
        tmp_path, monkeypatch, capsys, tiny_classifier, extra, said):
    """A bad --data, --set or task option was each rank's error, said once a rank (N times
    for --processes N) after N processes had started."""
    import darkcfg.train.launch
    from darkcfg.cli import main

    cfg = tiny_classifier.write(tmp_path / "ddp.cfg", max_batches=4, second_conv=False)
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(darkcfg.train.launch, "launch", lambda *a: started.append(a) or 0)
    assert main(["train", str(cfg), "--processes", "2", "--device", "cpu", *extra]) == 2
    assert started == []
    assert capsys.readouterr().err.count(said) == 1


def gloo_peer_error() -> RuntimeError:
    """What a gloo collective raises when the other rank's process is gone (torch 2.14)."""
    return RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                        "[127.0.0.1]:37030: Connection reset by peer. This is typically caused "
                        "by a remote worker hanging or bugs in the application.")


@pytest.fixture
def joined_rank(monkeypatch):
    """This process as a rank that joined a group, with an in-memory store for the job's."""
    from darkcfg.train import distributed

    store = dist.HashStore()
    monkeypatch.setattr(distributed, "_joined", True)
    monkeypatch.setattr(distributed, "_store", store)
    monkeypatch.setenv("WORLD_SIZE", "2")
    return store


def test_a_rank_whose_collective_lost_its_peer_stops_without_a_word(joined_rank, monkeypatch,
                                                                     capsys):
    """torch's agent SIGTERMs the other ranks once one has ended; a rank unwinding from the
    collective that failed with it said "interrupted" (the SIGTERM as Ctrl-C's
    KeyboardInterrupt), or gloo's traceback. Its collective's error says it all: another rank
    ended, and that rank, the launcher or torchrun says why."""
    import signal

    from darkcfg import cli
    from darkcfg.cli.common import guarded
    from darkcfg.train.distributed import peer_lost

    monkeypatch.setenv("RANK", "0")
    lost = gloo_peer_error()
    try:
        try:
            raise lost
        finally:  # (the loader's workers stopped while the error unwinds)
            raise GeneratorExit
    except GeneratorExit as exc:
        assert peer_lost(exc)
        try:
            cli._interrupt(signal.SIGTERM, None)
        except KeyboardInterrupt:
            pytest.fail("the agent's SIGTERM was taken for Ctrl-C")
    assert not peer_lost(RuntimeError("[gloo] Timed out waiting 1800000ms for recv"))
    with pytest.raises(KeyboardInterrupt):  # a stop signal anywhere else is the user's
        cli._interrupt(signal.SIGTERM, None)

    def fails():
        raise lost

    assert guarded(fails) == 1
    assert capsys.readouterr().err == ""


def test_an_error_every_rank_hits_is_said_by_rank_0_alone(joined_rank, monkeypatch, capsys):
    """A data set that does not read was each rank's E901, N times for N ranks: rank 0 says it,
    the others find rank 0's the same and stay silent (exit 2 all the same); an error that
    is not rank 0's is said by its rank."""
    from cfgparse import CfgError, Diagnostic
    from darkcfg.cli.common import guarded
    from darkcfg.train import distributed

    def fails(message):
        def run():
            raise CfgError(Diagnostic("E901", message, "train.txt", 1, 1))
        return run

    monkeypatch.setattr(distributed, "SHARED_ERROR_WAIT_S", 0.3)
    monkeypatch.setenv("RANK", "1")
    assert guarded(fails("image 'a.png' does not exist")) == 2  # rank 0 has said nothing
    assert capsys.readouterr().err.count("error[E901]: image 'a.png' does not exist") == 1

    monkeypatch.setenv("RANK", "0")
    assert guarded(fails("image 'b.png' does not exist")) == 2
    assert capsys.readouterr().err.count("error[E901]: image 'b.png' does not exist") == 1
    monkeypatch.setenv("RANK", "1")
    assert guarded(fails("image 'b.png' does not exist")) == 2
    assert capsys.readouterr().err == ""
    assert guarded(fails("image 'c.png' does not exist")) == 2  # this rank's own
    assert capsys.readouterr().err.count("error[E901]: image 'c.png' does not exist") == 1


def test_a_rank_waiting_for_rank_0s_error_stops_waiting_at_a_stop_signal(joined_rank,
                                                                         monkeypatch):
    """torch's agent SIGTERMs the other ranks once rank 0 has failed: the wait ends there
    (rank 0 posted its error before it ended), and the signal is not "interrupted"."""
    import signal
    import threading
    import time

    from darkcfg import cli
    from darkcfg.train.distributed import error_said_by_rank_0

    monkeypatch.setenv("RANK", "1")
    signal.signal(signal.SIGTERM, cli._interrupt)
    def agent():  # once the wait has taken the signal over
        while signal.getsignal(signal.SIGTERM) is cli._interrupt:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=agent, daemon=True).start()
    started = time.monotonic()
    assert not error_said_by_rank_0("E", wait_s=60)
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGTERM) is cli._interrupt


def test_a_ranks_forkserver_outlives_a_sigterm_to_its_process_group(tmp_path):
    """torch's agent stops a failed job's other ranks with SIGTERM to each one's process group:
    it killed the rank's forkserver, which ignored SIGINT alone, its loader processes ended
    with it, and the rank said "a data loader process died" after the E501 of the rank that
    had failed. The server ignores the stop signals as its loader processes do; the rank's
    own handlers are as they were."""
    script = ("import multiprocessing.forkserver as fs, signal, sys, time\n"
              "from darkcfg.data.base import _start_forkserver\n"
              "def mine(signum, frame): pass\n"
              "signal.signal(signal.SIGTERM, mine)\n"
              "_start_forkserver()\n"
              "assert signal.getsignal(signal.SIGTERM) is mine\n"
              "pid = fs._forkserver._forkserver_pid\n"
              "import os\n"
              "os.kill(pid, signal.SIGTERM)\n"
              "time.sleep(1)\n"
              "state = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0]\n"
              "print(state)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() in ("S", "R"), done.stdout  # not Z: it is still serving


def test_a_loader_process_says_nothing_of_a_rank_killed_while_taking_a_batch():
    """A rank killed (kill -9, the out-of-memory killer) while it took a batch's file
    descriptors over left the loader process's resource sharer thread to print a
    ConnectionResetError traceback after the launcher's E501; anything else is still said."""
    import functools

    from darkcfg.data.base import _handover_error

    said = []
    hook = functools.partial(_handover_error, lambda *args: said.append(args[0]))
    code = compile("raise ConnectionResetError(104, 'Connection reset by peer')",
                   "/usr/lib/python3.11/multiprocessing/resource_sharer.py", "exec")
    for raising, expected in ((code, []), ("raise ConnectionResetError(104, 'x')",
                                           [ConnectionResetError]), ("1 / 0", [ZeroDivisionError])):
        said.clear()
        try:
            exec(raising)
        except Exception as exc:  # noqa: BLE001 - what the thread's excepthook gets
            hook(type(exc), exc, exc.__traceback__)
        assert said == expected


def test_train_processes_reports_the_rank_that_failed_not_the_one_it_stopped():
    """torch's first failure goes by whole seconds: rank 1's own error (exit 2) and rank 0,
    whose collective lost rank 1 (exit 1, silent), tied, and the command exited 1 as rank 0."""
    from types import SimpleNamespace

    from darkcfg.train.launch import failing_rank

    def failed(code, at=100):
        return SimpleNamespace(exitcode=code, timestamp=at)

    assert failing_rank({0: failed(1), 1: failed(2)})[0] == 1
    assert failing_rank({0: failed(1), 1: failed(-9)})[0] == 1  # a kill comes first
    assert failing_rank({0: failed(2, 101), 1: failed(2, 100)})[0] == 1  # then the earliest
    assert failing_rank({0: failed(1), 1: failed(1)})[0] == 0
