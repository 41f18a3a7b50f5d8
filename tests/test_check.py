"""`darkcfg check`: the must-show bad cases, block and graph rules, output formats, exit codes,
the memory guard, and the real Darknet corpus (../shared/darknet)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from builders.memory import parse_size
from cfgparse.errors import CODES, ERROR, WARNING, Diagnostic
from darkcfg.lint.cli import main
from darkcfg.lint.report import sarif_log
from darkcfg.lint.stages import check_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "darknet"
SARIF_SCHEMA = Path(__file__).with_name("data") / "sarif-2.1.0-rtm.5.json"

# Lines 1-5; the first layer section starts on line 6.
NET = "[net]\nwidth=32\nheight=32\nchannels=3\n\n"
CONV = "[convolutional]\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"


def write(tmp_path: Path, text: str, name: str = "model.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- the twelve must-show cases: exactly one located diagnostic each -------------------------------

MUST_SHOW = {
    # name: (cfg text, code, line, column)
    "missing '='": (NET + "[convolutional]\nfilters 16\nsize=3\n", "E102", 7, 8),
    "unknown section": (NET + "[convolutinal]\nfilters=16\n", "E201", 6, 2),
    "typo'd key": (NET + "[convolutional]\nfilters=16\nsize=3\nstrid=1\nactivation=leaky\n",
                   "W201", 9, 1),
    "route to a nonexistent layer": (NET + CONV + "[route]\nlayers=-1, -5\n", "E301", 14, 12),
    "non-numeric value": (NET + "[convolutional]\nfilters=abc\n", "E202", 7, 9),
    "missing ']'": (NET + "[convolutional\nfilters=16\n", "E101", 6, 15),
    "empty file": ("", "E100", 1, 1),
    "option before any section": ("batch=1\n" + NET + CONV, "E103", 1, 1),
    "negative size": (NET + "[convolutional]\nfilters=16\nsize=-3\n", "E203", 8, 6),
    # random=-1 trained at 32x32 silently (multi-scale's floor)
    "negative random": (NET + "[convolutional]\nfilters=6\nsize=1\n\n[yolo]\nmask=0\n"
                        "anchors=1,2\nclasses=1\nnum=1\nrandom=-1\n", "E203", 15, 8),
    "filters=1000000000": (NET + "[convolutional]\nfilters=1000000000\nsize=3\npad=1\n"
                           "activation=leaky\n", "E401", 7, 9),
    # 32x32 -> (32-3)/3+1 = 10x10: not a whole up/down-scale, so no fork can add them
    "shortcut between layers of different spatial size": (
        NET + CONV + "[convolutional]\nfilters=8\nsize=3\nstride=3\nactivation=leaky\n\n"
        "[shortcut]\nfrom=-2\n", "E302", 20, 6),
    "unknown activation": (NET + "[convolutional]\nfilters=16\nactivation=lekay\n", "E204", 8, 12),
}


@pytest.mark.parametrize("name", list(MUST_SHOW))
def test_must_show_case_gives_one_located_diagnostic(tmp_path, name):
    text, code, line, column = MUST_SHOW[name]
    path = write(tmp_path, text)
    found = check_file(path)
    assert [(d.code, d.line, d.column) for d in found] == [(code, line, column)], \
        "\n".join(d.format() for d in found)
    d = found[0]
    assert d.path == str(path)
    assert d.hint, "every diagnostic says how to fix it"
    if line > 0 and text:
        assert d.source.strip() == text.splitlines()[line - 1].strip()


def test_must_show_hints_name_the_fix(tmp_path):
    hints = {}
    for name in ("typo'd key", "unknown section", "unknown activation", "missing '='"):
        text = MUST_SHOW[name][0]
        hints[name] = check_file(write(tmp_path, text))[0].hint
    assert "stride" in hints["typo'd key"]
    assert "convolutional" in hints["unknown section"]
    assert "leaky" in hints["unknown activation"]
    assert "filters=" in hints["missing '='"]


def test_huge_filters_are_estimated_not_allocated(tmp_path):
    """The 1e9-filter conv (108 GB of weights) is reported from a meta build: peak RSS stays near
    that of checking a tiny cfg in the same process."""
    small = write(tmp_path, NET + CONV, "small.cfg")
    huge = write(tmp_path, MUST_SHOW["filters=1000000000"][0], "huge.cfg")
    script = textwrap.dedent(f"""
        import json, resource
        from darkcfg.lint import check_file
        assert check_file({str(small)!r}) == []
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        found = check_file({str(huge)!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"codes": [d.code for d in found], "message": found[0].message,
                          "grown_kib": after - before}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == ["E401"]
    floats = int(re.search(r"([\d,]+) values", report["message"]).group(1).replace(",", ""))
    assert floats >= 27 * 10**9  # 1e9 filters x 3 channels x 3 x 3
    assert report["grown_kib"] < 64 * 1024, report


# -- block rules -----------------------------------------------------------------------------------

def codes_at(found: list[Diagnostic]) -> list[tuple[str, int, int]]:
    return [(d.code, d.line, d.column) for d in found]


@pytest.mark.parametrize("settings, code, key", [
    ("batch=64\nsubdivisions=3\n", "E305", "subdivisions"),
    ("batch=4\nsubdivisions=8\n", "E305", "subdivisions"),
    ("policy=steps\nsteps=100,200\nscales=.1\n", "E305", "scales"),
    ("policy=steps\nsteps=100\n", "E305", "policy"),
    ("policy=steps\nsteps=300,200\nscales=.1,.1\n", "E305", "steps"),
    ("max_batches=100\nburn_in=1000\n", "E305", "burn_in"),
    ("policy=poly\nmax_batches=0\n", "E305", "max_batches"),
    ("policy=step\nstep=0\n", "E305", "step"),
    ("policy=stepz\n", "E204", "policy"),
])
def test_net_rules(tmp_path, settings, code, key):
    text = "[net]\nwidth=32\nheight=32\nchannels=3\n" + settings + "\n" + CONV
    found = check_file(write(tmp_path, text), )
    assert [d.code for d in found] == [code], "\n".join(d.format() for d in found)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(key + "="))
    assert found[0].line == line


def test_net_rules_accept_good_schedules(tmp_path):
    text = ("[net]\nwidth=32\nheight=32\nchannels=3\nbatch=64\nsubdivisions=16\npolicy=steps\n"
            "steps=100,200\nscales=.1,.1\nburn_in=10\nmax_batches=300\n\n" + CONV)
    assert check_file(write(tmp_path, text)) == []


def test_net_without_input_size(tmp_path):
    found = check_file(write(tmp_path, "[net]\nbatch=1\n\n" + CONV))
    assert codes_at(found) == [("E305", 1, 1)]


