"""What several subcommands share: printing a one-line error, and loading a policy with its agent."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ifc.errors import UserError


class Usage(UserError):
    """A command line the user must change: bad arguments, unreadable inputs, a policy that does not compile."""


def error(prog: str, message: str, help: str | None = None, code: int = 2) -> int:
    print(f"ifc {prog}: error: {message}", file=sys.stderr)
    if help:
        print(f"  help: {help}", file=sys.stderr)
    return code


LOG_FAILED = 3  # a command whose event log failed: what it could not log was denied and is missing


def log_failures(prog: str, log) -> int:
    """LOG_FAILED, said in one line, when writes to the event log failed during the command (else 0)."""
    first = log.first_failure if log is not None else None
    if first is None:
        return 0
    when = time.strftime("%H:%M:%S", time.localtime(first.ts))
    return error(prog, f"the event log failed {log.failures} time(s), first at {when} ({first.reason}); the "
                 "operations it could not log were denied and are missing from the report", code=LOG_FAILED)


REVOCATIONS_HELP = ("the revocation list to follow while serving (default: `ifc caps revoke`'s, next to the host "
                    "key): a token revoked there stops verifying within a second")


def token_problem(token: str, key: str | None, audience: str,
                  revocations: str | None = None) -> tuple[str, str | None] | None:
    """(problem, help) when `token` would not verify for `audience` now, else None: `ifc run` and `ifc mount`
    check before anything starts, so a bad token is a one-line error and not a daemon that denies everything."""
    import caps

    try:
        token_verifier(key, audience, required=True, revocations=revocations).verify(token, now=time.time())
    except Usage as exc:
        return exc.message, exc.help
    except caps.CapsError as exc:
        return exc.message, f"mint one for this run: ifc caps mint --policy P --grant AGENT --audience {audience}"
    return None


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) from a command-line flag; port 0 asks for any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise Usage(f"{flag} wants HOST:PORT, not `{text}`")
    return host.strip("[]"), int(port)


def load_policy_and_agent(path: str, agent_name: str | None):
    """The compiled policy and the agent whose grants apply: `agent_name`, or the policy's first agent when
    None, or no agent (flows only) for `none`. Raises `Usage` with a one-line reason."""
    from ifc.policy import PolicyError, load_policy

    try:
        policy = load_policy(path)
    except PolicyError as exc:
        first = exc.diagnostics[0]
        more = f" (and {len(exc.diagnostics) - 1} more)" if len(exc.diagnostics) > 1 else ""
        raise Usage(f"`{path}` does not compile: {first.span}: {first.message}{more}",
                    f"run `ifc check {path}`") from None
    except OSError as exc:
        raise Usage(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    try:
        return policy, policy.agent_for(agent_name)
    except KeyError:
        raise Usage(f"no agent `{agent_name}` in {path}", "agents: " + (", ".join(policy.agents) or "none")) from None


MAX_TOKEN_INPUT = 1 << 20  # a token read from stdin or a file; far above any real token


def read_token(arg: str) -> str:
    """A token from argv, `-` (stdin) or `@FILE`, so it need not sit in shell history."""
    if arg == "-":
        text = sys.stdin.read(MAX_TOKEN_INPUT)
        source = "stdin"
    elif arg.startswith("@"):
        source = f"`{arg[1:]}`"
        try:
            with open(arg[1:], encoding="ascii", errors="replace") as handle:
                text = handle.read(MAX_TOKEN_INPUT)
        except OSError as exc:
            raise Usage(f"cannot read token file `{arg[1:]}`: {(exc.strerror or 'error').lower()}") from None
    else:
        text, source = arg, "the argument"
    text = text.strip()
    if not text:
        raise Usage(f"no token in {source}")
    return text


def token_verifier(key: str | None, audience: str, required: bool, revocations: str | None = None):
    """A verifier for `audience` with the host public key `key` (default: `ifc caps`'s key) and the revocation
    list `revocations` as it is now (default: `ifc caps revoke`'s; missing: nothing revoked), or None when
    there is no key and no token needs one. `watch_revocations` follows the list after that."""
    import caps
    from caps.keys import public_key_path
    from ifc.cli.caps import default_key_path, default_revocations_path

    if key:
        path = Path(key)
    else:
        default = default_key_path()
        pub = public_key_path(default)
        path = pub if pub.exists() else default
        if not path.exists():
            if required:
                raise Usage("a token was given but there is no host key to verify it",
                             "pass --key HOST.pub (made by `ifc caps keygen`)")
            return None
    try:
        public = caps.load_public_key(path)
    except caps.CapsError as exc:
        raise Usage(f"cannot load the host key `{path}`: {exc}") from None
    try:
        revoked = caps.RevocationList.load(revocations or default_revocations_path(), missing_ok=True)
    except caps.RevocationListError as exc:
        raise Usage(str(exc), "repair it, or pass another with --revocations") from None
    return caps.Verifier([public], audience=audience, revocations=revoked)


def watch_revocations(verifier, revocations: str | None):
    """Follow the revocation list (`caps.revocation.Watch`, started) while serving; None without a verifier."""
    if verifier is None:
        return None
    from caps.revocation import Watch
    from ifc.cli.caps import default_revocations_path

    return Watch(revocations or default_revocations_path(), verifier).start()
