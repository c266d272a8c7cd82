"""`ifc run --policy P [--workspace DIR] [--run-dir DIR] [--isolation I] -- CMD...`: run CMD isolated from
the host, with DIR as its only workspace, served through the enforcing FUSE filesystem, and no network but
the egress hook (`--egress`) or a proxy given with `--proxy` (none by default).

CMD sees the host's /usr read-only, a fresh /etc (with the host's pip and npm configuration, read-only,
never their credentials) and home, tmpfs elsewhere, and DIR at /workspace; it runs
there as an unprivileged user (the workspace's owner, or uid 1000). Its output comes back on this terminal
and its exit status is `ifc run`'s. The run directory receives the policy copy, the event log
(`events.db`) and the helpers' logs; `ifc report RUN_DIR` reads it. Labels floated by writes are the
workspace's (`ifc labels DIR`), so they hold in later runs whatever their run dir.

Isolation: `microvm` (the default) boots a QEMU microVM (needs QEMU and a guest image, `ifc vm build`);
`namespace` runs CMD in Linux mount, PID, network, UTS, IPC and user namespaces on the host's kernel, for
machines that cannot run a VM. It is WEAKER (a kernel exploit escapes) and says so at start; the FUSE daemon
sees the agent's real pids there, so per-process subjects (`IFC_TOKEN` in a process's environment) work.
Both need root (a mount namespace, FUSE).

`--preset NAME` starts a real coding agent installed with `ifc agent install NAME` (claude-code, codex, gemini,
aider): its preset policy (policies/NAME.flow unless `--policy` names another), the egress hook, the agent's
layer read-only at /opt/ifc-agent, its provider key swapped in by the hook (the agent sees a sentinel), settings
that keep it from hanging on a pager or an update check, and CMD... as the agent's own arguments.
`--keep-state` keeps its home directory (~/.claude, ~/.codex, ...) per workspace on the host between runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from ifc.cli.common import Usage, error, load_policy_and_agent, parse_address, read_token, token_problem
from vmm.packagecfg import PackageConfig, PackageConfigError, check_indexes, collect

EPILOG = """exit codes:
  N    the command's exit status
  2    usage error
  125  the sandbox could not start or the guest failed, or the mount daemon (the monitor, and the egress
       hook it serves) died or could not write the event log during the run: then the command's own
       status is not the run's, and the last line says which helper, why and since when
       (without QEMU, the microVM fails at once and names `--isolation namespace`)

