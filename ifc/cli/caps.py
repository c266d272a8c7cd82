"""`ifc caps ...`: host keys and capability tokens (keygen, mint, attenuate, inspect, verify, revoke).

Tokens are bearer secrets: pass them as `-` (stdin) or `@FILE` rather than on the command line, so they
stay out of shell history and `ps`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path

import caps
from caps.clock import format_duration, format_time, parse_duration, parse_time
from caps.keys import public_key_path
from ifc.cli import ExitCode
from ifc.cli.common import Usage, error, read_token

EPILOG = """exit codes:
  0  success (token valid, request allowed)
  1  token rejected or request denied (the reason code is printed, e.g. `expired`)
  2  usage error, unreadable key, token or policy file
"""


def _error(message: str, help: str | None = None, code: int = ExitCode.USAGE) -> int:
    return error("caps", message, help, code)


def default_key_path() -> Path:
    env = os.environ.get("IFC_CAPS_KEY")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ifc" / "host.key"


def default_revocations_path() -> Path:
    """The revocation list `ifc caps revoke` writes and every enforcement point follows, next to the host key."""
    return default_key_path().with_name("revoked.json")


# ------------------------------------------------------------------------------------------- parsers


def _add_rights(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rights (repeatable; a request is allowed only if every block allows it)")
    for op in ("read", "write", "create", "delete", "exec"):
        g.add_argument(f"--{op}", action="append", default=[], metavar="GLOB", help=f"allow {op} on GLOB")
    g.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="allow connecting to ENDPOINT, e.g. `https://*.github.com:443`",
    )
    g.add_argument(
        "--declassify",
        action="append",
        default=[],
        metavar="'TAG to ENDPOINT'",
        help="allow releasing data tagged TAG to ENDPOINT",
    )
    g.add_argument("--right", action="append", default=[], metavar="'OP PATTERN'", help="any right, as text")


def _add_now(p: argparse.ArgumentParser) -> None:
    p.add_argument("--now", metavar="TIME", help="act as if it were TIME (unix seconds or ISO 8601)")


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE", help="write the token to FILE (mode 0600) instead of stdout")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "caps",
        help="capability tokens: keygen, mint, attenuate, inspect, verify, revoke",
        description="Mint, attenuate, inspect, verify and revoke capability tokens.\n\n" + __doc__.split("\n\n")[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), ExitCode.USAGE)[1])
    csub = parser.add_subparsers(dest="caps_command", metavar="SUBCOMMAND")
    key_help = f"host key file (default: $IFC_CAPS_KEY or {default_key_path()})"

    p = csub.add_parser(
        "keygen",
        help="create a host signing key (mode 0600) and its .pub",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="PATH", help=key_help)
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(func=run_keygen)

    p = csub.add_parser(
        "mint",
        help="mint a token from a policy's agent grant or explicit rights",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--key", metavar="PATH", help=key_help)
    p.add_argument("--policy", metavar="FILE", help="a .flow policy to take the agent's grants from")
    p.add_argument("--grant", metavar="AGENT", help="the agent in --policy whose grants the token carries")
    p.add_argument(
        "--audience",
        action="append",
        default=[],
        metavar="RUN",
        help="the sandbox run id the token is for (required; repeatable)",
    )
    p.add_argument("--ttl", metavar="DURATION", help="lifetime, e.g. `1h`, `10m`, `1h30m`")
    p.add_argument("--expires", metavar="TIME", help="expiry time instead of --ttl")
    p.add_argument(
        "--delegate",
        action="append",
        default=None,
        metavar="'OP PATTERN'",
        help="bound what tokens derived from this one may do (default with --policy: the agent's `delegate` rights)",
    )
    p.add_argument("--seal", action="store_true", help="mint a token its holder cannot attenuate")
    _add_rights(p)
    _add_now(p)
    _add_out(p)
    p.set_defaults(func=run_mint)

    p = csub.add_parser(
        "attenuate",
        help="narrow a token offline (no host key needed)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("token", metavar="TOKEN", help="the token, `-` for stdin or `@FILE`")
    p.add_argument("--ttl", metavar="DURATION", help="expire sooner, e.g. `10m`")
    p.add_argument("--expires", metavar="TIME", help="expire at TIME (never later than the token already does)")
    p.add_argument("--not-before", metavar="TIME", help="not valid before TIME")
    p.add_argument(
        "--audience",
        action="append",
        default=None,
        metavar="RUN",
        help="keep only these audiences (repeatable)",
    )
    p.add_argument("--seal", action="store_true", help="seal the result so it cannot be attenuated again")
    _add_rights(p)
    _add_now(p)
    _add_out(p)
    p.set_defaults(func=run_attenuate)

    p = csub.add_parser(
        "inspect",
        help="show a token's blocks in plain words (signatures not checked)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("token", metavar="TOKEN", help="the token, `-` for stdin or `@FILE`")
    p.add_argument("--format", choices=("text", "json"), default="text")
    _add_now(p)
    p.set_defaults(func=run_inspect)

    p = csub.add_parser(
        "verify",
        help="verify a token, and optionally one request against it",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("token", metavar="TOKEN", help="the token, `-` for stdin or `@FILE`")
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PATH",
        help="host public (or private) key file; repeatable (default: the default key's .pub)",
    )
    p.add_argument("--audience", required=True, metavar="RUN", help="the run id verifying the token")
    p.add_argument("--op", choices=caps.rights.OPS, help="check a request: the operation")
    p.add_argument("--target", metavar="PATH|ENDPOINT", help="check a request: its path or endpoint")
    p.add_argument("--tag", help="for `--op declassify`: the tag being released")
    p.add_argument("--revocations", metavar="FILE", help="revocation list to honour")
    p.add_argument("--format", choices=("text", "json"), default="text")
    _add_now(p)
    p.set_defaults(func=run_verify)

    p = csub.add_parser(
        "revoke",
        help="add a token (and everything derived from it) to a revocation list",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("token", nargs="?", metavar="TOKEN", help="the token, `-` for stdin or `@FILE`")
    p.add_argument("--list", metavar="FILE", help="revocation list file, created if missing (default: the one "
                   "`ifc mount`, `ifc proxy` and `ifc run` follow, next to the host key)")
    p.add_argument(
        "--family",
        action="store_true",
        help="revoke every token minted together with this one (its block 0), not just its line",
    )
    p.add_argument("--id", action="append", default=[], metavar="ID", help="revoke a revocation id directly")
    p.set_defaults(func=run_revoke)


# ------------------------------------------------------------------------------------------- helpers


def _now(args: argparse.Namespace) -> float:
    if getattr(args, "now", None) is None:
        return time.time()
    try:
        return parse_time(args.now)
    except ValueError as exc:
        raise Usage(str(exc)) from None


def _seconds(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise Usage(f"{flag}: {exc}") from None
    if value <= 0:
        raise Usage(f"{flag} must be longer than zero")
    return value


def _time(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return int(parse_time(text))
    except ValueError as exc:
        raise Usage(f"{flag}: {exc}") from None


def _explicit_rights(args: argparse.Namespace) -> list[caps.Right]:
    texts = [f"{op} {p}" for op in ("read", "write", "create", "delete", "exec") for p in getattr(args, op)]
    texts += [f"connect {p}" for p in args.connect]
    texts += [f"declassify {p}" for p in args.declassify]
    texts += list(args.right)
    return [caps.Right.parse(t) for t in texts]


def _emit_token(token: str, out: str | None) -> None:
    if out is None:
        print(token)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(token + "\n")
    except OSError as exc:
        raise Usage(f"cannot write `{out}`: {(exc.strerror or 'error').lower()}") from None


def _guarded(run):
    """Map the errors a command can meet to one stderr line and an exit code; never a traceback."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except Usage as exc:
            return _error(exc.message, exc.help)
        except caps.TokenError as exc:  # outside `verify`, a token that does not decode is bad input
            return _error(f"{exc.reason.value}: {exc.message}", exc.help)
        except caps.CapsError as exc:
            return _error(exc.message, exc.help)

    wrapper.__name__ = run.__name__
    wrapper.__doc__ = run.__doc__
    return wrapper


