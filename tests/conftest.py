"""Shared test setup."""

import pytest
import torch


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
