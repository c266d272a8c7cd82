"""`ifc run --preset NAME`: what running an installed agent adds to a plain `ifc run` — its layer (read-only),
its preset policy, the egress hook holding its provider key, its settings, and with `--keep-state` its home
directory kept per workspace on the host."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ifc.agents import layer as layers
from ifc.agents.catalog import AGENTS, GUEST_LAYER, SANE_ENV, AgentKind, lookup
from ifc.enforce.secrets import SENTINEL_PREFIX
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
    kind: AgentKind  # its settings: keys set in home files before the run (`AgentKind.settings`, `key_settings`)

    def settings_for(self, env: dict[str, str]) -> dict[str, dict]:
        """The settings for a run whose agent has environment `env`: the kind's `settings`, plus those its key's
        sentinel makes (`AgentKind.key_settings`). Only a sentinel is ever written into its home: a value that is
        not one (cannot happen: the sandbox is given only sentinels) makes none."""
        sentinel = env.get(self.kind.key, "")
        made = self.kind.key_settings(sentinel) if self.kind.key_settings and \
            sentinel.startswith(SENTINEL_PREFIX) else {}
        fixed = self.kind.settings
        return {name: {**fixed.get(name, {}), **made.get(name, {})} for name in {**fixed, **made}}

    def home_files(self, env: dict[str, str], uid: int, gid: int) -> dict[str, bytes]:
        """Called once the agent's environment is known (the hook has made its sentinels): a kept home gets the
        settings merged in on the host (`merge_settings`, as `uid`:`gid`) and nothing is returned; a fresh one's
        files are returned, each holding just those keys, for the sandbox's init to write."""
        settings = self.settings_for(env)
        if self.home is not None:
            merge_settings(self.home, settings, uid, gid)
            return {}
        return {name: (json.dumps(keys, indent=2) + "\n").encode() for name, keys in settings.items()}


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
                  aliases=dict(kind.aliases), home=home, kind=kind)


SETTINGS_MAX = 16 << 20  # a settings file larger than this is not the agent's config: it is left alone


def merge_settings(home: Path, settings: dict[str, dict], uid: int, gid: int) -> None:
    """Set `settings`' keys in the kept home's JSON files, as the agent's own (`uid`:`gid`); keys the agent wrote
    stay. The home was the sandbox's: a file that is not a regular file (a symlink, a fifo), that does not parse
    as a JSON object, or that is over SETTINGS_MAX is left as it is (the agent then asks what the keys would have
    answered); the file is replaced through a new one made in the home (O_EXCL, O_NOFOLLOW), never written
    through a name the sandbox chose."""
    for name, keys in settings.items():
        path = home / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            current: dict = {}
        except OSError:
            continue
        else:
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > SETTINGS_MAX:
                    continue
                try:
                    current = json.loads(f.read(SETTINGS_MAX + 1))
                except ValueError:
                    continue
            if not isinstance(current, dict):
                continue
        if all(current.get(k) == v for k, v in keys.items()):
            continue
        tmp = home / f".{name}.ifc-tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchown(out.fileno(), uid, gid)
            out.write((json.dumps({**current, **keys}, indent=2) + "\n").encode())
        os.replace(tmp, path)