# ------------------------------------------------------------------------------------------- commands


@_guarded
def run_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else default_key_path()
    key = caps.HostKey.generate()
    try:
        secret, public = caps.write_key(path, key, force=args.force)
    except OSError as exc:
        raise Usage(f"cannot write key `{path}`: {(exc.strerror or 'error').lower()}") from None
    print(f"wrote host key {key.key_id.hex()} to {secret} (mode 0600) and {public}")
    return ExitCode.OK


def _policy_rights(args: argparse.Namespace):
    if not args.grant:
        raise Usage("`--policy` needs `--grant AGENT`")
    try:
        from ifc.policy import PolicyError, load_policy
    except ImportError:
        raise Usage("policy support is not available in this installation") from None
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        raise Usage(f"policy `{args.policy}` does not compile: {exc}", help=f"run `ifc check {args.policy}`") from None
    except OSError as exc:
        raise Usage(f"cannot read policy `{args.policy}`: {(exc.strerror or 'error').lower()}") from None
    agent = policy.agents.get(args.grant)
    if agent is None:
        names = sorted(policy.agents)
        close = difflib.get_close_matches(args.grant, names, n=1)
        help = (
            f"did you mean `{close[0]}`?"
            if close
            else ("agents in this policy: " + ", ".join(f"`{n}`" for n in names) if names else "it declares no agent")
        )
        raise Usage(f"policy `{args.policy}` has no agent `{args.grant}`", help=help)
    return caps.rights_for_agent(agent)


