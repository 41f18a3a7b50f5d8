"""The report formats of `darkcfg check`: text, json, github (workflow commands) and sarif
(SARIF 2.1.0 for code scanning)."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from cfgparse import Diagnostic
from cfgparse.errors import CODES, ERROR

FORMATS = ("text", "json", "github", "sarif")
SRCROOT = "%SRCROOT%"  # the uriBaseId of relative paths: the working folder


def render(fmt: str, found: Sequence[Diagnostic], n_files: int) -> str:
    if fmt == "text":
        return format_text(found, n_files)
    if fmt == "json":
        return format_json(found)
    if fmt == "github":
        return format_github(found)
    return json.dumps(sarif_log(found), indent=2)


def format_text(found: Sequence[Diagnostic], n_files: int) -> str:
    parts = [d.format() for d in found]
    errors = sum(d.severity == ERROR for d in found)
    warnings = len(found) - errors
    parts.append(f"{n_files} file{'s' if n_files != 1 else ''} checked: "
                 f"{errors} error{'s' if errors != 1 else ''}, "
                 f"{warnings} warning{'s' if warnings != 1 else ''}")
    return "\n\n".join(parts)


def format_json(found: Sequence[Diagnostic]) -> str:
    return json.dumps([d.to_dict() for d in found], indent=2)


def _github_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def format_github(found: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands: each finding becomes an annotation on the file."""
    lines = []
    for d in found:
        props = [f"file={_github_escape(d.path, True)}"]
        if d.line:
            props += [f"line={d.line}", f"col={max(d.column, 1)}"]
        props.append(f"title={d.code}")
        message = d.message + (f"\nhelp: {d.hint}" if d.hint else "")
        level = "error" if d.severity == ERROR else "warning"
        lines.append(f"::{level} {','.join(props)}::{_github_escape(message)}")
    return "\n".join(lines)


def _artifact_location(path: str) -> dict:
    """A URI reference for the file, its bytes percent-encoded (a space, a non-ASCII letter, a
    name of bytes that are not UTF-8); a relative path is relative to SRCROOT, the working
    folder. As in CodeQL's logs, no originalUriBaseIds: it would carry this machine's absolute
    path, and GitHub reads relative paths from the repository's root anyway."""
    p = Path(path)
    if p.is_absolute():
        return {"uri": p.as_uri()}
    return {"uri": urllib.parse.quote(os.fsencode(p.as_posix())), "uriBaseId": SRCROOT}


def _utf16_column(source: str, column: int) -> int:
    """A 1-based column in code points as a column in UTF-16 code units (SARIF's default
    columnKind, which GitHub reads): a character beyond U+FFFF counts twice."""
    before = source[:column - 1]
    return column + sum(ord(c) > 0xFFFF for c in before)


def _region(d: Diagnostic) -> dict:
    start = max(d.column, 1)
    end = start + max(d.span, 1)
    return {"startLine": d.line, "startColumn": _utf16_column(d.source, start),
            "endColumn": _utf16_column(d.source, end)}


def sarif_log(found: Sequence[Diagnostic]) -> dict:
    """A SARIF 2.1.0 log (GitHub code scanning reads it); every code is a rule."""
    codes = list(CODES)
    index = {c: i for i, c in enumerate(codes)}
    rules = [{
        "id": code,
        "name": _rule_name(CODES[code]),
        "shortDescription": {"text": CODES[code]},
        "defaultConfiguration": {"level": "warning" if code.startswith("W") else "error"},
    } for code in codes]
    results = []
    for d in found:
        location: dict = {"artifactLocation": _artifact_location(d.path)}
        if d.line:
            location["region"] = _region(d)
        result = {
            "ruleId": d.code,
            "level": "error" if d.severity == ERROR else "warning",
            "message": {"text": d.message + (f" (help: {d.hint})" if d.hint else "")},
            "locations": [{"physicalLocation": location}],
        }
        if d.code in index:
            result["ruleIndex"] = index[d.code]
        results.append(result)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "darkcfg", "version": _version(), "rules": rules}},
            "results": results,
        }],
    }


def _rule_name(description: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", description)
    return "".join(w[:1].upper() + w[1:] for w in words) or "Rule"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("darkcfg")
    except Exception:  # not installed (running from a checkout)
        return "0"
