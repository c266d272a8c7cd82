"""Shared helpers for the capability-token tests (deterministic time: NOW is fixed).

A uniquely named module rather than `conftest`, so `from caps_testkit import ...` cannot pick up another
directory's conftest."""

from __future__ import annotations

import caps

NOW = 1_750_000_000  # 2025-06-15T15:06:40Z
HOST = caps.HostKey.from_seed(bytes(range(32)))
OTHER_HOST = caps.HostKey.from_seed(bytes(range(1, 33)))
AUDIENCE = "run-42"
RIGHTS = (
    "read **",
    "write src/**",
    "create src/**",
    "delete src/tmp/**",
    "exec .venv/bin/**",
    "connect https://*.github.com:443",
    "connect https://pypi.org",
    "declassify push-reviewed to https://github.com",
)


def mint(**kw) -> str:
    kw.setdefault("rights", RIGHTS)
    kw.setdefault("audience", AUDIENCE)
    kw.setdefault("ttl", 3600)
    kw.setdefault("now", NOW)
    return caps.mint(HOST, **kw)
