"""Darknet `.data` files and the lists they name, for every task (classifier and detector data,
`detect`'s names=): the one reader and the one path resolver. Torch-free.

A `.data` file is `key=value` lines (all whitespace removed, `#`/`;` comment lines, the first
occurrence of a key wins: Darknet's `src/option_list.c read_data_cfg`/`option_find`).

Paths. A value (`train=`, `valid=`, `names=`, `backup=`, ...) and every line of a list is used as
Darknet uses it, relative to the current directory (Darknet just `fopen`s it). When it does not
exist there, darkcfg also tries the folder of the file that names it (the list's folder for an
image, the `.data` file's folder for a list), so a data set can be moved as one folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cfgparse import CfgError, Diagnostic
from cfgparse.characters import odd_space_diagnostic, odd_spaces
from cfgparse.schema import ValueProblem, read_number

#: What a command reads of a data set (`need`): "all" (training), "valid" (the validation list
#: and the names: valid, map) or "names" (the names: predict); a reader skips the lists it need
#: not read, as Darknet's valid and predict commands open only those.
NEEDS = ("all", "valid", "names")


#: The most classes a data set may declare without naming them (a .data file's classes= without
#: names=, a data.yaml's nc: without names:): each gets a made-up name, and a count past this
#: (1000 times LVIS's 1203 classes) is a typo that took minutes and gigabytes to name.
MAX_UNNAMED_CLASSES = 2**20


def check_need(need: str) -> None:
    if need not in NEEDS:
        raise ValueError(f"need={need!r}: one of {', '.join(NEEDS)}")


def text_hint(exc: BaseException, hint: str) -> str:
    """`hint`, or for text that is UTF-16 (what Windows PowerShell's `>` and Notepad's "Unicode"
    write; Darknet reads no box or path from it) how to save it instead."""
    if isinstance(exc, UnicodeDecodeError) and exc.object[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return ("the file is UTF-16 text (PowerShell's '>' and Notepad's 'Unicode' write it): "
                "save it as UTF-8, e.g. with Out-File -Encoding utf8")
    return hint


def missing_path_hint(raw: str, hint: str) -> str:
    """`hint` for a listed path that does not exist, or, when it holds Windows backslashes
    (a list written on Windows), that they are part of the name here."""
    if "\\" in raw and os.sep == "/":
        return (f"'{raw}' has Windows backslashes, which are part of a file name here: write "
                "'/' between folders")
    return hint


def tried_folders_hint(*folders) -> str:
    """Where a listed relative path was looked for: the current directory, then each other
    folder once (a list, its .data file and the data root are often one folder)."""
    cwd = Path.cwd().resolve()
    seen, others = {cwd}, []
    for folder in folders:
        try:
            resolved = Path(folder).resolve()
        except (OSError, RuntimeError, ValueError):
            resolved = Path(folder)
        if resolved not in seen:
            seen.add(resolved)
            others.append(str(folder))
    said = "paths are tried relative to the current directory"
    if not others:
        return said
    where = others[0] if len(others) == 1 else ", ".join(others[:-1]) + " and " + others[-1]
    return f"{said}, then to {where}"


def read_text(path: Path) -> str:
    """A text file of a data set (a list, names, ids): UTF-8, an optional BOM (Windows tools
    write one) dropped; E901 naming the file, UTF-16 said, when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CfgError(Diagnostic("E901", f"cannot read '{path}': {exc}", str(path),
                                  hint=text_hint(exc, "save it as UTF-8 text"))) from None


