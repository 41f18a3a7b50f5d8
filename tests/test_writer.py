"""cfgparse.writer and the CLI: canonical cfg and YAML round trips over the whole corpus, YAML
diagnostics located in the YAML, and `python -m cfgparse dump/check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cfgparse import CfgError, parse, parse_text
from cfgparse.__main__ import main
from cfgparse.blocks import _strict
from cfgparse.writer import to_yaml, write
from cfgparse.yaml_io import blocks_from_yaml

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "darknet" / "corpus"


def corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("*/*.cfg"))
    if not files:
        pytest.skip("../shared/darknet/corpus is not available")
    return files


def typed(blocks) -> list:
    """What must survive a round trip: per block, the type and the typed values (1 != 1.0)."""
    return [(b.type, _strict(b.values())) for b in blocks]


# -- round trips over the corpus ------------------------------------------------------------------
def test_cfg_round_trip_for_every_corpus_file():
    for path in corpus_files():
        original = parse(path)
        text = write(original)
        again = parse_text(text, "written.cfg")
        assert typed(again) == typed(original), path
        assert again.warnings == [] or {w.code for w in again.warnings} == {"W201"}, path
        assert write(again) == text  # canonical: writing is a fixed point


def test_yaml_round_trip_for_every_corpus_file():
    for path in corpus_files():
        original = parse(path)
        again = blocks_from_yaml(to_yaml(original), "model.yaml")
        assert typed(again) == typed(original), path
        assert [b.index for b in again] == [b.index for b in original]


def test_canonical_cfg_text():
    blocks = parse("# c\n[network]\nbatch = 64\nbatch=2\nlearning_rate=.001\nscales=.1,1\n"
                   "[conv]\nfilters=8\nactivation=leaky\n[yolo]\nanchors = 10,13, 16,30\n"
                   "foo=1.0\nbar=2.5,3\n[avg]\n")
    assert write(blocks) == (
        "[net]\nbatch=64\nlearning_rate=0.001\nscales=0.1,1\n\n"
        "[convolutional]\nfilters=8\nactivation=leaky\n\n"
        "[yolo]\nanchors=10,13,16,30\nfoo=1.0\nbar=2.5,3.0\n\n"  # unknown keys keep their type
        "[avgpool]\n")


# -- YAML -----------------------------------------------------------------------------------------
def test_yaml_shape():
    blocks = parse("[net]\nwidth=8\nsteps=1,2\n[cost]\ntype=sse\n[avgpool]\n")
    assert to_yaml(blocks) == ("- net:\n    width: 8\n    steps: [1, 2]\n"
                               "- cost:\n    type: sse\n- avgpool: {}\n")


def test_yaml_is_typed_by_the_schema_like_cfg_text():
    text = ("- net: {batch: 64, learning_rate: 1e-3, flip: true, steps: [10, 20], hue: 0}\n"
            "- type: convolutional\n  options: {filters: '8', activation: leaky}\n"
            "- route:\n    layers: -1\n- conv:\n")
    blocks = blocks_from_yaml(text, "m.yaml")
    assert typed(blocks) == typed(parse(
        "[net]\nbatch=64\nlearning_rate=1e-3\nflip=1\nsteps=10,20\nhue=0\n"
        "[convolutional]\nfilters=8\nactivation=leaky\n[route]\nlayers=-1\n[conv]\n"))
    assert [b.name for b in blocks] == ["net", "convolutional", "route", "conv"]
    assert (blocks[2].line, blocks[2].option("layers")[3:6]) == (4, (5, 5, 13))


def test_a_yaml_path_is_accepted_wherever_a_cfg_is(tmp_path):
    path = tmp_path / "arch.yml"
    path.write_text("- net: {width: 8, height: 8, channels: 3}\n- convolutional: {filters: 2}\n")
    blocks = parse(path)
    assert blocks[1].get("filters") == 2 and blocks[1].path == str(path)


@pytest.mark.parametrize("text, expected", [
    ("- net:\n    batch: x\n", [("E202", 2, 12)]),
    ("- net:\n    batch: -1\n", [("E203", 2, 12)]),
    ("- net: {policy: stepz}\n", [("E204", 1, 17)]),
    ("- net:\n- convolutonal: {}\n", [("E201", 2, 3)]),
    ("- net:\n    batch:\n", [("E105", 2, 11)]),  # just after the colon
    ("- net:\n    steps: {a: 1}\n", [("E202", 2, 12)]),
    ("- convolutional: {}\n", [("E107", 1, 3)]),
    ("", [("E100", 1, 1)]),
    ("# nothing\n", [("E100", 1, 1)]),
    ("- net: [\n", [("E108", 2, 1)]),
    ("net: {}\n", [("E108", 1, 1)]),
    ("- net: {}\n- [1, 2]\n", [("E108", 2, 3)]),
    ("- net: {}\n  conv: {}\n", [("E108", 1, 3)]),
    ("- net: 3\n", [("E108", 1, 8)]),
    ("- net: {'#x': 1}\n", [("E108", 1, 9)]),
    ("- net: {a=b: 1}\n", [("E108", 1, 9)]),
    ("\ud800", [("E104", 1, 1)]),  # a lone surrogate: libyaml's UnicodeEncodeError, found by
    ("- net:\n    batch: 1\ud800\n", [("E104", 2, 13)]),  # fuzzing (a traceback)
])
def test_yaml_errors_are_located_in_the_yaml(text, expected):
    with pytest.raises(CfgError) as info:
        blocks_from_yaml(text, "m.yaml")
    assert [(d.code, d.line, d.column) for d in info.value.errors] == expected


def test_yaml_warnings_are_located_in_the_yaml():
    result = blocks_from_yaml("- net:\n    batch: 1\n    batch: 2\n- conv:\n    filtres: 3\n",
                              "m.yaml")
    assert [(w.code, w.line, w.column) for w in result.warnings] == [("W202", 3, 5),
                                                                      ("W201", 5, 5)]
    assert result.warnings[1].hint == "did you mean 'filters'?"
    assert result[0].get("batch") == 1


# -- CLI ------------------------------------------------------------------------------------------
CFG = "[net]\nwidth=8\nsteps=1,2\n# c\n[conv]\nfilters=4\nfoo=1\n"


def test_dump_json_contract(tmp_path, capsys):
    path = tmp_path / "a.cfg"
    path.write_text(CFG)
    assert main(["dump", str(path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [
        {"type": "net", "line": 1, "options": {"width": 8, "steps": [1, 2]}},
        {"type": "convolutional", "line": 5, "options": {"filters": 4, "foo": 1}}]
    assert "warning[W201]" in err  # warnings go to stderr, the output stays clean


@pytest.mark.parametrize("fmt", ["yaml", "cfg"])
def test_dump_yaml_and_cfg_read_back_the_same(tmp_path, capsys, fmt):
    path = tmp_path / "a.cfg"
    path.write_text(CFG)
    assert main(["dump", str(path), "--format", fmt]) == 0
    out = capsys.readouterr().out
    back = tmp_path / f"b.{fmt}"
    back.write_text(out)
    assert typed(parse(back)) == typed(parse(path))


def test_dump_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nbatch=x\n")
    assert main(["dump", str(bad)]) == 1
    assert "bad.cfg:2:7: error[E202]" in capsys.readouterr().err
    assert main(["dump", str(tmp_path / "missing.cfg")]) == 2
    err = capsys.readouterr().err
    first, help_line = err.splitlines()  # the E901 diagnostic: no source excerpt, its help
    assert "error[E901]: cannot read" in first and "missing.cfg" in first
    assert help_line.startswith("help: ")
    capsys.readouterr()
    # usage errors: one E100 diagnostic with its help line, as every darkcfg command line
    # (argparse's usage text and 'error:' line before)
    for argv, hint in ((["dump"], "`python -m cfgparse dump --help`"),
                       (["dump", str(bad), "--format", "yml"], "did you mean 'yaml'?"),
                       ([], "`python -m cfgparse --help`"),
                       (["frobnicate"], "`python -m cfgparse --help`")):
        assert main(argv) == 2
        first, help_line = capsys.readouterr().err.splitlines()
        assert first.startswith("<command line>: error[E100]: python -m cfgparse")
        assert help_line.startswith("help: ") and hint in help_line


def test_check_is_dispatched_to_the_lint_package(monkeypatch):
    import types

    seen = []
    fake = types.ModuleType("darkcfg.lint.cli")
    fake.main = lambda argv, prog: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "darkcfg.lint.cli", fake)
    assert main(["check", "--format", "json", "a.cfg"]) == 7
    assert seen == [["--format", "json", "a.cfg"]]


def test_python_m_cfgparse_missing_file_has_no_traceback():
    run = subprocess.run([sys.executable, "-m", "cfgparse", "dump", "no/such/file.cfg"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert run.stdout == "" and "Traceback" not in run.stderr
    assert run.stderr.strip() == (
        "no/such/file.cfg: error[E901]: cannot read 'no/such/file.cfg': No such file or "
        "directory\nhelp: check the path and its permissions")


def test_dump_to_a_stdout_that_takes_no_more(tmp_path):
    """`python -m cfgparse dump X > /dev/full` printed a traceback (and Python's 'Exception
    ignored' at exit); now E901 at <stdout>, exit 2. `| head`: exit 0, nothing on stderr."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "a.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n" + "[maxpool]\nsize=2\n" * 400)

    def dump(stdout):
        return subprocess.run([sys.executable, "-m", "cfgparse", "dump", str(cfg)],
                              stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(root)})

    with open("/dev/full", "w") as full:
        done = dump(full)
    assert done.returncode == 2 and done.stderr == (
        "<stdout>: error[E901]: cannot write the output to stdout: No space left on device\n"
        "help: free some space where stdout goes, or redirect it elsewhere\n")
    read, write = os.pipe()
    os.close(read)
    try:
        done = dump(write)
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == ""
