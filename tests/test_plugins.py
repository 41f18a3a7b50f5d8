"""User-defined section types: register_section, and a real plugin distribution found through
the `darkcfg.sections` entry-point group (built in a tmp folder, put on sys.path of a fresh
interpreter: what `pip install` of a plugin package leaves in site-packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from builders import Layer, build, register_section
from builders.registry import SECTION_BUILDERS
from cfgparse import CfgError, parse_text, schema

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin_pkg"

CFG = """\
[net]
width=8
height=8
channels=3
batch=8
subdivisions=1
learning_rate=0.05
max_batches=3

[convolutional]
filters=4
size=3
pad=1
activation=leaky

[channel_scale]
init=0.5
activation=relu

[avgpool]

[softmax]
"""


def install(site: Path, package: str, dist: str, entry: str) -> None:
    """A distribution as pip leaves it: the package and its .dist-info with entry points."""
    shutil.copytree(PLUGIN / package, site / package)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[darkcfg.sections]\n{entry} = {package}\n")


def run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    install(site, "darkcfg_channel_scale", "darkcfg-channel-scale", "channel_scale")
    return site


@pytest.mark.slow
def test_an_installed_plugin_builds_checks_trains_and_saves(site, tmp_path):
    cfg = tmp_path / "scaled.cfg"
    cfg.write_text(CFG)
    script = textwrap.dedent(f"""
        import torch
        from builders import build
        from builders.weights import load_weights
        net = build({str(cfg)!r})
        assert type(net.layers[1]).__name__ == "ChannelScale", net.layers[1]
        x = torch.rand(2, 3, 8, 8)
        y = net.layers[1](net.layers[0](x))
        assert torch.equal(y, torch.relu(net.layers[0](x) * 0.5))
        load_weights(net, {str(tmp_path / "run" / "scaled_final.weights")!r})
        assert not torch.equal(net.layers[1].weight, torch.full((4,), 0.5)), "not trained"
        print("plugin ok", net.layers[1].weight.tolist())
    """)
    check = run(site, str(ROOT / "runner.py"), "check", str(cfg), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    summary = run(site, str(ROOT / "runner.py"), str(cfg), "--summary", cwd=tmp_path)
    assert summary.returncode == 0 and "channel_scale" in summary.stdout, summary.stderr
    train = run(site, str(ROOT / "runner.py"), str(cfg), "--train", "--classes", "4",
                "--out", str(tmp_path / "run"), "--no-progress", cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    assert (tmp_path / "run" / "scaled_final.weights").exists(), os.listdir(tmp_path / "run")
    loaded = run(site, "-c", script, cwd=tmp_path)
    assert loaded.returncode == 0 and "plugin ok" in loaded.stdout, loaded.stderr


def test_the_linter_checks_plugin_keys(site, tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(CFG.replace("init=0.5", "inti=0.5\n").replace("activation=relu",
                                                                  "activation=rleu"))
    out = run(site, str(ROOT / "runner.py"), "check", str(cfg), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "W201" in text and "'init'" in text, text  # unknown key, with did-you-mean
    assert "E204" in text and "relu" in text, text
    cfg.write_text(CFG.replace("init=0.5", "init=-1"))
    out = run(site, str(ROOT / "runner.py"), "check", str(cfg), cwd=tmp_path)
    assert out.returncode == 1 and "E203" in out.stdout + out.stderr, out.stdout + out.stderr
    cfg.write_text(CFG.replace("init=0.5", "init=half"))
    out = run(site, str(ROOT / "runner.py"), "check", str(cfg), cwd=tmp_path)
    assert out.returncode == 1 and "E202" in out.stdout + out.stderr, out.stdout + out.stderr


def test_an_alias_of_a_plugin_section(site, tmp_path):
    cfg = tmp_path / "alias.cfg"
    cfg.write_text(CFG.replace("[channel_scale]", "[chscale]"))
    out = run(site, str(ROOT / "runner.py"), str(cfg), "--summary", cwd=tmp_path)
    assert out.returncode == 0 and "channel_scale" in out.stdout, out.stdout + out.stderr


def test_a_plugin_that_fails_to_import_is_a_clear_error(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "broken_plugin", "darkcfg-broken", "broken")
    cfg = tmp_path / "scaled.cfg"
    cfg.write_text(CFG)
    out = run(site, str(ROOT / "runner.py"), str(cfg), "--summary", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "E206" in text and "darkcfg-broken" in text and "fancy_kernels" in text, text
    assert "Traceback" not in text, text


def test_built_in_cfgs_never_import_plugins(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "broken_plugin", "darkcfg-broken", "broken")
    cfg = tmp_path / "plain.cfg"
    cfg.write_text(CFG.replace("[channel_scale]\ninit=0.5\nactivation=relu\n", ""))
    out = run(site, str(ROOT / "runner.py"), str(cfg), "--summary", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


class Doubler(Layer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def build_doubler(block, ctx):
    return Doubler(), ctx.input


def test_register_section_in_process_and_twice():
    name = "test_doubler"
    try:
        register_section(name, build_doubler, keys={"times": (int, 2, 1)})
        blocks = parse_text(f"[net]\nwidth=4\nheight=4\nchannels=1\n[{name}]\ntimes=3\n")
        assert blocks[1].int("times") == 3
        assert blocks[1].type == name
        net = build(blocks)
        assert torch.equal(net(torch.ones(1, 1, 4, 4))[0], torch.full((1, 1, 4, 4), 2.0))
        with pytest.raises(ValueError, match="already registered"):
            register_section(name, build_doubler)
        with pytest.raises(ValueError, match="already registered"):
            register_section("convolutional", build_doubler)

        @register_section(name, keys={"times": (int, 2, 1)}, override=True)
        def build_again(block, ctx):
            return Doubler(), ctx.input

        assert SECTION_BUILDERS[name] is build_again
        with pytest.raises(CfgError) as err:
            parse_text(f"[net]\nwidth=4\nheight=4\nchannels=1\n[{name}]\ntimes=0\n")
        assert "E203" in str(err.value)
        with pytest.raises(TypeError, match="type must be"):
            register_section("test_badtype", build_doubler, keys={"k": (dict, None)})
    finally:
        SECTION_BUILDERS.pop(name, None)
        schema.SECTIONS.pop(name, None)
        schema._CANONICAL.pop(name, None)
        for found in schema._TABLES.values():
            found.pop(name, None)



def _unregister(name: str) -> None:
    SECTION_BUILDERS.pop(name, None)
    schema.SECTIONS.pop(name, None)
    schema._CANONICAL.pop(name, None)
    for found in schema._TABLES.values():
        found.pop(name, None)


def test_a_key_the_schema_does_not_type_reads_as_darknet_would():
    """A section registered without `keys` (its values typed by guess): `times=1_0` was a
    str, and `block.int("times")` Python's int() of it, 10 (Darknet's atoi: 1); `scale=nan`
    NaN. E202 at the value now, as a typed key's."""
    name = "test_untyped"
    try:
        register_section(name, build_doubler)
        text = f"[net]\nwidth=4\nheight=4\nchannels=1\n[{name}]\ntimes=1_0\nscale=nan\n"
        block = parse_text(text)[1]
        for get, key, said in ((block.int, "times", "atoi reads 1, not 10"),
                               (block.float, "scale", "atof reads nan"),
                               (block.ints, "times", "atoi reads 1, not 10")):
            with pytest.raises(CfgError) as err:
                get(key)
            d = err.value.first
            assert (d.code, d.line) == ("E202", 6 if key == "times" else 7), d
            assert said in d.message, d
    finally:
        _unregister(name)


