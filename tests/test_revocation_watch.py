"""`caps.revocation.Watch`: the revocation list file an enforcement point follows while it serves (`ifc mount`,
`ifc proxy`, and `ifc run` through them). `ifc caps revoke` rewrites the file; the verifier must have the new list
at the next look, never go back to an older one, and honour no token while the list cannot be read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import caps
from caps.errors import Reason, TokenError
from caps.revocation import RevocationList, Watch

NOW = time.time()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(tmp_path):
    host = caps.HostKey.generate()
    token = caps.mint(host, rights=["read **"], audience="run", expires=int(NOW) + 3600)
    verifier = caps.Verifier([host.public], audience="run")
    return tmp_path / "revoked.json", token, verifier


def _refused(verifier, token) -> str:
    with pytest.raises(TokenError) as info:
        verifier.verify(token, now=time.time())
    assert info.value.reason == Reason.REVOKED
    return info.value.message


def test_a_revocation_written_by_ifc_caps_reaches_the_verifier_at_the_next_look(world):
    path, token, verifier = world
    watch = Watch(path, verifier)
    watch.check()  # no file yet: nothing is revoked
    verifier.verify(token, now=time.time())
    caps.revoke_in_file(path, [caps.revocation_ids(token)[-1]])
    watch.check()
    assert _refused(verifier, token) == "token has been revoked"


def test_an_older_list_put_back_is_refused_and_revocations_never_shrink(world):
    path, token, verifier = world
    watch = Watch(path, verifier)
    caps.revoke_in_file(path, [caps.revocation_ids(token)[-1]])
    watch.check()
    RevocationList(0, frozenset()).save(path)  # an old copy
    watch.check()
    _refused(verifier, token)
    RevocationList(verifier.revocations.epoch, frozenset()).save(path)  # same epoch, the id dropped
    watch.check()
    _refused(verifier, token)


def test_ids_added_at_the_same_epoch_still_move_it(world):
    """The monitor keeps answers under the list's epoch: new ids must come with a new epoch, or a revoked token
    would still be answered from its cache."""
    path, token, verifier = world
    watch = Watch(path, verifier)
    RevocationList(3, frozenset()).save(path)
    watch.check()
    RevocationList(3, frozenset({caps.revocation_ids(token)[-1]})).save(path)  # edited by hand
    watch.check()
    assert verifier.revocations.epoch == 4
    _refused(verifier, token)


@pytest.mark.parametrize("damage", ["garbage", "removed", "unreadable"])
def test_a_list_that_cannot_be_read_honours_no_token_until_it_can(world, damage):
    path, token, verifier = world
    watch = Watch(path, verifier)
    RevocationList(1, frozenset()).save(path)
    watch.check()
    verifier.verify(token, now=time.time())
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "removed":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()  # a read fails with EISDIR
    watch.check()
    assert "cannot be read" in _refused(verifier, token)
    if path.is_dir():
        path.rmdir()
    RevocationList(1, frozenset()).save(path)
    watch.check()
    verifier.verify(token, now=time.time())


def test_the_watch_follows_the_file_on_its_own(world):
    path, token, verifier = world
    seen = []
    verifier.on_revocations.append(lambda: seen.append(verifier.revocations.epoch))
    watch = Watch(path, verifier, interval=0.05).start()
    try:
        caps.revoke_in_file(path, [caps.revocation_ids(token)[-1]])
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watch.stop()
    assert seen == [1]
    _refused(verifier, token)
    os.stat(path)  # the watch only reads the file


def test_ifc_caps_revoke_writes_the_list_every_enforcement_point_follows_by_default(tmp_path):
    """Without `--list` / `--revocations`, `ifc caps revoke` and `ifc mount` (so `ifc run`) share one list, next to
    the host key: a token revoked there is refused before a mount starts, in one line."""
    host = caps.HostKey.generate()
    caps.write_key(tmp_path / "keys" / "host.key", host)
    token = caps.mint(host, rights=["read **"], audience="run", expires=int(NOW) + 3600)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IFC_CAPS_KEY": str(tmp_path / "keys" / "host.key")}
    revoke = subprocess.run([sys.executable, "-m", "ifc", "caps", "revoke", "-"], input=token, capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=60)
    assert revoke.returncode == 0, revoke.stderr
    assert RevocationList.load(tmp_path / "keys" / "revoked.json").revoked == {caps.revocation_ids(token)[-1]}
    (tmp_path / "ws").mkdir()
    (tmp_path / "mnt").mkdir()
    (tmp_path / "token").write_text(token)
    mount = subprocess.run([sys.executable, "-m", "ifc", "mount", "--policy", str(ROOT / "policies" / "default.flow"),
                            "--token", f"@{tmp_path / 'token'}", "--run-dir", str(tmp_path / "run"),
                            str(tmp_path / "ws"), str(tmp_path / "mnt")], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=60)
    assert mount.returncode == 2 and "--token: token has been revoked" in mount.stderr, mount.stderr
    assert "Traceback" not in mount.stderr
