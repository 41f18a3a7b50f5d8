"""docs/architectures.md cannot rot: its code blocks are extracted and run, in order, in a fresh
folder (with runner.py and cfg/ linked in, as in the repository root). A block whose first line
is `# file: NAME` is written to NAME; other python blocks run with python; sh blocks run with
bash -e; toml blocks must parse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "architectures.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(GUIDE.read_text())]


def test_the_guide_has_every_kind_of_block():
    kinds = {kind for kind, _ in blocks()}
    assert {"python", "ini", "sh", "toml"} <= kinds
    text = GUIDE.read_text()
    for topic in ("[route]", "[shortcut]", "check", "--summary", "--train", "register_section",
                  "DARKCFG_PLUGINS", "darkcfg.sections", "--format yaml", "--emit",
                  "Adding a detection head", "DetectionHead", "head_decoding"):
        assert topic in text, topic


@pytest.mark.slow
def test_every_block_of_the_guide_runs(tmp_path):
    (tmp_path / "runner.py").symlink_to(ROOT / "runner.py")
    (tmp_path / "cfg").symlink_to(ROOT / "cfg")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"  # a script, not a link: a venv's python must keep its venv
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    ran = 0
    printed: dict[str, str] = {}
    for n, (kind, body) in enumerate(blocks()):
        first = body.split("\n", 1)[0]
        if first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(body)
            if kind == "toml":
                tomllib.loads(body)
            continue
        if kind == "python":
            cmd = [sys.executable, "-c", body]
        elif kind == "sh":
            cmd = ["bash", "-e", "-c", body]
        elif kind == "toml":
            tomllib.loads(body)
            continue
        else:
            continue
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"block {n} ({kind}):\n{body}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"block {n}:\n{done.stderr}"
        if kind == "python":  # a reader copies these: no warning either (float(loss) gave one)
            assert "Warning" not in done.stderr, f"block {n}:\n{done.stderr}"
        printed[body] = done.stdout
        ran += 1
    assert ran >= 8
    # the [channel_scale] edit keeps the network: the shortcut still adds layer 0 and the route
    # still concatenates the two 16x16 paths (it once rewired both silently)
    summary = next(out for body, out in printed.items() if "scaled.cfg --summary" in body)
    rows = {line.split()[1]: line for line in summary.splitlines()[1:-1]}
    assert rows["shortcut"].split()[3] == "-4"
    assert rows["route"].split()[3] == "5,7" and "->   16 x  16 x   48" in rows["route"]
    assert (tmp_path / "runs" / "tiny-resnet" / "tiny-resnet_final.weights").exists()
    assert (tmp_path / "runs" / "scaled" / "scaled_final.weights").exists()
    # the plugin head trained and was validated through its own decoding (mAP in metrics.csv)
    assert (tmp_path / "runs" / "grid" / "grid_final.weights").exists()
    assert "val_map50" in (tmp_path / "runs" / "grid" / "metrics.csv").read_text()
