"""What `pip install darkcfg` puts on a machine without a checkout: every file the code opens
at run time (the grammar, the native kernels' C source, the cfgs the README names), and the
cfgs found by name from any folder."""

from __future__ import annotations

import configparser
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cfgparse import CfgError
from darkcfg import bundled
from darkcfg.bundled import FOLDER, resolve_cfg, shipped_cfg
from darkcfg.cli import main
from darkcfg.model import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cfgparse", "builders", "darkcfg")


def data_files() -> list[str]:
    """The packages' files that are not Python (what package_data must carry)."""
    found = []
    for package in PACKAGES:  # through darkcfg/cfg, a link to the checkout's cfg/
        for folder, _, names in os.walk(ROOT / package, followlinks=True):
            for name in names:
                path = Path(folder) / name
                if "__pycache__" not in path.parts and path.suffix != ".py":
                    found.append(path.relative_to(ROOT).as_posix())
    return sorted(found)


def package_data_globs() -> list[str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    globs = []
    for package, patterns in setup["options.package_data"].items():
        globs += [f"{package.replace('.', '/')}/{p.strip()}"
                  for p in patterns.replace(",", "\n").split() if p.strip()]
    return globs


def test_package_data_covers_every_data_file():
    files = data_files()
    assert {"cfgparse/grammar.lark", "builders/native_kernels.c",
            "darkcfg/cfg/yolov3-tiny.cfg"} <= set(files)
    globs = package_data_globs()
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert missing == [], "add these to [options.package_data] in setup.cfg"


def test_the_checkouts_cfg_folder_is_the_shipped_one():
    # cfg/ is the design card's folder; the package's darkcfg/cfg points at it
    assert (ROOT / "cfg").is_dir() and not (ROOT / "cfg").is_symlink()
    assert (ROOT / "cfg").resolve() == FOLDER.resolve()


def test_a_shipped_cfg_is_found_by_name_where_no_such_file_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = str(FOLDER / "yolov3-tiny.cfg")
    assert resolve_cfg("yolov3-tiny.cfg") == shipped
    assert resolve_cfg("cfg/yolov3-tiny.cfg") == shipped
    assert resolve_cfg(Path("cfg/yolov3-tiny.cfg")) == shipped
    assert ModelSpec("cfg/digits.cfg").cfg == str(FOLDER / "digits.cfg")
    for other in ("models/yolov3-tiny.cfg", "nope.cfg", "[net]\nwidth=8", "", "a\0b.cfg"):
        assert resolve_cfg(other) == other and shipped_cfg(other) is None
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "yolov3-tiny.cfg").write_text("[net]\n")
    assert resolve_cfg("cfg/yolov3-tiny.cfg") == "cfg/yolov3-tiny.cfg"  # the user's file wins


def test_commands_take_a_shipped_cfg_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bundled._said.clear()
    assert main(["summary", "digits.cfg"]) == 0
    out, err = capsys.readouterr()
    assert "Total: 28,842 params" in out
    said = f"cfg: digits.cfg is darkcfg's shipped {FOLDER / 'digits.cfg'} (no such file here)"
    assert err == said + "\n"
    assert main(["digits.cfg", "--summary"]) == 0  # the flag form
    assert "Total: 28,842 params" in capsys.readouterr().out
    # a linter checks the files named: a moved cfg must fail CI, not pass as the stock one
    assert main(["check", "cfg/digits.cfg"]) == 2
    out = capsys.readouterr().out
    assert "cfg/digits.cfg: error[E901]: cannot read 'cfg/digits.cfg'" in out
    # ... and says where the stock one is: the docs' `check cfg/digits.cfg`, run away from a
    # checkout, said only "check the path and its permissions"
    assert f"darkcfg ships {FOLDER / 'digits.cfg'}" in out
    assert f"cp {FOLDER / 'digits.cfg'} digits.cfg" in out
    assert main(["check", "other.cfg"]) == 2  # a name darkcfg does not ship: as before
    assert "help: check the path and its permissions" in capsys.readouterr().out


