"""The README is the front door and docs/ holds the detail: every page is reachable from the
README, every relative link resolves, and the Python in the docs names things that exist (the
docs cannot rot when code moves). docs/architectures.md is run block by block (test_guide.py)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {m.group(1) for m in LINK.finditer(README.read_text())}
    missing = [p.name for p in PAGES if f"docs/{p.name}" not in linked]
    assert missing == []


@pytest.mark.parametrize("page", [README] + PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for m in LINK.finditer(page.read_text()):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        if not (page.parent / target).exists():
            broken.append(target)
    assert broken == []


def python_blocks(page: Path) -> list[str]:
    return [body for kind, body in FENCE.findall(page.read_text()) if kind == "python"]


@pytest.mark.parametrize("page", [README] + PAGES, ids=lambda p: p.name)
def test_the_python_in_the_docs_imports_what_exists(page):
    """Every block parses, and every `from M import N` of the project names a module and an
    attribute that exist."""
    for body in python_blocks(page):
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] in ("cfgparse", "builders", "darkcfg"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"), f"{page.name}: {node.module}.{alias.name}"


def test_the_readme_python_runs_and_prints_what_it_says(tmp_path):
    """The README's "In Python" block, run as written in an empty folder, as after `pip install`
    (it used an `x` it never defined, then a `cfg/yolov3-tiny.cfg` only a checkout has): each
    `print(...)  # TEXT` line prints TEXT."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    for body in python_blocks(README):
        said = [line.split("#", 1)[1].strip() for line in body.splitlines()
                if line.startswith("print(") and "#" in line]
        done = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == said


def test_the_detection_api_block_runs(tmp_path):
    """docs/detection.md's Python block, run as written in a folder holding the files it names
    (yolov4.cfg and its weights stood in for by yolov4-tiny, untrained): it used `names` and `x`
    without defining them."""
    import shutil
    import subprocess
    import sys

    from builders import build
    from builders.weights import save_weights

    block = next(b for b in python_blocks(ROOT / "docs" / "detection.md") if "detect(net" in b)
    shutil.copy(ROOT / "cfg" / "yolov4-tiny.cfg", tmp_path / "yolov4.cfg")
    save_weights(build(tmp_path / "yolov4.cfg"), tmp_path / "yolov4.weights")
    shutil.copy(ROOT / "docs" / "detect-trained.jpg", tmp_path / "dog.jpg")
    (tmp_path / "coco.names").write_text("".join(f"class{i}\n" for i in range(80)))
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _documented_names() -> list[tuple[str, object]]:
    """(dotted name, object) for each project name the docs' Python imports, each name of
    cfgparse's and builders' __all__, what detect and export return, and the public methods
    of those classes."""
    import builders
    import cfgparse

    found = {}
    for page in [README] + PAGES:
        for body in python_blocks(page):
            for node in ast.walk(ast.parse(body)):
                if isinstance(node, ast.ImportFrom) and node.module and \
                        node.module.split(".")[0] in ("cfgparse", "builders", "darkcfg"):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        if hasattr(module, alias.name):
                            found[f"{node.module}.{alias.name}"] = getattr(module, alias.name)
    for module in (cfgparse, builders):
        found.update({f"{module.__name__}.{n}": getattr(module, n) for n in module.__all__})
    from darkcfg.detect.decode import Detections
    from darkcfg.export.onnx import ExportReport

    found.update({"darkcfg.detect.decode.Detections": Detections,  # what the documented
                  "darkcfg.export.onnx.ExportReport": ExportReport})  # functions return
    for name, obj in list(found.items()):  # and the public methods of each class
        if isinstance(obj, type) and obj.__module__.split(".")[0] in ("cfgparse", "builders",
                                                                       "darkcfg"):
            found.update({f"{name}.{n}": v for n, v in vars(obj).items()
                          if not n.startswith("_") and (callable(v) or isinstance(v, property))})
    return [(name, obj) for name, obj in sorted(found.items())
            if callable(obj) or isinstance(obj, property)]


def test_the_public_names_have_docstrings_of_their_own():
    """help() on what the docs show a library user says what it is (builders.Network, Block,
    Option and Diagnostic had none, or only the dataclass's generated signature)."""
    bare = []
    for name, obj in _documented_names():
        doc = obj.__doc__
        if isinstance(obj, type) and doc and doc.startswith(f"{obj.__name__}("):
            doc = None  # a dataclass's or NamedTuple's generated signature
        if isinstance(obj, type) and doc is not None and doc == obj.__mro__[1].__doc__:
            doc = None  # inherited
        if not (doc or "").strip():
            bare.append(name)
    assert bare == []


def test_help_darkcfg_points_to_the_library_entry_points():
    """`help(darkcfg)` lists where a library user starts, and each name it gives exists."""
    import darkcfg

    doc = darkcfg.__doc__
    assert "From Python" in doc and "CfgError" in doc and "InputError" in doc
    named = re.findall(r"^    ((?:cfgparse|builders|darkcfg)\.[\w.]+)\(", doc, re.M)
    assert len(named) >= 6
    for dotted in named:
        module, _, attr = dotted.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        assert obj.__doc__, dotted


def _long_options(parser) -> set[str]:
    """Every --option of an argparse parser and of its subcommands' parsers."""
    import argparse

    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _long_options(sub)
        found |= {o for o in action.option_strings if o.startswith("--") and o != "--help"}
    return found


@pytest.mark.parametrize("command", ["flag form", "train", "valid", "predict", "detect", "export",
                                     "emit", "summary", "weights", "check", "data", "anchors"])
