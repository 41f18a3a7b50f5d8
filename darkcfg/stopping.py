"""The signals that stop a command, in one place: the command line's handler (darkcfg.cli),
training's clean stop (darkcfg.train.loop) and the loader processes that leave the stop to the
trainer (darkcfg.data.base) all take them from here. Imports no torch (`check` stays torch-free).

SIGHUP (the terminal closed, an ssh session dropped) means what SIGTERM means: a training run
checkpoints and exits 0, any other command removes its temp files and exits 130. Where SIGHUP
was ignored when darkcfg started (`nohup darkcfg ...`), it stays ignored. After the command,
`end_process` keeps a stop's exit 130 up to the process's last moment."""

from __future__ import annotations

import atexit
import errno
import os
import signal
import sys
import threading
from typing import NoReturn


def stop_signals() -> list[signal.Signals]:
    """SIGTERM, SIGINT and, where the platform has it, SIGHUP."""
    found = [signal.SIGTERM, signal.SIGINT]
    if hasattr(signal, "SIGHUP"):
        found.append(signal.SIGHUP)
    return found


def takes_over(sig: signal.Signals) -> bool:
    """Whether darkcfg handles `sig` here: not a signal the caller ignores (nohup's SIGHUP; the
    SIGINT a shell script's background job `cmd &` gets ignored, so that Ctrl-C stops the
    script's foreground command only), as Python and the other commands leave it ignored."""
    return signal.getsignal(sig) is not signal.SIG_IGN


def drop_hung_up_terminal(signum: int) -> None:
    """After SIGHUP, stdout and stderr on the terminal that closed fail every write with EIO:
    point them at /dev/null, so that the stop's own messages cannot end the stop early."""
    if signum != getattr(signal, "SIGHUP", None):
        return
    for fd in (1, 2):
        try:
            os.write(fd, b"")  # a zero-byte write: EIO on a hung-up terminal, else nothing
        except OSError as exc:
            if exc.errno == errno.EIO:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)


def end_process(code: int) -> NoReturn:
    """End the process that ran a command (its entry points; a torchrun worker) with `code`,
    without the interpreter's teardown. Python resets every signal it handles to the default
    action when that teardown starts, and with torch loaded the teardown takes 1-2 s (its
    modules, C++ statics; DDP's gloo threads made a finished worker abort now and then): a stop
    signal then killed the process (exit -15, -2, -1) instead of the documented 130. Here the
    threads are joined, the exit handlers run and both streams are flushed, as a normal exit
    does, under a handler that notes a stop signal (exit 130, the outputs complete) and ends
    the process at a second one (an exit that hangs still yields to Ctrl-C)."""
    stopped = []

    def note(signum, frame):
        if stopped:
            os._exit(130)
        stopped.append(signum)
        drop_hung_up_terminal(signum)

    for sig in stop_signals():
        if takes_over(sig):  # (one the caller ignores stays ignored)
            try:
                signal.signal(sig, note)
            except ValueError:  # not the main thread: leave signals alone
                break
    shutdown = getattr(threading, "_shutdown", None)  # as a normal exit first: the threads
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        shutdown()  # not daemonic joined, concurrent.futures' pools ended
    atexit._run_exitfuncs()
    if stopped:
        print("interrupted (after the command had finished: its outputs are complete)",
              file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or gone: nothing to keep
            pass
    os._exit(130 if stopped else code)