def test_anchors_write_never_edits_the_shipped_cfg(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shipped = FOLDER / "yolov3-tiny.cfg"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert main(["anchors", "yolov3-tiny.cfg", "--write"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--write: error[E100]: --write would edit darkcfg's own")
    assert f"help: copy it and name the copy: cp {shipped} my-yolov3-tiny.cfg" in err
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
    assert not (tmp_path / "runs").exists()


def test_anchors_says_which_cfg_it_took_when_it_fails_too(tmp_path, monkeypatch, capsys):
    """anchors took the shipped cfg by name without a word (other commands say it first), so
    a failure left the user guessing which cfg, and a run in the wrong folder went unnoticed."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    bundled._said.clear()
    said = (f"cfg: yolov3-tiny.cfg is darkcfg's shipped {FOLDER / 'yolov3-tiny.cfg'} (no such "
            "file here)\n")
    assert main(["anchors", "yolov3-tiny.cfg", "--data", "missing.data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and "error[E901]: 'missing.data' does not exist" in err, err
    for i in range(3):
        Image.new("RGB", (40, 30)).save(tmp_path / f"im{i}.jpg")
        (tmp_path / f"im{i}.txt").write_text(f"0 0.5 0.5 0.{i + 2} 0.{i + 3}\n")
    (tmp_path / "list.txt").write_text("".join(f"im{i}.jpg\n" for i in range(3)))
    (tmp_path / "obj.data").write_text("classes=80\ntrain=list.txt\n")
    bundled._said.clear()
    assert main(["anchors", "yolov3-tiny.cfg", "--data", "obj.data", "--num", "2"]) == 0
    assert capsys.readouterr().err.startswith(said)


@pytest.mark.slow
def test_the_wheel_holds_every_data_file(tmp_path):
    """Built from a copy of the tree, as `pip wheel --no-deps .` does (about 15 s)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    shutil.copytree(ROOT / "docs", src / "docs")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "runner.py"):
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                           check=True, capture_output=True, text=True)
    # setuptools warns that it will drop a data folder that is not in `packages`
    assert "is absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("darkcfg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(data_files()) <= names
    assert "runner.py" in names
    # the README and every docs/ page (with its pictures), for `darkcfg --help` to point at
    shared = "darkcfg-0.1.0.data/data/share/doc/darkcfg/"
    assert shared + "README.md" in names
    assert {shared + "docs/" + page.name for page in (ROOT / "docs").iterdir()} <= names

    # installed away from a checkout, `darkcfg --help` names the installed pages (--ignore-
    # installed: else pip uninstalls the environment's darkcfg, which the other tests import)
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", "--prefix", str(prefix), str(wheel)], check=True,
                   capture_output=True)
    (site,) = prefix.glob("lib/python*/site-packages")
    shown = subprocess.run([sys.executable, "-m", "darkcfg", "--help"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True,
                           text=True, check=True).stdout
    docs = (prefix / "share" / "doc" / "darkcfg").resolve()
    assert f"docs: {docs / 'README.md'} and {docs / 'docs' / 'commands.md'}" in shown
    assert (docs / "docs" / "commands.md").read_bytes() == (ROOT / "docs/commands.md").read_bytes()


def test_the_shipped_csv_is_found_as_the_cfgs_comment_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cfg/linear_regression.cfg", "--data", "cfg/linear_regression.csv",
                 "--set", "max_batches=2", "--out", "runs/lr", "--no-progress"]) == 0
    assert "data: CSV " in capsys.readouterr().err
    assert (tmp_path / "runs" / "lr" / "linear_regression_final.weights").exists()


def extras() -> dict[str, str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return dict(setup["options.extras_require"])


def test_every_extra_a_hint_names_exists():
    named = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            named |= set(re.findall(r"darkcfg\[(\w+)\]", path.read_text()))
    assert {"detect", "export", "video", "digits"} <= named
    assert named <= set(extras())


def test_digits_without_scikit_learn_names_its_extra(monkeypatch):
    from darkcfg.data.digits import digits_arrays

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # the import fails
    with pytest.raises(CfgError) as err:
        digits_arrays(0)
    d = err.value.first
    assert (d.code, d.path) == ("E905", "--data")
    assert "pip install 'darkcfg[digits]'" in d.hint
    assert "scikit-learn" in extras()["digits"]


def test_a_cfg_name_near_a_shipped_one_is_told_the_shipped_name(tmp_path, monkeypatch, capsys):
    """`darkcfg summary yolov4-tiny` was a bare "cannot read": a stranger's first try with the
    README's name without its .cfg (or _ for -) now hears which shipped cfg is meant."""
    monkeypatch.chdir(tmp_path)
    for typed, meant in (("yolov4-tiny", "yolov4-tiny.cfg"), ("yolov4_tiny.cfg", "yolov4-tiny.cfg"),
                         ("cfg/yolov3-tiny", "cfg/yolov3-tiny.cfg")):
        assert main(["summary", typed]) == 2
        err = capsys.readouterr().err
        assert f"{typed}: error[E901]: cannot read '{typed}'" in err, err
        assert f"help: did you mean '{meant}'?" in err, err
    assert main(["anchors", "yolov4-tiny", "--data", "x.data"]) == 2  # its own cfg reading
    assert "help: did you mean 'yolov4-tiny.cfg'?" in capsys.readouterr().err
    assert main(["summary", "nothing-like-it.cfg"]) == 2  # no near name: the usual hint
    assert "help: check the path and its permissions" in capsys.readouterr().err
    (tmp_path / "yolov4-tiny").write_text("[net]\nwidth=8\nheight=8\nchannels=1\n"
                                          "[convolutional]\nfilters=1\n")
    assert main(["summary", "yolov4-tiny"]) == 0  # a file of that name is taken as written


def test_a_missing_video_is_said_as_missing_without_pyav(tmp_path, monkeypatch, capsys):
    """A mistyped video name on a base install (no `video` extra) is E901 at the name, not an
    install hint for PyAV that, once followed, only leads to the same E901."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "av", None)  # the import fails
    assert main(["detect", "yolov3-tiny.cfg", "clip.mp4", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert "clip.mp4: error[E901]: video 'clip.mp4' does not exist" in err
    assert "E905" not in err and not (tmp_path / "out").exists()
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)  # there: now PyAV is what is missing
    assert main(["detect", "yolov3-tiny.cfg", "clip.mp4", "--out", "out"]) == 2
    assert "clip.mp4: error[E905]: video input needs PyAV" in capsys.readouterr().err
