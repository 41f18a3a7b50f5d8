"""Characters a cfg must not hold unseen: the non-ASCII spaces and invisible characters of E109
(one rule for cfg text, YAML, --set and Block.with_values)."""

from __future__ import annotations

import re
import unicodedata

from .errors import ERROR, Diagnostic

# Non-ASCII characters that show as a space or as nothing (Unicode separators and format
# characters: U+00A0 no-break space, U+2003 em space, U+3000 ideographic space, U+200B zero-width
# space, a U+FEFF byte order mark inside the file, ...). Python's str.split() would drop some of
# them silently, but Darknet's strip() removes only ASCII spaces, tabs and line ends: it keeps
# these bytes in the key or value (`filters=<U+00A0>16` is atoi's 0, `leaky<U+2003>` an unknown
# activation, i.e. relu). Text pasted from a web page or a word processor brings them.
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ODD_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cf"})


def _odd_space(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in _ODD_CATEGORIES


def _char_name(ch: str) -> str:
    name = unicodedata.name(ch, "").lower() or "invisible character"
    return name + " (a byte order mark)" if ch == "\ufeff" else name


def odd_spaces(text: str) -> list[int]:
    """The indices of the invisible or non-ASCII space characters in `text`."""
    if text.isascii():
        return []
    return [m.start() for m in _NON_ASCII.finditer(text) if _odd_space(m.group())]


def odd_space_problem(text: str, odd: list[int], where: str) -> tuple[str, str]:
    """E109's message and help for the characters of `text` at `odd` (odd_spaces)."""
    ch = text[odd[0]]
    more = f" ({len(odd)} in it)" if len(odd) > 1 else ""
    return (f"{_char_name(ch)} U+{ord(ch):04X} in {where}{more}: Darknet does not remove it",
            "delete it or type an ordinary space: Darknet removes only ASCII spaces, tabs and "
            "line ends (text pasted from a web page or a word processor often has these)")


def odd_space_diagnostic(text: str, odd: list[int], where: str, path: str, line: int, col: int,
                         source: str) -> Diagnostic:
    """E109 for the characters of `text` at `odd` (odd_spaces), located at line:col."""
    message, hint = odd_space_problem(text, odd, where)
    return Diagnostic("E109", message, path, line, col, ERROR, hint, source, 1)
