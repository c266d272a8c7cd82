"""`ifc agent install NAME [--version V]` and `ifc agent list`: the real coding agents `ifc run --preset NAME`
starts, each installed with its own package manager (npm, pip) into a cached, versioned layer on the host that
the sandbox sees read-only (see `ifc.agents.layer`)."""

from __future__ import annotations

import argparse

EPILOG = """agents: {names}
exit codes:
  0  installed (install) or listed (list)
  1  list: nothing is installed
  2  usage error, or the install failed (the message says why)
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ifc.agents.catalog import AGENTS

    epilog = EPILOG.format(names=", ".join(AGENTS))
    p = sub.add_parser("agent", help="install or list the coding agents `ifc run --preset` starts",
                       description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    i = asub.add_parser("install", help="install an agent into the layer cache", epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("name", metavar="NAME", help=", ".join(AGENTS))
    i.add_argument("--version", metavar="V", help="this version (default: the registry's newest)")
    i.set_defaults(func=install)
    ls = asub.add_parser("list", help="the installed agents and versions (* is the one `ifc run` uses)")
    ls.set_defaults(func=list_)


def install(args: argparse.Namespace) -> int:
    from ifc.agents import layer
    from ifc.agents.catalog import AGENTS, lookup
    from ifc.cli import ExitCode
    from ifc.cli.common import error

    kind = lookup(args.name)
    if kind is None:
        return error("agent", f"no agent named `{args.name}`", f"one of: {', '.join(AGENTS)}")
    try:
        layer.install(kind, args.version, lambda line: print(f"ifc agent: {line}", flush=True))
    except layer.AgentError as exc:
        return error("agent", exc.message, exc.help)
    return ExitCode.OK


def list_(args: argparse.Namespace) -> int:
    from ifc.agents import layer
    from ifc.cli import ExitCode

    found = layer.installed()
    if not found:
        print(f"ifc agent: nothing installed in {layer.root()}; run `ifc agent install NAME`")
        return ExitCode.FINDINGS
    for each, chosen in found:
        print(f"{'*' if chosen else ' '} {each.kind.name} {each.version} ({each.kind.package}), {each.directory}")
    return ExitCode.OK
