"""Fuzzing cfgparse with hypothesis: mutated corpus files, random bytes and mutated YAML never
make anything but CfgError escape; whatever parses is located, and writes back unchanged; the
parser's fast path and line cache type every value exactly like the schema does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfgparse import CfgError, parse, parse_text, schema
from cfgparse.blocks import _strict
from cfgparse.writer import to_yaml, write
from cfgparse.yaml_io import blocks_from_yaml

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet" / "corpus"
# small corpus files with many section types; the built-in seed keeps the test meaningful when
# the shared corpus is absent
SEED_FILES = ["alexeyab/yolov3-tiny.cfg", "alexeyab/crnn.train.cfg", "pjreddie/alexnet.cfg",
              "pjreddie/go.test.cfg", "alexeyab/yolov4-tiny.cfg"]
BUILT_IN = """[net]
batch=64
width = 416
steps=400000,450000
# comment
[convolutional]
\tfilters=16
activation = leaky
[route]
layers = -1, 4 ###P4
[yolo]
mask=0,1,2#x
anchors = 10,13,  16,30
"""


def _seeds() -> list[str]:
    texts = [BUILT_IN]
    texts += [(CORPUS / f).read_text() for f in SEED_FILES if (CORPUS / f).is_file()]
    return texts


SEEDS = _seeds()
# a few seconds in the suite, the same examples each run (a CI run that found a new bug failed
# at random); DARKCFG_FUZZ_EXAMPLES=5000 DARKCFG_FUZZ_RANDOM=1 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("DARKCFG_FUZZ_EXAMPLES", "120")), deadline=None,
                database=None, derandomize=not os.environ.get("DARKCFG_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# characters that matter to the grammar and the value rules, plus anything at all
INTERESTING = st.sampled_from(list("[]=#;,.-+_eE09 \t\n\r\ufeff\x00\x07"))
CHARS = st.one_of(INTERESTING, st.characters())
INSERTS = st.one_of(CHARS, st.just("\r\n"))
LINES = st.one_of(st.sampled_from(["[net]", "[conv]", "[convolutional", "[]", "=", "a=", "=b",
                                   "filters=abc", "size=-3", "batch=1", "activation=leeky",
                                   "[yolo] # c", "x y", "\t", "layers=-1,,2#"]),
                  st.text(CHARS, max_size=20))


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["del", "dup", "ins", "del_line", "dup_line", "ins_line"]))
        if op.endswith("line"):
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "del_line":
                del lines[i]
            elif op == "dup_line":
                lines.insert(i, lines[i])
            else:
                lines.insert(i, draw(LINES))
            text = "\n".join(lines)
        elif text:
            i = draw(st.integers(0, len(text) - 1))
            if op == "del":
                text = text[:i] + text[i + 1:]
            elif op == "dup":
                text = text[:i] + text[i] + text[i:]
            else:
                text = text[:i] + draw(INSERTS) + text[i:]
    return text


def typed(blocks) -> list:
    return [(b.type, _strict(b.values())) for b in blocks]


def assert_located(diagnostics, text: str) -> None:
    """Every diagnostic points at a real line, and at most one column past its end."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for d in diagnostics:
        assert 1 <= d.line <= max(len(lines), 1), d
        assert 1 <= d.column <= len(lines[d.line - 1]) + 1, d


@FUZZ
@given(mutated())
def test_mutated_cfgs_raise_only_cfgerror_and_what_parses_round_trips(text):
    try:
        result = parse_text(text, "fuzz.cfg")
    except CfgError as exc:
        assert exc.diagnostics and exc.errors[0].severity == "error"
        assert_located(exc.diagnostics, text.removeprefix("\ufeff"))
        return
    assert_located(result.warnings, text.removeprefix("\ufeff"))
    again = parse_text(write(result), "written.cfg")
    assert typed(again) == typed(result)
    assert typed(blocks_from_yaml(to_yaml(result), "written.yaml")) == typed(result)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_cfgerror(data):
    try:
        parse(data)
    except CfgError as exc:
        assert exc.diagnostics


@FUZZ
@given(st.data())
def test_mutated_yaml_raises_only_cfgerror(data):
    text = to_yaml(parse(data.draw(st.sampled_from(SEEDS[:2]))))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()) and text:
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + data.draw(st.sampled_from(list(":-[]{}#&*!|>'\" \n\t,?")) |
                                        st.characters()) + text[i:]
    try:
        result = blocks_from_yaml(text, "fuzz.yaml")
    except CfgError as exc:
        assert exc.diagnostics
        return
    assert typed(parse_text(write(result), "written.cfg")) == typed(result)


NUMERIC_KEYS = [("net", "batch"), ("net", "track"), ("net", "learning_rate"), ("net", "steps"),
                ("net", "scales"), ("net", "policy"), ("convolutional", "activation"),
                ("yolo", "map"), ("convolutional", "size"), ("net", "hue")]
VALUE_TEXT = st.text(st.sampled_from(list("0123456789+-.eE_#, \tainfx\u0663")), min_size=0,
                     max_size=8)


@FUZZ
@given(st.sampled_from(NUMERIC_KEYS), VALUE_TEXT)
def test_fast_path_and_line_cache_type_like_the_schema(section_key, value_text):
    section, key = section_key
    spec = schema.key_spec(section, key)
    raw = "".join(value_text.split())
    header = "" if section == "net" else f"[{section}]\n"
    text = f"[net]\n{header}{key}={value_text}\n"
    try:
        expected = ("ok", _strict(schema.convert(spec, key, raw)[0])) if raw else ("E105",)
    except schema.ValueProblem as exc:
        expected = (exc.code,)
    for _ in range(2):  # the second parse may come from the line cache
        try:
            got = ("ok", _strict(parse_text(text)[-1].get(key)))
        except CfgError as exc:
            got = (exc.code,)
        assert got == expected


def test_seeds_parse():
    # the fuzz tests mutate these; they must be valid to begin with
    for text in SEEDS:
        assert parse_text(text)
    if len(SEEDS) == 1:
        pytest.skip("../shared/darknet/corpus is not available: fuzzed the built-in seed only")