@pytest.mark.parametrize("name,builder,error", [
    ("test_notfn", 42, TypeError),            # was registered, then "'int' is not callable"
    ("", build_doubler, ValueError),          # no header can name these: registered, unusable
    ("test bad", build_doubler, ValueError),
    ("[test_br]", build_doubler, ValueError),
])
def test_register_section_refuses_what_no_cfg_can_use(name, builder, error):
    try:
        with pytest.raises(error, match="builder must be a function|cannot be a section name"):
            register_section(name, builder)
        assert name not in SECTION_BUILDERS and not schema.is_section_name(name)
    finally:
        _unregister(name)


@pytest.mark.parametrize("returned", [None, "layer", (Doubler(),), (Doubler(), (1, 4, 4))])
def test_a_builder_that_returns_no_layer_and_shape_is_named(returned):
    """A plugin builder's mistake reads as the builder's, not as a bare 'cannot unpack'."""
    name = "test_badreturn"
    try:
        register_section(name, lambda block, ctx: returned)
        with pytest.raises(TypeError, match=r"builder of \[test_badreturn\] returned .*"
                                            r"returns \(Layer, Shape\)"):
            build(f"[net]\nwidth=4\nheight=4\nchannels=1\n[{name}]\n")
    finally:
        _unregister(name)


def test_a_builder_that_raises_is_named_in_the_error():
    """A plugin builder's own bug (a KeyError in its code) keeps its type and message, and
    says which layer and line it was building (it named only the plugin's line)."""
    name = "test_raises"

    def broken(block, ctx):
        return {}["missing"]

    try:
        register_section(name, broken)
        with pytest.raises(KeyError) as err:
            build(f"[net]\nwidth=4\nheight=4\nchannels=1\n\n[{name}]\n")
        assert err.value.__notes__ == [f"while building layer 0 [{name}] (<string>:6)"]
    finally:
        _unregister(name)


class Failing(Layer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_layer_error_that_is_not_about_sizes_passes_as_it_is():
    """net(x) names the input shape when a layer fails on a size it cannot take; another
    RuntimeError of a layer (here a plugin's), on any input size, is not relabelled."""
    from builders import InputError

    name = "test_failing"
    try:
        register_section(name, lambda block, ctx: (Failing(), ctx.input))
        net = build(f"[net]\nwidth=8\nheight=8\nchannels=3\n[{name}]\n")
        for size in (8, 16):
            with pytest.raises(RuntimeError, match="^CUDA error") as err:
                net(torch.rand(1, 3, size, size))
            assert not isinstance(err.value, InputError)
    finally:
        _unregister(name)
