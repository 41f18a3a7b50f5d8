"""The signals that stop a command, in one place: the command line's handler (darkcfg.cli),
training's clean stop (darkcfg.train.loop) and the loader processes that leave the stop to the
trainer (darkcfg.data.base) all take them from here. Imports no torch (`check` stays torch-free).

SIGHUP (the terminal closed, an ssh session dropped) means what SIGTERM means: a training run
checkpoints and exits 0, any other command removes its temp files and exits 130. Where SIGHUP
was ignored when darkcfg started (`nohup darkcfg ...`), it stays ignored."""

from __future__ import annotations

import errno
import os
import signal


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
