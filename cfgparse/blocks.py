"""Block: one `[section]` of a cfg file, as immutable data with positions.

Values are typed at parse time (from the schema) and read through typed getters, which record the
keys a builder looked at so the unread ones can be reported like Darknet's "Unused field".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from .characters import odd_space_problem, odd_spaces
from .errors import ERROR, CfgError, Diagnostic, did_you_mean
from .schema import _MISSING, SECTIONS, ValueProblem, convert, default_for, read_number


class Option(NamedTuple):  # a NamedTuple: immutable and cheap to make in the parse loop
    """One `key=value` line of a section: the raw text, the value typed by the schema, and
    where it was written (for diagnostics)."""

    key: str
    raw: str  # the value as Darknet sees it: all whitespace removed
    value: Any  # typed (int, float, str, list[int], list[float])
    line: int = 0
    column: int = 0  # column of the key
    value_column: int = 0  # column of the value
    source: str = ""  # the whole source line, for diagnostics
    origin: str = ""  # where a value set after parsing came from (`--set KEY=VALUE`), if any


@dataclass(frozen=True, eq=False)
class Block:
    """One `[section]` of a cfg: its canonical type and the name as written, its options by key,
    where it starts, and its layer index (-1 for [net]). Never changed after parsing (its
    options are read-only; `with_values` makes a checked copy). Read values through the typed
    getters, `int`, `float`, `str`, `bool`, `ints`, `floats`, which fill in the schema's
    defaults; `error(code, message, key)` makes a CfgError located at a key."""

    type: str  # canonical section name, e.g. "convolutional"
    name: str = ""  # as written, e.g. "conv"
    options: Mapping[str, Option] = field(default_factory=dict)
    line: int = 0
    column: int = 0
    path: str = "<string>"
    source: str = ""  # the header line
    index: int = -1  # layer index (Darknet numbering); -1 for [net]
    _read: set = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.type)
        # a read-only view of a private copy: the caller's dict cannot change the block later
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __reduce__(self):
        """Picklable, and so deep-copyable (a built network's `meta` holds blocks: EMA copies,
        `torch.save(net)`): the options travel as a plain dict, the read keys with them."""
        return (_rebuilt, (self.type, self.name, dict(self.options), self.line, self.column,
                           self.path, self.source, self.index, set(self._read)))

    # -- equality is on data (type and typed values), not on positions or read-tracking -------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Block):
            return NotImplemented
        return self.type == other.type and _strict(self.values()) == _strict(other.values())

    def __hash__(self) -> int:
        return hash((self.type, tuple(self.options)))

    # -- mapping-like access ---------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self.options

    def __iter__(self) -> Iterator[str]:
        return iter(self.options)

    def keys(self):
        """The keys written in this section, in order."""
        return self.options.keys()

    def values(self) -> dict[str, Any]:
        """{key: typed value} of the keys written (no schema defaults)."""
        return {k: o.value for k, o in self.options.items()}

    def option(self, key: str) -> Option | None:
        """The `Option` of `key` as written (value, raw text, line, column), or None."""
        return self.options.get(key)

    # -- typed getters ---------------------------------------------------------------------------
    def _get(self, key: str, default: Any, kind: str) -> Any:
        self._read.add(key)
        opt = self.options.get(key)
        if opt is None:
            if default is _MISSING:
                default = default_for(self.type, key)
                if default is _MISSING or default is None:
                    raise self.error(
                        "E202",
                        f"[{self.name}] needs '{key}'",
                        hint=f"add a line '{key}=...' to this section",
                    )
            return default
        return _coerce(self, opt, kind)

    def has(self, key: str) -> bool:
        """Whether `key` is written in this section (counts as read)."""
        self._read.add(key)
        return key in self.options

    def int(self, key: str, default: Any = _MISSING) -> int:
        """`key` as an int: the value written, else `default`, else the schema's default; a
        required key that is missing is CfgError E202 at the header."""
        return self._get(key, default, "int")

    def float(self, key: str, default: Any = _MISSING) -> float:
        """`key` as a float (defaults as `int`)."""
        return self._get(key, default, "float")

    def str(self, key: str, default: Any = _MISSING) -> str:
        """`key` as a str (defaults as `int`)."""
        return self._get(key, default, "str")

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        """`key` as Darknet reads a flag: an int, true when not 0 (defaults as `int`)."""
        return bool(self._get(key, default, "int"))

    def ints(self, key: str, default: Any = _MISSING) -> list[int]:
        """`key` as a list of ints, e.g. `layers=-1,8` (defaults as `int`)."""
        return self._get(key, default, "ints")

    def floats(self, key: str, default: Any = _MISSING) -> list[float]:
        """`key` as a list of floats, e.g. `anchors=10,13,16,30` (defaults as `int`)."""
        return self._get(key, default, "floats")

    def get(self, key: str, default: Any = None) -> Any:
        """Untyped read (the schema already typed the value)."""
        self._read.add(key)
        opt = self.options.get(key)
        return default if opt is None else opt.value

    def mark_read(self, *keys: str) -> None:
        """Count `keys` as read: `unread()` (the W301 'ignored key' warnings) leaves them out."""
        self._read.update(keys)

    def unread(self) -> list[Option]:
        """The options no getter has read: what the builder ignored."""
        return [o for k, o in self.options.items() if k not in self._read]

    # -- derived blocks (never mutate) -----------------------------------------------------------
    def with_values(self, *, origin: str = "", **values: Any) -> Block:
        """A copy with some values replaced, added, or (value None) removed; used by --set and
        presets. Every value is typed and checked by the schema exactly like cfg text, so
        `with_values(filters="64")` and `with_values(filters=64)` give the same block; bad values
        and unknown keys raise CfgError at the replaced option (or the header). `origin` (e.g.
        `--set burn_in=200`): where the values come from; a later diagnostic about one of them
        is located there, not at a file line that holds another value."""
        known = SECTIONS.get(self.type)
        opts = dict(self.options)
        for key, value in values.items():
            old = opts.get(key)
            where = key if old is not None else None
            if value is None:
                opts.pop(key, None)
                continue
            if known is not None and key not in known:
                raise self.error("E205", f"[{self.name}] has no key '{key}' to set", where,
                                 hint=did_you_mean(key, known) or
                                 f"see the keys of [{self.type}] in cfgparse/schema.py")
            odd = odd_spaces(value) if isinstance(value, str) else []
            if odd:  # str.split() below would drop them silently, as cfg text must not (E109)
                message, hint = odd_space_problem(value, odd, f"the value of {key}")
                raise self.error("E109", message, where, hint=hint)
            raw = "".join(value.split()) if isinstance(value, str) else format_value(
                int(value) if isinstance(value, bool) else value)
            if not raw:
                raise self.error("E105", f"empty value for '{key}'", where,
                                 hint=f"set {key} to a value")
            try:
                typed, note = convert(known.get(key) if known is not None else None, key, raw)
            except ValueProblem as exc:
                raise self.error(exc.code, f"cannot set {key}={raw}: {exc}", where,
                                 hint=exc.hint) from None
            if note:  # in a cfg file a warning (W203); a value set now is refused, not changed
                meant = _integral(raw)
                raise self.error("E203", f"cannot set {key}={raw}: {note}", where,
                                 hint=f"write {key}={meant}" if meant is not None else
                                 f"write {key}= as a whole number")
            if origin:
                opts[key] = Option(key, raw, typed, origin=origin)
            elif old is not None and old.line:
                # located at the line it replaces, showing the value set: a later error about
                # it showed the file's value under the caret
                indent = " " * (old.column - 1)
                opts[key] = Option(key, raw, typed, old.line, old.column,
                                   old.column + len(key) + 1, f"{indent}{key}={raw}")
            else:
                opts[key] = Option(key, raw, typed)
        return Block(self.type, self.name, opts, self.line, self.column, self.path, self.source,
                     self.index)

    def to_dict(self) -> dict:
        """{"type", "line", "options": {key: typed value}}: `python -m cfgparse dump`'s JSON."""
        return {"type": self.type, "line": self.line, "options": self.values()}

    # -- diagnostics -----------------------------------------------------------------------------
    def diagnostic(self, code: str, message: str, key: str | None = None, hint: str = "",
                   severity: str = ERROR, on_value: bool = True) -> Diagnostic:
        """A Diagnostic located at `key`'s value (its key with on_value=False; the header when
        `key` is None or not written; the `--set` that gave a value set from the command
        line)."""
        opt = self.options.get(key) if key else None
        if opt is not None and opt.origin:  # located at the --set that gave the value; a
            # section-wide set (`--set route.layers=-40`) says which of its layers it is about
            if self.index >= 0 and f"layer {self.index}" not in message:
                message += f" (layer {self.index} [{self.name}], {self.path}:{self.line})"
            return Diagnostic(code, message, opt.origin, severity=severity, hint=hint)
        if opt is not None and opt.line:
            col = opt.value_column if on_value else opt.column
            span = len(opt.raw) if on_value else len(opt.key)
            return Diagnostic(code, message, self.path, opt.line, col, severity, hint,
                              opt.source, max(span, 1))
        return Diagnostic(code, message, self.path, self.line, self.column, severity, hint,
                          self.source, max(len(self.name) + 2, 1))

    def error(self, code: str, message: str, key: str | None = None, hint: str = "",
              on_value: bool = True) -> CfgError:
        """A CfgError to raise, located as `diagnostic` locates it: `raise block.error("E302",
        "...", "size", hint="...")` in a builder."""
        return CfgError(self.diagnostic(code, message, key, hint, ERROR, on_value))


