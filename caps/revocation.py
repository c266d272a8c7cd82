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
import logging
import os
import re
import threading
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


class Watch:
    """A revocation list file followed while an enforcement point runs: `ifc caps revoke` rewrites it (atomically),
    and the verifier has the new list within `interval` seconds. A list that cannot be read any more — corrupt,
    unreadable, or removed after it existed — hides revocations, so the verifier then honours no token until it
    can be read again (`Verifier.revocations_lost`); one with an older epoch than the loaded list (an old copy put
    back) is refused and the loaded one kept."""

    def __init__(self, path: str | os.PathLike[str], verifier, interval: float = 0.25):
        self.path = Path(path)
        self.verifier = verifier
        self.interval = interval
        self._seen: tuple | None = None
        self._existed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Load the file if it changed since the last look (also the first look)."""
        try:
            st = os.stat(self.path)
            seen: tuple = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = ("missing",)
        except OSError as exc:
            seen = ("error", exc.errno)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            if seen == ("missing",) and self._existed:
                raise RevocationListError(f"revocation list `{self.path}` was removed")
            loaded = RevocationList.load(self.path, missing_ok=True)
        except RevocationListError as exc:
            _log.error("%s: no token is honoured until it can be read", exc)
            self.verifier.revocations_lost(str(exc))
            return
        self._existed = self._existed or seen != ("missing",)
        current = self.verifier.revocations
        if loaded.epoch < current.epoch:
            _log.warning("revocation list `%s` is at epoch %d, older than the loaded %d: kept the loaded one",
                         self.path, loaded.epoch, current.epoch)
            return
        # revocations only accumulate: a list that dropped an id at the same epoch does not bring a token back, and
        # one that added ids without a newer epoch still moves the epoch (answers cached under it must not hold)
        revoked = loaded.revoked | current.revoked
        epoch = loaded.epoch if loaded.epoch > current.epoch else current.epoch + (revoked != current.revoked)
        if (epoch, revoked) != (current.epoch, current.revoked) or self.verifier.revocations_unreadable:
            self.verifier.set_revocations(RevocationList(epoch, revoked))

    def start(self) -> Watch:
        self.check()
        self._thread = threading.Thread(target=self._run, name="ifc-revocations", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()


_log = logging.getLogger("caps.revocation")
