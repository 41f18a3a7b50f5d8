"""cfgparse: the real Darknet corpus, Darknet's syntax rules, positions, every diagnostic (code,
line and column), typing, blocks and the path/text heuristic."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from lark import Lark
from lark.lexer import LexerThread

from cfgparse import Block, CfgError, Option, parse, parse_text, schema
from cfgparse.errors import CODES
from cfgparse.parser import _GRAMMAR, _parser, _TerminalLexer, looks_like_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "darknet"
CORPUS = SHARED / "corpus"
SHAPES = SHARED / "shapes"


def corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("*/*.cfg"))
    if not files:
        pytest.skip("../shared/darknet/corpus is not available")
    return files


def shape_dumps() -> list[Path]:
    dumps = sorted(p for p in SHAPES.glob("*/*.json") if not p.name.startswith("_"))
    if not dumps:
        pytest.skip("../shared/darknet/shapes is not available")
    return dumps


def error_of(text: str, **kw) -> CfgError:
    with pytest.raises(CfgError) as info:
        parse_text(text, "t.cfg", **kw)
    return info.value


def located(diags) -> list[tuple[str, int, int]]:
    return [(d.code, d.line, d.column) for d in diags]


# -- the real corpus ------------------------------------------------------------------------------
def test_every_corpus_file_parses_with_no_error_and_only_expected_warnings():
    files = corpus_files()
    assert len(files) == 148
    for path in files:
        result = parse(path)
        assert result and result[0].type == "net", path
        assert {w.code for w in result.warnings} <= {"W201", "W202"}, path
        # without a flavor, W201 only for the keys no Darknet fork reads (see the next tests)
        assert {w.source.split("=")[0].strip() for w in result.warnings if w.code == "W201"} \
            <= {"beta1", "uc_normalizer"}, path


def _unused_by_darknet(dump: dict) -> set[str]:
    return set(dump.get("darknet_messages", {}).get("unused_fields", []))


def _w201_fields(result) -> set[str]:
    """Our W201s in Darknet's 'key = value' spelling (whitespace removed, like Darknet)."""
    fields = set()
    for w in result.warnings:
        if w.code == "W201":
            key, _, value = w.source.partition("=")
            fields.add(f"{''.join(key.split())} = {''.join(value.split())}")
    return fields


def test_w201_is_exactly_darknets_unused_fields_for_the_fork_that_parsed():
    """Each shape dump records the keys Darknet reported as 'Unused field' while it parsed the
    cfg. Parsing with that Darknet's flavor must warn W201 for exactly those keys."""
    checked = 0
    for dump_path in shape_dumps():
        dump = json.loads(dump_path.read_text())
        flavor = "pjreddie" if dump["parser"].lower().startswith("pjreddie") else "alexeyab"
        result = parse((dump_path.parent / dump["cfg"]).resolve(), flavor=flavor)
        assert _w201_fields(result) == _unused_by_darknet(dump), dump_path
        checked += 1
    assert checked == 182


def test_without_flavor_w201_only_for_keys_that_both_forks_report_unused():
    by_cfg: dict[Path, list[set[str]]] = {}
    for dump_path in shape_dumps():
        dump = json.loads(dump_path.read_text())
        by_cfg.setdefault((dump_path.parent / dump["cfg"]).resolve(), []).append(
            _unused_by_darknet(dump))
    warned = 0
    for cfg, reports in by_cfg.items():
        fields = _w201_fields(parse(cfg))
        assert fields <= set.intersection(*reports) if len(reports) > 1 else fields <= reports[0]
        warned += len(fields)
    assert warned == 2  # beta1 and uc_normalizer in [yolo]: read by no Darknet


def test_corpus_sections_and_keys_from_stats_are_in_the_schema():
    if not (CORPUS / "STATS.json").is_file():
        pytest.skip("../shared/darknet/corpus/STATS.json is not available")
    stats = json.loads((CORPUS / "STATS.json").read_text())
    for fork in ("alexeyab", "pjreddie"):
        assert set(stats[fork]["net_keys_cfgs"]) <= set(schema.SECTIONS["net"]), fork
        for section, keys in stats[fork]["section_keys_cfgs"].items():
            canonical = schema.canonical_section(section.strip("[]"))
            assert canonical is not None, section
            missing = set(keys) - set(schema.SECTIONS[canonical])
            assert missing <= {"beta1", "uc_normalizer"}, (section, missing)


def our_tokens(text: str):
    """The tokens of cfgparse's own lexer (`Lark.lex` would build lark's basic lexer instead)."""
    return LexerThread.from_text(_TerminalLexer(_parser().lexer_conf), text).lex(None)


