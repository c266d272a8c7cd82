"""What several subcommands share: printing a one-line error, and loading a policy with its agent."""

from __future__ import annotations

import sys

from ifc.errors import UserError


class Usage(UserError):
    """A command line the user must change: bad arguments, unreadable inputs, a policy that does not compile."""


def error(prog: str, message: str, help: str | None = None, code: int = 2) -> int:
    print(f"ifc {prog}: error: {message}", file=sys.stderr)
    if help:
        print(f"  help: {help}", file=sys.stderr)
    return code


def load_policy_and_agent(path: str, agent_name: str | None):
    """The compiled policy and the agent whose grants apply: `agent_name`, or the policy's first agent when
    None, or no agent (flows only) for `none`. Raises `Usage` with a one-line reason."""
    from ifc.policy import PolicyError, load_policy

    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise Usage(f"`{path}` does not compile: {exc.diagnostics[0].message}", f"run `ifc check {path}`") from None
    except OSError as exc:
        raise Usage(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    if agent_name == "none":
        return policy, None
    if agent_name is None:
        return policy, (policy.agents_[0] if policy.agents_ else None)
    agent = policy.agents.get(agent_name)
    if agent is None:
        raise Usage(f"no agent `{agent_name}` in {path}", "agents: " + (", ".join(policy.agents) or "none"))
    return policy, agent
