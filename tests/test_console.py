"""darkcfg.console: the info and warning lines come from the main process of a torchrun job
(rank 0) only, in one format, above a progress bar; a rank's own findings from every rank."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cfgparse import Diagnostic
from cfgparse.errors import WARNING
from darkcfg import console

ROOT = Path(__file__).resolve().parents[1]
JOB = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def job(monkeypatch):
    """Sets this process's torchrun environment: job(rank, world) (None: unset). (No test
    here joins a process group: the environment decides.)"""
    for key in JOB:
        monkeypatch.delenv(key, raising=False)

    def place(rank: int | None, world: int | None = 2) -> None:
        for key, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world)):
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, str(value))
    return place


@pytest.mark.parametrize("rank, world, said", [
    (None, None, True),  # no job
    (0, 2, True),  # torchrun's rank 0
    (1, 2, False),  # another rank: rank 0 says it
    (1, None, True),  # RANK without a job (WORLD_SIZE unset): trains alone, says it
    (1, 1, True)])
def test_say_and_warn_print_on_the_main_process_only(job, capsys, rank, world, said):
    job(rank, world)
    console.say("data: 3 images")
    console.warn("1 class(es) have no training image")
    err = capsys.readouterr().err
    assert err == ("data: 3 images\nwarning: 1 class(es) have no training image\n"
                   if said else "")


def test_a_rank_says_its_own_findings(job, capsys):
    job(1)
    console.warn("x.jpg: cannot read image", every_rank=True)
    assert capsys.readouterr().err == "warning: x.jpg: cannot read image\n"


def test_a_joined_groups_rank_wins_over_the_environment(job, monkeypatch, capsys):
    # (a program that joined with its own rank=); torch.distributed is consulted only when the
    # program imported it: the console imports no torch
    group = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                  get_rank=lambda: 0)
    job(1)
    monkeypatch.setitem(sys.modules, "torch.distributed", group)
    console.warn("said")
    group.get_rank = lambda: 1
    job(0)
    console.warn("not said")
    group.is_initialized = lambda: False  # not joined yet: the environment's rank 0
    console.warn("said again")
    assert capsys.readouterr().err == "warning: said\nwarning: said again\n"


def test_warn_prefixes_once(job, capsys):
    job(None)
    diagnostic = Diagnostic("W904", "'a.data' has no classes= line", "a.data", severity=WARNING,
                            hint="add classes=2")
    console.warn(diagnostic)
    console.warn(diagnostic.format())
    console.warn("warning: already one")
    console.warn("warning[W903]: 2 label box(es) at the edge\n  a.txt:1:3: x = 0.0")
    console.warn("the warning: is not first")
    err = capsys.readouterr().err
    assert err == (2 * (diagnostic.format() + "\n") + "warning: already one\n"
                   "warning[W903]: 2 label box(es) at the edge\n  a.txt:1:3: x = 0.0\n"
                   "warning: the warning: is not first\n")
    assert diagnostic.format().startswith("a.data: warning[W904]: ")


def test_a_warning_goes_above_a_progress_bar(job, monkeypatch, capsys):
    from tqdm import tqdm

    job(None)
    written = []
    monkeypatch.setattr(tqdm, "_instances", type(tqdm._instances)())  # no other test's bar
    monkeypatch.setattr(tqdm, "write", classmethod(
        lambda cls, text, file=None: written.append((text, file))))
    bar = tqdm(total=3, file=sys.stderr)
    try:
        console.warn("through the bar")
    finally:
        bar.close()
    console.warn("no bar")
    assert written == [("warning: through the bar", sys.stderr)]
    assert capsys.readouterr().err.endswith("warning: no bar\n")


def test_an_image_only_this_rank_reads_is_said_by_it(job, tmp_path, capsys):
    """Validation is sharded (rank r scores images r, r + world, ...): an undecodable image of
    rank 1's share is read by rank 1 alone, so its W901 is rank 1's to say."""
    from test_robustness import cut_folder

    from darkcfg.data import image_folder

    cut = cut_folder(tmp_path / "set", ("val/dog/0.jpg",))
    job(1)
    val = image_folder(tmp_path / "set", 3, 0).val
    val[[p for p, _ in val.items].index(str(cut["val/dog/0.jpg"]))]
    assert f"{cut['val/dog/0.jpg']}: warning[W901]: cannot read image" in \
        capsys.readouterr().err


SCAN = ("import sys\nfrom pathlib import Path\nfrom darkcfg.data import image_folder\n"
        "image_folder(Path(sys.argv[1]), 3, 0)\n")


@pytest.mark.slow  # two interpreters importing torch: 11 s on the 2-core CI host
def test_two_ranks_scanning_the_data_say_its_warning_once(tmp_path):
    """Each rank of a torchrun job reads the data before it joins the group; torchrun set RANK
    and WORLD_SIZE before it started, so rank 1 leaves the warning to rank 0."""
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(tmp_path / "set" / "a" / f"{k}.png")
    base = {k: v for k, v in os.environ.items() if k not in JOB}
    ranks = [subprocess.Popen(
        [sys.executable, "-c", SCAN, str(tmp_path / "set")], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(base, PYTHONPATH=str(ROOT), RANK=str(rank), LOCAL_RANK=str(rank),
                 WORLD_SIZE="2")) for rank in (0, 1)]
    said = [proc.communicate(timeout=120) for proc in ranks]
    assert [proc.returncode for proc in ranks] == [0, 0], said
    assert "warning: 1 class(es) of" in said[0][1] and "(b)" in said[0][1]
    assert said[1][1] == ""


@pytest.mark.parametrize("world, rank", [("abc", "1"), ("2", "one"), ("", "1"), ("1.5", "0")])
def test_an_environment_torchrun_did_not_write_is_no_job(job, monkeypatch, world, rank):
    """WORLD_SIZE=abc (or a RANK that is no number) was a ValueError traceback out of training's
    setup; torchrun writes whole numbers, so anything else is a command run alone."""
    from darkcfg.train import distributed

    job(None, None)
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", rank)
    assert console.torchrun_job() == (0, 1, 0)
    assert console.rank() == 0
    assert not distributed.launched_by_torchrun()
    dist, device = distributed.setup("cpu")
    assert (dist.rank, dist.world, dist.enabled, device.type) == (0, 1, False, "cpu")