def test_our_lexer_gives_the_same_tokens_as_larks_basic_lexer():
    reference = Lark(_GRAMMAR.read_text(), parser="lalr", lexer="basic")
    # every 10th corpus file when ../shared is there; the edge cases below in any case
    texts = [p.read_text() for p in sorted(CORPUS.glob("*/*.cfg"))[::10]]
    texts += ["", "  \n\n", "x=1\n[net]\n  [conv] \n a=1\n\n[", "[a\n[b]c\n\t;x\n k = v \n"]
    for text in texts:
        expected = [(t.type, str(t), t.line, t.column, t.start_pos) for t in
                    reference.lex(text)]
        got = [(t.type, str(t), t.line, t.column, t.start_pos) for t in our_tokens(text)]
        assert got == expected


@pytest.mark.skipif(sys.version_info < (3, 11), reason="possessive quantifiers: Python 3.11")
def test_a_long_section_body_lexes_in_bounded_memory():
    """re keeps a backtracking record per iteration of a greedy group: a section body of 200,000
    comment or blank lines took ~80 MB in the lexer alone (12 million lines: 7.5 GB)."""
    import tracemalloc

    text = "[net]\nwidth=8\n" + "# c\n\n" * 100_000 + "[convolutional]\nfilters=1\n"
    tracemalloc.start()
    try:
        tokens = list(our_tokens(text))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [t.type for t in tokens] == ["HEADER", "BODY", "HEADER", "BODY"]
    assert peak < 8 * 2**20, peak


# -- Darknet's syntax ---------------------------------------------------------------------------
NET = "[net]\nwidth=8\nheight=8\nchannels=3\n"


def test_whitespace_anywhere_is_removed_like_darknet():
    blocks = parse(NET + "[convolutional]\n  fil ters = 1 6\n\tactivation =\tleaky \n"
                   "[yolo]\nanchors = 10,13,  16,30\n")
    assert blocks[1].values() == {"filters": 16, "activation": "leaky"}
    assert blocks[2].get("anchors") == [10.0, 13.0, 16.0, 30.0]


def test_comments_blank_lines_and_inline_hash():
    blocks = parse("# top\n; also\n[net]\n# w\nbatch=2\n\n   \n;x=1\n[route]\nlayers = -1, 4 ###P4"
                   "\n[yolo]\nmask=0,1,2#foo\nmap=data/x#y\n")
    assert blocks[0].values() == {"batch": 2}
    assert blocks[1].get("layers") == [-1, 4]  # list parsers stop at '#', like Darknet's
    assert blocks[2].get("mask") == [0, 1, 2]
    assert blocks[2].get("map") == "data/x#y"  # text keeps it: Darknet strips no comment


def test_crlf_cr_and_bom_read_like_lf():
    text = NET + "[convolutional]\nfilters=4\nactivation=leaky\n"
    plain = parse(text)
    for variant in (text.replace("\n", "\r\n"), text.replace("\n", "\r"), "\ufeff" + text):
        again = parse(variant)
        assert list(again) == list(plain)
        assert [o.line for b in again for o in b.options.values()] == \
            [o.line for b in plain for o in b.options.values()]
    assert list(parse(b"\xef\xbb\xbf" + text.encode())) == list(plain)
    crlf = parse(text.replace("\n", "\r\n"))
    assert crlf[1].option("filters").source == "filters=4"


def test_duplicate_key_first_wins_and_warns_with_darknets_value():
    result = parse("[net]\nbatch=64\nwidth=8\nbatch=1\n")
    assert result[0].get("batch") == 64
    (w,) = result.warnings
    assert located([w]) == [("W202", 4, 1)]
    assert "Darknet uses the first value, '64' (line 2)" in w.message


def test_aliases_are_normalised_and_the_written_name_kept():
    blocks = parse("[network]\nbatch=1\n[conv]\n[max]\n[avg]\n[soft]\n[conn]\n[lrn]\n"
                   "[local_avg]\n[silence]\n[deconv]\n")
    assert [b.type for b in blocks] == ["net", "convolutional", "maxpool", "avgpool", "softmax",
                                        "connected", "normalization", "local_avgpool", "empty",
                                        "deconvolutional"]
    assert [b.name for b in blocks][:3] == ["network", "conv", "max"]


def test_layer_indices_follow_darknet():
    blocks = parse(NET + "[convolutional]\n[maxpool]\n[route]\nlayers=-1\n")
    assert [b.index for b in blocks] == [-1, 0, 1, 2]


