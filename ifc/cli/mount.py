"""`ifc mount --policy P [--token T|@FILE] [--agent NAME] [--run-dir DIR] SRC MNT`: serve SRC at MNT
through the enforcement filesystem, every operation decided by the reference monitor.

Foreground by default: Ctrl-C (SIGINT) or SIGTERM unmounts cleanly and exits 0. `--background` returns
once the mount is up, the daemon logging to RUN_DIR/mount.log. The run directory receives the event
log (`events.db`, for `ifc report`) and a copy of the policy. Floated labels are the workspace's, not the
run's: they live in the user's state directory (`ifc labels SRC` lists them) and carry over to later runs.

A process started with `IFC_TOKEN=<token>` in its environment is a subject of its own that presents
that token; everything else is the session, which presents `--token` (or, without one, acts under the
agent's grants). Tokens are verified with the host public key (`--key`, default as for `ifc caps`)
for the audience `--audience` (default: the run directory's name).

Why an operation was refused: MNT/.ifc-denials (served by the daemon, read-only, not listed) holds the run's
newest denials with reason, rule and hint.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ifc.cli import ExitCode
from ifc.cli.common import (
    REVOCATIONS_HELP,
    Usage,
    error,
    load_policy_and_agent,
    log_failures,
    parse_address,
    read_token,
    token_problem,
    token_verifier,
    watch_revocations,
)
from ifc.cli.proxy import HOSTS_HELP, UPSTREAM_CA_HELP

EPILOG = """exit codes:
  0  unmounted cleanly (or, with --background, mounted)
  2  usage error, unreadable policy, token or key, or the mount could not be made
  3  the mount served, but the event log could not be written during it (the operations affected were
     denied; the last line says when and why)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mount", help="serve a workspace through the enforcing FUSE filesystem",
        description=__doc__.split("\n\n", 1)[1], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, metavar="P")
    p.add_argument("--token", metavar="T", help="the session's capability token: the token, `-` (stdin) or @FILE")
    p.add_argument("--key", metavar="FILE", help="host public key that verifies tokens (default: as `ifc caps`)")
    p.add_argument("--revocations", metavar="FILE", help=REVOCATIONS_HELP)
    p.add_argument("--audience", metavar="A", help="the audience tokens must name (default: the run dir's name)")
    p.add_argument("--agent", metavar="NAME",
                   help="whose grants apply without a token (default: the policy's first agent; `none`: flows only)")
    p.add_argument("--run-dir", metavar="DIR", help="the event log (default: a new temporary directory)")
    p.add_argument("--fuse", default=None, metavar="BINDING",
                   help="mfusepy3 (default), mfusepy2 or fusepy")
    p.add_argument("--background", action="store_true", help="return once mounted; the daemon keeps serving")
    p.add_argument("--no-fast-path", action="store_true",
                   help="answer every request in Python, none in the compiled fast path (slower: for comparison)")
    p.add_argument("--egress", metavar="HOST:PORT",
                   help="also serve the egress proxy here, with the same monitor: a file read through the mount "
                   "taints what the proxy lets out (one session across both exits)")
    p.add_argument("--egress-dns", metavar="HOST:PORT",
                   help="with --egress: also serve the DNS stub here (answers only names the policy's endpoints name)")
    p.add_argument("--upstream-ca", metavar="FILE", help="with --egress: " + UPSTREAM_CA_HELP)
    p.add_argument("--hosts", metavar="FILE", help="with --egress: " + HOSTS_HELP)
    p.add_argument("--carry-taint", metavar="FILE",
                   help="for launchers (`ifc run --keep-state`): the run starts with the taint FILE records and "
                   "leaves its own there (data it reaches outside the mount, see ifc.monitor.carried)")
    p.add_argument("--verbose", "-v", action="store_true", help="log every denial to stderr as it happens")
    p.add_argument("--health-fd", type=int, metavar="N",
                   help="for launchers (`ifc run`): report failures that denials hide (the event log's) as JSON "
                   "lines on descriptor N, see ifc.enforce.health")
    p.add_argument("--agent-ids", type=_ids, metavar="UID:GID",
                   help="the uid and gid the agent runs as: the workspace's owner appears as the agent, and what "
                   "the agent creates belongs to the owner on disk (`ifc run` passes it)")
    p.add_argument("source", metavar="SRC", help="the backing directory (the real workspace)")
    p.add_argument("mountpoint", metavar="MNT", help="where the agent sees it")