def _strict(value: Any) -> Any:
    """`value` with each number paired with its type, so that 1 != 1.0 (Python says equal)."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return (type(value), value)


_object_new = object.__new__


def make_block(type: str, name: str, options: Mapping[str, Option], line: int, column: int,
               path: str, source: str, index: int) -> Block:
    """Block(...) for the parser's loop: fills the frozen dataclass's __dict__ in one step
    instead of one object.__setattr__ per field (3x faster; thousands of blocks per file)."""
    block = _object_new(Block)
    block.__dict__.update(type=type, name=name, options=options, line=line, column=column,
                          path=path, source=source, index=index, _read=set())
    return block


def _rebuilt(type: str, name: str, options: dict, line: int, column: int, path: str,
             source: str, index: int, read: set) -> Block:
    """Block.__reduce__'s constructor: the block as it was, options read-only again."""
    block = make_block(type, name, MappingProxyType(options), line, column, path, source, index)
    block._read.update(read)
    return block


def format_value(value: Any) -> str:
    """cfg text of a typed value: lists comma-separated, floats without a trailing '.0'."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _coerce(block: Block, opt: Option, kind: str) -> Any:
    """Convert an already-typed value to what the getter asks for; error at the value if not."""
    value = opt.value
    want = {"int": "an integer", "float": "a number", "ints": "a list of integers",
            "floats": "a list of numbers", "str": "text"}[kind]
    try:
        if kind == "int":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(read_number(str(opt.raw), True))  # (a key the schema does not type)
        if kind == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            return read_number(str(opt.raw))
        if kind == "str":
            return opt.raw if not isinstance(value, str) else value
        if kind in ("ints", "floats"):
            items = value if isinstance(value, list) else [value]
            return [read_number(v, kind == "ints") if isinstance(v, str) else
                    (int if kind == "ints" else float)(v) for v in items]
    except ValueProblem as exc:  # Python's int() read `1_0` as 10 where Darknet's atoi reads 1
        raise block.error(exc.code, f"'{opt.key}' must be {want}: {exc}", opt.key,
                          hint=exc.hint) from None
    except (TypeError, ValueError):
        pass
    raise block.error("E202", f"'{opt.key}' must be {want}, got '{opt.raw}'", opt.key,
                      hint=f"write {opt.key}=<{kind}>")


def _integral(raw: str) -> int | None:
    """The integer a number like '1e3' or '64.0' spells (what a user setting an integer key
    to it means), else None."""
    try:
        number = float(raw)
    except ValueError:
        return None
    return int(number) if number.is_integer() and abs(number) < 2**63 else None