def test_decreasing_step_is_pointed_at(tmp_path):
    text = "[net]\nwidth=32\nheight=32\nchannels=3\npolicy=steps\nsteps=100, 300,200\n" \
        "scales=.1,.1,.1\n\n" + CONV
    (d,) = check_file(write(tmp_path, text))
    assert (d.code, d.line, d.column) == ("E305", 6, 16)
    assert "200" in d.message and "300" in d.message


@pytest.mark.parametrize("layers, column", [("0", 8), ("1", 8), ("-2", 8), ("-1,-3", 11)])
def test_route_reference_out_of_range(tmp_path, layers, column):
    # the route is layer 1: only layer 0 (-1) exists before it
    found = check_file(write(tmp_path, NET + CONV + f"[route]\nlayers={layers}\n"))
    bad = [d for d in found if d.code == "E301"]
    if layers == "0":
        assert bad == [] and not any(d.severity == ERROR for d in found)
        return
    assert codes_at(bad) == [("E301", 14, column)]


@pytest.mark.parametrize("section, key", [("shortcut", "from"), ("sam", "from"),
                                          ("scale_channels", "from")])
def test_other_references_out_of_range(tmp_path, section, key):
    found = check_file(write(tmp_path, NET + CONV + f"[{section}]\n{key}=-3\n"))
    assert codes_at(found) == [("E301", 14, len(key) + 2)]


def test_reference_key_missing(tmp_path):
    found = check_file(write(tmp_path, NET + CONV + "[route]\n"))
    assert codes_at(found) == [("E301", 13, 1)]


def test_share_index_out_of_range(tmp_path):
    text = NET + CONV + CONV.replace("activation=leaky", "activation=leaky\nshare_index=5")
    found = check_file(write(tmp_path, text))
    assert [d.code for d in found] == ["E301"]
    assert found[0].line == text.splitlines().index("share_index=5") + 1


def yolo_cfg(filters: int, head: str, *, section: str = "yolo") -> str:
    return (NET + CONV + f"[convolutional]\nfilters={filters}\nsize=1\nactivation=linear\n\n"
            f"[{section}]\n{head}\n")


YOLO = "mask=0,1,2\nanchors=10,13, 16,30, 33,23\nclasses=80\nnum=3"


def test_yolo_filters_must_match_mask_and_classes(tmp_path):
    found = check_file(write(tmp_path, yolo_cfg(100, YOLO)))
    assert codes_at(found) == [("E304", 14, 9)]  # at the conv's filters
    assert "filters=255" in found[0].hint and "line 18" in found[0].message
    assert check_file(write(tmp_path, yolo_cfg(3 * (80 + 5), YOLO))) == []


def test_gaussian_yolo_region_detection_variants(tmp_path):
    gaussian = check_file(write(tmp_path, yolo_cfg(3 * (80 + 5), YOLO, section="Gaussian_yolo")))
    assert [d.code for d in gaussian] == ["E304"] and "filters=267" in gaussian[0].hint
    assert check_file(write(tmp_path, yolo_cfg(3 * (80 + 9), YOLO,
                                               section="Gaussian_yolo"))) == []
    region = "anchors=1,1, 2,2\nclasses=20\ncoords=4\nnum=2"
    found = check_file(write(tmp_path, yolo_cfg(100, region, section="region")))
    assert [d.code for d in found] == ["E304"] and "filters=50" in found[0].hint
    assert check_file(write(tmp_path, yolo_cfg(2 * (4 + 1 + 20), region, section="region"))) == []
    detection = (NET + "[connected]\noutput=100\nactivation=linear\n\n"
                 "[detection]\nclasses=20\ncoords=4\nnum=2\nside=7\n")
    found = check_file(write(tmp_path, detection))
    assert codes_at(found) == [("E304", 7, 8)] and "output=1470" in found[0].hint


def test_mask_index_without_anchor_is_pointed_at(tmp_path):
    head = "mask=0, 7\nanchors=10,13, 16,30, 33,23\nclasses=1\nnum=3"
    found = check_file(write(tmp_path, yolo_cfg(2 * 6, head)))
    assert codes_at(found) == [("E304", 19, 9)]


def test_anchor_count_and_mask_beyond_num_warn(tmp_path):
    # Darknet pads a short anchors list with 0.5 and reads past num for mask >= num
    head = "mask=2,3\nanchors=10,13, 16,30, 33,23, 40,40\nclasses=1\nnum=3"
    found = check_file(write(tmp_path, yolo_cfg(2 * 6, head)))
    assert [(d.code, d.severity) for d in found] == [("W304", WARNING), ("W304", WARNING)]
    merged = "mask=0\nanchors=10,13 16,30\nclasses=1\nnum=2"
    (d,) = check_file(write(tmp_path, yolo_cfg(6, merged)))
    assert d.code == "W304" and "comma" in d.hint


def test_classes_must_agree_across_heads(tmp_path):
    text = yolo_cfg(255, YOLO) + "\n" + CONV.replace("filters=8", "filters=75") + \
        "[yolo]\nmask=0,1,2\nanchors=10,13, 16,30, 33,23\nclasses=20\nnum=3\n"
    found = check_file(write(tmp_path, text))
    assert [(d.code, d.severity) for d in found] == [("W302", WARNING)]
    assert "80" in found[0].message and found[0].line == text.splitlines().index("classes=20") + 1


# -- graph rules -----------------------------------------------------------------------------------

def test_resampling_shortcut_warns_for_alexeyab_only(tmp_path, capsys):
    # 32x32 -> 16x16: pjreddie's ResNets subsample the from-layer; AlexeyAB's Darknet asserts
    text = NET + CONV + "[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n" \
        "\n[shortcut]\nfrom=-2\n"
    path = write(tmp_path, text)
    found = check_file(path)
    assert [(d.code, d.severity, d.line) for d in found] == [("W303", WARNING, 21)]
    rc, out, _ = run_main(capsys, "--format", "json", "--flavor", "pjreddie", str(path))
    assert (rc, json.loads(out)) == (0, [])


def test_a_shortcut_of_no_integer_scale_is_one_rule_for_build_and_check(tmp_path):
    """32x32 + 11x11 (stride 3): no integer scale, positions lost in either fork. The rule
    lives once (cfgparse.rules.shortcut_grid_rule): the builder raises its E302 (it used to
    build a lossy resampling shortcut that only `check` refused), the check reports it."""
    from builders import build
    from cfgparse import CfgError

    text = NET + CONV + "[convolutional]\nfilters=8\nsize=3\nstride=3\npad=1\n" \
        "activation=leaky\n\n[shortcut]\nfrom=-2\n"
    path = write(tmp_path, text)
    for flavor in ("alexeyab", "pjreddie"):
        with pytest.raises(CfgError) as raised:
            build(path, flavor=flavor)
        (d,) = raised.value.diagnostics
        assert (d.code, d.line) == ("E302", 21) and "layer 0 is 32x32" in d.message
    found = check_file(path)
    assert [(d.code, d.line) for d in found] == [("E302", 21)]