def run(args: argparse.Namespace) -> int:
    from ifc.enforce.mount import DEFAULT_BINDING, MountError, check_fuse_available, prepare_mountpoint

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ifc mount: %(message)s", stream=sys.stderr)
    health = _reporter(args.health_fd)

    def fail(message: str, help: str | None = None) -> int:
        """The error, on stderr (mount.log under `ifc run`) and to the launcher, which says it itself."""
        if health is not None:
            health.fatal(message + (f" ({help})" if help else ""))
        return _usage(message, help)

    source, mountpoint = os.path.realpath(args.source), os.path.realpath(args.mountpoint)
    if not os.path.isdir(source):
        return fail(f"`{args.source}` is not a directory")
    try:  # first: a dead mount there is detached (it is no directory until then), a live one refused
        prepare_mountpoint(mountpoint)
    except MountError as exc:
        return fail(exc.message, exc.help)
    if source == mountpoint or mountpoint.startswith(source + "/") or source.startswith(mountpoint + "/"):
        return fail("the mount point and the backing directory must not contain each other")
    problem = check_fuse_available()
    if problem:
        return fail(f"FUSE is not usable here: {problem}", "install fuse3 (scripts/sysdeps.sh) and run as root")
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="ifc-mount-"))
    if args.background:
        return _background(args, run_dir, mountpoint)
    try:
        monitor, token = _monitor(args, run_dir, source, mountpoint)
    except Usage as exc:
        return fail(exc.message, exc.help)
    if health is not None:  # the launcher hears of the event log's first failure as it happens
        monitor.log.on_failure = lambda failure: health.log_failed(failure.ts, failure.reason)
    try:
        carry = _carry(args.carry_taint, monitor)
    except Usage as exc:
        monitor.close()
        code = fail(exc.message, exc.help)
        if health is not None:
            health.finished(monitor.log.failures)
        return code
    from ifc.enforce.fs import DENIALS_NAME, Backing, EnforcingFS
    from ifc.enforce.identity import Identities
    from ifc.enforce.mount import MountOptions, load_binding, serve
    from ifc.secretfiles.workspace import SecretFileError, SecretFiles

    files = SecretFiles(monitor.policy, Backing(source).read)
    try:  # the bound values are the egress hook's to hold; without it every value's sentinel is swapped nowhere
        if args.egress:
            files.load()
    except SecretFileError as exc:
        monitor.close()
        return fail(str(exc), "the policy binds it by file and key: the file must be in the workspace, parse, "
                      "and hold the key")
    egress = None
    revocations = watch_revocations(monitor.verifier, args.revocations)
    try:
        if args.egress:
            egress = _start_egress(monitor, args.egress, args.egress_dns, token, run_dir, args.upstream_ca, health,
                                   files, args.hosts)
        binding = load_binding(args.fuse or DEFAULT_BINDING)
        ops = EnforcingFS(source, monitor, identities=Identities(default_token=token), context=binding.context,
                          mountpoint=mountpoint, agent_ids=args.agent_ids, invalidate=binding.invalidator(),
                          secret_files=files)
        print(f"ifc mount: {source} on {mountpoint} ({binding.name}), run dir {run_dir}; why a denial: "
              f"{os.path.join(mountpoint, DENIALS_NAME)}", file=sys.stderr)
        serve(ops, mountpoint, binding, source, MountOptions(fast_path=not args.no_fast_path))
    except (MountError, Usage) as exc:
        monitor.close()
        code = fail(exc.message, exc.help)
        if health is not None:
            health.finished(monitor.log.failures)
        return code
    finally:
        if egress is not None:
            egress.stop()
        if revocations is not None:
            revocations.stop()
    denials = ops.stats.denials
    if carry is not None:  # only a clean end records less than "anything": the home holds at most this
        from ifc.monitor import carried

        carried.write(carry, monitor.run.taint, monitor.policy.lattice)
    monitor.close()
    if health is not None:
        health.finished(monitor.log.failures)
    if denials:
        print(f"ifc mount: {denials} denial(s) logged in {run_dir / 'events.db'}", file=sys.stderr)
    return log_failures("mount", monitor.log) or ExitCode.OK