@_guarded
def run_mint(args: argparse.Namespace) -> int:
    explicit = _explicit_rights(args)
    if args.policy:
        if explicit:
            raise Usage(
                "give `--policy/--grant` or explicit rights, not both",
                help="attenuate the minted token to narrow it",
            )
        rights, delegable = _policy_rights(args)
    elif args.grant:
        raise Usage("`--grant` needs `--policy FILE`")
    else:
        if not explicit:
            raise Usage("a token needs rights", help="pass `--policy FILE --grant AGENT` or e.g. `--read 'src/**'`")
        rights, delegable = tuple(explicit), None
    if args.delegate is not None:
        delegable = tuple(caps.Right.parse(t) for t in args.delegate)
    if not args.audience:
        raise Usage("a token needs an audience", help="pass `--audience RUN` (the sandbox run id)")
    ttl = _seconds(args.ttl, "--ttl")
    expires = _time(args.expires, "--expires")
    if ttl is None and expires is None:
        raise Usage("a token needs an expiry", help="pass `--ttl 1h` or `--expires TIME`")
    host = caps.load_host_key(args.key or default_key_path())
    token = caps.mint(
        host,
        rights=rights,
        delegable=delegable,
        audience=args.audience,
        ttl=ttl,
        expires=expires,
        now=_now(args),
        seal=args.seal,
    )
    _emit_token(token, args.out)
    return ExitCode.OK


@_guarded
def run_attenuate(args: argparse.Namespace) -> int:
    token = read_token(args.token)
    explicit = _explicit_rights(args)
    token = caps.attenuate(
        token,
        rights=explicit or None,
        ttl=_seconds(args.ttl, "--ttl"),
        expires=_time(args.expires, "--expires"),
        not_before=_time(args.not_before, "--not-before"),
        audience=args.audience,
        now=_now(args),
        seal=args.seal,
    )
    _emit_token(token, args.out)
    return ExitCode.OK


def _describe_block(info: caps.BlockInfo, now: float) -> list[str]:
    b = info.block
    lines = []
    if info.index == 0:
        lines.append(f"block 0: minted by host key {b.key_id.hex()}, token id {b.token_id.hex()}")  # type: ignore[union-attr]
    else:
        lines.append(f"block {info.index}: attenuation")
    if b.audience is not None:
        verb = "for" if info.index == 0 else "narrows audience to"
        lines.append(f"  {verb} " + ", ".join(f"`{a}`" for a in b.audience))
    if b.not_before is not None:
        lines.append(f"  not valid before {format_time(b.not_before)}")
    if b.expires is not None:
        left = b.expires - now
        when = f"in {format_duration(left)}" if left > 0 else f"{format_duration(-left)} ago"
        lines.append(f"  expires {format_time(b.expires)} ({when})")
    if b.rights is not None:
        verb = "allows" if info.index == 0 else "allows only"
        if not b.rights:
            lines.append(f"  {verb} nothing")
        for right in b.rights:
            lines.append(f"  {verb} {_plain(right)}")
    if b.delegable is not None:
        if not b.delegable:
            lines.append("  derived tokens may do nothing")
        for right in b.delegable:
            lines.append(f"  derived tokens may {_plain(right)}")
    lines.append(f"  revocation id {info.revocation_id}")
    return lines


def _plain(right: caps.Right) -> str:
    if right.tag is not None:
        return f"declassify `{right.tag}` to `{right.pattern}`"
    return f"{right.op} `{right.pattern}`"


def _right_json(right: caps.Right) -> dict:
    out = {"op": right.op, "pattern": right.pattern}
    if right.tag is not None:
        out["tag"] = right.tag
    return out


