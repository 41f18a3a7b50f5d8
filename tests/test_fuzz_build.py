"""Fuzzing what runs after a successful parse: a mutated corpus or shipped cfg that parses is
built, summarised, checked, run at its size and another, trained one step (detectors), emitted
as PyTorch and round-tripped through .weights, and nothing but CfgError / InputError escapes
(the CLI's exit 2), nothing hangs, and the linter agrees with the builder: a cfg `check` passes
without an error builds, and one that does not build has a `check` error.

Each example is shrunk first with `--set`-style overrides (width/height, batch), bounded by the
memory guard and a compute limit, and stopped by an alarm if it runs too long. Derandomized in
the suite; DARKCFG_FUZZ_EXAMPLES=200 DARKCFG_FUZZ_RANDOM=1 for a longer hunt."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import CORPUS, SEEDS, mutated

from builders import InputError, build
from builders.memory import guard_memory
from builders.summary import summary_json, summary_text
from builders.weights import load_weights, save_weights
from cfgparse import CfgError, parse_text, schema
from cfgparse.errors import ERROR
from darkcfg.config import cfg_with_overrides
from darkcfg.lint.stages import check_file
from darkcfg.model import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
# more section types than test_fuzz's seeds: region/detection heads, recurrent layers, the
# shipped cfgs, and small built-in ones for what corpus cfgs hold only in large networks
EXTRA_SEEDS = ["alexeyab/yolov2-tiny.cfg", "pjreddie/yolov1-tiny.cfg", "alexeyab/rnn.cfg",
               "pjreddie/gru.cfg", "pjreddie/resnet18.cfg",
               "alexeyab/yolov4-tiny_contrastive.cfg", "alexeyab/yolov3-tiny_3l.cfg"]
SHIPPED = ["yolov3-tiny.cfg", "yolov4-tiny.cfg", "digits.cfg"]
GAUSSIAN = """[net]
width=32
height=32
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish
[maxpool]
size=2
stride=2
[convolutional]
filters=8
size=1
activation=swish
[sam]
from=-2
[route]
layers=-1,-3
groups=2
group_id=1
[convolutional]
filters=8
size=3
pad=1
groups=2
activation=leaky
[upsample]
stride=2
[route]
layers=-1,0
[reorg]
stride=2
[implicit]
filters=64
[scale_channels]
from=-2
[shortcut]
from=-3
weights_type=per_feature
[convolutional]
filters=30
size=1
activation=linear
[Gaussian_yolo]
mask=0,1,2
anchors=4,4, 8,8, 12,12
classes=1
num=3
"""
LOCAL = """[net]
width=24
height=24
channels=3
time_steps=2
[local]
filters=4
size=3
stride=2
activation=leaky
[crop]
crop_width=8
crop_height=8
[conv_lstm]
output=4
size=3
pad=1
batch_normalize=1
[deconvolutional]
filters=4
size=2
stride=2
[avgpool]
[dropout]
probability=.5
[connected]
output=5
[softmax]
groups=1
"""
BUILD_SEEDS = SEEDS + [(CORPUS / f).read_text() for f in EXTRA_SEEDS if (CORPUS / f).is_file()] \
    + [(ROOT / "cfg" / f).read_text() for f in SHIPPED] + [GAUSSIAN, LOCAL]

EXAMPLES = int(os.environ.get("DARKCFG_FUZZ_EXAMPLES", "40"))
# DARKCFG_FUZZ_RANDOM=1: other examples each run (a hunt), not the suite's fixed ones
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("DARKCFG_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECONDS = 60  # one example, all steps: a hang fails the test instead of holding the suite
MEMORY = 96 * 2**20  # what one example may build (inference, batch 1); more is skipped
BFLOPS = 0.5  # what one forward may cost; more is skipped (not a finding: just slow)

# values worth trying: zero, negative, huge, fractions, odd and small sizes; by the key's type
# (mostly: a value of another type is only a parse error)
INTS = ["0", "-1", "-2", "1", "2", "3", "4", "5", "7", "13", "-100", "1000", "65536",
        "2147483647"]
LISTS = ["-1,-2", "0,1,2", "-1,0", "1,100", "-1,-3,-5", "0", "2", "10,13, 16,30",
         "3,4,5,6,7,8,9", "0,0", "1,2,3", "-1,-1"]
FLOATS = ["0", "-1", "0.5", "1.5", "1e-9", "2", "1000", "-0.5", "nan", "inf", "1e30"]
VALUES = {"i": INTS, "I": LISTS, "f": FLOATS, "F": LISTS + ["0.5,1.5"], "b": ["0", "1", "2"],
          "s": ["linear", "logistic", "none", "softmax", "per_channel", "per_feature"]}
ANY = sorted({v for values in VALUES.values() for v in values} | {"99999999999", "x"})


def value_for(draw, section: str, key: str) -> str:
    spec = schema.key_spec(section, key)
    choices = VALUES.get(spec.type if spec else "", ANY)
    if spec is not None and spec.choices:
        choices = list(spec.choices)
    elif spec is not None and spec.min is not None and spec.type == "i":
        choices = [v for v in choices if int(v) >= spec.min]  # below: a parse error
    return draw(st.sampled_from(ANY if draw(st.integers(0, 7)) == 0 else choices))
# the keys that shape a network, tried most: sizes, strides, groups, references, heads
SHAPING = ["filters", "size", "stride", "stride_x", "stride_y", "pad", "padding", "groups",
           "group_id", "dilation", "layers", "from", "mask", "anchors", "classes", "num",
           "coords", "side", "output", "width", "height", "channels", "inputs", "time_steps",
           "batch_normalize", "reverse", "flatten", "extra", "spatial", "tree", "outputs"]


@st.composite
def value_mutated(draw, seeds: list[str] = BUILD_SEEDS) -> str:
    """A seed with 1..4 `key=value` lines changed, added or removed, keys from the section's
    schema (or the ones that reference other layers and anchors), values from VALUES."""
    text = draw(st.sampled_from(seeds))
    lines = text.split("\n")
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\w+\]", line)]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.sampled_from(headers))
        section = schema.canonical_section(lines[at].strip()[1:].split("]")[0]) or "net"
        own_keys = schema.SECTIONS.get(section, {})
        keys = st.sampled_from(sorted(own_keys) + SHAPING[:17]) if draw(st.booleans()) else \
            st.sampled_from([k for k in SHAPING if k in own_keys] or SHAPING[:17])
        end = next((h for h in headers if h > at), len(lines))
        own = [i for i in range(at + 1, end) if "=" in lines[i] and
               not lines[i].lstrip().startswith(("#", ";"))]
        op = draw(st.sampled_from(["set", "set", "add", "del"])) if own else "add"
        if op == "set":
            shaping = [i for i in own if lines[i].split("=")[0].strip() in SHAPING]
            i = draw(st.sampled_from(shaping if shaping and draw(st.booleans()) else own))
            key = lines[i].split("=")[0]
            lines[i] = key + "=" + value_for(draw, section, key.strip())
        elif op == "del":
            lines[draw(st.sampled_from(own))] = ""
        else:
            key = draw(keys)
            lines.insert(at + 1, f"{key}={value_for(draw, section, key)}")
            headers = [h + (h > at) for h in headers]
    return "\n".join(lines)


# sections to insert anywhere: references to any layer, pools and strides that shrink a map
# to nothing, flat layers between spatial ones, heads with their filters or without
SECTIONS = st.one_of(
    st.builds("[route]\nlayers={}\n".format, st.sampled_from(["-1", "-2", "-3,-1", "0", "-1,0",
                                                                "2", "-5", "-1,-4"])),
    st.builds("[shortcut]\nfrom={}\nactivation=linear\n".format,
              st.sampled_from(["-1", "-2", "-3", "0", "1", "-1,-2"])),
    st.builds("[maxpool]\nsize={}\nstride={}\n".format, st.sampled_from(["1", "2", "3", "5"]),
              st.sampled_from(["1", "2", "3", "8"])),
    st.builds("[convolutional]\nfilters={}\nsize={}\nstride={}\npad=1\nactivation=leaky\n"
              .format, st.sampled_from(["1", "3", "4", "18", "30"]),
              st.sampled_from(["1", "2", "3"]), st.sampled_from(["1", "2", "5"])),
    st.builds("[{}]\nfrom={}\n".format, st.sampled_from(["sam", "scale_channels"]),
              st.sampled_from(["-1", "-2", "-3"])),
    st.sampled_from(["[upsample]\nstride=2\n", "[upsample]\nstride=-2\n",
                     "[reorg]\nstride=2\n", "[avgpool]\n", "[connected]\noutput=8\n",
                     "[dropout]\nprobability=.3\n", "[batchnorm]\n", "[softmax]\n",
                     "[crop]\ncrop_width=4\ncrop_height=4\n", "[l2norm]\n", "[empty]\n",
                     "[local]\nfilters=2\nsize=3\nstride=1\n", "[logistic]\n",
                     "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 12,12\nclasses=1\nnum=3\n",
                     "[region]\nanchors=1,1, 2,2\nclasses=1\nnum=2\ncoords=4\n",
                     "[conv_lstm]\noutput=2\nsize=3\npad=1\n", "[implicit]\nfilters=4\n",
                     "[cost]\n", "[normalization]\n"]))


@st.composite
def section_mutated(draw, seeds: list[str] = BUILD_SEEDS) -> str:
    """A seed with 1..3 sections inserted before any section (or at the end) or removed."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\w+\]", line)]
        at = draw(st.sampled_from(headers[1:] + [len(lines)]))
        if draw(st.integers(0, 3)) == 0 and at < len(lines):  # remove that section
            end = next((h for h in headers if h > at), len(lines))
            del lines[at:end]
        else:
            lines[at:at] = draw(SECTIONS).split("\n")
        text = "\n".join(lines)
    return text


