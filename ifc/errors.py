"""The base of every error a person is meant to read and act on.

Each component has its own subclass (`MountError`, `ImageError`, `ReportError`...), so callers can catch
one family; all of them carry a one-line `message` and an optional `help`, which the CLI prints as
`ifc CMD: error: MESSAGE` and `  help: HELP`.
"""

from __future__ import annotations


class UserError(Exception):
    def __init__(self, message: str, help: str | None = None):
        super().__init__(message)
        self.message = message
        self.help = help