def _carry(path: str | None, monitor) -> Path | None:
    """With --carry-taint: start from the recorded taint, and record "anything" until the run ends cleanly."""
    from ifc.monitor import carried

    if path is None:
        return None
    carry, lattice = Path(path), monitor.policy.lattice
    if not carried.hold(carry):
        raise Usage(f"`{carry.parent / 'home'}` is in use by another run (its kept state is one run's at a time)")
    label = carried.read(carry, lattice)
    carried.write(carry, carried.top(lattice), lattice)
    if label is not None:
        monitor.inherit(label, f"kept home {carry.parent / 'home'}")
    return carry


def _reporter(fd: int | None):
    """The launcher's pipe (`--health-fd`): why the daemon could not start, notices, log failures, its end."""
    if fd is None:
        return None
    from ifc.enforce.health import Reporter

    return Reporter(fd)


def _monitor(args: argparse.Namespace, run_dir: Path, source: str, mountpoint: str):
    from ifc.monitor import EventLog, Monitor
    from ifc.monitor.labelstore import LabelStoreError
    from ifc.monitor.workspace_store import open_store

    policy, agent = load_policy_and_agent(args.policy, args.agent)
    token = read_token(args.token) if args.token else None
    audience = args.audience or run_dir.name
    if token is not None and (problem := token_problem(token, args.key, audience, args.revocations)):
        raise Usage(f"--token: {problem[0]}", problem[1])
    verifier = token_verifier(args.key, audience, required=token is not None, revocations=args.revocations)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # the workspace's labels: what earlier runs floated stays floated
        labels = open_store(source, run=str(run_dir))
        labels.set_meta(policy=os.path.realpath(args.policy))
    except LabelStoreError as exc:
        raise Usage(str(exc)) from None
    log = EventLog(run_dir / "events.db")
    log.set_meta(policy=args.policy, policy_digest=policy.digest, agent=agent.name if agent else "",
                 source="ifc mount", workspace=source, mountpoint=mountpoint, audience=audience,
                 started=str(time.time()), labels=str(labels.path))
    (run_dir / "policy.flow").write_text(Path(args.policy).read_text(encoding="utf-8"), encoding="utf-8")
    monitor = Monitor(policy, agent=agent, verifier=verifier, labels=labels, log=log, policy_path=args.policy,
                      audience=audience)
    return monitor, token