# -- positions ----------------------------------------------------------------------------------
def test_positions_of_headers_keys_and_values():
    text = "[net]\n  batch = 64\n\twidth=\t8\n [conv]\nfilters=16\n   size  =   3\n"
    blocks = parse_text(text, "p.cfg")
    net, conv = blocks
    assert (net.line, net.column, net.path) == (1, 1, "p.cfg")
    assert (conv.line, conv.column, conv.source) == (4, 2, " [conv]")
    batch, width = net.option("batch"), net.option("width")
    assert (batch.line, batch.column, batch.value_column) == (2, 3, 11)
    assert batch.source == "  batch = 64"  # the first body line keeps its indentation
    assert (width.line, width.column, width.value_column) == (3, 2, 9)
    size = conv.option("size")
    assert (size.line, size.column, size.value_column, size.raw) == (6, 4, 14, "3")
    assert conv.option("filters")[3:6] == (5, 1, 9)


def test_positions_are_the_same_on_the_fast_path_and_from_the_line_cache():
    text = NET + "[convolutional]\n  filters = 8\nsize=3\n" * 2
    blocks = parse(text)
    first, second = blocks[1], blocks[2]
    for key in ("filters", "size"):
        a, b = first.option(key), second.option(key)
        assert a[:3] == b[:3] and a[4:] == b[4:] and b.line == a.line + 3


# -- every diagnostic: code, line and column ----------------------------------------------------
ERRORS = [
    # (text, [(code, line, column), ...])
    ("", [("E100", 1, 1)]),
    ("# only a comment\n\n", [("E100", 1, 1)]),
    (NET + "[convolutional\nfilters=1\n", [("E101", 5, 15)]),
    (NET + "[convolutional]\nfilters 16\n", [("E102", 6, 8)]),
    (NET + "[convolutional]\n  filters\n", [("E102", 6, 10)]),
    (NET + "[convolutional]\n=3\n", [("E102", 6, 1)]),
    ("batch=1\n" + NET, [("E103", 1, 1)]),
    ("[net]\nbatch=\n", [("E105", 2, 7)]),
    ("[net]\n  batch =  \n", [("E105", 2, 10)]),
    (NET + "[conv] x\n", [("E106", 5, 8)]),
    (NET + "[]\n", [("E106", 5, 1)]),
    ("[convolutional]\nfilters=1\n", [("E107", 1, 1)]),
    (NET + "[convolutonal]\n", [("E201", 5, 2)]),
    (NET + "[ Conv ]\n", [("E201", 5, 3)]),
    (NET + "[convolutional]\nfilters=abc\n", [("E202", 6, 9)]),
    (NET + "[convolutional]\nfilters = 1_000\n", [("E202", 6, 12)]),
    (NET + "[route]\nlayers=-1,x\n", [("E202", 6, 11)]),
    (NET + "[convolutional]\nsize=-3\n", [("E203", 6, 6)]),
    (NET + "[convolutional]\n\tsize = 0\n", [("E203", 6, 9)]),
    ("[net]\nlearning_rate=1e999\n", [("E203", 2, 15)]),
    (NET + "[convolutional]\nactivation=leeky\n", [("E204", 6, 12)]),
    ("[net]\npolicy=stepz\n", [("E204", 2, 8)]),
]


@pytest.mark.parametrize("text, expected", ERRORS,
                         ids=[f"{e[1][0][0]}-{i}" for i, e in enumerate(ERRORS)])
def test_error_code_line_and_column(text, expected):
    assert located(error_of(text).errors) == expected


WARNINGS = [
    (NET + "[convolutional]\n  filter=16\n", {}, [("W201", 6, 3)]),
    ("[net]\nbatch=1\n  batch = 2\n", {}, [("W202", 3, 3)]),
    ("[net]\nbatch=3.7\n", {}, [("W203", 2, 7)]),
    (NET + "[convolutional]\nsize=1e3\n", {}, [("W203", 6, 6)]),
    ("[net] # comment\n", {}, [("W205", 1, 7)]),
    (NET + "[sam]\nfrom=-1\n", {"flavor": "pjreddie"}, [("W206", 5, 2)]),
    (NET + "[rnn]\nhidden=4\n", {"flavor": "pjreddie"}, [("W201", 6, 1)]),
    (NET + "[reorg]\nextra=1\n", {"flavor": "alexeyab"}, [("W201", 6, 1)]),
]


@pytest.mark.parametrize("text, kw, expected", WARNINGS,
                         ids=[f"{w[2][0][0]}-{i}" for i, w in enumerate(WARNINGS)])
def test_warning_code_line_and_column(text, kw, expected):
    assert located(parse_text(text, "t.cfg", **kw).warnings) == expected


def test_fork_specific_keys_warn_only_for_the_other_fork():
    text = NET + "[rnn]\nhidden=4\n[reorg]\nextra=1\n"
    assert parse(text).warnings == []
    assert [w.message for w in parse(text, flavor="pjreddie").warnings] == [
        "pjreddie Darknet does not read 'hidden' in [rnn] (Unused field; only AlexeyAB does)"]


