"""How many loader processes a run starts by default (darkcfg.data.sampling.default_workers)."""

from __future__ import annotations

import os

import pytest
import torch

from darkcfg.data.sampling import default_workers


@pytest.mark.parametrize(("cores", "world", "expected"), [
    (2, 1, 1), (16, 1, 15), (16, 2, 7), (64, 1, 16), (8, 8, 1), (1, 1, 1)])
def test_an_accelerator_gets_every_core_but_its_own(monkeypatch, cores, world, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_workers(torch.device("cuda"), world, busy=True) == expected


def test_the_cpu_keeps_its_cores_for_the_math():
    assert default_workers(torch.device("cpu"), 1, busy=True) == 1
    assert default_workers(torch.device("cpu"), 1, busy=False) == 0
