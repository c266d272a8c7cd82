"""`ifc run --preset NAME`: what running an installed agent adds to a plain `ifc run` — its layer (read-only),
its preset policy, the egress hook holding its provider key, its settings, and with `--keep-state` its home
directory kept per workspace on the host."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ifc.agents import layer as layers
from ifc.agents.catalog import AGENTS, GUEST_LAYER, SANE_ENV, lookup
from ifc.errors import UserError
from ifc.monitor.workspace_store import state_dir, workspace_id
from ifc.policy import shipped_policy
from vmm.sandbox import Share


class PresetError(UserError):
    """`--preset` cannot be honoured; the message says why, `help` what to do."""


@dataclass(frozen=True)
class Preset:
    argv: list[str]  # as the sandbox runs it
    policy: Path
    layers: tuple[Share, ...]
    env: dict[str, str]
    aliases: dict[str, str]
    home: Path | None  # the kept home directory on the host (`--keep-state`), else None: a fresh one per run


def kept_home(workspace: Path, agent: str) -> Path:
    """Where `--keep-state` keeps `agent`'s home for `workspace`: beside the workspace's labels, outside it and
    never shown to the sandbox except as that agent's home."""
    return state_dir() / "workspaces" / workspace_id(workspace) / "agents" / agent / "home"


def prepare(name: str, args: list[str], policy: str | None, workspace: Path, keep_state: bool) -> Preset:
    kind = lookup(name)
    if kind is None:
        raise PresetError(f"no agent named `{name}`", f"one of: {', '.join(AGENTS)}")
    try:
        installed = layers.current(kind)
    except layers.AgentError as exc:
        raise PresetError(exc.message, exc.help) from None
    chosen = Path(policy) if policy else shipped_policy(kind.name)
    if not chosen.is_file():
        raise PresetError(f"no policy `{chosen}` for `{name}`", "give one with --policy")
    if not os.environ.get(kind.key):
        raise PresetError(f"`{kind.key}` is not set: the egress hook holds {name}'s provider key (the agent sees a "
                          "sentinel)", f"export {kind.key}=... before `ifc run` (it never enters the sandbox)")
    home = None
    if keep_state:
        home = kept_home(workspace, kind.name)
        home.mkdir(parents=True, exist_ok=True)
        home.parent.chmod(0o700)
    return Preset(argv=[*kind.argv(), *args], policy=chosen.resolve(),
                  layers=(Share(installed.directory, GUEST_LAYER),), env={**SANE_ENV, **kind.env},
                  aliases=dict(kind.aliases), home=home)