def read_data_file(path: Path) -> dict[str, str]:
    """key=value lines, all whitespace removed, '#'/';' comment lines; the first key wins."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM must not hide the first key
    except (OSError, UnicodeDecodeError) as exc:
        raise CfgError(Diagnostic("E901", f"cannot read '{path}': {exc}", str(path),
                                  hint=text_hint(exc, ""))) from None
    options: dict[str, str] = {}
    for n, raw in enumerate(split_lines(text), 1):  # (line_of's lines: U+2028 breaks neither)
        raw = raw.removesuffix("\r")
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if "\x00" in line:  # no path holds one (open() would refuse it with a ValueError)
            raise CfgError(Diagnostic("E104", "a NUL byte in a .data line: this looks like a "
                                      "binary file", str(path), n, raw.index("\x00") + 1,
                                      hint="a .data file is key=value text lines",
                                      source=raw, span=1))
        # the non-ASCII spaces "".join(split()) drops, where Darknet keeps them (`classes=
        # \u00a010` is atoi's 0, a path loses a character); an invisible one (a Persian name's
        # U+200C) stays in the path as in Darknet's
        odd = [i for i in odd_spaces(raw) if raw[i].isspace()]
        if odd:
            raise CfgError(odd_space_diagnostic(raw, odd, "a .data line", str(path), n,
                                                odd[0] + 1, raw))
        key, eq, value = line.partition("=")
        if not eq:
            raise CfgError(Diagnostic("E102", f"missing '=' in '{line}'", str(path), n, 1,
                                      hint="a .data line is key=value", source=raw,
                                      span=len(raw.strip()) or 1))
        options.setdefault(key, value)
    return options


def data_folders(data_file: Path | str) -> tuple[Path, Path]:
    """Where a `.data` file's relative paths are tried after the current directory (Darknet's
    only one): its folder, then the folder above it, so Darknet's own layouts read from any
    directory (they are run from the darknet folder: `cfg/coco.data` names `data/coco.names`,
    AlexeyAB's `data/obj.data` names `data/train.txt` listing `data/obj/x.jpg`)."""
    folder = Path(data_file).parent
    return folder, folder.parent


def resolve(raw: str, *fallbacks: Path) -> Path:
    """`raw` as Darknet opens it (absolute, or relative to the current directory), else under
    the first fallback folder where it exists; the Darknet reading when it exists nowhere."""
    base = found_under(raw, fallbacks)
    return Path(os.path.join(base, raw)) if base else Path(raw)


def found_under(raw: str, fallbacks: Sequence[Path]) -> str:
    """The folder `raw` is found under ('' = as written: absolute, or under the current
    directory, or nowhere)."""
    if os.path.isabs(raw) or os.path.exists(raw):
        return ""
    for base in fallbacks:
        if os.path.exists(os.path.join(base, raw)):
            return str(base)
    return ""


def read_list(path: Path, where: str, key: str, keep_blank: bool = False) -> list[str]:
    """Non-empty lines of a list file (whitespace at the ends removed, as Darknet's fgetl+trim;
    inner spaces stay: "a cat"). `keep_blank` (a names file): a blank line between names keeps
    its place, as in Darknet's get_labels, so the names after it keep their classes (only
    blank lines at the end are dropped)."""
    if not keep_blank:
        return [line.strip() for _, line in numbered_list(path, where, key)]
    return names_in(_list_lines(path, where, key))


def names_in(lines: list[str]) -> list[str]:
    """A names file's class names (its `split_lines`): ends trimmed, a blank line keeping its
    class's place, blank lines at the end dropped."""
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    return names


def split_lines(text: str) -> list[str]:
    """Lines broken at line breaks only, as Darknet's fgetl reads them (str.splitlines also
    breaks at a vertical tab, a form feed, \\x1c-\\x1e, U+0085 and U+2028: wrong line numbers
    after one, and a names file's later classes shifted by one)."""
    return text.split("\n")


def numbered_list(path: Path, where: str, key: str) -> list[tuple[int, str]]:
    """(line number, line as written) of each non-blank line of a list file (read_list's
    lines, with where they are: a repeated image is reported at its line)."""
    return [(n, line) for n, line in enumerate(_list_lines(path, where, key), 1)
            if line.strip()]


def _export_hint(path: Path, data_file: Path) -> str:
    """For `data/train.txt` not found where `train.txt` lies beside the .data file: a set
    exported for Darknet's `data/` folder (CVAT's "YOLO 1.1" zip: obj.data, train.txt and
    obj_train_data/, every path written data/...), unpacked into a folder of another name."""
    parts = path.parts
    folder = data_file.parent
    if path.is_absolute() or len(parts) < 2 or path.exists() or \
            not (folder / Path(*parts[1:])).exists() or folder.resolve().name == parts[0]:
        return ""
    return (f"'{folder / Path(*parts[1:])}' exists: this set was written to lie in a "
            f"'{parts[0]}/' folder (CVAT's YOLO 1.1 export is, for Darknet's data/): rename the "
            f"folder '{folder.resolve().name}' to '{parts[0]}'")


def _list_lines(path: Path, where: str, key: str) -> list[str]:
    try:
        lines = split_lines(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        _, raw = line_of(where, key)
        hint = f"fix the '{key}=' line of the .data file"
        if len(raw.partition("=")[2].split()) > 1 and not os.path.exists(path):
            # "names = my names.txt": Darknet's read_data_cfg strips every space of the line
            hint = (f"Darknet removes every space of a .data line, so '{raw.strip()}' names "
                    f"'{path}': give the file (and its folders) a name without spaces")
        hint = _export_hint(Path(path), Path(where)) or hint
        raise CfgError(data_diagnostic("E901", f"cannot read the {key} file '{path}': {exc}",
                                       where, key, text_hint(exc, hint))) from None
    return lines


def data_int(opts: dict[str, str], key: str, data_file: str) -> int:
    """The integer value of `key` (Darknet's option_find_int): decimal digits only, an E901
    at its line otherwise. Python's int() also reads `1_0` and `١٠` as 10 where Darknet's atoi
    reads 1 and 0; what atoi would read is said (cfgparse.schema.read_number)."""
    try:
        return int(read_number(opts[key], integer=True, name=f"{key}="))
    except ValueProblem as exc:
        raise CfgError(data_diagnostic("E901", str(exc), data_file, key, exc.hint)) from None


def data_diagnostic(code: str, message: str, data_file: str, key: str | None = None,
                    hint: str = "") -> Diagnostic:
    """A diagnostic at the line of a .data file that gives `key` (the file as a whole when
    there is none)."""
    line, raw = line_of(data_file, key) if key else (0, "")
    return Diagnostic(code, message, data_file, line, 1 if line else 0, hint=hint, source=raw,
                      span=len(raw.strip()) or 1)


def line_of(data_file: str, key: str) -> tuple[int, str]:
    """(line number, text) of the line that gives `key` in a .data file; (0, '') if none or
    the file is not one."""
    try:
        text = Path(data_file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, ValueError):
        return 0, ""
    for n, raw in enumerate(split_lines(text), 1):
        if "".join(raw.split()).partition("=")[0] == key and "=" in raw:
            return n, raw.removesuffix("\r")
    return 0, ""


# The one rule for which files are images where darkcfg picks them out of a folder (`detect DIR`,
# a classifier's class folders, a data.yaml folder, a VOC id's `JPEGImages/<id>.ext`, tried in
# this order): these extensions, in any case. A file named on its own (a list line, a VOC
# `<filename>`, an image given to detect) is read whatever its extension. Each is a format
# Pillow reads (no `.dng`: ultralytics lists it, but Pillow reads no camera raw).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".gif", ".mpo", ".pfm")


def is_image(path: str | os.PathLike) -> bool:
    """Whether a folder's file is one of its images (IMAGE_EXTENSIONS, in any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