# the size an example runs at, and the other size its forward is tried at
SIZES = st.tuples(st.sampled_from([32, 64, 33, 17, 96, 8]), st.sampled_from([32, 48, 64, 31]),
                  st.sampled_from([(64, 96), (31, 45), (128, 64), (3, 3)]))


class Hang(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int):
    def ring(signum, frame):
        raise Hang(f"one example ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def errors(diagnostics) -> list:
    return [d for d in diagnostics if d.severity == ERROR]


def agree(path: Path, built: CfgError | None) -> None:
    """A cfg that does not build has a `check` error; one `check` passes builds (an error
    about training settings, E305, or the memory estimate, E401, is the linter's own verdict
    on a cfg that builds). `check` never reports a builder's crash (its E300 "a darkcfg
    bug")."""
    found = errors(check_file(path))
    crashed = [d for d in found if "darkcfg bug" in d.hint]
    assert not crashed, crashed[0].format()
    if built is not None:
        assert found, f"check passes a cfg whose build fails:\n{built.first.format()}"


def exercise(text: str, sizes, folder: Path, then=None) -> str:
    """Everything a user runs on a cfg that parses; raises what escapes the contract, returns
    how far the example got (the seeds' test asserts they get to the end). `then(net, other,
    folder)`: what runs on the built network (default `run`; folder holds it as small.cfg)."""
    try:
        blocks = parse_text(text, "fuzz.cfg")
    except CfgError:
        return "parse error"
    path = folder / "fuzz.cfg"
    path.write_text(text)
    # the cfg as written: summary and check on the meta device (allocates nothing)
    try:
        full = ModelSpec(str(path)).build(device="meta")
    except CfgError as exc:
        agree(path, exc)
        return f"build {exc.code}"
    agree(path, None)
    summary_text(full)
    summary_json(full)
    # shrunk with --set to a size that runs in milliseconds
    w, h, other = sizes
    sets = ["batch=2", "subdivisions=1"]
    if full.input_shape.w and full.input_shape.h:
        sets += [f"width={w}", f"height={h}"]
    if blocks[0].int("time_steps") > 2:
        sets.append("time_steps=2")
    try:
        small_text = cfg_with_overrides(str(path), sets)
    except CfgError as exc:
        return f"--set {exc.code}"
    small = folder / "small.cfg"
    small.write_text(small_text)
    spec = ModelSpec(str(small))
    try:
        meta = spec.build(device="meta")
        guard_memory(meta, MEMORY, batch=1, training=False)
    except CfgError as exc:
        if exc.code != "E401":
            agree(small, exc)
        return f"small {exc.code}"
    agree(small, None)
    if meta.bflops() > BFLOPS:
        return "too slow"
    try:
        net = spec.build()
    except CfgError as exc:  # what check (a meta build) passed must build on the CPU too
        raise AssertionError(f"builds on the meta device, not on the CPU:\n{exc}") from exc
    return (then or run)(net, other, folder)


def example(net, size=None, batch: int = 1) -> torch.Tensor:
    shape = net.input_shape
    if not shape.c * shape.h * shape.w:
        return torch.rand(batch * max(net.info.time_steps, 1), shape.size)
    h, w = size or (shape.h, shape.w)
    return torch.rand(batch * max(net.info.time_steps, 1), shape.c, h, w)


def forward(net, x):
    """The outputs, or None for what the contract allows: an InputError (a size the layers
    cannot take), a CfgError (a layer that cannot run: a `tree=` file that is absent)."""
    try:
        with torch.no_grad():
            return net(x)
    except (InputError, CfgError):
        return None


def run(net, other, folder: Path) -> str:
    from darkcfg.export.emit import EmitError, emit_module
    from darkcfg.export.onnx import max_rel_error

    net.eval()
    x = example(net)
    try:
        with torch.no_grad():
            out = net(x)
    except CfgError:
        return "forward refused"  # (a `tree=` file that is absent: said when it runs)
    # (an InputError here: the build's shapes let through what cannot run at the cfg's size)
    forward(net, example(net, other))
    if not all(torch.isfinite(t).all() for t in out):
        # (windows wholly in a [maxpool]'s padding give -FLT_MAX as in Darknet, and the next
        # convolution inf or NaN: nothing to compare)
        return "non-finite outputs"
    # .weights written by darkcfg load into the same cfg and give the same outputs
    save_weights(net, folder / "w.weights")
    torch.manual_seed(1)
    again = build(net.blocks, flavor=net.info.flavor).eval()
    load_weights(again, folder / "w.weights")
    assert max_rel_error(forward(again, x), out) <= 1e-5
    # the emitted module compiles and gives the same outputs
    net.use_fast_inference(False)
    try:
        source = emit_module(net, "fuzz")
    except EmitError:
        emitted = "not emitted"
    else:
        scope: dict = {}
        exec(compile(source, "fuzz_emitted.py", "exec"), scope)
        module = scope["Net"]().eval()
        module.load_state_dict(net.state_dict())
        with torch.no_grad():
            assert max_rel_error(module(x), net(x)) <= 1e-5
        emitted = "emitted"
    return f"ran, {emitted}, {train_step(net, other)}"


def train_step(net, other) -> str:
    """A Trainer.step of a detector on two images with one truth box each, at the cfg's size
    and at `other`."""
    from darkcfg.config import NetConfig
    from darkcfg.train.detection import DetectionTask
    from darkcfg.train.loop import Trainer
    from darkcfg.train.tasks import task_for

    if not net.loss_layers or net.info.time_steps > 1:
        return "no detector"
    net.train()
    try:
        cfg = NetConfig.from_block(net.net_block)
        task = task_for(net, cfg)
    except CfgError as exc:
        return f"train {exc.code}"
    if not isinstance(task, DetectionTask):
        return "no detector"
    try:
        task.check_training(net)
    except CfgError as exc:
        return f"train {exc.code}"
    trainer = Trainer(net, cfg, task=task)
    truth = torch.zeros(2, 1, 5)
    truth[:, 0] = torch.tensor([0.5, 0.5, 0.3, 0.4, 0])
    try:
        loss = trainer.step(example(net, batch=2), truth)
    except (InputError, CfgError) as exc:
        return f"train {type(exc).__name__}"
    assert loss.dim() == 0
    try:  # multi-scale training's next size, or one the network cannot take
        trainer.step(example(net, other, batch=2), truth)
    except (InputError, CfgError):
        pass
    return "trained"


def check_example(text: str, sizes, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("fb")
    torch.manual_seed(0)
    with alarm(SECONDS), contextlib.redirect_stderr(io.StringIO()):
        reached = exercise(text, sizes, folder)
    shutil.rmtree(folder)  # (up to 45 MB of weights an example; a failed one's stays)
    return reached


@pytest.mark.slow  # ~20 s: 40 networks built, run, emitted, trained
@FUZZ
@given(text=value_mutated(), sizes=SIZES)
def test_value_mutated_cfgs_build_run_and_check_or_say_why(text, sizes, tmp_path_factory):
    check_example(text, sizes, tmp_path_factory)


@pytest.mark.slow  # ~20 s, as above
@FUZZ
@given(text=section_mutated(), sizes=SIZES)
def test_cfgs_with_sections_inserted_anywhere_build_run_and_check_or_say_why(
        text, sizes, tmp_path_factory):
    check_example(text, sizes, tmp_path_factory)


@FUZZ
@given(text=mutated(), sizes=SIZES)
def test_mutated_cfgs_that_parse_build_run_and_check_or_say_why(text, sizes, tmp_path_factory):
    check_example(text, sizes, tmp_path_factory)


@pytest.mark.parametrize("index", range(len(BUILD_SEEDS)))
def test_seeds_run_every_step(index, tmp_path_factory):
    """What the fuzzing mutates gets to the end (test_fuzz's built-in seed has no input size;
    alexnet has no output at 32x32, go.test is too slow)."""
    got = check_example(BUILD_SEEDS[index], (32, 32, (64, 96)), tmp_path_factory)
    assert got.startswith("ran, emitted") or (index, got) in {
        (0, "build E305"), (3, "small E303"), (4, "too slow")}, got


# -- what the fuzzing found: each the exact input, as a plain test --------------------------------

def test_a_connected_layer_at_another_input_size_is_an_input_error():
    """pjreddie/yolov1-tiny.cfg at another size: the [connected] layer's oneDNN fast path said
    'could not create a primitive descriptor' (a RuntimeError naming no size), not InputError."""
    net = build("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2\nsize=3\n"
                "pad=1\nactivation=leaky\n[connected]\noutput=3\nactivation=linear\n").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 8, 8))[0].shape == (1, 3, 1, 1)
        with pytest.raises(InputError, match=r"layer 1 \[connected\] cannot run on a 16x12 "
                           r"\(WxH\) input: .*The cfg's input is \(N, 3, 8, 8\)"):
            net(torch.rand(1, 3, 12, 16))


