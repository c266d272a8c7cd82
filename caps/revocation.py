"""Revocation lists: a set of block revocation ids plus an epoch, stored as a small JSON file.

    {"format": "ifc-caps-revocations", "version": 1, "epoch": 3, "revoked": ["<32 hex>", ...]}

Every change bumps the epoch. A verifier refuses a list whose epoch is older than the one it holds, so a
stale copy cannot silently un-revoke a token. Revoking a block's id revokes every token containing that
block: revoke a token's last block to revoke it and everything derived from it, or its block 0 to revoke
the whole family minted together.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from caps.errors import RevocationListError

FORMAT = "ifc-caps-revocations"
MAX_FILE_BYTES = 16 * 1024 * 1024
_ID = re.compile(r"[0-9a-f]{32}\Z")
_FIELDS = {"format", "version", "epoch", "revoked"}


def is_revocation_id(text: str) -> bool:
    return isinstance(text, str) and bool(_ID.match(text))


@dataclass(frozen=True, slots=True)
class RevocationList:
    epoch: int = 0
    revoked: frozenset[str] = frozenset()

    def with_revoked(self, ids: Iterable[str]) -> RevocationList:
        """A new list with `ids` added; the epoch moves on only if something was added."""
        ids = set(ids)
        bad = sorted(i for i in ids if not is_revocation_id(i))
        if bad:
            raise RevocationListError(f"`{bad[0]}` is not a revocation id (32 lowercase hex digits)")
        if ids <= self.revoked:
            return self
        return RevocationList(self.epoch + 1, self.revoked | ids)

    def is_revoked(self, ids: Iterable[str]) -> bool:
        return not self.revoked.isdisjoint(ids)

    def to_json(self) -> str:
        body = {"format": FORMAT, "version": 1, "epoch": self.epoch, "revoked": sorted(self.revoked)}
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "revocation list") -> RevocationList:
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise RevocationListError(f"`{source}` is not valid json") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise RevocationListError(f"`{source}` is not an ifc-caps revocation list")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise RevocationListError(f"`{source}` has an unknown field `{unknown[0]}`")
        if body.get("version") != 1:
            raise RevocationListError(f"`{source}` has an unsupported version")
        epoch = body.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise RevocationListError(f"`{source}` has no valid epoch")
        revoked = body.get("revoked")
        if not isinstance(revoked, list) or not all(is_revocation_id(i) for i in revoked):
            raise RevocationListError(f"`{source}` has a malformed `revoked` list")
        return cls(epoch, frozenset(revoked))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = False) -> RevocationList:
        target = Path(path)
        try:
            with open(target, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise RevocationListError(f"revocation list `{target}` does not exist") from None
        except OSError as exc:
            raise RevocationListError(f"cannot read revocation list `{target}`: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise RevocationListError(f"revocation list `{target}` is too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RevocationListError(f"`{target}` is not valid json") from None
        return cls.from_json(text, source=str(target))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (a reader sees the old list or the new one, never half of one)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            with open(tmp, "x", encoding="utf-8") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RevocationListError(f"cannot write revocation list `{target}`: {exc.strerror}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise RevocationListError(f"cannot lock revocation list `{path}`: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def revoke_in_file(path: str | os.PathLike[str], ids: Iterable[str]) -> RevocationList:
    """Add `ids` to the list at `path` (created if missing) under a lock; return the new list."""
    target = Path(path)
    with _locked(target):
        current = RevocationList.load(target, missing_ok=True)
        updated = current.with_revoked(ids)
        if updated is not current or not target.exists():
            updated.save(target)
    return updated
