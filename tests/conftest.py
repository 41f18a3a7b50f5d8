"""Shared test setup."""

import os
import signal

import pytest
import torch

# the handlers a test may install in the test process (an in-process `main()` takes SIGTERM and
# SIGHUP over, training's stop flag SIGALRM too), put back after each test
GUARDED_SIGNALS = [getattr(signal, name) for name in
                   ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGALRM") if hasattr(signal, name)]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny tensors and run in 2 pytest-xdist workers on 2 cores: one torch thread per
    worker is faster and immune to a busy machine. Subprocesses set OMP_NUM_THREADS themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global RNG states, whichever worker runs it and after
    whichever tests: a test that draws without its own generator is still reproducible."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def signals_restored():
    """Each test starts with the signal handlers the test process started with: a handler a
    test left (an in-process `main()` turns SIGTERM into KeyboardInterrupt) made a stray signal
    during a later test end the whole pytest-xdist run (INTERNALERROR) instead of one test. An
    interval timer a test left armed is that test's error."""
    before = {sig: signal.getsignal(sig) for sig in GUARDED_SIGNALS}
    yield
    left = signal.getitimer(signal.ITIMER_REAL)[0] if hasattr(signal, "ITIMER_REAL") else 0
    if left:
        signal.setitimer(signal.ITIMER_REAL, 0)
    for sig, handler in before.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)
    assert not left, f"the test left an interval timer armed ({left:.3f} s to go)"
    # a process that joined a group ends at its command's end (darkcfg.cli.main: os._exit),
    # which in the test process ended the pytest-xdist worker at the next in-process main()
    import sys

    joined = sys.modules.get("darkcfg.train.distributed")
    assert not (joined and joined.joined()), "the test process joined a process group"
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized()), \
        "the test left a torch.distributed process group"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Under pytest-xdist, a KeyboardInterrupt that escapes a test (darkcfg raised it, or a
    stop signal reached the worker) fails that test: it ended the worker's session instead,
    and the controller's INTERNALERROR hid every result (a Ctrl-C reaches the controller,
    which stops the run itself)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return (yield)
    try:
        return (yield)
    except KeyboardInterrupt as exc:
        raise AssertionError(f"KeyboardInterrupt{exc.args or ''} escaped the test") from exc


class TinyClassifier:
    """The small classifier cfg the training tests share: 12x12x3 input, conv 8 (+ maxpool),
    optionally a second conv 16 (+ maxpool), dropout, connected 4, [softmax], optionally [cost].
    `text(**net)` sets, adds or (value None) drops [net] keys."""

    NET = {"width": 12, "height": 12, "channels": 3, "batch": 16, "subdivisions": 2,
           "learning_rate": 0.05, "momentum": 0.9, "decay": 0.0005, "max_batches": 30,
           "policy": "steps", "steps": 20, "scales": 0.1, "burn_in": 3, "flip": 1}
    CONV = "[convolutional]\nfilters={}\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n\n"
    POOL = "[maxpool]\nsize=2\nstride=2\n\n"

    def text(self, *, second_conv: bool = True, dropout: float = 0.1, cost: bool = True,
             **net) -> str:
        keys = {**self.NET, **net}
        lines = [f"{key}={value}" for key, value in keys.items() if value is not None]
        body = self.CONV.format(8) + self.POOL
        if second_conv:
            body += self.CONV.format(16) + self.POOL
        body += f"[dropout]\nprobability={dropout}\n\n[connected]\noutput=4\n" \
            "activation=linear\n\n[softmax]\n"
        if cost:
            body += "\n[cost]\n"
        return "\n[net]\n" + "\n".join(lines) + "\n\n" + body

    def write(self, path, **kw):
        path.write_text(self.text(**kw))
        return path


@pytest.fixture(scope="session")
def tiny_classifier() -> TinyClassifier:
    return TinyClassifier()