HUGE = "[net]\nwidth=64\nheight=64\nchannels=3\n[connected]\noutput=2000000\nactivation=linear\n"


@pytest.mark.parametrize("command", [["weights", "--weights", "w.weights", "--save-weights",
                                      "o.weights"], ["valid", "--weights", "w.weights"],
                                     ["emit", "--out", "m.py"]])
def test_a_small_cfg_claiming_a_huge_layer_is_refused_before_it_is_allocated(
        tmp_path, monkeypatch, capsys, command):
    """A 7-line cfg whose [connected] needs 92 GiB: `weights`, `valid` and `predict` built it
    on the CPU with no guard (the allocator's unlocated '<memory>: out of memory', or where it
    fits the virtual memory the OOM killer); now the located E401 of the memory estimate, from
    a meta build, as `check`, `detect` and `train` say it."""
    from darkcfg.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "huge.cfg").write_text(HUGE)
    (tmp_path / "w.weights").write_bytes(bytes(100))
    assert main([command[0], "huge.cfg", *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("huge.cfg:6:8: error[E401]: estimated inference memory 91.6 GiB"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.cfg", "w.weights"]
    # the help offers forcing only where the command has --force
    assert ("or force it" in err) == (command[0] == "valid"), err


def test_the_library_load_paths_guard_the_memory_of_the_build(tmp_path, monkeypatch):
    import darkcfg.model as model

    cfg = tmp_path / "big.cfg"
    cfg.write_text(HUGE.replace("2000000", "100"))  # 4.7 MiB of weights
    monkeypatch.setattr(model, "device_memory", lambda device: 2**20)
    for load in (lambda: model.ModelSpec(str(cfg)).build(), lambda: model.load_model(str(cfg))):
        with pytest.raises(CfgError) as err:
            load()
        assert (err.value.code, err.value.first.line) == ("E401", 6)
    assert model.ModelSpec(str(cfg)).build(device="meta").layers[0].outputs == 100


def test_a_recurrent_cfgs_time_steps_count_in_the_memory_estimate(tmp_path, monkeypatch,
                                                                   capsys):
    """A recurrent net's one forward is time_steps images (emit and export run 1 and 2
    sequences): the guard estimated one image, so `time_steps=1000000` on a 64x64 input passed
    `check` and had `emit` allocate 46 GiB of example input (the allocator's unlocated error,
    or the OOM killer). Now both count time_steps images: a located E401."""
    import darkcfg.model as model
    from darkcfg.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ts.cfg").write_text("[net]\nwidth=64\nheight=64\nchannels=3\ntime_steps=1000\n"
                                     "[convolutional]\nfilters=4\nsize=3\npad=1\n"
                                     "activation=leaky\n")
    monkeypatch.setattr(model, "device_memory", lambda device: 64 * 2**20)
    assert main(["emit", "ts.cfg", "--out", "m.py"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ts.cfg:7:9: error[E401]: estimated inference memory 109.4 MiB is "
                          "over the 64.0 MiB limit"), err
    assert "at batch 1000: time_steps=1000 images a sequence" in err
    assert not (tmp_path / "m.py").exists()
    assert main(["check", "ts.cfg", "--max-memory", "64M"]) == 1
    assert "ts.cfg:7:9: error[E401]" in capsys.readouterr().out


def test_a_layer_after_a_pool_padded_past_any_tensor_is_a_located_error(tmp_path, capsys):
    """`padding=2147483647` in a [maxpool] (a 2^31 x 2^31 output) before a [connected]: torch
    said "Overflow when unpacking long long" as a TypeError, which the builders' overflow
    check (RuntimeErrors only) let through: a traceback from `summary`, and `check`'s E300
    "a darkcfg bug". Now E401 at the layer, naming its input."""
    from darkcfg.cli import main

    cfg = tmp_path / "pool.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[maxpool]\nsize=2\nstride=1\n"
                   "padding=2147483647\n[connected]\noutput=2\n")
    assert main(["summary", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{cfg}:10:8: error[E401]: [connected] is too large to build: its "
                          "tensors would need more than 2^63 bytes (its input: "
                          "3x2147483654x2147483654; "), err
    assert [(d.code, d.line) for d in check_file(cfg)] == [("E401", 10)]


@pytest.mark.parametrize("section", ["[conv_lstm]\noutput=4\n", "[crnn]\noutput=4\nhidden=4\n",
                                     "[crnn]\noutput=4\nhidden=4\nsize=2\npad=1\n",
                                     "[conv_lstm]\noutput=4\nsize=5\npadding=1\n"])
def test_a_recurrent_convolution_that_changes_its_state_size_is_refused(tmp_path, section):
    """[conv_lstm]/[crnn] without pad=1 (their default size=3, padding=0) or with an even size
    built, passed `check`, and its forward at the cfg's own size was torch's 'The size of
    tensor a (4) must match the size of tensor b (6)': the state convolutions shrink the state.
    Now E302 when it is built, so `check` says it too."""
    cfg = tmp_path / "rec.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n" + section)
    with pytest.raises(CfgError) as err:
        build(str(cfg))
    assert (err.value.code, err.value.first.line) == ("E302", 5 if "pad" not in section else
                                                      section.count("\n") + 4)
    assert "change the state's size" in err.value.first.message
    assert [d.code for d in errors(check_file(cfg))] == ["E302"]
    fixed = section.replace("size=2\npad=1\n", "").replace("size=5\npadding=1\n", "")
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n" + fixed + "pad=1\n")  # size=3
    with torch.no_grad():
        assert build(str(cfg)).eval()(torch.rand(1, 3, 8, 8))[0].shape == (1, 4, 8, 8)


def test_a_size_pooled_to_nothing_is_an_input_error_not_a_crash():
    """net(x) of a 1x1 image through conv 3x3, a 2x2 [maxpool] (0x0 out) and a 1x1 conv: the
    inference fast path handed the empty map to the native 1x1 kernel, which divided by its
    pixel count: SIGFPE, the process killed without a word (the fuzzing's hunts died so).
    Empty maps take torch's ops, whose error is the network's InputError. (A subprocess: the
    crash would take pytest with it.)"""
    script = (
        "import torch\nfrom builders import InputError, build\n"
        "net = build('[net]\\nwidth=8\\nheight=8\\nchannels=3\\n[convolutional]\\nfilters=4\\n"
        "size=3\\npad=1\\nactivation=leaky\\n[maxpool]\\nsize=2\\nstride=2\\n"
        "[convolutional]\\nfilters=4\\nsize=1\\nactivation=linear\\n').eval()\n"
        "with torch.no_grad():\n"
        "    assert net(torch.rand(1, 3, 8, 8))[0].shape == (1, 4, 4, 4)\n"
        "    try:\n        net(torch.rand(1, 3, 1, 1))\n"
        "    except InputError as exc:\n        print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("layer 2 [convolutional] cannot run on a 1x1 (WxH) input"), \
        done.stdout


def test_a_route_whose_inputs_disagree_at_another_size_is_an_input_error():
    """At 7x7 the [route]'s two inputs are 3x3 (a pool without padding) and 4x4 (a stride-2
    conv): the fast path, which has each convolution write into its channels of the route's
    output, raised the kernel's ValueError 'out must be float32 [1, 4, 4, 4] ...' (forward
    turns only RuntimeErrors into InputError). Now the InputError naming the size."""
    net = build("[net]\nwidth=8\nheight=8\nchannels=3\n"
                "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
                "[maxpool]\nsize=2\nstride=2\npadding=0\n"
                "[convolutional]\nfilters=4\nsize=1\nactivation=leaky\n"
                "[route]\nlayers=0\n"
                "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
                "[route]\nlayers=2,4\n").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 8, 8))[0].shape == (1, 8, 4, 4)
        with pytest.raises(InputError, match=r"cannot run on a 7x7 \(WxH\) input: Sizes of "
                           r"tensors must match"):
            net(torch.rand(1, 3, 7, 7))