@pytest.mark.parametrize("data, expected", [
    (b"[net]\nbatch=1\n\x00\x01\x02", ("E104", 3, 1)),
    (b"[net]\nbatch=\xff\xfe1\n", ("E104", 2, 7)),
    (b"\xff\xfe[\x00n\x00", ("E104", 1, 1)),
    (b"[net]\nbatch=1\x07\n", ("E104", 2, 8)),
    (bytes(range(256)), ("E104", 1, 1)),
])
def test_binary_and_garbage_input(data, expected):
    with pytest.raises(CfgError) as info:
        parse(data)
    assert located(info.value.errors) == [expected]


def test_did_you_mean_hints():
    assert error_of(NET + "[convolutonal]\n").first.hint == "did you mean 'convolutional'?"
    assert error_of(NET + "[Yolo]\n").first.hint == "did you mean 'yolo'?"
    assert error_of(NET + "[convolutional]\nactivation=Leaky\n").first.hint == \
        "did you mean 'leaky'?"
    assert error_of("[net]\npolicy=setps\n").first.hint == "did you mean 'steps'?"
    (w,) = parse(NET + "[convolutional]\nfliters=1\n").warnings
    assert w.hint == "did you mean 'filters'?"


def test_the_error_format():
    err = error_of(NET + "[convolutional]\n\tsize = -3\n")
    assert str(err) == (
        "t.cfg:6:9: error[E203]: 'size' = -3 is out of range (must be >= 1)\n"
        "  |\n"
        "6 | \tsize = -3\n"
        "  | \t       ^^\n"  # the tab is kept, so the caret lands under the value
        "help: use a value >= 1")
    assert set(CODES) >= {"E100", "E101", "E102", "E103", "E104", "E105", "E201", "E202",
                          "E203", "E204", "W201", "W202"}


def test_a_path_with_a_line_break_keeps_the_diagnostic_line_whole():
    """A data set file named with a line break (a folder scan finds it) split the
    `path: error[CODE]: message` line in two."""
    from cfgparse import Diagnostic

    text = Diagnostic("E901", "cannot read image", "imgs/new\nline\t.jpg", hint="fix").format()
    assert text.splitlines()[0] == "imgs/new\\nline\\t.jpg: error[E901]: cannot read image"
    assert Diagnostic("E901", "m", "ünï cødé.jpg").format().startswith("ünï cødé.jpg: error")


def test_the_caret_stays_under_wide_characters_and_combining_marks():
    """A CJK character or an emoji takes two terminal columns, a combining accent none: the
    caret counted one each and landed left of (or short of) what it points at."""
    from cfgparse import Diagnostic

    def caret(source: str, column: int, span: int) -> tuple[str, str]:
        lines = Diagnostic("E202", "m", "a.cfg", 1, column, source=source, span=span).format()
        return tuple(line.removeprefix("1 | ").removeprefix("  | ")
                     for line in lines.splitlines()[2:4])

    assert caret("\u6f22\u5b57=abc", 4, 3) == ("\u6f22\u5b57=abc", "     ^^^")
    assert caret("layers=-1,\U0001f600", 11, 1) == ("layers=-1,\U0001f600", " " * 10 + "^^")
    assert caret("e\u0301=xyz", 4, 3) == ("e\u0301=xyz", "  ^^^")  # an e and its accent


def test_a_very_long_line_is_shown_around_its_caret_not_whole():
    """A 5 MB name or line made a 10 MB diagnostic (the line, then as many carets), and a
    several-minute did-you-mean over the name."""
    name = "c" * 5_000_000
    err = error_of(NET + f"[{name}]\n")
    text = str(err)
    assert len(text) < 2000 and "(5000023 characters)" in err.first.message
    assert text.splitlines()[2].startswith("5 | [ccc") and text.splitlines()[2].endswith("...")
    # the caret under a value at the end of a long line: the line's end is shown, not its start
    err = error_of(NET + "[convolutional]\n#" + "x" * 300 + "\nanchors=" + "1," * 3000 + "\n"
                   "filters" + " " * 5000 + "=abc\n")
    (diag,) = [d for d in err.diagnostics if d.code == "E202"]
    line, caret = diag.format().splitlines()[2:4]
    assert line.startswith("8 | ...") and line.endswith("=abc") and len(line) < 200
    assert caret.index("^") == line.index("abc") and caret.endswith("^^^")


