"""Enforcement points: thin adapters that turn operations into monitor requests and decisions into errnos.

`fs` — the FUSE filesystem over a workspace; `identity` — FUSE caller → process → subject;
`mount` — FUSE bindings and the mount lifecycle (`ifc mount`).
"""

from ifc.enforce.fs import Backing, Denied, EnforcingFS
from ifc.enforce.identity import Caller, Identities

__all__ = ["Backing", "Caller", "Denied", "EnforcingFS", "Identities"]