example: ifc run --policy policies/default.flow --workspace ~/repo -- sh -c 'git status && python3 -c "print(1)"'
a real agent: ifc agent install claude-code; ifc run --preset claude-code --workspace ~/repo -- -p "fix the tests"
without QEMU (weaker, shares the host kernel): ifc run --isolation namespace --policy policies/default.flow -- sh
"""

FAILED = 125
ISOLATIONS = ("microvm", "namespace")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a command in a microVM (or namespaces), workspace and network mediated",
                       description=__doc__.split("\n\n", 1)[0].split(": ", 1)[1] + "\n\n" + __doc__.split("\n\n", 1)[1],
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", metavar="P", help="the .flow policy (required unless --preset gives one)")
    p.add_argument("--preset", metavar="NAME",
                   help="run the installed agent NAME (`ifc agent list`) with its preset policy, key and settings; "
                   "CMD... are its arguments")
    p.add_argument("--keep-state", action="store_true",
                   help="with --preset: keep the agent's home directory for this workspace between runs")
    p.add_argument("--workspace", default=".", metavar="DIR", help="the directory the agent works on (default: .)")
    p.add_argument("--run-dir", metavar="DIR", help="where the run's logs go (default: a new temporary directory)")
    p.add_argument("--agent", metavar="NAME",
                   help="whose grants apply (default: the policy's first agent; `none`: flows only)")
    exits = p.add_mutually_exclusive_group()
    exits.add_argument("--egress", action="store_true",
                       help="the guest's only way out is the egress hook, served by the run's own monitor (so a "
                       "file read in the sandbox taints what may leave); reached as 10.0.2.100:3128 in the "
                       "microVM, 127.0.0.1:3128 in the namespaces")
    exits.add_argument("--proxy", metavar="HOST:PORT",
                       help="an egress proxy already running on the host (its own monitor)")
    p.add_argument("--token", metavar="T",
                   help="the session's capability token (the token or @FILE); default: one minted for this run from "
                   "the agent's grants with a key that exists only for the run")
    p.add_argument("--key", metavar="FILE", help="with --token: the host public key that verifies it "
                   "(default: as `ifc caps`)")
    p.add_argument("--upstream-ca", metavar="FILE",
                   help="with --egress: extra roots (PEM) the hook trusts for the servers behind the tunnels it "
                   "terminates (those secrets are bound to); the system's are always trusted")
    p.add_argument("--hosts", metavar="FILE",
                   help="with --egress: `NAME ADDRESS...` lines the hook answers before the system resolver")
    p.add_argument("--isolation", choices=ISOLATIONS, default="microvm",
                   help="microvm (default) or namespace: no VM, the host's kernel shared (weaker)")
    p.add_argument("--memory", type=int, metavar="MiB", help="guest memory (default: 1024; microVM only)")
    p.add_argument("--accel", choices=("kvm", "tcg"),
                   help="skip the KVM probe and use this accelerator (microVM only)")
    p.add_argument("--boot-timeout", type=float, metavar="S",
                   help="boot watchdog in seconds (default: 60 under TCG, 20 under KVM; microVM only)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command to run isolated")


def _error(message: str, help: str | None = None, code: int = FAILED) -> int:
    return error("run", message, help, code)


def run(args: argparse.Namespace) -> int:
    from vmm.sandbox import LaunchError, RunSpec

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    preset = None
    if args.preset:
        from ifc.agents.preset import PresetError, prepare

        if args.proxy:
            return _error("--preset runs the egress hook itself (it holds the provider key): drop --proxy", code=2)
        try:
            preset = prepare(args.preset, command, args.policy, Path(os.path.realpath(args.workspace)),
                             args.keep_state)
        except PresetError as exc:
            return _error(exc.message, exc.help, code=2)
        command, args.policy, args.egress = preset.argv, str(preset.policy), True
    elif args.keep_state:
        return _error("--keep-state goes with --preset (it keeps that agent's home directory)", code=2)
    if not args.policy:
        return _error("no policy given", "ifc run --policy P -- CMD..., or ifc run --preset NAME", code=2)
    if not command:
        return _error("no command given", "ifc run --policy P -- CMD...", code=2)
    workspace = Path(os.path.realpath(args.workspace))
    if not workspace.is_dir():
        return _error(f"workspace `{args.workspace}` is not a directory", code=2)
    try:
        proxy = parse_address(args.proxy, "--proxy") if args.proxy else None
    except Usage as exc:
        return _error(exc.message, code=2)
    vm_only = [flag for flag, value in (("--memory", args.memory), ("--accel", args.accel),
                                        ("--boot-timeout", args.boot_timeout)) if value is not None]
    try:
        token = read_token(args.token) if args.token else None
    except Usage as exc:
        return _error(exc.message, exc.help, code=2)
    if token is not None and not args.run_dir:
        return _error("--token needs --run-dir: a token names its run (its audience is the run directory's name)",
                      "ifc caps mint ... --audience NAME, then ifc run --run-dir .../NAME --token @FILE", code=2)
    if args.key and not token:
        return _error("--key goes with --token (a run's own token is verified with the run's own key)", code=2)
    for flag, value in (("--upstream-ca", args.upstream_ca), ("--hosts", args.hosts)):
        if value and not args.egress:
            return _error(f"{flag} goes with --egress (the hook it configures)", code=2)
    if args.hosts:
        from ifc.cli.proxy import hosts_table

        try:
            hosts_table(args.hosts)  # a bad line fails here, not in the daemon's log
        except Usage as exc:
            return _error(f"--hosts: {exc.message}", code=2)
    upstream_ca = Path(os.path.realpath(args.upstream_ca)) if args.upstream_ca else None
    if upstream_ca is not None and not upstream_ca.is_file():
        return _error(f"--upstream-ca: `{args.upstream_ca}` is not a file", code=2)
    if args.isolation == "namespace" and vm_only:
        return _error(f"{', '.join(vm_only)}: microVM only, not with --isolation namespace", code=2)
    try:
        policy, agent = load_policy_and_agent(args.policy, args.agent)  # fail before booting anything
    except Usage as exc:
        return _error(exc.message, exc.help, code=2)
    try:
        packages, notices = _package_config(policy, agent)
    except PackageConfigError as exc:
        return _error(str(exc), "fix or move that file, or run with PIP_CONFIG_FILE=/dev/null for pip", code=2)
    run_dir = Path(os.path.realpath(args.run_dir)) if args.run_dir else Path(tempfile.mkdtemp(prefix="ifc-run-"))
    if run_dir == workspace or workspace in run_dir.parents:
        return _error("the run directory must not be inside the workspace (the agent could rewrite its log)", code=2)
    if token is not None:  # a bad token fails here, in one line, before anything starts
        problem = token_problem(token, args.key, run_dir.name)
        if problem:
            return _error(f"--token: {problem[0]}", problem[1], code=2)
    if os.geteuid() != 0:
        return _error("`ifc run` needs root: it makes namespaces and a FUSE mount", "run it with sudo")

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    spec = RunSpec(argv=command, workspace=workspace, run_dir=run_dir, policy=Path(args.policy).resolve(),
                   agent=args.agent, proxy=proxy, egress=args.egress, upstream_ca=upstream_ca, accel=args.accel,
                   token=token, key=Path(os.path.realpath(args.key)) if args.key else None,
                   boot_timeout=args.boot_timeout, packages=packages, notices=notices,
                   hosts=Path(os.path.realpath(args.hosts)) if args.hosts else None)
    if preset is not None:
        spec.layers, spec.home, spec.env, spec.aliases = preset.layers, preset.home, dict(preset.env), preset.aliases
        ids = spec.ids()
        if spec.home is not None:  # the agent's own, as its home in the sandbox is
            os.chown(spec.home, *ids)
        spec.home_files = lambda env: preset.home_files(env, *ids)  # once the hook has made the key's sentinel
    if args.memory is not None:
        spec.memory_mb = args.memory
    if args.isolation == "namespace":
        from vmm.namespace import run as launch
    else:
        from vmm.launch import run as launch
    try:
        result = launch(spec)
    except LaunchError as exc:
        return _error(exc.message, exc.help)
    except KeyboardInterrupt:
        _late_interrupts_ignored()
        _summary(run_dir)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    _late_interrupts_ignored()
    _summary(run_dir, complete=result.failure is None)
    if result.failure:  # fail closed: what the agent did after it was not decided or not logged
        return _error(result.failure)
    return result.status


def _late_interrupts_ignored() -> None:
    """The agent has ended and the terminal is cooked again: a Ctrl-C now is a late one meant for the agent (the
    second of a pair). Ignored until this process exits, so it neither cuts the summary short nor ends `ifc run`
    by SIGINT (its status would be lost) in the moment between `run` returning and the interpreter's exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _package_config(policy, agent, environ=os.environ, etc: Path = Path("/etc")) -> tuple[PackageConfig, list[str]]:
    """The host's pip and npm configuration for the sandbox (`vmm.packagecfg`), and the lines to say: what
    was left out, and each index it names that the policy would refuse (a clean run's `GET` there, as the
    monitor decides it), so a failing `pip install` in the sandbox is explained before it starts."""
    from ifc.monitor import Monitor, Request

    packages = collect(environ, secrets=policy.secrets, etc=etc)

    def allowed(url: str) -> tuple[bool, str]:
        monitor = Monitor(policy, agent=agent)  # a fresh run for each index: one index's reply taints no other
        try:
            decision = monitor.decide(Request("connect", f"GET {url}", cmdline="ifc run"))
        finally:
            monitor.close()
        return decision.allowed, decision.reason

    return packages, packages.notices() + check_indexes(packages, allowed)


