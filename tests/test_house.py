"""The house rules: the layers import one way and never in a circle, cfgparse (and the linter's
torch-free half) imports no torch, and each rule has one home that builders, trainer and linter
share."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cfgparse", "builders", "darkcfg")

NET = "[net]\nwidth=8\nheight=8\nchannels=3\n\n"


# -- imports ---------------------------------------------------------------------------------------

def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages and runner.py."""
    found = {"runner": ROOT / "runner.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file: top level, inside functions,
    under TYPE_CHECKING. `from package import module` counts as importing that module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    from .c import x\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py",
               "pkg.c": pkg / "c.py"}
    assert imports_of("pkg.a", pkg / "a.py", modules) == {"pkg.b", "pkg.c"}


def test_no_import_cycle_among_the_project_modules():
    graph = import_graph()
    assert {"cfgparse.parser", "builders.graph", "darkcfg.lint.cli", "runner"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


#: The layers, bottom up. A module may import its own layer and the ones below it, never one above;
#: within darkcfg the job packages sit side by side unless listed here.
LAYERS = {
    "cfgparse": 0,
    "builders": 1,
    "darkcfg": 2, "darkcfg.bundled": 2, "darkcfg.config": 2, "darkcfg.model": 2, "darkcfg.lint": 2,
    "darkcfg.stopping": 2, "darkcfg.console": 2,
    "darkcfg.data": 3, "darkcfg.detect": 4, "darkcfg.export": 5,
    "darkcfg.train": 6,
    "darkcfg.cli": 7,
    "runner": 8,
}


def layer_of(module: str) -> str:
    if module == "darkcfg.__main__":  # `python -m darkcfg` is the command line
        return "darkcfg.cli"
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "darkcfg" and len(parts) > 1 else parts[0]


def test_layers_point_one_way():
    """cfgparse <- builders <- darkcfg's jobs <- cli <- runner.py; inference and export never import
    training. The one exception: `python -m cfgparse check`, a shim that hands over to the
    linter."""
    upward = []
    for name, targets in import_graph().items():
        for target in targets:
            a, b = layer_of(name), layer_of(target)
            if LAYERS[b] > LAYERS[a] or (LAYERS[a] == LAYERS[b] and a != b and LAYERS[a] != 2):
                upward.append(f"{name} -> {target}")
    assert upward == ["cfgparse.__main__ -> darkcfg.lint.cli"]


def test_only_the_three_packages_and_the_runner_shim_are_top_level():
    """`pip install darkcfg` puts cfgparse, builders, darkcfg and runner (the design card's
    shim) into site-packages: nothing with a generic name like `training` or `lint`."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    include = setup["options.packages.find"]["include"].split()
    assert {name.split(".")[0] for name in include} == {"cfgparse", "builders", "darkcfg"}
    assert setup["options"]["py_modules"].split() == ["runner"]
    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert top == {"cfgparse", "builders", "darkcfg"}


def test_inference_and_export_never_import_training():
    graph = import_graph()
    reach: dict[str, set[str]] = {}

    def closure(module: str) -> set[str]:
        if module not in reach:
            reach[module] = set()
            for t in graph[module]:
                reach[module] |= {t} | closure(t)
        return reach[module]

    for name in graph:
        if layer_of(name) in ("darkcfg.detect", "darkcfg.export", "darkcfg.model", "builders"):
            bad = {m for m in closure(name) if layer_of(m) in ("darkcfg.train", "darkcfg.cli")}
            assert not bad, f"{name} reaches {sorted(bad)}"


def test_library_code_never_sees_argparse():
    """A command parses its arguments into typed options; the functions it calls take those."""
    users = sorted(name for name, path in project_modules().items()
                   if "import argparse" in path.read_text(encoding="utf-8"))
    # the command lines: darkcfg.cli, the linter's, cfgparse's and presets' own, and the one
    # parser class they (and preview) share, cfgparse.usage.CommandParser
    assert [u for u in users if not u.startswith("darkcfg.cli")] == [
        "builders.presets", "cfgparse.__main__", "cfgparse.usage", "darkcfg.lint.cli"]


TORCH_FREE = ["cfgparse", "cfgparse.parser", "cfgparse.yaml_io", "cfgparse.writer",
              "cfgparse.rules", "cfgparse.assembly", "cfgparse.__main__", "cfgparse.usage",
              "darkcfg.lint",
              "darkcfg.lint.block_rules", "darkcfg.lint.stages", "darkcfg.lint.pool",
              "darkcfg.lint.report", "darkcfg.lint.cli",
              "builders.memory", "builders.plan", "darkcfg.stopping", "darkcfg.console",
              "darkcfg.bundled"]


def test_cfgparse_and_the_linters_block_rules_import_no_torch():
    """In a fresh interpreter: cfgparse, the linter without its graph stage (torch-free by
    design: `--no-build`), and the builders' memory arithmetic and liveness planner. (Only the
    graph stage, darkcfg.lint.graph_rules, imports torch: not imported here, a torch import costs CI
    seconds.)"""
    script = ("import importlib, sys\n"
              f"for name in {TORCH_FREE!r}:\n"
              "    importlib.import_module(name)\n"
              "    assert 'torch' not in sys.modules, name\n"
              "print('lark' in sys.modules)\n")  # the parser's own dependency: it does look
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


SETTINGS = """
import logging, os, signal, sys, warnings
import torch
def settings():
    return dict(
        threads=torch.get_num_threads(), interop=torch.get_num_interop_threads(),
        dtype=torch.get_default_dtype(), device=str(torch.get_default_device()),
        deterministic=torch.are_deterministic_algorithms_enabled(),
        cudnn=(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        mkldnn=torch.backends.mkldnn.enabled, matmul=torch.get_float32_matmul_precision(),
        grad=torch.is_grad_enabled(), rng=torch.random.get_rng_state().tolist(),
        signals={s: signal.getsignal(s) for s in signal.valid_signals()
                 if s not in (signal.SIGKILL, signal.SIGSTOP)},
        logging=(logging.root.level, list(logging.root.handlers), logging.root.manager.disable),
        warnings=list(warnings.filters), excepthook=sys.excepthook, env=dict(os.environ),
        recursion=sys.getrecursionlimit())
before = settings()
"""


def test_importing_the_packages_changes_nothing_global():
    """A library user's `import darkcfg` / `from builders import build` (and the job packages
    behind the documented functions) prints nothing and leaves torch's threads, dtype,
    deterministic flags, random state, the signal handlers, logging and warnings filters as they
    were (the darkcfg docstring promises it; training and the command line set what they need
    when they run)."""
    modules = ["cfgparse", "builders", "darkcfg", "builders.graph", "builders.weights",
               "darkcfg.model", "darkcfg.detect.decode", "darkcfg.detect.run",
               "darkcfg.export.onnx", "darkcfg.export.emit", "darkcfg.lint", "darkcfg.data",
               "darkcfg.train", "darkcfg.train.loop", "darkcfg.cli", "darkcfg.stopping"]
    script = (SETTINGS + "import importlib\n"
              f"for name in {modules!r}:\n"
              "    importlib.import_module(name)\n"
              "after = settings()\n"
              "changed = [k for k in before if before[k] != after[k]]\n"
              "assert not changed, changed\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


# -- one home per rule -----------------------------------------------------------------------------

def test_every_registered_section_has_a_test_case():
    from test_layers_conv_pool_misc import SECTION_CASES
    from test_layers_dense_routing_heads import SECTION_CFGS

    from builders.registry import registered_sections

    assert not set(SECTION_CASES) & set(SECTION_CFGS), "one test file per section"
    assert set(SECTION_CASES) | set(SECTION_CFGS) == set(registered_sections())


def test_schema_and_builders_know_the_same_activations():
    from builders.activations import ACTIVATIONS as BUILT
    from cfgparse.schema import ACTIVATIONS as PARSED

    assert sorted(PARSED) == sorted(BUILT)


def test_not_honoured_and_common_keys_come_from_the_schema():
    import dataclasses

    from builders import build
    from cfgparse import schema
    from darkcfg.config import NOT_HONOURED, NetConfig

    fields = {f.name for f in dataclasses.fields(NetConfig)}
    assert set(NOT_HONOURED) == set(schema.SECTIONS["net"]) - fields
    assert "ema_alpha" in NOT_HONOURED and "batch" not in NOT_HONOURED
    # one [net] reader: the detection augmentations are NetConfig's, honoured by detection
    assert not {"mosaic", "mixup", "letter_box", "blur"} & set(NOT_HONOURED)
    # every common layer key is the graph's: never reported as ignored (W301)
    common = "\n".join(f"{key}={spec.default if spec.default is not None else 1}"
                       for key, spec in schema.COMMON.items())
    net = build(NET + "[maxpool]\nsize=2\nstride=2\n" + common + "\n", device="meta")
    assert [w.code for w in net.warnings] == []


@pytest.mark.parametrize("settings", ["policy=poly\nmax_batches=0", "policy=step\nstep=0",
                                      "policy=steps\nsteps=10\nscales=.1\npolicy=steps",
                                      "policy=sgdr\nsgdr_mult=0\nmax_batches=10"])
def test_trainer_and_linter_say_the_same_about_net(tmp_path, settings):
    from cfgparse import CfgError, parse
    from darkcfg.config import NetConfig
    from darkcfg.lint import Options, check_file

    text = "[net]\nwidth=8\nheight=8\nchannels=3\n" + settings + "\n\n[maxpool]\nsize=2\n"
    path = tmp_path / "m.cfg"
    path.write_text(text)
    linted = [d for d in check_file(path, Options(build=False)) if d.code == "E305"]
    blocks = parse(path)
    if "scales=.1" in settings:  # runs as written: neither complains
        assert linted == []
        NetConfig.from_block(blocks[0])
        return
    with pytest.raises(CfgError) as err:
        NetConfig.from_block(blocks[0])
    assert [d.format() for d in err.value.diagnostics] == [d.format() for d in linted]


def test_builder_and_linter_give_the_same_head_formula(tmp_path):
    from builders import build
    from cfgparse import CfgError
    from darkcfg.lint import check_file

    text = (NET + "[convolutional]\nfilters=100\nsize=1\nactivation=linear\n\n"
            "[yolo]\nmask=0,1,2\nanchors=10,13, 16,30, 33,23\nclasses=80\nnum=3\n")
    path = tmp_path / "m.cfg"
    path.write_text(text)
    (linted,) = check_file(path)
    with pytest.raises(CfgError) as err:
        build(path)
    formula = "len(mask)=3 x (classes=80 + 5)"
    assert "filters=255 = " + formula in linted.message
    # one rule (cfgparse.rules.head_input_problem): the same place and words from both
    assert err.value.first.format() == linted.format()
    assert linted.line == 7  # the conv's filters


def test_builder_and_linter_resolve_references_alike(tmp_path):
    from builders import build
    from cfgparse import CfgError
    from darkcfg.lint import Options, check_file

    for route in ("[route]\nlayers=-1, -5\n", "[route]\n", "[sam]\nfrom=3\n"):
        path = tmp_path / "m.cfg"
        path.write_text(NET + "[maxpool]\nsize=2\nstride=2\n\n" + route)
        (linted,) = check_file(path, Options(build=False))
        with pytest.raises(CfgError) as err:
            build(path)
        assert err.value.first.format() == linted.format()


def test_one_liveness_planner_for_forward_and_the_memory_estimate():
    from builders import build
    from builders.memory import FLOAT_BYTES, estimate_memory
    from builders.plan import plan_liveness

    # layer 3 reads layer 0: layer 0 is kept until then, layers 1 and 2 are not kept at all
    plan = plan_liveness([(), (), (), (0,)], keep=[3])
    assert plan.store == {0, 3} and plan.free_after == ((), (), (), (0,))
    assert plan.peak([10, 1, 1, 1], input_size=5) == 5 + 10
    assert plan.peak([1, 1, 1, 10], input_size=5) == 1 + 1 + 10  # layer 0 and 2 alive at 3

    net = build(NET + "[maxpool]\nsize=2\nstride=2\n\n[maxpool]\nsize=2\nstride=2\n\n"
                "[route]\nlayers=-2\n", device="meta")
    assert net.liveness == plan_liveness([m.sources for m in net.meta], net.output_indices)
    assert (net._store, net._free_after) == (net.liveness.store, net.liveness.free_after)
    sizes = [m.output.size for m in net.meta]
    assert estimate_memory(net, batch=1)["peak_activation_bytes"] == \
        net.liveness.peak(sizes, net.input_shape.size) * FLOAT_BYTES


# -- detection heads: one module each, one boxes module --------------------------------------------

HEAD_MODULES = {"yolo": "yolo", "Gaussian_yolo": "gaussian_yolo", "region": "region",
                "detection": "detection", "contrastive": "contrastive"}


@pytest.mark.parametrize("section", sorted(HEAD_MODULES))
def test_a_head_is_one_module(section):
    """Its builder, layer class, typed loss settings and decoding live in builders/heads/<x>.py
    (what it extends from another head aside); its torch-free rules stay in cfgparse."""
    import dataclasses

    from builders import build
    from builders.registry import SECTION_BUILDERS, registered_sections
    from cfgparse import schema

    registered_sections()
    module = f"builders.heads.{HEAD_MODULES[section]}"
    assert SECTION_BUILDERS[section].__module__ == module
    assert section in schema.SECTIONS
    cfgs = {"yolo": "[convolutional]\nfilters=21\nsize=1\n\n[yolo]\nmask=0,1,2\nclasses=2\nnum=3",
            "Gaussian_yolo": "[convolutional]\nfilters=36\nsize=1\n\n[Gaussian_yolo]\n"
                             "mask=0,1,2\nclasses=3\nnum=3",
            "region": "[convolutional]\nfilters=14\nsize=1\n\n[region]\nclasses=2\nnum=2",
            "detection": "[connected]\noutput=48\n\n[detection]\nclasses=2\nside=2\nnum=2\n"
                         "coords=4",
            "contrastive": "[connected]\noutput=4\n\n[contrastive]\nclasses=4"}
    layer = build(NET + cfgs[section] + "\n", device="meta").layers[-1]
    assert type(layer).__module__ == module
    assert dataclasses.is_dataclass(layer.settings)
    assert dataclasses.fields(layer.settings)  # typed, read once from the block
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(layer.settings, dataclasses.fields(layer.settings)[0].name, 0)
    if section != "contrastive":  # decoded by its own module (GaussianYolo's extends [yolo]'s)
        assert type(layer.head_decoding).__module__ == module


def test_losses_hand_results_back_by_value_and_the_trainer_asks_no_layer_its_type():
    """No side-effect attributes (loss_stats, last_delta) and no untyped option dicts
    (train_options, loss_cfg) remain; the training package never tests a layer's class."""
    for path in [*sorted((ROOT / "darkcfg").rglob("*.py")),
                 *sorted((ROOT / "builders").rglob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        for name in ("loss_stats", "last_delta", "train_options", "loss_cfg"):
            assert name not in text, f"{path.relative_to(ROOT)} uses {name}"
    for path in sorted((ROOT / "darkcfg" / "train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                target = ast.unparse(node.args[0])
                assert "layer" not in target, f"{path.relative_to(ROOT)}: isinstance({target})"


def test_warnings_are_said_through_the_console():
    """One printer of info and warning lines (darkcfg/console.py: rank 0 of a torchrun job,
    above a progress bar): no print or write of a "warning..." text elsewhere, no second say or
    warn, no say of a warning. (The diagnostics a command reports, `check`'s and `data
    check`'s, are its output.)"""
    def says_warning(node: ast.AST) -> bool:  # "warning...", f"warning...", severity=WARNING
        if isinstance(node, ast.keyword):
            return node.arg == "severity" and getattr(node.value, "id", "") == "WARNING"
        text = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else node
        return isinstance(text, ast.Constant) and isinstance(text.value, str) and \
            text.value.lstrip().startswith("warning")

    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            if where == "darkcfg/console.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef) and node.name in ("say", "warn"):
                    found.append(f"{where}:{node.lineno}: def {node.name}")
                elif isinstance(node, ast.Call) and \
                        getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                            "print", "write", "say") and \
                        any(says_warning(a) for arg in node.args for a in ast.walk(arg)):
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)[:60]}")
    assert found == [], "\n".join(found)


def test_box_geometry_has_one_home():
    """IoU, letterbox and resize are defined in builders/boxes.py and nowhere else."""
    import re

    pattern = re.compile(r"^\s*def (box_iou|box_giou|box_diou|box_ciou|letterbox\w*|"
                         r"resize_image|resize_align_corners|correct_boxes|_overlap)\b", re.M)
    homes = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in pattern.findall(path.read_text(encoding="utf-8")):
                homes.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert homes and all(places == ["builders/boxes.py"] for places in homes.values()), homes


def test_builders_lists_its_lazy_names():
    """builders loads its names on first use: dir() (tab completion) missed `build`, and its
    docstring announced "the names below" with none below."""
    import builders

    assert set(builders.__all__) <= set(dir(builders))
    missing = [name for name in builders.__all__ if name not in builders.__doc__]
    assert missing == []