def _start_egress(monitor, listen: str, dns: str | None, token: str | None, run_dir: Path,
                  upstream_ca: str | None, health=None, files=None, hosts: str | None = None):
    """The egress proxy on an event loop in this process, deciding through the mount's own monitor. Writes
    RUN_DIR/ca.pem and RUN_DIR/sandbox.env (the sentinels) for the launcher of the sandbox. A secret without a
    value does not stop it: its sends are refused (`ifc.enforce.secret_values`), and the launcher is told."""
    import asyncio

    from ifc.cli.proxy import hosts_table, serve, termination
    from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver, system_resolver
    from ifc.enforce.runfiles import write_sandbox_files
    from ifc.enforce.secret_values import load_vault

    address = parse_address(listen, "--egress")
    dns_address = parse_address(dns, "--egress-dns") if dns else None
    loaded = load_vault(monitor.policy, files)
    vault = loaded.vault
    for notice in loaded.notices():
        print(f"ifc mount: {notice}", file=sys.stderr)
        if health is not None:
            health.notice(notice)
    tls = termination(monitor.policy, upstream_ca)
    write_sandbox_files(run_dir, vault, tls.ca)
    loop = BackgroundLoop()
    stop = asyncio.Event()
    resolver = static_resolver(hosts_table(hosts), system_resolver) if hosts else None
    egress = Egress(monitor, vault=vault, session_token=token, unset=loaded.unset, resolver=resolver)
    listening = []
    future = asyncio.run_coroutine_threadsafe(
        serve(egress, address, dns=dns_address, ready=lambda name, host, port: listening.append((name, host, port)),
              stop=stop, tls=tls), loop.loop)
    deadline = time.monotonic() + 10
    wanted = 2 if dns_address else 1
    while len(listening) < wanted and not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    if len(listening) < wanted:
        loop.stop()
        problem = future.exception() if future.done() else "it did not start within 10 s"
        raise Usage(f"the egress proxy cannot listen on {listen}: {problem}")
    for name, host, port in listening:
        print(f"ifc mount: egress {name} on {host}:{port}", file=sys.stderr)
        if health is not None:  # asked for port 0, the launcher learns the port here (ifc.enforce.health)
            health.listening(name, host, port)

    class Handle:
        def stop(self) -> None:
            loop.loop.call_soon_threadsafe(stop.set)
            with contextlib.suppress(Exception):
                future.result(5)
            loop.stop()

    return Handle()


def _background(args: argparse.Namespace, run_dir: Path, mountpoint: str) -> int:
    from ifc.enforce.fs import DENIALS_NAME
    from ifc.enforce.mount import is_stale, mounted_at

    argv = [sys.executable, "-m", "ifc", "mount", "--run-dir", str(run_dir)]
    for flag in ("policy", "token", "key", "revocations", "audience", "agent", "fuse", "egress", "egress_dns",
                 "upstream_ca", "hosts"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", value]
    if args.token == "-":
        return _usage("--background cannot read the token from stdin", "pass it as @FILE")
    if args.token is not None:  # checked here, before a daemon starts: its error would land in mount.log only
        try:
            token = read_token(args.token)
        except Usage as exc:
            return _usage(exc.message, exc.help)
        if problem := token_problem(token, args.key, args.audience or run_dir.name, args.revocations):
            return _usage(f"--token: {problem[0]}", problem[1])
    argv += ["--verbose"] * args.verbose + ["--no-fast-path"] * args.no_fast_path + [args.source, args.mountpoint]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "mount.log", "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (mounted_at(mountpoint) or "").startswith("fuse") and not is_stale(mountpoint):
            (run_dir / "mount.pid").write_text(f"{proc.pid}\n")
            print(f"ifc mount: daemon {proc.pid} serving {mountpoint}, run dir {run_dir}; why a denial: "
                  f"{os.path.join(mountpoint, DENIALS_NAME)}", file=sys.stderr)
            _relay_listening(run_dir / "mount.log", start)
            return ExitCode.OK
        if proc.poll() is not None:
            return _usage(f"the mount daemon exited ({proc.returncode}); see {run_dir / 'mount.log'}")
        time.sleep(0.05)
    proc.terminate()
    return _usage(f"`{mountpoint}` was not mounted within 30 s; see {run_dir / 'mount.log'}")


def _relay_listening(log: Path, start: int) -> None:
    """The daemon's "egress ... on HOST:PORT" lines (written before it mounted): with port 0 they are the only
    way the caller learns where the hook listens."""
    with contextlib.suppress(OSError), open(log, "rb") as lines:
        lines.seek(start)
        for line in lines:
            text = line.decode(errors="replace").rstrip()
            if text.startswith("ifc mount: egress "):
                print(text, file=sys.stderr)


def _ids(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise argparse.ArgumentTypeError(f"`{text}` is not UID:GID")
    return int(uid), int(gid)


def _usage(message: str, help: str | None = None) -> int:
    return error("mount", message, help)