@_guarded
def run_inspect(args: argparse.Namespace) -> int:
    info = caps.inspect(read_token(args.token))
    now = _now(args)
    if args.format == "json":
        blocks = []
        for bi in info.blocks:
            b = bi.block
            entry: dict = {"index": bi.index, "revocation_id": bi.revocation_id}
            if b.key_id is not None:
                entry["key_id"] = b.key_id.hex()
                entry["token_id"] = b.token_id.hex()  # type: ignore[union-attr]
            for name in ("not_before", "expires"):
                if getattr(b, name) is not None:
                    entry[name] = getattr(b, name)
            if b.audience is not None:
                entry["audience"] = list(b.audience)
            if b.rights is not None:
                entry["rights"] = [_right_json(r) for r in b.rights]
            if b.delegable is not None:
                entry["delegable"] = [_right_json(r) for r in b.delegable]
            blocks.append(entry)
        body = {
            "verified": False,
            "sealed": info.sealed,
            "size": info.size,
            "token_id": info.token_id,
            "key_id": info.key_id,
            "not_before": info.not_before,
            "expires": info.expires,
            "audiences": sorted(info.audiences),
            "blocks": blocks,
        }
        print(json.dumps(body, indent=2))
        return ExitCode.OK
    form = "sealed" if info.sealed else "attenuable"
    count = len(info.blocks)
    print(
        f"token {info.token_id}: {count} block{'s' if count != 1 else ''}, {form}, {info.size} bytes "
        "(signatures not checked: use `ifc caps verify`)"
    )
    for bi in info.blocks:
        for line in _describe_block(bi, now):
            print(line)
    audiences = ", ".join(f"`{a}`" for a in sorted(info.audiences)) or "nobody (audiences do not overlap)"
    print(
        f"in effect: valid {format_time(info.not_before)} to {format_time(info.expires)} for {audiences}; "
        "a request must be allowed by every block"
    )
    return ExitCode.OK


def _verify_keys(args: argparse.Namespace) -> list[caps.PublicKey]:
    paths = args.key
    if not paths:
        default = default_key_path()
        pub = public_key_path(default)
        paths = [pub if pub.exists() else default]
    return [caps.load_public_key(p) for p in paths]


@_guarded
def run_verify(args: argparse.Namespace) -> int:
    if (args.op is None) != (args.target is None):
        raise Usage("`--op` and `--target` go together")
    if args.tag is not None and args.op != "declassify":
        raise Usage("`--tag` is only for `--op declassify`")
    if args.op == "declassify" and args.tag is None:
        raise Usage("`--op declassify` needs `--tag TAG`")
    token = read_token(args.token)
    keys = _verify_keys(args)
    revocations = caps.RevocationList.load(args.revocations) if args.revocations else None
    verifier = caps.Verifier(keys, audience=args.audience, revocations=revocations, cache_size=1, memo_size=1)
    now = _now(args)
    try:
        verified = verifier.verify(token, now=now)
    except caps.TokenError as exc:
        if args.format == "json":
            body = {"valid": False, "allowed": False, "reason": exc.reason.value, "message": exc.message}
            print(json.dumps(body))
            return ExitCode.FINDINGS
        return _error(f"{exc.reason.value}: {exc.message}", exc.help, ExitCode.FINDINGS)
    decision = verified.check(args.op, args.target, tag=args.tag) if args.op else None
    if args.format == "json":
        body = {
            "valid": True,
            "allowed": None if decision is None else decision.allowed,
            "reason": None if decision is None or decision.allowed else decision.reason.value,  # type: ignore[union-attr]
            "message": "" if decision is None else decision.message,
            "token_id": verified.token_id,
            "blocks": verified.blocks,
            "expires": verified.expires,
        }
        print(json.dumps(body))
        return ExitCode.OK if decision is None or decision.allowed else ExitCode.FINDINGS
    if decision is not None and not decision.allowed:
        return _error(f"{decision.reason.value}: {decision.message}", code=ExitCode.FINDINGS)  # type: ignore[union-attr]
    left = format_duration(verified.expires - now)
    what = f"allows {args.op} `{args.target}`" if decision is not None else "is valid"
    print(f"ok: token {verified.token_id} {what} (for `{args.audience}`, expires in {left})")
    return ExitCode.OK


@_guarded
def run_revoke(args: argparse.Namespace) -> int:
    args.list = args.list or str(default_revocations_path())
    ids = list(args.id)
    if args.token is not None:
        all_ids = caps.revocation_ids(read_token(args.token))
        ids.append(all_ids[0] if args.family else all_ids[-1])
    elif args.family:
        raise Usage("`--family` needs a TOKEN")
    if not ids:
        raise Usage("nothing to revoke", help="pass a TOKEN or `--id ID`")
    updated = caps.revoke_in_file(args.list, ids)
    if args.token is not None:
        scope = "every token minted with it" if args.family else "the token and everything derived from it"
        print(f"revoked {ids[-1]} ({scope}); `{args.list}` is at epoch {updated.epoch}")
    else:
        print(f"revoked {', '.join(ids)}; `{args.list}` is at epoch {updated.epoch}")
    return ExitCode.OK