def test_builder_errors_come_back_located(tmp_path):
    # a route of 32x32 and 16x16 outputs: the route builder's E302, at the route
    text = NET + CONV + "[maxpool]\nsize=2\nstride=2\n\n[route]\nlayers=-1,-2\n"
    found = check_file(write(tmp_path, text))
    assert [(d.code, d.line) for d in found] == [("E302", 18)]


def test_unread_keys_are_reported_once(tmp_path):
    # 'extra' is a schema key of [reorg] (pjreddie) that the AlexeyAB build does not read
    text = NET + CONV + "[reorg]\nstride=2\nextra=1\n"
    found = check_file(write(tmp_path, text))
    assert codes_at(found) == [("W301", 15, 1)]


def test_builder_crash_is_located_not_a_traceback(tmp_path, monkeypatch):
    from builders import registry

    registry._load_families()

    def broken_builder(block, ctx):
        return 1 // 0

    monkeypatch.setitem(registry.SECTION_BUILDERS, "maxpool", broken_builder)
    found = check_file(write(tmp_path, NET + CONV + "[maxpool]\nsize=2\nstride=2\n"))
    assert codes_at(found) == [("E300", 13, 1)]
    assert "ZeroDivisionError" in found[0].message


def test_non_positive_output_shape_is_reported(tmp_path, monkeypatch):
    from builders import registry
    from builders.layer import Layer

    registry._load_families()

    def empty_output(block, ctx):
        block.mark_read("size", "stride")
        return Layer(), registry.Shape(ctx.input.c, 0, -1, 0)

    monkeypatch.setitem(registry.SECTION_BUILDERS, "maxpool", empty_output)
    found = check_file(write(tmp_path, NET + CONV + "[maxpool]\nsize=2\nstride=2\n"))
    assert codes_at(found) == [("E303", 14, 6)]  # at size


def test_conv_larger_than_its_input(tmp_path):
    text = NET.replace("width=32\nheight=32", "width=4\nheight=4") + \
        "[convolutional]\nfilters=8\nsize=7\nactivation=leaky\n"
    found = check_file(write(tmp_path, text))
    assert [d.code for d in found] == ["E303"]


# -- memory ----------------------------------------------------------------------------------------

SMALL = NET.replace("[net]\n", "[net]\nbatch=4\nsubdivisions=2\n") + CONV + \
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=2\npad=1\n" \
    "activation=leaky\n\n[route]\nlayers=-2\n\n[avgpool]\n\n[softmax]\n"


def test_estimate_matches_a_real_build(tmp_path):
    import torch

    from builders import build
    from builders.memory import estimate_memory
    from cfgparse import parse

    est = estimate_memory(parse(SMALL))
    assert est["batch"] == 2  # the mini-batch: batch / subdivisions
    net = build(parse(SMALL))  # a real (CPU) build, small
    real_params = sum(t.numel() * t.element_size()
                      for t in list(net.parameters()) + list(net.buffers()))
    assert est["params_bytes"] == real_params
    with torch.no_grad():
        outs = net(torch.zeros(2, 3, 32, 32), collect=range(len(net.layers)))
    assert est["activation_bytes"] == sum(t.numel() * 4 for t in outs.values())
    biggest = max(t.numel() * 4 for t in outs.values())
    assert biggest <= est["peak_activation_bytes"] < est["activation_bytes"]
    assert est["inference_bytes"] == est["params_bytes"] + est["peak_activation_bytes"]
    assert est["cpu_inference_bytes"] == est["inference_bytes"] + est["derived_bytes"]
    assert estimate_memory(parse(SMALL), batch=1)["activation_bytes"] * 2 == \
        est["activation_bytes"]


