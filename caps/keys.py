"""Host signing keys: generate, write (mode 0600), load with permission checks, key ids.

File format, one key per file, `#` comment lines ignored:

    ifc-sk1_<base64url of the 32-byte Ed25519 seed>     private key (`host.key`, mode 0600)
    ifc-pk1_<base64url of the 32-byte public key>       public key  (`host.key.pub`)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nacl.bindings import crypto_sign_seed_keypair

from caps.errors import KeyFileError

SECRET_PREFIX = "ifc-sk1_"
PUBLIC_PREFIX = "ifc-pk1_"
MAX_KEY_FILE_BYTES = 4096


def key_id(public_key: bytes) -> bytes:
    """8-byte id naming a host public key inside block 0 (a hint for key lookup, not a secret)."""
    return hashlib.blake2b(public_key, digest_size=8, person=b"ifc-caps-keyid").digest()


@dataclass(frozen=True, slots=True)
class PublicKey:
    key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.key)

    def to_text(self) -> str:
        return PUBLIC_PREFIX + base64.urlsafe_b64encode(self.key).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class HostKey:
    """An Ed25519 signing key held by the host; it mints block 0 of every token."""

    seed: bytes
    public_key: bytes

    @classmethod
    def generate(cls) -> HostKey:
        return cls.from_seed(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> HostKey:
        public, _ = crypto_sign_seed_keypair(seed)
        return cls(seed, public)

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.public_key)

    def to_text(self) -> str:
        return SECRET_PREFIX + base64.urlsafe_b64encode(self.seed).rstrip(b"=").decode("ascii")

    def __repr__(self) -> str:  # never print the seed
        return f"HostKey(key_id={self.key_id.hex()})"


def public_key_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}.pub")


def write_key(path: str | os.PathLike[str], key: HostKey, *, force: bool = False) -> tuple[Path, Path]:
    """Write `key` to `path` (mode 0600, atomically) and its public half to `path.pub`."""
    target = Path(path)
    if target.exists() and not force:
        raise KeyFileError(
            f"key file `{target}` already exists",
            help="pass `--force` to replace it; tokens signed by the old key will stop verifying",
        )
    if not target.parent.exists():
        target.parent.mkdir(parents=True, mode=0o700)
    secret = f"# ifc-caps host signing key (Ed25519). keep it secret: mode 0600\n{key.to_text()}\n"
    _write_atomic(target, secret, 0o600)
    public = public_key_path(target)
    _write_atomic(public, f"# ifc-caps host public key (Ed25519)\n{key.public.to_text()}\n", 0o644)
    return target, public


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask cannot loosen it, but be explicit about the final mode
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _read_key_file(path: Path) -> tuple[str, int]:
    """Text and permission bits of a key file, read through one descriptor (no check/use race)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(
            f"key file `{path}` does not exist", help="create one with `ifc caps keygen --out PATH`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file `{path}`: {(exc.strerror or 'error').lower()}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file `{path}` is not a regular file")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file `{path}` is too large to be a key")
    try:
        return data.decode("ascii"), stat.S_IMODE(info.st_mode)
    except UnicodeDecodeError:
        raise KeyFileError(f"key file `{path}` is not an ifc-caps key") from None


def _check_private_mode(path: Path, mode: int) -> None:
    if mode & 0o077:
        raise KeyFileError(
            f"key file `{path}` is readable or writable by group or others (mode {mode:04o})",
            help=f"run `chmod 600 {path}`, and treat the key as leaked if others could read it",
        )


def _key_line(text: str, path: Path, prefixes: Iterable[str]) -> tuple[str, bytes]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) == 1:
        for prefix in prefixes:
            if lines[0].startswith(prefix):
                body = lines[0][len(prefix) :]
                try:
                    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
                except (binascii.Error, ValueError):
                    break
                if len(raw) == 32:
                    return prefix, raw
    raise KeyFileError(
        f"key file `{path}` is not an ifc-caps key",
        help="expected one line starting with `ifc-sk1_` (private) or `ifc-pk1_` (public)",
    )


def load_host_key(path: str | os.PathLike[str]) -> HostKey:
    """Load a private host key. Missing, malformed or group/world-accessible files are errors."""
    target = Path(path)
    text, mode = _read_key_file(target)
    _check_private_mode(target, mode)
    _, seed = _key_line(text, target, (SECRET_PREFIX,))
    return HostKey.from_seed(seed)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Load a public key; a private key file is accepted too (and then must be mode 0600)."""
    target = Path(path)
    text, mode = _read_key_file(target)
    prefix, raw = _key_line(text, target, (PUBLIC_PREFIX, SECRET_PREFIX))
    if prefix == SECRET_PREFIX:
        _check_private_mode(target, mode)
        return HostKey.from_seed(raw).public
    return PublicKey(raw)
