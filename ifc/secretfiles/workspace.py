"""One run's secret files in one workspace: which files are served with sentinels, the sentinels bound by the
policy (`secret NAME from file ".env" key "K" to ...`), and everyone who must know a new sentinel.

The mount serves through `view(rel, data)` and writes back through `restore(rel, written)`; the egress hook's
vault takes the bound values at start (`bound`) and hears of every other sentinel as it is made (`watch`), so
it can refuse and report one headed anywhere (an unbound value's sentinel is swapped nowhere). The policy says
which paths qualify (`Policy.sentinel_file`); content that does not parse is not served with sentinels, and the
mount then serves it as it is, under the file's full label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ifc.secretfiles.items import key_matches
from ifc.secretfiles.registry import parse
from ifc.secretfiles.serve import Placed, Sentinels, Served, new_sentinel

MAX_VIEW = 4 * 1024 * 1024  # a larger secret file is served as it is, under its full label (not held in memory)


class SecretFileError(Exception):
    """A workspace binding that cannot be honoured at run start (the file or its key is missing)."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"secret `{name}`: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Bound:
    """A policy secret that is one value of a workspace file, as it was when the run started."""

    name: str
    file: str
    key: str
    value: bytes
    sentinel: bytes


def value_name(placed: Placed) -> str:
    """How an unbound value is named in refusals and reports: `.env[DB_PASSWORD]` (no `@`: the monitor's `send`
    target is `NAME@ENDPOINT`)."""
    return f"{placed.file}[{placed.item.key}]".replace("@", "%40")


class SecretFiles:
    def __init__(self, policy, read: Callable[[str], bytes], make: Callable[[], bytes] = new_sentinel):
        """`read(rel)` is the content of a workspace file, read without following symlinks (the mount's own
        backing reader): a binding is never honoured through a link planted in an earlier run."""
        self.policy = policy
        self.read = read
        self.sentinels = Sentinels(make)
        self._make = make
        self._lock = threading.Lock()
        self._watchers: list[Callable[[Placed, str], None]] = []
        self.bound: dict[str, Bound] = {}
        self._counted: set[tuple] = set()

    def load(self) -> None:
        """Read each workspace binding's value now: the vault holds it for the run. Raises SecretFileError."""
        for secret in self.policy.secrets_:
            if not secret.workspace_file or secret.key is None:
                continue
            try:
                data = self.read(secret.ref)
            except OSError as exc:
                raise SecretFileError(secret.name, f"cannot read `{secret.ref}` in the workspace: "
                                      f"{(exc.strerror or str(exc)).lower()}") from None
            parsed = parse(secret.ref, data)
            if parsed is None:
                raise SecretFileError(secret.name, f"`{secret.ref}` does not parse as its format, so its values "
                                      "cannot be served as sentinels")
            found = [i for i in parsed.values if key_matches(i, secret.key)]
            if not found:
                raise SecretFileError(secret.name, f"`{secret.ref}` has no key `{secret.key}`")
            item = found[-1]  # the one a program reading the file gets: the last, in every format here
            sentinel = self._make()
            self.sentinels.preset(secret.ref, parsed, item, sentinel)
            self.bound[secret.name] = Bound(secret.name, secret.ref, secret.key, item.value, sentinel)

    def watch(self, fn: Callable[[Placed, str], None]) -> None:
        """`fn(placed, name)` for every sentinel made from now on that no binding owns."""
        with self._lock:
            self._watchers.append(fn)

    def eligible(self, rel: str) -> bool:
        return self.policy.sentinel_file(rel)

    def view(self, rel: str, data: bytes) -> tuple[Served, list[Placed]] | None:
        """What the sandbox sees of `rel` whose content is `data`, and the values served as sentinels for the
        first time in this run; None when the content does not parse (then it is served as it is, under its
        full label)."""
        parsed = parse(rel, data)
        if parsed is None:
            return None
        bound = {b.sentinel for b in self.bound.values()}
        served = self.sentinels.serve(rel, parsed)
        new = []
        with self._lock:
            for placed in served.placed:
                ident = (rel, placed.sentinel)
                if ident not in self._counted:
                    self._counted.add(ident)
                    new.append(placed)
            watchers = list(self._watchers)
        for placed in new:
            if placed.sentinel not in bound:
                for fn in watchers:
                    fn(placed, value_name(placed))
        return served, new

    def served_size(self, rel: str, data: bytes) -> int | None:
        """The length `view` would give, without making sentinels (getattr asks often, and a value only
        stat'ed is not served). Every sentinel has one length."""
        parsed = parse(rel, data)
        if parsed is None:
            return None
        width = len(self._make())
        return len(data) + sum(width + len(i.left) + len(i.right) - (i.end - i.start) for i in parsed.items)

    def restore(self, rel: str, written: bytes) -> bytes:
        """The bytes to store for what the sandbox wrote to `rel` (raises `Unmergeable`)."""
        return self.sentinels.restore(rel, written)

    def replaced(self) -> int:
        """How many distinct values (comments included) have been served as sentinels in this run."""
        with self._lock:
            return len(self._counted)
