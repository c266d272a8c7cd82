"""Diagnostics are data: every layer returns them, only the CLI renders them.

Keeping them plain (code, severity, message, span, help, related spans) lets the same finding print as
compiler-style text with a caret, as JSON for scripts, and as SARIF for code scanning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Severity(enum.IntEnum):
    NOTE = 0
    WARNING = 1
    ERROR = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, order=True)
class Span:
    """A source range; lines and columns are 1-based, `end_column` is exclusive."""

    file: str
    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @classmethod
    def of_meta(cls, file: str, meta) -> Span:
        if getattr(meta, "empty", True):
            return cls(file, 1, 1, 1, 1)
        return cls(file, meta.line, meta.column, meta.end_line, meta.end_column)

    @classmethod
    def of_token(cls, file: str, token) -> Span:
        return cls(file, token.line, token.column, token.end_line or token.line,
                   token.end_column or token.column + len(str(token)))


@dataclass(frozen=True)
class Related:
    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span
    help: str | None = None
    related: tuple[Related, ...] = field(default=())

    @property
    def sort_key(self) -> tuple:
        return (self.span.file, self.span.line, self.span.column, -int(self.severity), self.code, self.message)


def error(code: str, message: str, span: Span, help: str | None = None, related=()) -> Diagnostic:
    return Diagnostic(code, Severity.ERROR, message, span, help, tuple(related))


def warning(code: str, message: str, span: Span, help: str | None = None, related=()) -> Diagnostic:
    return Diagnostic(code, Severity.WARNING, message, span, help, tuple(related))


def sort_diagnostics(diagnostics) -> list[Diagnostic]:
    seen, out = set(), []
    for d in sorted(diagnostics, key=lambda d: d.sort_key):
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def display(text: str) -> str:
    """Text from the workspace or a run (a path, a command line) made safe for a one-line message in a terminal:
    undecodable bytes and control characters escaped — a name holding `\\x1b[2K` must not erase or forge the
    lines a reviewer reads."""
    if text.isprintable():
        return text
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in raw)