@pytest.mark.parametrize("name", ["net", "network"])
def test_a_later_net_section_is_a_parse_error(name):
    """Darknet makes a second [net] an unknown, empty layer; the builder refused it (E300 with a
    list of the sections it builds), but `check --no-build` passed the file."""
    err = error_of(NET + f"[convolutional]\nfilters=1\nsize=1\n[{name}]\nwidth=4\n")
    assert located(err.diagnostics) == [("E107", 8, 1)]
    assert f"[{name}] may only be the first section" in err.first.message
    assert "line 1" in err.first.hint


def test_several_errors_in_one_run_with_warnings_alongside():
    err = error_of("[net]\nbatch=x\nwidth=1\nwidth=2\n[conv]\nfilters=y\nsize 3\n[bogus]\n"
                   "size=\n")
    assert located(err.diagnostics) == [("E202", 2, 7), ("W202", 4, 1), ("E202", 6, 9),
                                        ("E102", 7, 5), ("E201", 8, 2), ("E105", 9, 6)]
    assert err.code == "E202"


# -- values -------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, value", [
    ("3", 3), ("+3", 3), ("-0", 0), ("007", 7), ("3#x", 3), ("3.9", 3), ("-3.9", -3),
    ("1e3", 1), (".5", 0),  # C atoi reads the leading digits only (W203 says so)
])
def test_integers_read_like_c_atoi(raw, value):
    assert parse(f"[net]\ntrack={raw}\n")[0].get("track") == value


@pytest.mark.parametrize("raw", ["1_000", "\u0663", "0x10", "inf", "nan", "3,4", "--1"])
def test_not_integers(raw):
    assert error_of(f"[net]\nmax_batches={raw}\n").code == "E202"


@pytest.mark.parametrize("raw, value", [
    ("0.001", 0.001), ("1e-3", 0.001), ("5.", 5.0), (".5", 0.5), ("+2E2", 200.0), ("0.5#c", 0.5),
])
def test_floats(raw, value):
    got = parse(f"[net]\nlearning_rate={raw}\n")[0].get("learning_rate")
    assert got == value and isinstance(got, float)


@pytest.mark.parametrize("raw", ["nan", "inf", "-infinity", "1_0", "1.2.3", "\u0663"])
def test_not_floats(raw):
    assert error_of(f"[net]\nhue={raw}\n").code == "E202"


def test_lists_and_unknown_keys_are_typed():
    blocks = parse("[net]\nsteps=100,200,\nscales=.1,1\n[convolutional]\nfoo=1,2\nbar=0.5\n"
                   "baz=x,y\nqux=4\n")
    assert blocks[0].get("steps") == [100, 200]
    assert blocks[0].get("scales") == [0.1, 1.0]
    assert blocks[1].values() == {"foo": [1, 2], "bar": 0.5, "baz": "x,y", "qux": 4}


# -- blocks ---------------------------------------------------------------------------------------
def test_blocks_are_immutable():
    block = parse(NET + "[convolutional]\nfilters=8\n")[1]
    with pytest.raises(TypeError):
        block.options["filters"] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        block.type = "maxpool"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        block.option("filters").value = 3  # type: ignore[misc]
    mine = {"filters": Option("filters", "8", 8)}
    made = Block("convolutional", options=mine)
    mine["filters"] = Option("filters", "9", 9)
    assert made.get("filters") == 8


def test_getters_type_default_and_track_reads():
    block = parse(NET + "[convolutional]\nfilters=8\nsize=3\nfoo=1\n")[1]
    assert block.int("filters") == 8 and block.float("filters") == 8.0
    assert block.int("stride") == 1  # the schema's default
    assert block.str("activation") == "logistic"
    assert [o.key for o in block.unread()] == ["size", "foo"]
    assert block.ints("size") == [3]
    assert [o.key for o in block.unread()] == ["foo"]
    with pytest.raises(CfgError) as info:
        parse(NET + "[convolutional]\nfilters=8\n[yolo]\nmask=1,2\n")[2].int("mask")
    assert located(info.value.errors) == [("E202", 8, 6)]


def test_equality_is_on_types_and_values():
    a = parse("[net]\nbatch=1\n")[0]
    b = parse("[net]\n\n  batch = 1\n")[0]
    assert a == b
    assert Block("net", options={"x": Option("x", "1", 1)}) != \
        Block("net", options={"x": Option("x", "1", 1.0)})


def test_with_values_types_through_the_schema_and_keeps_the_original():
    block = parse(NET + "[convolutional]\nfilters=8\nactivation=leaky\n")[1]
    changed = block.with_values(filters="16", size=3, pad=True, activation=None)
    assert changed.values() == {"filters": 16, "size": 3, "pad": 1}
    assert block.values() == {"filters": 8, "activation": "leaky"}
    assert changed.option("filters").line == 6  # the replaced option keeps its place
    assert block.with_values(filters=" 1 6 ").get("filters") == 16
    assert parse("[net]\nlearning_rate=0.1\n")[0].with_values(learning_rate=1).get(
        "learning_rate") == 1.0