@pytest.mark.parametrize("size, kind, points", [(32, "winograd", 36), (14, "winograd2", 16)])
def test_the_estimate_counts_the_fast_paths_derived_weights(monkeypatch, size, kind, points):
    """Eval-mode inference on the CPU caches folded weights: packed for oneDNN (their size),
    Winograd-transformed for the 3x3 layers builders.winograd takes (36/9 of it for F(4x4, 3x3)
    on a 32x32 map, 16/9 for F(2x2, 3x3) on 14x14), or in builders.pointwise's panels for 1x1
    layers (output channels rounded up to 32)."""
    import torch

    from builders import build, native, pointwise
    from builders.memory import estimate_memory, guard_memory
    from cfgparse import CfgError, parse

    cfg = (f"[net]\nwidth={size}\nheight={size}\nchannels=3\nbatch=1\n"
           "[convolutional]\nfilters=32\nsize=3\npad=1\nactivation=leaky\n"
           "[convolutional]\nbatch_normalize=1\nfilters=48\nsize=3\npad=1\nactivation=leaky\n"
           "[convolutional]\nfilters=8\nsize=1\nactivation=linear\n")
    est = estimate_memory(parse(cfg), batch=1)
    weights = [32 * 3 * 9, 48 * 32 * 9, 8 * 48]
    panels = 32 * 48  # the 1x1 layer's 8 outputs in one panel of 32
    assert est["derived_bytes"] == 4 * (weights[0] + points * weights[1] // 9 + panels)
    if native.library() is None:
        return
    for name in ("DARKCFG_WINOGRAD", "DARKCFG_POINTWISE"):  # the suite may run with them set
        monkeypatch.delenv(name, raising=False)
    net = build(parse(cfg)).eval()
    with torch.no_grad():
        net(torch.rand(1, 3, size, size))
    transformed = net.layers[1]._inference_cache[kind]
    assert transformed.numel() == points * weights[1] // 9  # what the estimate counted for it
    if pointwise.enabled():
        assert net.layers[2]._inference_cache["pointwise"].numel() == panels
    need = est["cpu_inference_bytes"]
    assert guard_memory(net, need, batch=1, training=False, cpu=True)
    with pytest.raises(CfgError) as err:
        guard_memory(net, need - 1, batch=1, training=False, cpu=True)
    assert "estimated cpu inference memory" in err.value.first.message
    assert guard_memory(net, need - 1, batch=1, training=False)  # elsewhere: not derived


def test_the_estimate_counts_winograds_native_panels(monkeypatch):
    """On an 8x8 map F(2x2, 3x3) runs with the native products (where AVX-512 is), its
    transformed weights in panels of 32 output channels: 48 filters padded to 64."""
    import torch

    from builders import build, pointwise
    from builders.memory import estimate_memory
    from cfgparse import parse

    for name in ("DARKCFG_WINOGRAD", "DARKCFG_POINTWISE"):  # the suite may run with them set
        monkeypatch.delenv(name, raising=False)
    if not pointwise.enabled():
        pytest.skip("no AVX-512 kernels here: 8x8 layers run oneDNN's direct kernel")
    cfg = ("[net]\nwidth=8\nheight=8\nchannels=32\nbatch=1\n"
           "[convolutional]\nbatch_normalize=1\nfilters=48\nsize=3\npad=1\nactivation=mish\n")
    est = estimate_memory(parse(cfg), batch=1)
    assert est["derived_bytes"] == 4 * 16 * 64 * 32
    net = build(parse(cfg)).eval()
    with torch.no_grad():
        net(torch.rand(1, 32, 8, 8))
    assert net.layers[0]._inference_cache["winograd2 panels"].numel() == 16 * 64 * 32


def test_guard_memory_raises_over_the_limit():
    from builders import build
    from builders.memory import estimate_memory, guard_memory
    from cfgparse import CfgError, parse

    net = build(parse(SMALL), device="meta")
    need = estimate_memory(net)["training_bytes"]
    assert guard_memory(net, need)["training_bytes"] == need
    with pytest.raises(CfgError) as err:
        guard_memory(net, need - 1)
    assert err.value.code == "E401" and "training" in err.value.first.message
    assert guard_memory(net, need - 1, training=False)["inference_bytes"] < need


@pytest.mark.parametrize("random, size", [("1", 608), ("1.6", 704), ("0.7", 640)])
def test_training_memory_is_estimated_at_the_largest_multiscale_size(tmp_path, random, size):
    """`random=` in the last [yolo] trains up to 608x608 for a 416x416 cfg (random=1: 1.4x plus
    Darknet's one-step bias; random=1.6: 704; 0.7: 1/0.7), about twice the memory: the guard
    (darkcfg train's E401) estimated the cfg's size only."""
    import torch

    from builders import build
    from builders.memory import estimate_memory, guard_memory
    from cfgparse import CfgError, parse
    from darkcfg.train import session

    text = (ROOT / "cfg" / "yolov3-tiny.cfg").read_text().replace("random=1", f"random={random}")
    blocks = parse(text)
    at_size = build(parse(text.replace("width=416", f"width={size}")
                          .replace("height=416", f"height={size}")), device="meta")
    need = estimate_memory(at_size)["training_bytes"]
    net = build(blocks, device="meta")
    assert guard_memory(net, need)["training_bytes"] == need
    assert guard_memory(net, need, training=False)["inference_bytes"] < need
    assert estimate_memory(net)["training_bytes"] < need / 1.5
    fixed = build(parse(text.replace(f"random={random}", "random=0")), device="meta")
    assert guard_memory(fixed, need)["training_bytes"] == estimate_memory(net)["training_bytes"]
    with pytest.raises(CfgError) as err:
        guard_memory(net, need - 1)
    message = err.value.first.message
    assert err.value.code == "E401" and f"at {size}x{size}, the largest size multi-scale " \
        f"training reaches (random={random} in the last [yolo], line " in message
    assert "random=0 trains at the cfg's size" in err.value.first.hint
    cfg = tmp_path / "m.cfg"
    cfg.write_text(text)
    with pytest.raises(CfgError):  # what `darkcfg train` runs first
        session.check_memory(session.RunOptions(cfg_path=str(cfg), name="m", out=tmp_path,
                                                max_memory=need - 1), torch.device("cpu"))


def test_max_memory_option(tmp_path, capsys):
    path = write(tmp_path, NET + CONV)
    rc, out, _ = run_main(capsys, "--format", "json", "--max-memory", "10K", str(path))
    (d,) = json.loads(out)
    assert rc == 1 and (d["code"], d["line"], d["column"]) == ("E401", 7, 9)
    rc, out, _ = run_main(capsys, "--format", "json", "--max-memory", "1G", str(path))
    assert (rc, json.loads(out)) == (0, [])


@pytest.mark.parametrize("text, size", [("8G", 8 * 2**30), ("512M", 512 * 2**20),
                                        ("1.5GiB", 3 * 2**29), ("4gb", 4 * 2**30),
                                        ("1000", 1000), ("2k", 2048)])
def test_parse_size(text, size):
    assert parse_size(text) == size


# (\u0664 and \uff18: 4 and 8 to float(), which re's \d let through)
@pytest.mark.parametrize("bad", ["", "G", "-1G", "8X", "0", "\u0664G", "\uff18G"])
def test_bad_max_memory_is_a_usage_error(tmp_path, capsys, bad):
    rc, _, err = run_main(capsys, "--max-memory", bad, str(write(tmp_path, NET + CONV)))
    assert rc == 2 and "max-memory" in err


# -- command line, exit codes ----------------------------------------------------------------------

def test_exit_codes_and_strict(tmp_path, capsys):
    clean = write(tmp_path, NET + CONV, "clean.cfg")
    warned = write(tmp_path, MUST_SHOW["typo'd key"][0], "warned.cfg")
    broken = write(tmp_path, MUST_SHOW["non-numeric value"][0], "broken.cfg")
    assert run_main(capsys, str(clean))[0] == 0
    assert run_main(capsys, str(warned))[0] == 0
    rc, out, _ = run_main(capsys, "--strict", "--format", "json", str(warned))
    assert rc == 1 and [d["severity"] for d in json.loads(out)] == ["error"]
    assert run_main(capsys, str(broken))[0] == 1


def test_missing_file_is_an_io_error_but_others_are_checked(tmp_path, capsys):
    broken = write(tmp_path, MUST_SHOW["non-numeric value"][0], "broken.cfg")
    missing = tmp_path / "nope.cfg"
    rc, out, err = run_main(capsys, "--format", "json", str(missing), str(broken))
    assert rc == 2 and "nope.cfg" in err
    found = json.loads(out)
    assert [(d["file"], d["code"]) for d in found] == [(str(missing), "E901"),
                                                       (str(broken), "E202")]


def test_missing_file_in_text_format(tmp_path, capsys):
    rc, out, _ = run_main(capsys, str(tmp_path / "nope.cfg"))
    assert rc == 2
    assert out.splitlines()[0] == (f"{tmp_path / 'nope.cfg'}: error[E901]: cannot read "
                                   f"'{tmp_path / 'nope.cfg'}': No such file or directory")


def test_an_empty_path_is_an_error_not_the_working_folder(tmp_path, capsys, monkeypatch):
    """`darkcfg check "$MODELS"` with MODELS unset checked the working folder's cfgs instead (or
    none: '0 files checked', exit 0), so a CI step passed without checking its models."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, NET + CONV, "clean.cfg")
    rc, out, err = run_main(capsys, "--no-build", "--format", "json", "")
    assert rc == 2 and "the path is empty" in err
    assert [(d["code"], d["line"]) for d in json.loads(out)] == [("E901", 0)]


def test_a_file_name_cannot_split_or_colour_the_report(tmp_path, capsys):
    """An unreadable file's name went into the E901 message as it was: a line break in it split
    the diagnostic (a fake `x.cfg: error` line), an escape sequence reached the terminal."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("new\nfake.cfg: error.cfg", "a\x1b[2Kb.cfg"):
        (folder / name).symlink_to(tmp_path / "nowhere")  # a broken link: E901, named
    rc, out, _ = run_main(capsys, "--no-build", str(folder))
    assert rc == 2 and "\x1b" not in out
    firsts = [line for line in out.splitlines() if "error[E901]" in line]
    assert len(firsts) == 2 and all(line.startswith(str(folder)) for line in firsts)
    assert "cannot read '" + str(folder) + "/new\\nfake.cfg: error.cfg'" in firsts[1]


def test_usage_errors(capsys):
    assert run_main(capsys)[0] == 2
    assert run_main(capsys, "--format", "xml", "a.cfg")[0] == 2
    rc, out, _ = run_main(capsys, "--help")
    assert rc == 0 and "--max-memory" in out


def test_directory_stands_for_its_cfg_files(tmp_path, capsys):
    write(tmp_path, NET + CONV, "a.cfg")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", MUST_SHOW["unknown activation"][0], "b.cfg")
    write(tmp_path, "not a cfg", "notes.txt")
    rc, out, _ = run_main(capsys, "--format", "json", str(tmp_path))
    assert rc == 1 and [Path(d["file"]).name for d in json.loads(out)] == ["b.cfg"]


def test_a_folder_walk_takes_cfg_files_once_and_nothing_else(tmp_path, capsys):
    """`darkcfg check .` checked a virtualenv's pyvenv.cfg and .git's files (errors), hung on a
    FIFO named x.cfg, silently dropped a folder named x.cfg (counted, never reported), and
    checked a file named twice twice."""
    import os
    import threading

    write(tmp_path, NET + CONV, "good.cfg")
    bad = write(tmp_path, MUST_SHOW["unknown activation"][0], "bad.cfg")
    for hidden in (".venv", ".git"):
        (tmp_path / hidden).mkdir()
        write(tmp_path / hidden, "home = /usr/bin\n", "pyvenv.cfg")
    write(tmp_path, "[net\n", ".#bad.cfg")  # an editor's lock file
    (tmp_path / "folder.cfg").mkdir()
    fifo, done = tmp_path / "pipe.cfg", threading.Event()
    os.mkfifo(fifo)

    def feed():  # whoever opens the FIFO reads an empty cfg (E100), so a regression cannot hang
        while not done.is_set():
            with open(fifo, "w"):
                pass

    threading.Thread(target=feed, daemon=True).start()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "gone.cfg").symlink_to(tmp_path / "nowhere.cfg")  # a broken link is reported
    rc, out, _ = run_main(capsys, "--no-build", "--format", "json", str(tmp_path), str(bad),
                          str(tmp_path / "." / "bad.cfg"))
    assert rc == 2
    assert [(Path(d["file"]).name, d["code"]) for d in json.loads(out)] == [
        ("bad.cfg", "E204"), ("gone.cfg", "E901")]
    rc, out, _ = run_main(capsys, "--no-build", str(tmp_path / "good.cfg"), str(tmp_path))
    assert out.splitlines()[-1] == "3 files checked: 2 errors, 0 warnings"
    done.set()
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets feed()'s last open return


def test_a_folder_that_cannot_be_read_is_e901_not_skipped(tmp_path, capsys, monkeypatch):
    """The walk passed over a folder it could not list (permissions): its cfgs went unchecked
    and CI passed."""
    import os

    write(tmp_path, NET + CONV, "good.cfg")
    locked = tmp_path / "locked"
    locked.mkdir()
    write(locked, MUST_SHOW["unknown activation"][0], "bad.cfg")
    scandir = os.scandir

    def refuse(path="."):  # as chmod 000 does for a user (the tests may run as root)
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    rc, out, err = run_main(capsys, "--no-build", "--format", "json", str(tmp_path))
    assert rc == 2 and "cannot read the folder" in err
    assert [(d["file"], d["code"]) for d in json.loads(out)] == [(str(locked), "E901")]
    rc, out, _ = run_main(capsys, "--no-build", "--format", "json", str(locked))
    assert rc == 2 and [d["message"] for d in json.loads(out)] == [
        f"cannot read the folder '{locked}': Permission denied"]  # not also 'holds no .cfg'


def test_a_folder_walk_never_reads_a_link_out_of_the_folder(tmp_path, capsys):
    """A pull request's `models/x.cfg -> ~/.ssh/id_rsa`: `darkcfg check models/` in CI printed
    the key's lines (E103, each with its source line) in the log. A link to a file outside the
    folder is E901, not read; a link within it, and a file named on its own, are checked."""
    secret = tmp_path / "home" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN KEY-----\nc2VjcmV0LXRva2Vu\n-----END KEY-----\n")
    models = tmp_path / "repo" / "models"
    models.mkdir(parents=True)
    (models / "key.cfg").symlink_to(secret)
    write(models, MUST_SHOW["unknown activation"][0], "real.cfg")
    (models / "same.cfg").symlink_to(models / "real.cfg")  # inside: checked (one more E204)
    for fmt in ("text", "json", "github", "sarif"):
        rc, out, err = run_main(capsys, "--no-build", "--format", fmt, str(models))
        assert rc == 2 and "c2VjcmV0" not in out + err and "KEY" not in out + err
    rc, out, _ = run_main(capsys, "--no-build", "--format", "json", str(models))
    assert [(Path(d["file"]).name, d["code"]) for d in json.loads(out)] == [
        ("real.cfg", "E204"), ("same.cfg", "E204"), ("key.cfg", "E901")]
    assert "is a link to a file outside" in json.loads(out)[2]["message"]
    rc, out, _ = run_main(capsys, "--no-build", "--format", "json", str(models / "key.cfg"))
    assert rc == 1 and {d["code"] for d in json.loads(out)} == {"E103"}  # named: the user's call


def test_one_bad_file_does_not_hide_the_next(tmp_path, capsys):
    files = [write(tmp_path, MUST_SHOW[name][0], f"{i}.cfg")
             for i, name in enumerate(["missing ']'", "route to a nonexistent layer",
                                       "filters=1000000000", "typo'd key"])]
    rc, out, _ = run_main(capsys, "--format", "json", *map(str, files))
    assert rc == 1
    assert [d["code"] for d in json.loads(out)] == ["E101", "E301", "E401", "W201"]


def test_a_worker_that_dies_loses_no_other_files_report(tmp_path, monkeypatch):
    """A file that kills its worker process (out of memory, a signal) broke the pool, and every
    file was checked again in the main process: that file then killed darkcfg itself, and no
    report at all came out. Now it is one E300, and the other files keep their findings."""
    import os

    import darkcfg.lint.graph_rules as graph_rules
    import darkcfg.lint.pool as pool

    parent = os.getpid()

    def check(path, options, source=None):
        if os.getpid() == parent:
            pytest.fail(f"{path} was checked in the main process")
        if Path(path).stem == "dies":
            os._exit(9)
        return [Diagnostic("W201", "checked", str(path), 1, 1, WARNING)]

    monkeypatch.setattr(pool, "check_file", check)
    monkeypatch.setattr(graph_rules, "prepare_workers", lambda: None)
    files = [str(write(tmp_path, NET, f"{name}.cfg")) for name in ("a", "dies", "b", "c")]
    found = pool.check_paths(files, jobs=2)
    assert [(Path(d.path).stem, d.code) for d in found] == [
        ("a", "W201"), ("dies", "E300"), ("b", "W201"), ("c", "W201")]
    assert "died" in found[1].message


def test_ctrl_c_in_the_workers_stops_the_check(tmp_path, capsys, monkeypatch):
    """Ctrl-C reaches the workers too: `python -m darkcfg.lint` (the pre-commit entry) ended in a
    traceback; now it says 'interrupted' and exits 130, as every darkcfg command does."""
    import os

    import darkcfg.lint.graph_rules as graph_rules
    import darkcfg.lint.pool as pool

    parent = os.getpid()

    def check(path, options, source=None):
        if os.getpid() != parent and Path(path).stem == "stop":
            raise KeyboardInterrupt
        return []

    monkeypatch.setattr(pool, "check_file", check)
    monkeypatch.setattr(graph_rules, "prepare_workers", lambda: None)
    files = [str(write(tmp_path, NET, f"{name}.cfg")) for name in ("a", "stop", "b")]
    rc, out, err = run_main(capsys, "--jobs", "2", *files)
    assert (rc, out, err) == (130, "", "interrupted\n")


def test_no_build_stays_torch_free(tmp_path):
    path = write(tmp_path, MUST_SHOW["route to a nonexistent layer"][0])
    script = ("import sys; from darkcfg.lint.cli import main; "
              f"rc = main(['--no-build', '--format', 'json', {str(path)!r}]); "
              "print('torch' in sys.modules, rc)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False 1", result.stderr
    assert '"E301"' in result.stdout


def test_python_dash_m_entry_point(tmp_path):
    """`python -m darkcfg.lint`, what the pre-commit hook runs, in a real process."""
    path = write(tmp_path, MUST_SHOW["unknown section"][0])
    result = subprocess.run([sys.executable, "-m", "darkcfg.lint", "--no-build", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert f"{path}:6:2: error[E201]" in result.stdout
    # its usage line and hint name the command that runs (it once said `python -m lint`)
    usage = subprocess.run([sys.executable, "-m", "darkcfg.lint", "--wokers"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert usage.returncode == 2
    assert "python -m darkcfg.lint: unrecognized arguments" in usage.stderr
    assert "`python -m darkcfg.lint --help`" in usage.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_report_that_cannot_be_written_is_e901_not_a_traceback(tmp_path):
    """`python -m darkcfg.lint --format sarif ... > darkcfg.sarif` (the pre-commit entry, the CI
    recipe) on a full disk was a traceback and exit status 1, read as 'findings', with a cut
    SARIF log; `darkcfg check` said E901, exit 2."""
    path = write(tmp_path, MUST_SHOW["typo'd key"][0])
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "darkcfg.lint", "--no-build", "--format",
                               "sarif", str(path)], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == ("<stdout>: error[E901]: cannot write the output to stdout: No space "
                           "left on device\nhelp: free some space where stdout goes, or "
                           "redirect it elsewhere\n")
    # started with stdout closed (`>&-`): sys.stdout is None, and was an AttributeError
    import os

    done = subprocess.run([sys.executable, "-m", "darkcfg.lint", "--no-build", str(path)],
                          preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(
        "<stdout>: error[E901]: cannot write the output to stdout: stdout is closed"), done.stderr


@pytest.mark.parametrize("command", [["cfgparse", "check"], ["runner", "check"],
                                     ["runner", "--check"]])
def test_other_entry_points(tmp_path, capsys, command):
    """The `python -m cfgparse check` shim, `darkcfg check` and `runner.py CFG --check` are the
    same checker (in this process: a subprocess each would cost CI seconds)."""
    import darkcfg.cli.flags as runner
    from cfgparse.__main__ import main as cfgparse_main

    path = write(tmp_path, MUST_SHOW["unknown section"][0])
    entry = cfgparse_main if command[0] == "cfgparse" else runner.main
    assert entry([*command[1:], "--no-build", str(path)]) == 1
    assert f"{path}:6:2: error[E201]" in capsys.readouterr().out


# -- output formats --------------------------------------------------------------------------------

def test_text_format_shows_source_caret_and_help(tmp_path, capsys):
    path = write(tmp_path, MUST_SHOW["unknown activation"][0])
    rc, out, _ = run_main(capsys, str(path))
    lines = out.splitlines()
    assert lines[0] == f"{path}:8:12: error[E204]: unknown activation 'lekay'"
    assert lines[2] == "8 | activation=lekay"
    assert lines[3] == "  | " + " " * 11 + "^" * 5
    assert lines[4] == "help: did you mean 'leaky'?"
    assert lines[-1] == "1 file checked: 1 error, 0 warnings"


@pytest.mark.parametrize("encoding, name, fmt", [
    ("ascii", "m\u00fcll.cfg", "text"),  # an ASCII terminal: a non-ASCII name or message
    ("utf-8", "bad\udcff.cfg", "github"),  # PYTHONIOENCODING=utf-8: a file name's stray byte
])
def test_a_report_the_terminal_cannot_encode_is_escaped_not_a_traceback(
        tmp_path, monkeypatch, encoding, name, fmt):
    """The report was written as it was: an unencodable character raised UnicodeEncodeError,
    a traceback and exit status 1, which CI reads as 'findings'."""
    import io

    try:
        path = write(tmp_path, MUST_SHOW["unknown activation"][0], name)
    except UnicodeEncodeError:
        pytest.skip("this file system takes no such name")
    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["--no-build", "--format", fmt, str(path)]) == 1
    shown = out.buffer.getvalue().decode(encoding)
    assert name.encode(encoding, "backslashreplace").decode(encoding) in shown
    assert "unknown activation 'lekay'" in shown


def test_json_format(tmp_path, capsys):
    path = write(tmp_path, MUST_SHOW["typo'd key"][0])
    rc, out, _ = run_main(capsys, "--format", "json", str(path))
    (d,) = json.loads(out)
    assert rc == 0
    assert {k: d[k] for k in ("file", "line", "column", "severity", "code")} == {
        "file": str(path), "line": 9, "column": 1, "severity": "warning", "code": "W201"}
    assert "strid" in d["message"]


def test_github_format(tmp_path, capsys):
    err = write(tmp_path, MUST_SHOW["non-numeric value"][0], "a,b.cfg")
    warn = write(tmp_path, MUST_SHOW["typo'd key"][0], "warn.cfg")
    rc, out, _ = run_main(capsys, "--format", "github", str(err), str(warn))
    lines = out.splitlines()
    assert rc == 1 and len(lines) == 2
    # property values escape ',' and ':'; the message escapes newlines
    assert re.fullmatch(r"::error file=.*a%2Cb\.cfg,line=7,col=9,title=E202::'filters' must be "
                        r"an integer, got 'abc'%0Ahelp: .*", lines[0]), lines[0]
    assert lines[1].startswith(f"::warning file={warn},line=9,col=1,title=W201::unknown key")
    # every character GitHub's toolkit escapes, in a property and in the message
    from darkcfg.lint.report import format_github

    (line,) = format_github([Diagnostic("E202", "got '5%,:\r\n::x'", "a%b:c,d\r\ne.cfg", 2, 3,
                                        hint="h")]).splitlines()
    assert line == ("::error file=a%25b%3Ac%2Cd%0D%0Ae.cfg,line=2,col=3,title=E202::"
                    "got '5%25,:%0D%0A::x'%0Ahelp: h")


def test_sarif_is_valid_and_lists_rules(tmp_path, capsys):
    files = [write(tmp_path, MUST_SHOW[n][0], f"{i}.cfg")
             for i, n in enumerate(["typo'd key", "negative size", "empty file"])]
    rc, out, _ = run_main(capsys, "--format", "sarif", *map(str, files), str(tmp_path / "x.cfg"))
    log = json.loads(out)
    assert validate_sarif(log) == []
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(CODES)
    results = run["results"]
    assert [(r["ruleId"], r["level"]) for r in results] == [
        ("W201", "warning"), ("E203", "error"), ("E100", "error"), ("E901", "error")]
    for r in results:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
    region = results[1]["locations"][0]["physicalLocation"]["region"]
    assert (region["startLine"], region["startColumn"], region["endColumn"]) == (8, 6, 8)
    assert "region" not in results[3]["locations"][0]["physicalLocation"]  # no line: file only


def test_sarif_locations_of_hostile_names_and_wide_characters(tmp_path, capsys, monkeypatch):
    """A file name of bytes that are not UTF-8 was a traceback (urllib's quote of a surrogate);
    relative URIs had no uriBaseId (%SRCROOT%, as CodeQL writes it); columns were code points
    under a columnKind GitHub does not read: now UTF-16 code units, SARIF's default (an emoji
    counts twice)."""
    import os
    import urllib.parse

    monkeypatch.chdir(tmp_path)
    names = ["a b,c:d%e \u00fc.cfg", "bad\udcff.cfg"]
    text = NET + "[route]\nlayers=-1,\U0001f600x\n"  # E202 at the emoji, line 7 column 11
    for name in names:
        try:
            write(tmp_path, text, name)
        except UnicodeEncodeError:
            pytest.skip("this file system takes no such name")
    rc, out, _ = run_main(capsys, "--no-build", "--format", "sarif", *names)
    log = json.loads(out)
    assert rc == 1 and validate_sarif(log) == []
    run = log["runs"][0]
    assert "columnKind" not in run  # the default: utf16CodeUnits
    assert str(tmp_path) not in out  # no absolute path of this machine (originalUriBaseIds)
    for name, result in zip(names, run["results"], strict=True):
        where = result["locations"][0]["physicalLocation"]
        uri = where["artifactLocation"]["uri"]
        assert re.fullmatch(r"[A-Za-z0-9\-._~%!$&'()*+,;=@/]+", uri), uri  # no ':' first
        assert urllib.parse.unquote_to_bytes(uri) == os.fsencode(name)
        assert where["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert (where["region"]["startColumn"], where["region"]["endColumn"]) == (11, 14)


def test_strict_promotes_warnings_in_every_format(tmp_path, capsys):
    path = write(tmp_path, MUST_SHOW["typo'd key"][0])
    rc, out, _ = run_main(capsys, "--strict", "--format", "github", str(path))
    assert rc == 1 and out.startswith("::error ")
    log = sarif_log([Diagnostic("W201", "m", "a.cfg", 1, 1, ERROR)])
    assert log["runs"][0]["results"][0]["level"] == "error"


# A draft-04 validator for the keywords the SARIF schema uses (no jsonschema dependency).

def validate_sarif(log: dict) -> list[str]:
    schema = json.loads(SARIF_SCHEMA.read_text())
    return _validate(log, schema, schema, "$")


def _is_type(value, name: str) -> bool:
    return {
        "object": isinstance(value, dict), "array": isinstance(value, list),
        "string": isinstance(value, str), "boolean": isinstance(value, bool),
        "null": value is None,
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[name]


def _validate(value, schema: dict, root: dict, where: str) -> list[str]:
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _validate(value, target, root, where)
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in types):
            return [f"{where}: {value!r} is not of type {types}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing '{k}'" for k in schema.get("required", []) if k not in value]
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += _validate(v, props[k], root, f"{where}.{k}")
            elif extra is False:
                errors.append(f"{where}: unexpected property '{k}'")
            elif isinstance(extra, dict):
                errors += _validate(v, extra, root, f"{where}.{k}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            errors += _validate(item, schema.get("items", {}), root, f"{where}[{i}]")
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) \
                != len(value):
            errors.append(f"{where}: items are not unique")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "anyOf" in schema and all(_validate(value, s, root, where) for s in schema["anyOf"]):
        errors.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema and sum(not _validate(value, s, root, where)
                                 for s in schema["oneOf"]) != 1:
        errors.append(f"{where}: does not match exactly one of oneOf")
    return errors


def test_sarif_validator_rejects_broken_logs():
    good = sarif_log([Diagnostic("E202", "m", "a.cfg", 3, 2, ERROR, "h", "x=1", 1)])
    assert validate_sarif(good) == []
    broken = json.loads(json.dumps(good))
    del broken["version"]
    assert any("version" in e for e in validate_sarif(broken))
    broken["version"] = "2.0.0"
    assert any("version" in e for e in validate_sarif(broken))
    broken = json.loads(json.dumps(good))
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert any("level" in e for e in validate_sarif(broken))
    broken = json.loads(json.dumps(good))
    broken["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    assert any("startLine" in e for e in validate_sarif(broken))
    broken = json.loads(json.dumps(good))
    del broken["runs"][0]["tool"]["driver"]["name"]
    assert any("name" in e for e in validate_sarif(broken))


def test_sarif_against_jsonschema_when_installed():
    jsonschema = pytest.importorskip("jsonschema")
    log = sarif_log([Diagnostic("W201", "m", "dir/a b.cfg", 3, 2, WARNING, "h", "x=1", 1),
                     Diagnostic("E901", "cannot read", "/abs/x.cfg")])
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(log)


# -- packaging: pre-commit hook, docs --------------------------------------------------------------

def test_pre_commit_hook():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "darkcfg-check"
    assert hook["entry"] == "python -m darkcfg.lint"
    assert re.search(hook["files"], "models/yolov4.cfg")
    assert not re.search(hook["files"], "models/yolov4.cfg.bak")
    assert not re.search(hook["files"], "README.md")
    # a Python project's setup.cfg failed every commit that touched it (E201 [metadata])
    for path in ("setup.cfg", "pkg/setup.cfg"):
        assert re.search(hook["files"], path) and re.search(hook["exclude"], path)
    assert not re.search(hook["exclude"], "models/setup-yolo.cfg")
    assert not re.search(hook["exclude"], "models/yolov4.cfg")
    # pre-commit would start one checker (a torch import, a worker per CPU) per CPU otherwise
    assert hook["require_serial"] is True
    # pre-commit tags a link 'symlink', never 'text': the hook is not handed a link out
    assert hook["types"] == ["text"]


def test_docs_list_every_code_with_an_example():
    doc = (ROOT / "docs" / "checking.md").read_text()
    table = [line for line in doc.splitlines() if re.match(r"\| `[EW]\d{3}` \|", line)]
    documented = [re.match(r"\| `(\w+)`", line).group(1) for line in table]
    assert sorted(documented) == sorted(CODES)
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), line  # code, severity, meaning, example


# -- the real Darknet corpus -----------------------------------------------------------------------

def darknet_parsed_corpus() -> list[Path]:
    """The corpus cfgs real Darknet parsed (a shape JSON in shapes/alexeyab or shapes/pjreddie)."""
    if not (SHARED / "shapes").is_dir():
        pytest.skip("../shared/darknet is not available")
    return [SHARED / "corpus" / fork / f"{j.stem}.cfg"
            for fork in ("alexeyab", "pjreddie")
            for j in sorted((SHARED / "shapes" / fork).glob("*.json"))
            if not j.name.startswith("_")]


def test_every_darknet_parsed_corpus_cfg_checks_clean(capsys):
    files = darknet_parsed_corpus()
    assert len(files) == 126 and all(f.exists() for f in files)
    rc, out, err = run_main(capsys, "--format", "json", *map(str, files))
    errors = [d for d in json.loads(out) if d["severity"] == "error"]
    assert errors == [] and rc == 0, errors[:5]


def test_pjreddie_resnets_only_warn(capsys):
    """AlexeyAB Darknet aborts on these (resampling shortcuts); pjreddie runs them."""
    if not (SHARED / "corpus").is_dir():
        pytest.skip("../shared/darknet is not available")
    resnet = SHARED / "corpus" / "pjreddie" / "resnet50.cfg"
    found = check_file(resnet)
    assert found and {d.code for d in found} == {"W303"}
    rc, out, _ = run_main(capsys, "--format", "json", "--flavor", "pjreddie", str(resnet))
    assert (rc, json.loads(out)) == (0, [])


def test_a_folder_with_no_cfg_is_an_error_not_a_pass(tmp_path, capsys):
    """`darkcfg check configs/` on a moved or misspelt folder must fail CI, not pass it."""
    from darkcfg.lint.cli import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    shown = capsys.readouterr()
    assert "holds no .cfg file" in shown.out + shown.err


def test_check_dash_reads_one_cfg_from_stdin(tmp_path, capsys, monkeypatch):
    """`darkcfg check -` (as ruff and flake8 take it) was `E901 cannot read '-'`. It reads the
    cfg from stdin, named `<stdin>` in every format, beside files and with --jobs."""
    import io

    def stdin(text: str):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))

    bad = NET + "[convolutional]\nfilters=8\nsize=3\nactivation=lekay\n"
    stdin(bad)
    rc, out, _ = run_main(capsys, "-")
    assert rc == 1 and out.startswith("<stdin>:9:12: error[E204]: unknown activation 'lekay'")
    assert "1 file checked: 1 error" in out
    good = write(tmp_path, NET + CONV)
    for fmt in ("json", "sarif", "github"):
        stdin(bad)
        rc, out, _ = run_main(capsys, "--format", fmt, str(good), "-", "--jobs", "2")
        assert rc == 1, out
        if fmt == "json":
            assert [(d["file"], d["code"]) for d in json.loads(out)] == [("<stdin>", "E204")]
        elif fmt == "sarif":
            uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                    for r in json.loads(out)["runs"][0]["results"]]
            assert uris == ["%3Cstdin%3E"]
        else:
            assert out.startswith("::error file=<stdin>,line=9,col=12,title=E204::")
    stdin(NET + CONV)
    assert run_main(capsys, "-", "-")[:2] == (0, "1 file checked: 0 errors, 0 warnings\n")
    monkeypatch.setattr(sys, "stdin", None)  # `<&-`
    rc, out, err = run_main(capsys, "-")
    assert rc == 2 and "<stdin>: error[E901]: cannot read <stdin>: stdin is closed" in out


def test_a_head_of_billions_of_anchors_is_e203_at_num(tmp_path):
    """`[yolo] num=2147483647` built a list of 2*num anchor numbers: `check` said E300
    "darkcfg bug" (a MemoryError in the build), `summary` an unlocated out-of-memory E401."""
    from cfgparse import CfgError
    from cfgparse.rules import MAX_ANCHORS

    text = ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=18\nsize=1\n"
            "activation=linear\n[yolo]\nmask=0,1,2\nnum={num}\nclasses=1\n")
    cfg = tmp_path / "big.cfg"
    cfg.write_text(text.format(num=2147483647))
    from builders import build

    report = check_file(cfg)
    assert [(d.code, d.line) for d in report] == [("E203", 11)]
    assert f"darkcfg builds at most {MAX_ANCHORS}" in report[0].message
    with pytest.raises(CfgError) as exc:
        build(str(cfg), device="meta")
    assert exc.value.diagnostics[0].code == "E203"
    cfg.write_text(text.format(num=MAX_ANCHORS))  # the most: built
    assert build(str(cfg), device="meta") is not None
