"""Secrets the sandbox never holds: it sees a per-run sentinel, the egress hook holds the real value.

For each policy `secret NAME from env|file|command "REF" to ENDPOINTS` the vault loads the real value
once, makes a sentinel `ifc-sentinel-<random>` and gives the sandbox `NAME=<sentinel>`. On the way out a
sentinel found in a request is swapped for the real value when the monitor says the secret is bound to
that endpoint (`send NAME@ENDPOINT`), else the request is refused. On the way back the real value is
masked (same length, so framing stays valid) before it reaches the sandbox.
"""

from __future__ import annotations

import os
import secrets as _random
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ifc.match import Endpoint, EndpointPattern

SENTINEL_PREFIX = "ifc-sentinel-"


class SecretError(Exception):
    def __init__(self, name: str, problem: str):
        super().__init__(f"secret `{name}`: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Held:
    name: str
    sentinel: bytes
    value: bytes
    endpoints: tuple[EndpointPattern, ...] = ()  # the policy's `to` patterns
    unbound: bool = False  # a workspace file's value no binding names (`Vault.watch`): not in the environment
    from_file: bool = False  # a workspace file's value: its sentinel goes unswapped where it is not bound

    def passes(self, endpoint: Endpoint | None) -> bool:
        """May this sentinel travel to `endpoint` as it is? A workspace file's value, anywhere but its bound host
        (the monitor's `send` decision says the same); an environment's or command's secret, never."""
        return self.from_file and endpoint is not None and not self.bound_to(endpoint)

    def bound_to(self, endpoint: Endpoint) -> bool:
        """Is this secret bound to `endpoint`? Only exact host bindings count, as in the monitor's `send`
        decision: a pattern covering hosts nobody named is never honoured."""
        return any(p.names_hosts and p.matches(endpoint) for p in self.endpoints)


def load_value(source: str, ref: str, name: str, key: str | None = None) -> bytes:
    """The real value of one secret: an environment variable, a host file's content (or with `key`, one value
    of it), or a command's output. An empty value is no value: swapped in, it would send an empty credential,
    and every send needing the secret is refused instead (`ifc.enforce.secret_values`)."""
    value = _load(source, ref, name, key)
    if not value:
        raise SecretError(name, f"{source} `{ref}` gives an empty value")
    return value


def _load(source: str, ref: str, name: str, key: str | None) -> bytes:
    if source == "file" and key is not None:
        return _file_key(ref, name, key)
    if source == "env":
        value = os.environ.get(ref)
        if value is None:
            raise SecretError(name, f"environment variable `{ref}` is not set")
        return value.encode()
    if source == "file":
        try:
            return Path(os.path.expanduser(ref)).read_bytes().strip()
        except OSError as exc:
            raise SecretError(name, f"cannot read `{ref}`: {(exc.strerror or str(exc)).lower()}") from None
    if source == "command":
        try:
            # no shell, but `~` at the start of a word is the user's home, as a shell would read `cat ~/token`
            argv = [os.path.expanduser(word) if word.startswith("~") else word for word in shlex.split(ref)]
            out = subprocess.run(argv, capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:  # ValueError: an unclosed quote
            raise SecretError(name, f"command `{ref}` failed: {exc}") from None
        return out.stdout.strip()
    raise SecretError(name, f"unknown source `{source}`")


def _file_key(ref: str, name: str, key: str) -> bytes:
    from ifc.secretfiles import key_matches, parse

    path = os.path.expanduser(ref)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecretError(name, f"cannot read `{ref}`: {(exc.strerror or str(exc)).lower()}") from None
    parsed = parse(path, data)
    if parsed is None:
        raise SecretError(name, f"`{ref}` does not parse as its format")
    found = [i for i in parsed.values if key_matches(i, key)]
    if not found:
        raise SecretError(name, f"`{ref}` has no key `{key}`")
    return found[-1].value


class Vault:
    """Sentinels and real values for one run. `found(data)` names the sentinels in some bytes."""

    def __init__(self, held: list[Held] | None = None):
        self.held = list(held or [])
        self._value_max = max((len(h.value) for h in self.held), default=0)
        self._sentinel_max = max((len(h.sentinel) for h in self.held), default=0)

    @classmethod
    def from_policy(cls, policy, values: dict[str, bytes] | None = None, files=None) -> Vault:
        """`values` overrides loading (tests, or a caller that already holds them). `files` is the run's
        `ifc.secretfiles.SecretFiles`, loaded: the values of workspace files, with the sentinels the mount
        serves in their place; the vault hears of every other sentinel the mount makes (`watch`), so one
        headed anywhere is refused and reported like a secret bound elsewhere."""
        held = []
        for secret in policy.secrets_:
            if secret.workspace_file:
                bound = files.bound.get(secret.name) if files is not None else None
                if bound is None:
                    raise SecretError(secret.name, f"`{secret.ref}` is a workspace file: only a mount serving the "
                                      "workspace holds its value (`ifc mount --egress`, `ifc run --egress`)")
                held.append(Held(secret.name, bound.sentinel, bound.value, secret.endpoints, from_file=True))
                continue
            value = (values or {}).get(secret.name)
            if value is None:
                value = load_value(secret.source, secret.ref, secret.name, secret.key)
            if isinstance(value, str):
                value = value.encode()
            sentinel = (SENTINEL_PREFIX + _random.token_hex(16)).encode()
            held.append(Held(secret.name, sentinel, value, secret.endpoints))
        vault = cls(held)
        if files is not None:
            files.watch(lambda placed, name: vault.watch(name, placed.sentinel))
        return vault

    def watch(self, name: str, sentinel: bytes) -> None:
        """A sentinel bound to nothing (a workspace file's value no binding names): it is swapped nowhere, and
        found like any other, so a request carrying it is refused and reported. It has no real value here to
        scrub: the value never left the host."""
        # one reference swap: a reader sees the old list or the new one
        self.held = [*self.held, Held(name, sentinel, b"", (), unbound=True, from_file=True)]
        self._sentinel_max = max(self._sentinel_max, len(sentinel))

    def __bool__(self) -> bool:
        return bool(self.held)

    def sandbox_env(self) -> dict[str, str]:
        """What the sandbox gets in its environment instead of the real values."""
        return {h.name: h.sentinel.decode() for h in self.held if not h.unbound}

    @property
    def overlap(self) -> int:
        """Bytes a streaming scanner must carry between chunks so no sentinel or value is split unseen."""
        return max(self._value_max, self._sentinel_max, 1) - 1

    def bound_to(self, endpoint: Endpoint) -> list[Held]:
        """The secrets bound to `endpoint`: on such a host the sandbox may present only their sentinels."""
        return [h for h in self.held if h.bound_to(endpoint)]

    def found(self, data: bytes) -> list[Held]:
        if SENTINEL_PREFIX.encode() not in data:
            return []
        return [h for h in self.held if h.sentinel in data]

    def swap(self, data: bytes, which: list[Held]) -> bytes:
        for h in which:
            data = data.replace(h.sentinel, h.value)
        return data

    def scrub(self, data: bytes) -> bytes:
        """Mask real values (same length, so a Content-Length stays right)."""
        for h in self.held:
            if h.value and h.value in data:
                data = data.replace(h.value, b"*" * len(h.value))
        return data


class StreamScrubber:
    """Masks real values in a byte stream split at arbitrary points.

    Only what could be the start of a value split by a chunk boundary — the longest end of the data that is
    a proper prefix of some value — is held back for the next chunk; usually that is nothing, so a chunk
    costs one search per value and no copy (it used to cost two copies of the chunk as well)."""

    def __init__(self, vault: Vault):
        self.vault = vault
        self.values = [h.value for h in vault.held if h.value]
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.values:
            return chunk
        data = self.vault.scrub(self.tail + chunk if self.tail else chunk)
        cut = self._partial(data)
        if cut:
            data, self.tail = data[:-cut], data[-cut:]
        else:
            self.tail = b""
        return data

    def _partial(self, data: bytes) -> int:
        """Length of the longest end of `data` that is a proper prefix of a value (0: none)."""
        best = 0
        for value in self.values:
            i = data.find(value[:1], max(0, len(data) - len(value) + 1))
            while i != -1:
                if value.startswith(data[i:]):  # the earliest such start is the longest prefix
                    best = max(best, len(data) - i)
                    break
                i = data.find(value[:1], i + 1)
        return best

    def flush(self) -> bytes:
        out, self.tail = self.vault.scrub(self.tail), b""
        return out


class SentinelWatch:
    """Does a byte stream to `endpoint`, split at arbitrary points, carry a sentinel that may not go there as it
    is (`Held.passes`)? Looks at each chunk and at the seam with the previous one (the last `overlap` bytes before
    it), never copying a whole chunk."""

    def __init__(self, vault: Vault, endpoint: Endpoint | None = None):
        self.vault = vault
        self.endpoint = endpoint
        self.keep = b""

    def _stops(self, data: bytes) -> bool:
        return any(not h.passes(self.endpoint) for h in self.vault.found(data))

    def found(self, chunk: bytes) -> bool:
        vault = self.vault
        if not vault:
            return False
        overlap = vault.overlap
        if self._stops(chunk) or (self.keep and self._stops(self.keep + chunk[:overlap])):
            return True
        if overlap:
            self.keep = chunk[-overlap:] if len(chunk) >= overlap else (self.keep + chunk)[-overlap:]
        return False