@pytest.mark.parametrize("values, expected", [
    ({"filters": "abc"}, ("E202", 6, 9)),
    ({"size": "-3"}, ("E203", 5, 1)),  # no size line: located at the header
    ({"filters": -3}, ("E203", 6, 9)),
    ({"activation": "leeky"}, ("E204", 5, 1)),
    ({"filtres": 3}, ("E205", 5, 1)),
    ({"filters": ""}, ("E105", 6, 9)),
    # a preset's or the Python API's value with a no-break space or a zero-width space: E109 as
    # in cfg text and --set (str.split() dropped the first silently, the second made an E202)
    ({"filters": "\u00a016"}, ("E109", 6, 9)),
    ({"activation": "leaky\u200b"}, ("E109", 5, 1)),
])
def test_with_values_errors_are_located(values, expected):
    block = parse(NET + "[convolutional]\nfilters=8\n")[1]
    with pytest.raises(CfgError) as info:
        block.with_values(**values)
    assert located(info.value.errors) == [expected]
    if expected[0] == "E205":
        assert info.value.first.hint == "did you mean 'filters'?"


# -- path or text -------------------------------------------------------------------------------
def test_path_or_text(tmp_path):
    cfg = tmp_path / "a.cfg"
    cfg.write_text(NET)
    assert parse(str(cfg))[0].get("width") == 8
    assert parse(cfg)[0].get("width") == 8
    assert parse("[net]")[0].values() == {}  # one line, no newline: still text
    assert looks_like_text("batch=1") and not looks_like_text("cfg/yolov3.cfg")
    assert located(error_of("batch=1").errors) == [("E103", 1, 1)]  # text, not a missing file
    assert looks_like_text("") and looks_like_text("  ")
    eq_path = tmp_path / "lr=0.1.cfg"
    eq_path.write_text(NET)
    assert not looks_like_text(str(eq_path))  # an existing file with '=' in its name


@pytest.mark.parametrize("name", ["missing.cfg", "dir", "bad\x00name"])
def test_unreadable_paths_are_e901(tmp_path, name):
    (tmp_path / "dir").mkdir()
    target = str(tmp_path / name) if name != "bad\x00name" else name
    with pytest.raises(CfgError) as info:
        parse(target)
    assert info.value.code == "E901"
    assert info.value.first.message.startswith("cannot read")


def test_a_control_character_in_yaml_is_located(tmp_path):
    """libyaml's reader error has no mark, only a position: it was reported at 1:1."""
    path = tmp_path / "ctrl.yaml"
    path.write_text("- net: {width: 32}\n- conv: {a: 1\x01}\n")
    with pytest.raises(CfgError) as err:
        parse(str(path))
    assert err.value.first.format().startswith(f"{path}:2:14: error[E108]: invalid YAML")


def test_a_yaml_merge_key_is_refused_at_the_key(tmp_path):
    """`<<: *conv` was E202 at the anchor (another section's line), naming the key '<<'."""
    path = tmp_path / "merge.yaml"
    path.write_text("- net: {width: 32, height: 32, channels: 3}\n"
                    "- convolutional: &conv {filters: 4, size: 3}\n"
                    "- convolutional: {<<: *conv, filters: 8}\n")
    with pytest.raises(CfgError) as err:
        parse(str(path))
    assert err.value.first.format().startswith(
        f"{path}:3:19: error[E108]: a YAML merge key ('<<') in [convolutional] is not read")


def test_yaml_aliases_that_repeat_long_sections_are_refused(tmp_path):
    """3000 aliases of a section holding a 3000-item list: 21 KB of YAML took 11 s and 750 MB
    (the list joined once per alias); 10x that in each would not finish."""
    path = tmp_path / "quad.yaml"
    path.write_text("- net: {width: 32, height: 32, channels: 3}\n"
                    "- &s {convolutional: {filters: 4, size: 3, x: [" + ",".join(["1"] * 3000)
                    + "]}}\n" + "- *s\n" * 3000)
    with pytest.raises(CfgError) as err:
        parse(str(path))
    assert err.value.first.format().startswith(
        f"{path}:1:1: error[E108]: these values expand to 18,114,073 characters through YAML")


