"""Diagnostics as compiler-style text: location, message, the source line, a caret, help and notes.

    policies/a.flow:3:12: error: unknown label `secert`
        3 | deny secert -> external
          |      ^^^^^^
      help: did you mean `secret`?
      note: policies/a.flow:1:9: labels are declared here

A span whose file is not in `sources` (or whose line is not in it) prints without the source excerpt.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

from ifc.diagnostics import Diagnostic, Span

TAB_WIDTH = 4
MAX_EXCERPT = 200  # display columns of a source line shown before it is cut with `…`


def render_text(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str]) -> str:
    """All diagnostics, in the order given, each ending with a newline; `""` when there are none."""
    lines_of: dict[str, list[str]] = {}
    out: list[str] = []
    for d in diagnostics:
        out.append(f"{_location(d.span)}: {d.severity}: {d.message}")
        if d.span.file in sources:
            if d.span.file not in lines_of:
                lines_of[d.span.file] = sources[d.span.file].split("\n")
            out.extend(_excerpt(d.span, lines_of[d.span.file]))
        if d.help:
            out.append(f"  help: {d.help}")
        for related in d.related:
            out.append(f"  note: {_location(related.span)}: {related.message}")
    return "".join(line + "\n" for line in out)


def _location(span: Span) -> str:
    if span.line <= 0:
        return span.file
    return f"{span.file}:{span.line}:{max(span.column, 1)}"


def _excerpt(span: Span, lines: list[str]) -> list[str]:
    if not 1 <= span.line <= len(lines):
        return []
    raw = lines[span.line - 1].rstrip("\r")
    start = min(max(span.column, 1), len(raw) + 1) - 1  # 0-based; one past the end marks end of line
    if span.end_line == span.line and span.end_column > span.column:
        end = min(span.end_column - 1, len(raw))
    elif span.end_line > span.line:
        end = len(raw)  # a multi-line span: underline to the end of its first line
    else:
        end = start + 1
    end = max(end, start + 1)
    shown, cols = _display(raw)
    lead, width = cols[start], max(1, cols[min(end, len(raw))] - cols[start])
    if cols[len(raw)] > MAX_EXCERPT and lead < MAX_EXCERPT:
        shown = _cut(shown, MAX_EXCERPT) + "…"
        width = max(1, min(width, MAX_EXCERPT - lead))
    gutter = str(span.line)
    pad = " " * len(gutter)
    return [f" {gutter} | {shown}".rstrip(), f" {pad} | {' ' * lead}{'^' * width}"]


def _display(raw: str) -> tuple[str, list[int]]:
    """The line as it will be printed (tabs expanded, control characters replaced) and, for each index of
    `raw` (and one past its end), the display column where that character starts."""
    shown, cols, col = [], [], 0
    for ch in raw:
        cols.append(col)
        if ch == "\t":
            n = TAB_WIDTH - col % TAB_WIDTH
            shown.append(" " * n)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            n = 1
            shown.append("\N{REPLACEMENT CHARACTER}")
        elif unicodedata.combining(ch):
            n = 0
            shown.append(ch)
        else:
            n = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
            shown.append(ch)
        col += n
    cols.append(col)
    return "".join(shown), cols


def _cut(text: str, limit: int) -> str:
    out, col = [], 0
    for ch in text:
        w = 2 if unicodedata.east_asian_width(ch) in "WF" else (0 if unicodedata.combining(ch) else 1)
        if col + w > limit:
            break
        out.append(ch)
        col += w
    return "".join(out)