def _summary(run_dir: Path, complete: bool = True) -> None:
    """One line per model the agent lost (when, and what it read); one line per denial (at most ten), with the
    guest command it was matched to; one per change to host-executed configuration, allowed or not (all of
    them); how many secret values the sandbox saw only as sentinels; and the report command.
    Not `complete`: a helper failed (the error line after this says how), so the log lacks what followed."""
    from ifc.diagnostics import display
    from ifc.report.load import ReportError, load_run
    from ifc.report.summary import cutoff_line, guest_command, hostcfg_line, shortened

    denials, hostcfg, cutoffs, sentinels = (), (), (), ()
    if (run_dir / "events.db").exists():
        try:
            loaded = load_run(run_dir)
            denials, hostcfg, cutoffs, sentinels = loaded.denials, loaded.hostcfg, loaded.cutoffs, loaded.sentinels
        except ReportError as exc:  # a log we cannot read must not hide the command's status
            print(f"ifc run: {exc.message}", file=sys.stderr)
    for cutoff in cutoffs:  # first: after this the agent could not think, whatever else it did
        print(display(f"ifc run: {cutoff_line(cutoff)}"), file=sys.stderr)
        for step in cutoff.fix_lower:
            print(display(f"  a reviewer can lower the floated label for later runs: {step}"), file=sys.stderr)
    if denials:
        print(f"ifc run: {len(denials)} denial(s):", file=sys.stderr)
        for d in denials[:10]:
            by = f"{d.subject}, guest command {guest_command(d.guest)}" if d.guest else d.subject
            if d.relayed_from:  # a namespace run's egress: the process that held the connection (exact)
                by += f", command `{shortened(d.cmdline or '', 120)}` (pid {d.pid})"
            print(display(f"  {d.op} `{d.target}` by {by}: {d.message or d.reason}"), file=sys.stderr)
        if len(denials) > 10:
            print(f"  ... and {len(denials) - 10} more", file=sys.stderr)
    else:
        print("ifc run: no denials" + ("" if complete else " logged"), file=sys.stderr)
    if hostcfg:  # every one: a tool on the host runs what these name (ifc.policy.hostcfg)
        print(f"ifc run: {len(hostcfg)} change(s) to host-executed configuration (review before running git, "
              "direnv or an editor here):", file=sys.stderr)
        for change in hostcfg:
            print(display(f"  {hostcfg_line(change)}"), file=sys.stderr)
    if sentinels:  # secret files the sandbox read with sentinels in place of their values (ifc.secretfiles)
        files = sorted({s.target for s in sentinels})
        shown = ", ".join(f"`{f}`" for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        print(display(f"ifc run: {sum(s.replaced for s in sentinels)} secret value(s) replaced by sentinels in "
                    f"{shown}"), file=sys.stderr)
    if not complete:
        print("ifc run: the log is incomplete: the run's helper failed (below)", file=sys.stderr)
    print(f"ifc run: report: ifc report {run_dir}", file=sys.stderr)
