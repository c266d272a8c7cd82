"""Render diagnostics as a SARIF 2.1.0 log that GitHub code scanning accepts.

Follows GitHub's "SARIF support for code scanning": one run; `tool.driver` with a name, version and one
`reportingDescriptor` per diagnostic code (id, shortDescription, fullDescription, help); each result with
`ruleId`/`ruleIndex`, `level`, `message.text`, one location whose `artifactLocation.uri` is relative to the
repository root (`uriBaseId` `%SRCROOT%`) when the file is inside `base_dir`, a region with 1-based
positions (SARIF's `endColumn`, like `Span.end_column`, is the column after the last character), related
locations with ids that the message links to as `[text](id)`, and `partialFingerprints` so an upload of the
next run updates alerts instead of duplicating them.

The fingerprint (`ifcCheck/v1`) hashes the rule, the file and the message, plus an occurrence counter for
identical findings in one file; it leaves out line and column, so an alert survives edits that only move
it. `upload-sarif` adds its own line-based `primaryLocationLineHash` next to it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from ifc.diagnostics import Diagnostic, Severity, Span

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "ifc-check"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "ifcCheck/v1"
_BRACKETS = re.compile(r"[\[\]\\]")
_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.NOTE: "note"}


def to_sarif(diagnostics: Iterable[Diagnostic], *, tool_version: str, rules: dict[str, str] | None = None,
             base_dir: Path | None = None, information_uri: str | None = None) -> dict:
    """A SARIF 2.1.0 log (plain data for `json.dumps`) with one run holding `diagnostics` in order.

    `rules` maps a diagnostic code to a one-line description; a code without one is described by itself.
    `information_uri` defaults to the distribution's `Homepage`/`Repository` project URL when it has one.
    """
    diagnostics = list(diagnostics)
    rules = rules or {}
    base = _absolute(base_dir) if base_dir is not None else None
    codes = sorted({d.code for d in diagnostics})
    index = {code: i for i, code in enumerate(codes)}

    driver: dict = {"name": TOOL_NAME, "version": tool_version}
    uri = information_uri or _project_uri()
    if uri:
        driver["informationUri"] = uri
    driver["rules"] = [_descriptor(code, rules.get(code), diagnostics) for code in codes]

    seen: Counter[tuple[str, str, str]] = Counter()
    results = []
    for d in diagnostics:
        location = _artifact(d.span.file, base)
        key = (d.code, location.get("uri", ""), d.message)
        seen[key] += 1
        results.append(_result(d, index[d.code], location, base, seen[key]))

    run: dict = {"tool": {"driver": driver}}
    if base is not None:
        run["originalUriBaseIds"] = {SRCROOT: {"uri": base.as_uri().rstrip("/") + "/"}}
    run["columnKind"] = "unicodeCodePoints"
    run["results"] = results
    return {"$schema": SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def _descriptor(code: str, description: str | None, diagnostics: list[Diagnostic]) -> dict:
    text = _sentence(description or code)
    worst = max(d.severity for d in diagnostics if d.code == code)
    return {
        "id": code,
        "name": "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", code) if part) or code,
        "shortDescription": {"text": text},
        "fullDescription": {"text": text},
        "help": {"text": text},
        "defaultConfiguration": {"level": _LEVELS.get(worst, "warning")},
    }


def _result(d: Diagnostic, rule_index: int, location: dict, base: Path | None, occurrence: int) -> dict:
    related = []
    links = []
    for i, r in enumerate(d.related, start=1):
        related.append({"id": i, "physicalLocation": _physical(r.span, base),
                        "message": {"text": _escape(r.message)}})
        link_text = _clean(_BRACKETS.sub("", r.message))
        links.append(f"[{link_text}]({i})")
    text = _sentence(_escape(d.message))
    if d.help:
        text += " " + _sentence(_escape(d.help))
    if links:
        text += " See " + ", ".join(links) + "."
    identity = "\0".join((d.code, location.get("uri", ""), d.message, str(occurrence)))
    fingerprint = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    result: dict = {
        "ruleId": d.code,
        "ruleIndex": rule_index,
        "level": _LEVELS.get(d.severity, "warning"),
        "message": {"text": text},
        "locations": [{"physicalLocation": _physical(d.span, base, location)}],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint},
    }
    if related:
        result["relatedLocations"] = related
    return result


def _physical(span: Span, base: Path | None, artifact: dict | None = None) -> dict:
    physical: dict = {"artifactLocation": artifact if artifact is not None else _artifact(span.file, base)}
    region = _region(span)
    if region:
        physical["region"] = region
    return physical


def _region(span: Span) -> dict:
    """Only positions SARIF allows: lines and columns are positive; the end is not before the start."""
    if span.line < 1:
        return {}
    region = {"startLine": span.line}
    if span.column >= 1:
        region["startColumn"] = span.column
    if span.end_line >= span.line:
        if span.end_line > span.line:
            region["endLine"] = span.end_line
            if span.end_column >= 1:
                region["endColumn"] = span.end_column
        elif span.column >= 1 and span.end_column > span.column:
            region["endLine"] = span.end_line
            region["endColumn"] = span.end_column
    return region


def _artifact(file: str, base: Path | None) -> dict:
    """A relative `%SRCROOT%` URI for files inside `base`, a `file:` URI for other absolute paths."""
    if not file or (file.startswith("<") and file.endswith(">")):
        return {"uri": quote(file or "unknown", safe="")}
    path = Path(file)
    if base is not None:
        absolute = _absolute(path)
        try:
            rel = absolute.relative_to(base)
        except ValueError:
            return {"uri": absolute.as_uri()}
        return {"uri": _quote_posix(PurePosixPath(*rel.parts)), "uriBaseId": SRCROOT}
    if path.is_absolute():
        return {"uri": path.as_uri()}
    return {"uri": _quote_posix(PurePosixPath(*path.parts))}


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def _quote_posix(path: PurePosixPath) -> str:
    text = str(path)
    return quote(text.encode("utf-8", "surrogateescape"), safe="/")


def _escape(text: str) -> str:
    """SARIF message text treats `[text](id)` as a link: literal brackets and backslashes are escaped."""
    return re.sub(r"([\\\[\]])", r"\\\1", _clean(text))


def _clean(text: str) -> str:
    """Undecodable bytes of a file name (lone surrogates) cannot go into JSON text: show them escaped."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _sentence(text: str) -> str:
    """`foo bar` → `Foo bar.`: SARIF messages are sentences; our diagnostics are lowercase fragments."""
    text = text.strip()
    if not text:
        return text
    if text[0].isalpha():
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _project_uri() -> str | None:
    try:
        meta = metadata.metadata("ifc-sandbox")
    except metadata.PackageNotFoundError:
        return None
    urls = dict(entry.split(", ", 1) for entry in (meta.get_all("Project-URL") or []) if ", " in entry)
    for key in ("Homepage", "Repository", "Source", "Documentation"):
        if urls.get(key, "").startswith(("https://", "http://")):
            return urls[key]
    home = meta.get("Home-page")
    return home if home and home.startswith(("https://", "http://")) else None