# -- non-ASCII spaces and invisible characters (E109) -------------------------------------------
@pytest.mark.parametrize("line, col, name", [
    ("filters=\u00a016", 9, "no-break space U+00A0"),  # pasted from a web page
    ("filters\u00a0=16", 8, "no-break space U+00A0"),
    ("activation=leaky\u2003", 17, "em space U+2003"),
    ("filters=16\u3000", 11, "ideographic space U+3000"),
    ("filters=1\u200b6", 10, "zero width space U+200B"),
    ("\ufeffsize=3", 1, "zero width no-break space (a byte order mark) U+FEFF"),
])
def test_non_ascii_spaces_are_located_errors(line, col, name):
    """Python's str.split() dropped most of these silently (filters=<U+00A0>16 read as 16),
    and the zero-width space gave an E202 showing '1​6'; Darknet's strip() removes only ASCII
    whitespace and reads something else (atoi gives 0, an unknown key or activation)."""
    err = error_of(NET + "[convolutional]\n" + line + "\nsize=3\n")
    (d,) = err.errors
    assert (d.code, d.line, d.column) == ("E109", 6, col)
    assert d.message.startswith(f"{name} in an option line: Darknet does not remove it")
    text = d.format()
    assert "\u2423" in text.splitlines()[2]  # shown, where the caret points
    assert "help: delete it or type an ordinary space" in text


def test_non_ascii_spaces_elsewhere():
    """A header, a blank line and a BOM in the middle of a file (two files concatenated);
    comments and the text after an inline '#' may hold them; each line is reported once and
    the rest of the file is still read."""
    text = ("[net]\nwidth=8\n\u00a0\nheight=8\nchannels=3\n# caf\u00e9\u00a0au lait\n"
            "\ufeff[convolutional]\u00a0\nfilters=4 # x\u00a0y\nsize=3\u00a0\u00a0\nstride=x\n")
    err = error_of(text)
    assert located(err.errors) == [("E109", 3, 1), ("E109", 7, 1), ("E109", 9, 7),
                                   ("E202", 10, 8)]
    messages = [d.message for d in err.errors]
    assert "in a blank line" in messages[0] and "in a section header" in messages[1]
    assert "(2 in it)" in messages[2]
    ok = parse(NET + "# caf\u00e9\u00a0au lait\n[convolutional]\nfilters=4 # x\u00a0y\nsize=3\n")
    assert ok[1].int("filters") == 4


