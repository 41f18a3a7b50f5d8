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


def test_more_workers_than_cores_are_lowered_and_said_once(monkeypatch, capsys):
    # `--workers 1000` started 1000 loader processes (minutes before the first batch, a minute
    # more to stop) and torch printed two raw UserWarning lines about it
    import warnings

    from darkcfg.data.base import loader_processes

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loader_processes(2)["num_workers"] == 2
        assert capsys.readouterr().err == ""
        assert loader_processes(1000)["num_workers"] == 2
        assert loader_processes(1000)["num_workers"] == 2
        loader = torch.utils.data.DataLoader(range(4), **loader_processes(1000))
        assert list(loader) == [torch.tensor([k]) for k in range(4)]  # torch's check is quiet
    err = capsys.readouterr().err
    assert err.count("--workers 1000: more loader processes than the 2 CPU core(s)") == 1
    assert "using 2" in err
