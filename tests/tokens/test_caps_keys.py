from __future__ import annotations

import os
import stat

import pytest

import caps
from caps.keys import load_host_key, load_public_key, public_key_path, write_key


def test_keys_are_written_0600_and_load_back(tmp_path):
    old = os.umask(0)  # even a permissive umask must not loosen the private key
    try:
        key = caps.HostKey.generate()
        secret, public = write_key(tmp_path / "keys" / "host.key", key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert public == public_key_path(secret)
    assert load_host_key(secret) == key
    assert load_public_key(public).key == key.public_key
    assert load_public_key(secret).key == key.public_key
    assert key.to_text() not in repr(key)


def test_existing_key_is_not_replaced_without_force(tmp_path):
    path = tmp_path / "host.key"
    first = caps.HostKey.generate()
    write_key(path, first)
    with pytest.raises(caps.KeyFileError, match="already exists") as info:
        write_key(path, caps.HostKey.generate())
    assert "--force" in info.value.help
    assert load_host_key(path) == first
    second = caps.HostKey.generate()
    write_key(path, second, force=True)
    assert load_host_key(path) == second


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o606])
def test_group_or_world_accessible_key_is_refused(tmp_path, mode):
    path, _ = write_key(tmp_path / "host.key", caps.HostKey.generate())
    path.chmod(mode)
    with pytest.raises(caps.KeyFileError, match="readable or writable by group or others") as info:
        load_host_key(path)
    assert "chmod 600" in info.value.help
    with pytest.raises(caps.KeyFileError):
        load_public_key(path)  # a private key is private whichever way it is loaded


def test_missing_key(tmp_path):
    with pytest.raises(caps.KeyFileError, match="does not exist") as info:
        load_host_key(tmp_path / "nope.key")
    assert "keygen" in info.value.help


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello\n",
        b"ifc-sk1_AAAA\n",
        b"ifc-sk1_" + b"A" * 43 + b"\nifc-sk1_" + b"A" * 43 + b"\n",
        b"\xff\xfe",
        b"ifc-pk1_" + b"A" * 43 + b"\n",
        b"x" * 10_000,
    ],
)
def test_malformed_key_file(tmp_path, content):
    path = tmp_path / "host.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(caps.KeyFileError):
        load_host_key(path)


def test_directory_is_not_a_key(tmp_path):
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(caps.KeyFileError, match="not a regular file"):
        load_host_key(tmp_path / "d")