def test_non_ascii_spaces_in_yaml(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("- net: {width: 32, height: 32, channels: 3}\n"
                    "- convolutional:\n    filters\u00a0: 16\n    activation: [lea\u200bky]\n",
                    encoding="utf-8")
    with pytest.raises(CfgError) as err:
        parse(str(path))
    assert located(err.value.errors) == [("E109", 3, 12), ("E109", 4, 21)]


# -- text after a number (E202 at the text) ------------------------------------------------------
@pytest.mark.parametrize("line, col, width, message, hint", [
    ("height=32;h", 10, 2, "'height' must be an integer, got '32;h': ';h' follows the number 32",
     "write height=32 (Darknet's atoi stops at ';' and reads 32; a note goes after a '#')"),
    ("height = 3 2 abc", 14, 3, "got '32abc': 'abc' follows the number 32", "write height=32 "),
    ("learning_rate=0.001x", 20, 1, "got '0.001x': 'x' follows the number 0.001",
     "write learning_rate=0.001 (Darknet's atof stops at 'x'"),
    ("steps=100,200x,300", 14, 1, "got '100,200x,300': 'x' follows the number 200",
     "write 200 there"),
    ("steps=100,abc", 11, 3, "got '100,abc': 'abc' is not an integer", "write steps=1,2,3"),
    ("width=abc", 7, 3, "'width' must be an integer, got 'abc'",
     "write width=<integer> (Darknet's atoi would read 'abc' as 0)"),
])
def test_text_after_a_number_is_pointed_at(line, col, width, message, hint):
    """`height=32;h` was E202 with the caret under the whole value and the hint
    'write height=<integer>'; it now points at ';h' and says what Darknet reads."""
    err = error_of("[net]\nwidth=8\nchannels=3\n" + line + "\n")
    (d,) = err.errors
    assert (d.code, d.line, d.column, d.span) == ("E202", 4, col, width)
    assert message in d.message and d.hint.startswith(hint)


# -- numbers only Python reads, and what C's atof reads besides decimals -------------------------
@pytest.mark.parametrize("line, message, hint", [
    ("height=1_0", "got '1_0': '_0' follows the number 1",
     "write height=10 (Darknet's atoi stops at '_' and reads 1"),
    ("height=\uff11\uff16", "'height' must be an integer, got '\uff11\uff16'",
     "write height=16 (Darknet's atoi would read"),
    ("height=\u0661\u0660", "got '\u0661\u0660'", "write height=10 (Darknet's atoi would read"),
    ("momentum=nan", "got 'nan': Darknet's atof reads it as nan (not a number)",
     "write momentum=<number>"),
    ("momentum=-Infinity", "Darknet's atof reads it as -inf (infinity)", "write momentum=<number>"),
    ("momentum=0x1p-1", "Darknet's atof reads it as 0.5 (a hexadecimal number",
     "write momentum=0.5"),
    ("steps=1_0,200", "'_0' follows the number 1", "write 10 there (Darknet reads 1"),
    ("scales=.1,\uff12", "'\uff12' is not a number", "write 2 there"),
])
def test_numbers_python_reads_and_c_reads_otherwise(line, message, hint):
    """`height=1_0` and `height=１６` said the number to write was Darknet's reading (1, and an
    <integer>) where the writer meant 10 and 16; `momentum=nan` and `momentum=0x1p-1` said
    "Darknet's atof would read it as 0", but strtod reads NaN and 0.5. Still E202, with what
    atof really reads and the decimal to write."""
    err = error_of("[net]\nwidth=8\nchannels=3\n" + line + "\n")
    (d,) = err.errors
    assert d.code == "E202" and d.line == 4
    assert message in d.message and d.hint.startswith(hint), (d.message, d.hint)


# -- YAML 1.2 booleans: yes/no/on/off are text ---------------------------------------------------
def test_yaml_on_off_yes_no_are_read_as_written(tmp_path):
    """YAML 1.1 (PyYAML's default) read `activation: on` as True, i.e. the cfg value '1' (E204
    "unknown activation '1'"), and a settings.yaml override `x: no` as False ('x=False' on the
    next --set). Only true/false are booleans now (YAML 1.2's core schema)."""
    from cfgparse.yaml_io import load_yaml
    from darkcfg.train.outputs import read_settings

    path = tmp_path / "m.yaml"
    path.write_text("- net: {width: 32, height: 32, channels: 3, flip: true}\n"
                    "- convolutional: {filters: 8, size: 3, activation: on}\n")
    with pytest.raises(CfgError) as err:
        parse(str(path))
    assert err.value.first.message == "unknown activation 'on'"
    path.write_text("- net: {width: 32, height: 32, channels: 3, flip: false}\n"
                    "- maxpool: {size: 2, stride: 2, antialiasing: False}\n"
                    "- cost: {type: sse}\n")
    blocks = parse(str(path))
    assert (blocks[0].int("flip"), blocks[1].int("antialiasing")) == (0, 0)
    data, _ = load_yaml("names: [no, yes, on, off, y, n, true, FALSE]\n", "d.yaml", "")
    assert data["names"] == ["no", "yes", "on", "off", "y", "n", True, False]
    settings = tmp_path / "settings.yaml"
    settings.write_text("cfg: m.cfg\noverrides:\n  convolutional.activation: on\n  x: no\n")
    assert read_settings(settings)["overrides"] == {"convolutional.activation": "on", "x": "no"}


def test_yaml_given_as_cfg_text_is_one_error_that_says_so(tmp_path):
    """YAML text passed to parse()/build() (or a YAML file named .cfg) was one 'option before
    any section' per line; now one E103 naming YAML and how to read it."""
    yaml_text = "# tiny\n- net:\n    width: 8\n    height: 8\n    channels: 3\n- maxpool:\n" \
                "    size: 2\n"
    named_cfg = tmp_path / "y.cfg"
    named_cfg.write_text(yaml_text)
    for source, where in ((yaml_text, "<string>"), (named_cfg, str(named_cfg))):
        with pytest.raises(CfgError) as info:
            parse(source)
        errors = info.value.errors
        assert located(errors) == [("E103", 2, 1)]
        assert str(errors[0]).startswith(f"{where}:2:1: error[E103]: this is a YAML "
                                         "architecture, read as cfg text")
        assert "cfgparse.blocks_from_yaml(text)" in errors[0].hint
    yaml_file = tmp_path / "y.yaml"
    yaml_file.write_text(yaml_text)
    assert [b.type for b in parse(yaml_file)] == ["net", "maxpool"]  # as a .yaml: read as YAML



@pytest.mark.parametrize("raw, value", [("-.5", 0), ("+.5", 0), ("-1.5", -1), ("2e3", 2),
                                        ("-0.9", 0)])
def test_an_integer_written_as_a_signed_fraction_reads_as_atoi(raw, value):
    """`batch=-.5` was int('-') ValueError out of the schema: a traceback ("darkcfg bug") from
    check and the build; C atoi reads a sign and no digits as 0 (found by fuzzing)."""
    spec = schema.KeySpec(type="i", default=0, min=None, choices=None, doc="", fork="")
    typed, note = schema.convert(spec, "k", raw)
    assert typed == value and f"Darknet reads '{raw}' as {value}" in note
    with pytest.raises(CfgError) as caught:  # then batch's range says the rest, located
        parse_text("[net]\nbatch=-.5\n")[0].get("batch")
    assert caught.value.code == "E203"
