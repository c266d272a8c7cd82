"""Which format a secret file is, by its name, and the one entry point: `parse(path, data)` → `Parsed` or None.

None means *not sentinelised*: an unknown name, or content its format cannot take apart completely. Nothing here
raises on bad content — a parser failure is an answer (today's taint semantics), never a crash."""

from __future__ import annotations

import fnmatch
import logging
import posixpath
from collections.abc import Callable

from ifc.secretfiles import dotenv, ini, jsonfmt, netrc, tomlfmt, yamlfmt
from ifc.secretfiles.connstr import split_passwords
from ifc.secretfiles.items import Parsed, Unparsable

log = logging.getLogger("ifc.secretfiles")

Parser = Callable[[bytes], Parsed]

# (glob over the file's name, or over its last two path components when it has a `/`) → format
FORMATS: tuple[tuple[str, str], ...] = (
    (".env", "dotenv"), (".env.*", "dotenv"), ("*.env", "dotenv"),
    ("*.json", "json"),
    ("*.toml", "toml"),
    ("*.yaml", "yaml"), ("*.yml", "yaml"),
    ("*.ini", "ini"), (".pypirc", "ini"), (".aws/credentials", "ini"), (".aws/config", "ini"),
    ("credentials", "ini"), (".s3cfg", "ini"),
    (".npmrc", "npmrc"),
    (".netrc", "netrc"), ("_netrc", "netrc"),
)
PARSERS: dict[str, Parser] = {
    "dotenv": dotenv.parse, "json": jsonfmt.parse, "toml": tomlfmt.parse, "ini": ini.parse,
    "npmrc": ini.parse_npmrc, "netrc": netrc.parse, "yaml": yamlfmt.parse,
}


def format_of(path: str) -> str | None:
    """The format a file's name says it is, or None. `.env.example`-like names are still dotenv: whether a file
    is secret at all is the policy's business, not this table's."""
    name = posixpath.basename(path)
    tail = "/".join(path.split("/")[-2:])
    for pattern, fmt in FORMATS:
        if fnmatch.fnmatchcase(tail if "/" in pattern else name, pattern):
            return fmt
    return None


def parse(path: str, data: bytes, fmt: str | None = None) -> Parsed | None:
    """The values of `data` (the content of workspace file `path`), or None when it cannot be sentinelised."""
    fmt = fmt or format_of(path)
    if fmt is None:
        return None
    try:
        return split_passwords(PARSERS[fmt](data))
    except Unparsable as exc:
        log.debug("%s: not sentinelised (%s): %s", path, fmt, exc)
        return None
    except (RecursionError, ValueError, UnicodeError) as exc:  # a parser's own bug must not crash the mount
        log.warning("%s: not sentinelised (%s parser failed: %s)", path, fmt, exc)
        return None
