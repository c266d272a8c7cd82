"""`ifc proxy --policy P --listen HOST:PORT [--dns HOST:PORT] [--smtp HOST:PORT --smtp-relay smtp[s]://H:P]`:
run the egress hook on its own — the HTTP(S) proxy, and optionally the DNS stub and the SMTP front —
every connection, request, lookup and message decided by the reference monitor.

Point the sandbox at it with `HTTP_PROXY=HTTPS_PROXY=http://ifc:TOKEN@HOST:PORT` (a client presenting a
token is its own subject; without one it is the session, presenting `--token` or acting under the agent's
grants). Policy secrets are loaded here; the sandbox gets sentinels instead, written with the proxy
settings to RUN_DIR/sandbox.env. A secret that cannot be loaded (its variable unset) does not stop the proxy, as
it does not stop `ifc run`: a warning names it, and every send that needs it is refused. A tunnel to an endpoint
a secret is bound to is terminated with a per-run CA (its certificate in RUN_DIR/ca.pem, for the sandbox to
trust) so the sentinel can be swapped there too; the real server is verified against the system trust store
(plus --upstream-ca), and so is the mail relay: the SMTP front sends it the relay credentials (policy secrets
bound to it) only over TLS. Every decision goes to RUN_DIR/events.db (`ifc report`). Runs in the foreground
until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

from ifc.cli import ExitCode, common
from ifc.cli.common import Usage, error, load_policy_and_agent, log_failures, parse_address, read_token, token_verifier

EPILOG = """exit codes:
  0  stopped cleanly
  2  usage error, unreadable policy, token or key, a workspace file's secret (only a mount holds its value), or
     an address that cannot be bound (a secret without a value is a warning: its sends are refused)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="run the egress hook: HTTP(S) proxy, DNS stub, SMTP front",
                       description=__doc__.split("\n\n", 1)[1], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, metavar="P")
    p.add_argument("--listen", default="127.0.0.1:3128", metavar="HOST:PORT",
                   help="the HTTP proxy (default: %(default)s)")
    p.add_argument("--dns", metavar="HOST:PORT", help="also serve the DNS stub (UDP and TCP) here")
    p.add_argument("--smtp", metavar="HOST:PORT", help="also serve the SMTP submission front here")
    p.add_argument("--smtp-relay", metavar="URL",
                   help="the real mail server (needed with --smtp): `smtp://host:587` (STARTTLS, required when the "
                        "front authenticates) or `smtps://host:465` (implicit TLS)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="event log, sandbox.env and ca.pem (default: a new temporary directory)")
    p.add_argument("--agent", metavar="NAME",
                   help="whose grants apply without a token (default: the policy's first agent; `none`: flows only)")
    p.add_argument("--token", metavar="T", help="the session's capability token: the token or @FILE")
    p.add_argument("--key", metavar="FILE", help="host public key that verifies tokens (default: as `ifc caps`)")
    p.add_argument("--revocations", metavar="FILE", help=common.REVOCATIONS_HELP)
    p.add_argument("--audience", metavar="A", help="the audience tokens must name (default: the run dir's name)")
    p.add_argument("--hosts", metavar="FILE", help=HOSTS_HELP)
    p.add_argument("--upstream-ca", metavar="FILE", help=UPSTREAM_CA_HELP)
    p.add_argument("--verbose", "-v", action="store_true", help="log every refusal to stderr")


HOSTS_HELP = ("`NAME ADDRESS...` lines the hook answers before the system resolver (an address that is not a "
              "public one still needs a rule naming it by IP)")
UPSTREAM_CA_HELP = ("extra CA certificates (PEM) trusted, besides the system's, for the real servers behind "
                    "terminated HTTPS tunnels (and the mail relay)")


def termination(policy, upstream_ca: str | None):
    """The per-run CA and upstream verification for the tunnels the hook terminates (a usage error if the
    extra CA bundle cannot be read)."""
    import ssl

    from ifc.enforce.tls import Termination

    try:
        return Termination.for_policy(policy, upstream_ca)
    except (OSError, ssl.SSLError) as exc:
        raise Usage(f"cannot load --upstream-ca `{upstream_ca}`: {exc}", "give a PEM file of CA certificates") \
            from None


def _check_relay(url: str | None) -> None:
    from ifc.enforce.smtp_relay import Relay

    if not url:
        raise Usage("--smtp needs --smtp-relay smtp://host:port (or smtps://host:465)")
    try:
        Relay.parse(url)
    except ValueError as exc:
        raise Usage(f"--smtp-relay: {exc}") from None


def _usage(message: str, help: str | None = None) -> int:
    return error("proxy", message, help)


def hosts_table(path: str) -> dict[str, list[str]]:
    import ipaddress

    table: dict[str, list[str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise Usage(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    for n, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            addresses = [str(ipaddress.ip_address(w)) for w in words[1:]]
        except ValueError:
            raise Usage(f"{path}:{n}: not `NAME ADDRESS...`") from None
        if not addresses:
            raise Usage(f"{path}:{n}: `{words[0]}` has no address")
        table[words[0].lower()] = addresses
    return table


def _build(args: argparse.Namespace, run_dir: Path):
    from ifc.enforce.egress import Egress, static_resolver, system_resolver
    from ifc.enforce.secret_values import load_vault
    from ifc.enforce.secrets import SecretError
    from ifc.monitor import EventLog, Monitor
    from ifc.monitor.labelstore import LabelStore

    policy, agent = load_policy_and_agent(args.policy, args.agent)
    audience = args.audience or run_dir.name
    token = read_token(args.token) if args.token else None
    verifier = token_verifier(args.key, audience, required=token is not None, revocations=args.revocations)
    try:
        loaded = load_vault(policy)
    except SecretError as exc:  # a workspace file's value: only a mount serving the workspace holds it
        raise Usage(str(exc), "run the sandbox with `ifc run --egress` (or `ifc mount --egress`)") from None
    for notice in loaded.notices():
        print(f"ifc proxy: warning: {notice}", file=sys.stderr, flush=True)
    resolver = static_resolver(hosts_table(args.hosts), system_resolver) if args.hosts else system_resolver
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir / "events.db")
    log.set_meta(policy=args.policy, policy_digest=policy.digest, agent=agent.name if agent else "",
                 source="ifc proxy", audience=audience, started=str(time.time()))
    (run_dir / "policy.flow").write_text(Path(args.policy).read_text(encoding="utf-8"), encoding="utf-8")
    monitor = Monitor(policy, agent=agent, verifier=verifier, labels=LabelStore(run_dir / "labels.db"), log=log,
                      policy_path=args.policy, audience=audience)
    return Egress(monitor, resolver=resolver, vault=loaded.vault, session_token=token, unset=loaded.unset)


async def serve(egress, listen: tuple[str, int], dns: tuple[str, int] | None = None,
                smtp: tuple[str, int] | None = None, smtp_relay: str | None = None,
                ready=None, stop: asyncio.Event | None = None, tls=None, upstream_ca: str | None = None) -> None:
    """Run the proxy (and the DNS stub, the SMTP front) until `stop` is set. `ready(name, host, port)` is
    called as each one listens. One `Egress`, so one monitor: the taint is shared by every exit. `tls`: the
    `Termination` for tunnels to endpoints secrets are bound to (None: every tunnel is blind); `upstream_ca`:
    extra roots for the mail relay's certificate."""
    from ifc.enforce.dns_stub import DnsStub
    from ifc.enforce.http_proxy import HttpProxy
    from ifc.enforce.smtp_front import SmtpFront
    from ifc.enforce.tls import upstream_context

    servers = [("http", HttpProxy(egress, tls=tls), listen)]
    if dns:
        servers.append(("dns", DnsStub(egress), dns))
    if smtp:
        servers.append(("smtp", SmtpFront(egress, smtp_relay or "", upstream=upstream_context(upstream_ca, alpn=())),
                        smtp))
    started = []
    try:
        for name, server, (host, port) in servers:
            bound = await server.start(host, port)
            started.append(server)
            if ready is not None:
                ready(name, *bound)
        await (stop or asyncio.Event()).wait()
    finally:
        for server in started:
            await server.close()


def run(args: argparse.Namespace) -> int:
    import logging

    from ifc.enforce.runfiles import write_sandbox_files

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ifc proxy: %(message)s", stream=sys.stderr)
    try:
        listen = parse_address(args.listen, "--listen")
        dns = parse_address(args.dns, "--dns") if args.dns else None
        smtp = parse_address(args.smtp, "--smtp") if args.smtp else None
        if smtp:
            _check_relay(args.smtp_relay)
        run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="ifc-proxy-"))
        egress = _build(args, run_dir)
        tls = termination(egress.monitor.policy, args.upstream_ca)
    except Usage as exc:
        return _usage(exc.message, exc.help)
    bound: dict[str, tuple[str, int]] = {}

    def ready(name: str, host: str, port: int) -> None:
        bound[name] = (host, port)
        if name == "http":  # before saying it listens: whoever waits for that line reads these files next
            write_sandbox_files(run_dir, egress.vault, tls.ca, f"http://{host}:{port}")
        print(f"ifc proxy: {name} on {host}:{port}", file=sys.stderr, flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(egress, listen, dns, smtp, args.smtp_relay, ready=ready, stop=stop, tls=tls,
                    upstream_ca=args.upstream_ca)

    revocations = common.watch_revocations(egress.monitor.verifier, args.revocations)
    try:
        asyncio.run(main())
    except OSError as exc:
        egress.monitor.close()
        return _usage(f"cannot listen: {(exc.strerror or str(exc)).lower()}")
    finally:
        if revocations is not None:
            revocations.stop()
    refusals = egress.refusals
    with contextlib.suppress(Exception):
        egress.monitor.close()
    print(f"ifc proxy: stopped; run dir {run_dir} ({refusals} refusal(s) by the hook itself)", file=sys.stderr)
    return log_failures("proxy", egress.monitor.log) or ExitCode.OK
