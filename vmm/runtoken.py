"""The run's capability token: the authority the sandbox presents, which processes inside can narrow.

With `ifc run --token`, it is the user's (minted with their host key by `ifc caps mint`, verified with
`--key` or `ifc caps`'s default key). Without one, `ifc run` mints it from the agent's grants with a key
made for this run: the key's seed lives only in this process's memory and is gone with it (nobody can mint
another token for the run), its public half is RUN_DIR/run-key.pub, which the FUSE daemon and the hook
verify with. The audience is the run directory's name, the lifetime `LIFETIME`.

The token itself never touches disk: the daemon reads it from a pipe; the sandbox gets it in its proxy URL
(`http://ifc:TOKEN@…`, so every HTTP client presents it) and as `IFC_TOKEN`. A process inside may attenuate
it offline and present the narrower token through its own proxy URL: the hook then treats it as a subject of
its own, with its own taint. RUN_DIR/tokens.txt records the token's id and revocation ids — never the token.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import caps
from caps.clock import format_time

LIFETIME = 24 * 3600  # seconds: a run's token outlives any sensible run, and dies with the day
PUBLIC_KEY = "run-key.pub"
RECORD = "tokens.txt"


@dataclass(frozen=True)
class RunToken:
    token: str
    key: Path | None  # the public key that verifies it; None: the daemon's default (`ifc caps`'s key)


def prepare(run_dir: Path, policy: Path, agent: str | None, given: str | None, key: Path | None) -> RunToken | None:
    """The run's token: `given`, else one minted from the agent's grants; None when no agent applies."""
    if given is not None:
        token = RunToken(given, key)
    else:
        grants = _agent(policy, agent)
        if grants is None:
            return None
        host = caps.HostKey.generate()
        rights, delegable = caps.rights_for_agent(grants)
        minted = caps.mint(host, rights=rights, delegable=delegable, audience=run_dir.name, ttl=LIFETIME)
        public = run_dir / PUBLIC_KEY
        public.write_text(f"# ifc-caps public key of this run's own key (its seed was never stored)\n"
                          f"{host.public.to_text()}\n", encoding="utf-8")
        token = RunToken(minted, public)
    _record(run_dir, token.token, minted_here=given is None)
    return token


def _agent(policy: Path, name: str | None):
    from ifc.policy import load_policy

    # `ifc run` checked that the policy compiles and names this agent before anything started
    return load_policy(str(policy)).agent_for(name)


def _record(run_dir: Path, token: str, minted_here: bool) -> None:
    info = caps.inspect(token)
    lines = [f"session token ({'minted for this run' if minted_here else 'given with --token'}): "
             f"id {info.token_id}, key {info.key_id}, {len(info.blocks)} block(s), expires {format_time(info.expires)}"]
    lines += [f"  block {b.index} revocation id {b.revocation_id}" for b in info.blocks]
    (run_dir / RECORD).write_text("\n".join(lines) + "\n", encoding="utf-8")


def pipe_to(token: str) -> int:
    """A pipe's read end holding the token, for a child to read as `@/dev/fd/N` (kept off disk and argv)."""
    read, write = os.pipe()
    with contextlib.closing(os.fdopen(write, "w", encoding="ascii")) as out:
        out.write(token)
    return read
