"""Connection strings inside values: `postgres://user:PASSWORD@host/db`. Only the password is a secret there;
the rest (scheme, user, host, database) is what a program needs to find its server, and is served as it is.
The value keeps its key path, so `key "DATABASE_URL"` binds the password."""

from __future__ import annotations

import re

from ifc.secretfiles.items import Item, Parsed

_URL = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:([^@/\s]+)@[^\s]+")


def split_passwords(parsed: Parsed) -> Parsed:
    """Each value that is, byte for byte as written, a URL with a password becomes just that password."""
    out = []
    for item in parsed.items:
        raw = parsed.data[item.start:item.end]
        m = _URL.fullmatch(raw) if item.kind == "value" and not item.left and raw == item.value else None
        if m:
            out.append(Item(item.path, item.start + m.start(1), item.start + m.end(1), m.group(1)))
        else:
            out.append(item)
    return Parsed(parsed.format, parsed.data, tuple(out))
