"""`darkcfg train CFG --processes N`: one command for a data-parallel run on this machine, as
Darknet's `-gpus 0,1,2,3` is (src/detector.c `train_detector`), without knowing torchrun.

It is `torchrun --standalone --nproc-per-node N -m darkcfg train ...` through torch's own
launcher (torch.distributed.launcher.api.elastic_launch, which torchrun calls): the same
rendezvous, environment and DDP run (darkcfg.train.distributed). What differs is at the edges:
a failed rank is the rank's own diagnostic and exit code (not torchrun's ChildFailedError
traceback after it), no `torchelastic_*` folder is left in the temp dir per run, and a stop
signal is passed on to the ranks, whose clean stop (a checkpoint, exit 0) is the command's."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
from pathlib import Path

from darkcfg.stopping import drop_hung_up_terminal, stop_signals, takes_over

#: torch's elastic agent logs a failed rank (and the SIGTERM it sends the others) as warnings
#: and errors with torch's log prefix; each rank says its own error
_AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")

#: (PYTHONWARNINGS: the start of the message, no colon in it; the module)
_TRACKER_WARNING = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


def launch(argv: list[str], processes: int) -> int:
    """Run `darkcfg train ARGV` as `processes` ranks on this machine (each rank takes cuda:RANK
    on a CUDA machine, else gloo on the CPU) and return their exit code: 0 (a run stopped by a
    signal included, as a single process's), or the first failed rank's."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith(_AGENT_LOGGERS) and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    # as torchrun, no rank takes every core; unlike its fixed 1, each its share
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    # a rank killed outright leaves its loader queues' semaphores to its resource tracker,
    # which frees them and warns, with a line of Python's source, after the launcher's E501
    warnings = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), _TRACKER_WARNING)))
    with _environment(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", threads),
                      PYTHONWARNINGS=warnings, TORCHELASTIC_SIGNALS_TO_HANDLE=None), \
            _signals_passed_on() as passed_on:
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes,
                              run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                              rdzv_endpoint="localhost:0", max_restarts=0,
                              monitor_interval=0.1, logs_specs=DefaultLogsSpecs(os.devnull),
                              # (torch's default: SIGTERM,SIGINT,SIGHUP,SIGQUIT)
                              **({"signals_to_handle": "SIGQUIT"} if passed_on else {}))
        try:
            elastic_launch(config, sys.executable)("-m", "darkcfg", "train", *argv)
        except ChildFailedError as failed:
            rank, failure = failing_rank(failed.failures)
            if failure.exitcode >= 0:  # the rank said why
                return failure.exitcode
            from cfgparse import Diagnostic

            try:
                name = signal.Signals(-failure.exitcode).name
            except ValueError:
                name = f"signal {-failure.exitcode}"
            print(Diagnostic("E501", f"rank {rank} of {processes} was killed by {name}; the "
                             "command stopped (a training run keeps its last checkpoint)",
                             f"<rank {rank}>", hint="SIGKILL is often the out-of-memory killer: "
                             "fewer --processes, a smaller batch (--set), or more memory, then "
                             "--resume"
                             ).format(), file=sys.stderr)
            return 1
        except SignalException:  # SIGQUIT (where the ranks cannot be found: any stop signal)
            return 130
    return 0


def failing_rank(failures: dict) -> tuple[int, object]:
    """The rank whose failure ended the job (rank -> torch's ProcessFailure): one killed by a
    signal, else one that did not exit as a rank whose collective lost its peer does
    (darkcfg.train.distributed.PEER_LOST_EXIT: it ended because of the other), else the first.
    torch's own first failure goes by whole seconds, and the ranks that fail in one of its
    polls tie: it named rank 0, stopped by rank 1's error, with rank 0's exit code."""
    from darkcfg.train.distributed import PEER_LOST_EXIT

    return min(failures.items(), key=lambda item: (
        item[1].exitcode >= 0, item[1].exitcode == PEER_LOST_EXIT, item[1].timestamp, item[0]))


@contextlib.contextmanager
def _environment(**values: str | None):
    """os.environ with `values` (None: kept as it is, but put back after: torch's launcher sets
    TORCHELASTIC_SIGNALS_TO_HANDLE for good)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update({key: value for key, value in values.items() if value is not None})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _signals_passed_on():
    """While the ranks run, a stop signal to this process goes on to each rank (torch starts
    them in sessions of their own, so Ctrl-C reaches this process alone), which stops as a
    single run does; a second one stops them at once, as it would stop one. torch's own
    handling (SIGTERM to every rank and, 30 s later, SIGKILL; a SignalException here, whatever
    the ranks did) is left to SIGQUIT. Needs /proc to find the ranks, and the main thread;
    yields whether it took the signals over."""
    if not Path(f"/proc/{os.getpid()}/stat").exists() or \
            threading.current_thread() is not threading.main_thread():
        yield False
        return
    signals = [sig for sig in stop_signals() if takes_over(sig)]
    before = {sig: signal.getsignal(sig) for sig in signals}

    def pass_on(signum, frame):
        drop_hung_up_terminal(signum)
        for pid in child_processes(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in signals:
        signal.signal(sig, pass_on)
    try:
        yield True
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def child_processes(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc): the ranks torch's agent started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
