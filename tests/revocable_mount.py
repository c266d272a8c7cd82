"""A FUSE mount whose session token can be revoked while it serves (for tests/test_fuse_tokens.py).

    python tests/revocable_mount.py SRC MNT RUN_DIR

`ifc mount` reads no revocation list, so this child builds the same parts (monitor with a verifier, event log,
`EnforcingFS`, the default binding) around a session token it mints itself, and revokes that token when a
line `revoke` arrives on stdin (answering `revoked`).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import caps
from ifc.enforce.fs import EnforcingFS
from ifc.enforce.identity import Identities
from ifc.enforce.mount import load_binding, serve
from ifc.monitor import EventLog, Monitor
from ifc.policy import load_policy

AUDIENCE = "run-revocable"


def main(src: str, mnt: str, run_dir: str) -> None:
    host = caps.HostKey.generate()
    token = caps.mint(host, rights=["read **"], audience=AUDIENCE, ttl=3600)
    verifier = caps.Verifier([host.public], audience=AUDIENCE)
    policy = load_policy(Path(__file__).resolve().parent.parent / "policies" / "default.flow")
    monitor = Monitor(policy, verifier=verifier, log=EventLog(Path(run_dir, "events.db")), audience=AUDIENCE)

    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "revoke":
                verifier.set_revocations(caps.revoke(token, verifier.revocations))
                print("revoked", flush=True)

    threading.Thread(target=listen, daemon=True).start()
    binding = load_binding()
    fs = EnforcingFS(src, monitor, identities=Identities(default_token=token), context=binding.context,
                     mountpoint=mnt)
    try:
        serve(fs, mnt, binding, src)
    finally:
        monitor.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