def test_every_help_option_is_in_commands_md(command):
    """What `darkcfg COMMAND --help` lists, docs/commands.md names (a new flag gets documented)."""
    from darkcfg.cli import COMMANDS

    module = importlib.import_module("darkcfg.cli.flags" if command == "flag form"
                                     else COMMANDS[command])
    text = (ROOT / "docs" / "commands.md").read_text()
    documented = set(re.findall(r"--[a-z][a-z0-9-]*", text))
    assert sorted(_long_options(module.arg_parser()) - documented) == []


def _transcript(page: Path, heading: str) -> list[tuple[str, list[str]]]:
    """The (command, printed lines) pairs of the first console or text block under `heading`."""
    text = page.read_text().split(f"\n{heading}\n", 1)[1]
    body = next(b for kind, b in FENCE.findall(text) if kind in ("console", "text"))
    pairs: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            pairs[-1][1].append(line)
    return pairs


@pytest.mark.slow
def test_the_commands_md_digits_transcript_prints_its_lines(tmp_path):
    """docs/commands.md's train, valid and predict, run as written but for a shorter schedule
    (50 iterations: still four validations, burn-in 45 still below it), print the lines shown,
    numbers aside (they move with the schedule and the machine). valid and predict of a run's
    weights gained a line saying they build the run's --set values, which the page lacked."""
    import os
    import subprocess
    import sys

    from PIL import Image

    pytest.importorskip("sklearn")  # --data digits
    from darkcfg.data.digits import digits_arrays

    (tmp_path / "cfg").symlink_to(ROOT / "cfg")
    Image.fromarray(digits_arrays(0)[2][0, 0].numpy()).save(tmp_path / "eight.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}

    def masked(lines):
        return [re.sub(r"\d+(\.\d+)?", "N", line) for line in lines]

    pairs = _transcript(ROOT / "docs" / "commands.md", "## train, valid, predict")
    assert [c.split()[1] for c, _ in pairs] == ["train", "valid", "predict"]
    for command, shown in pairs:
        argv = command.replace("max_batches=200", "max_batches=50").split()[1:]
        done = subprocess.run([sys.executable, "-m", "darkcfg", *argv], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout
        assert masked(done.stdout.splitlines()) == masked(shown), command


def test_the_cfgparse_block_of_cfg_files_md_returns_what_it_says(tmp_path, monkeypatch):
    """docs/cfg-files.md's cfgparse block, run line by line: a comment that starts with quoted
    values is what the line returns, and `Option(...)` names the fields of an Option (the page
    said `blocks[1].name` was 'conv' for yolov3-tiny's [convolutional], and lacked `origin`)."""
    import shutil

    block = next(b for b in python_blocks(ROOT / "docs" / "cfg-files.md")
                 if "from cfgparse import parse" in b)
    (tmp_path / "cfg").symlink_to(ROOT / "cfg")
    shutil.copy(ROOT / "cfg" / "digits.cfg", tmp_path / "model.cfg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    checked = 0
    for line in block.splitlines():
        code, _, said = line.partition("  #")
        exec(code, scope)  # each line is a statement of its own
        said = said.strip()
        values = re.match(r"((?:'[^']*'(?:, )?)+)", said)
        if values:
            assert eval(code, scope) == ast.literal_eval(values.group(1)), line
            checked += 1
        fields = re.match(r"(\w+)\(([\w, ]+)\)$", said)
        if fields:
            obj = eval(code, scope)
            assert type(obj).__name__ == fields.group(1), line
            assert list(obj._fields) == fields.group(2).split(", "), line  # a NamedTuple
            checked += 1
    assert checked == 2


@pytest.mark.parametrize("heading", ["### Options", "### Where outputs go"])
def test_the_robustness_md_transcripts_print_their_lines(heading, tmp_path, monkeypatch, capsys,
                                                         tiny_classifier):
    """docs/robustness.md's `darkcfg tiny.cfg ...` transcripts, run on the TinyClassifier cfg
    the page names: each shown line is printed, in order (the freeze hint named layer 2 of
    another cfg; a banner the page leaves out may come between)."""
    import shlex

    import torch

    from darkcfg.cli import main

    tiny_classifier.write(tmp_path / "tiny.cfg")
    (tmp_path / "afile").write_text("")
    monkeypatch.chdir(tmp_path)
    pairs = _transcript(ROOT / "docs" / "robustness.md", heading)
    assert pairs
    for command, shown in pairs:
        argv = shlex.split(command)
        assert argv[:2] == ["darkcfg", "tiny.cfg"], command
        if "cuda" in argv and torch.cuda.is_available():
            continue  # the transcript is of a machine without a GPU
        assert main(argv[1:]) == 2, command
        printed = iter(capsys.readouterr().err.splitlines())
        assert all(line in printed for line in shown), command  # in order


def test_the_robustness_md_detect_over_its_input_transcript(tmp_path, monkeypatch, capsys):
    """The `--detect images --out images` transcript of docs/robustness.md: the refusal comes
    before the weights warning and the folder scan's, which the page still showed."""
    import shlex
    import shutil

    from darkcfg.cli import main

    cfg = (ROOT / "cfg" / "yolov3-tiny.cfg").read_text()
    (tmp_path / "tiny-yolo.cfg").write_text(cfg.replace("width=416", "width=64")
                                            .replace("height=416", "height=64"))
    (tmp_path / "images").mkdir()
    for i in range(3):
        shutil.copy(ROOT / "docs" / "detect-trained.jpg", tmp_path / "images" / f"im{i}.jpg")
        (tmp_path / "images" / f"im{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    monkeypatch.chdir(tmp_path)
    (command, shown), status = _transcript(ROOT / "docs" / "robustness.md",
                                           "### `--detect` never writes over an input")
    argv = shlex.split(command)
    assert argv[:2] == ["python", "runner.py"] and status == ("echo $?", ["2"])
    assert main(argv[2:]) == 2
    assert capsys.readouterr().err.splitlines() == shown
