"""Host-executed configuration: workspace files from which a tool on the host runs commands without being asked
to run the project.

The sandbox protects the host while the agent runs; these files are how a session that read untrusted input
could still reach it afterwards. The owner's next `git status` runs `core.fsmonitor` from `.git/config`, `cd`
runs `.envrc` (direnv), opening the folder runs `.vscode/tasks.json`, building a dev container runs its
`initializeCommand` on the host. None of that is the owner choosing to run the agent's code, so every shipped
policy makes these files `writes require trusted`; a write refused by that requirement carries this list's message
for its kind unless a `deny` rule gives the policy's own (`ifc.policy.flows.check_write`); `ifc check` warns when an
agent that can read untrusted data may write one (`host-config-write`); and the monitor logs every change to one,
allowed or not (event kind `hostcfg`), for `ifc run`'s summary and `ifc report`.

Not in the list, on purpose: project files the owner runs *deliberately* — `Makefile`, `justfile`,
`Taskfile.yml`, `package.json` scripts, `pyproject.toml`/`setup.py` build hooks, `conftest.py`, `.venv/bin`.
Running `make` or `pytest` on the host is running the project's code, which the owner reviews like any other
change the agent made; refusing those writes would stop the agent from doing its job (docs/threat-model.md).

This module is the one list: the monitor, the lint and the tests that hold the shipped policies to it read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from ifc.match import Glob, PatternError, normalise_path


@dataclass(frozen=True)
class HostConfig:
    """One kind of host-executed configuration: its globs, written as a policy writes them, and the message a
    refused change carries (who runs it on the host, and when) when the policy gives none of its own."""

    what: str
    globs: tuple[str, ...]
    message: str
    excepts: tuple[str, ...] = ()
    secret: bool = False  # the files also hold credentials: policies label them `secret` (and `ifc init` does)

    @cached_property
    def compiled(self) -> tuple[tuple[Glob, ...], tuple[Glob, ...]]:
        return tuple(map(Glob.compile, self.globs)), tuple(map(Glob.compile, self.excepts))

    def matches(self, path: str) -> bool:
        globs, excepts = self.compiled
        return any(g.matches(path) for g in globs) and not any(g.matches(path) for g in excepts)


HOST_CONFIG: tuple[HostConfig, ...] = (
    # The entry itself, not what is beneath it: renaming a prepared directory (or a `gitdir:` file) onto a
    # `.git` name brings its own config and hooks, and no rule on `.git/config` sees a rename of `.git`.
    HostConfig("git repository", (".git",),
               "untrusted input must not create, move or remove a repository: a `.git` put in place by the sandbox "
               "brings its own config and hooks, which git on the host then runs", excepts=("**/.git/*",)),
    HostConfig("git configuration",
               ("**/.git/config", "**/.git/config.worktree", "**/.git/commondir", "**/.git/info/",
                "**/.git/modules/", "**/.git/worktrees/"),
               "untrusted input must not change git's configuration: every git command on the host reads it "
               "(core.fsmonitor runs on `git status`; core.hooksPath, core.sshCommand, core.pager, aliases, filters, "
               "credential helpers)"),
    HostConfig("git hooks", ("**/.git/hooks/",),
               "untrusted input must not install git hooks: git on the host runs them on commit, checkout, merge "
               "and push"),
    HostConfig("git attributes and submodules", (".gitattributes", ".gitmodules", ".lfsconfig"),
               "untrusted input must not change git attributes, submodules or LFS settings: git on the host picks "
               "filter, diff and merge drivers and submodule URLs from them, and git-lfs sends the project's large "
               "files to the server `.lfsconfig` names on push"),
    HostConfig("commit hook managers", (".husky/", ".pre-commit-config.yaml", "lefthook*", ".lefthook*"),
               "untrusted input must not change commit hooks: the owner's `git commit` runs what husky, pre-commit "
               "and lefthook list"),
    HostConfig("direnv", (".envrc",),
               "untrusted input must not change `.envrc`: the owner's shell runs it on `cd` into its directory "
               "(direnv)"),
    # Not executed as such, but read and acted on by the host's tools with the owner's authority. A session that
    # read untrusted input and sees a file's real values (one served as it is: content that does not parse, a
    # directory renamed out of a pattern) could otherwise move a key to `NEXT_PUBLIC_*`, which a build publishes.
    HostConfig("environment and credential files", (".env*", ".netrc", ".npmrc", ".pypirc"),
               "untrusted input must not change environment or credential files: shells `source` `.env`, docker "
               "compose and builds read it (a `NEXT_PUBLIC_`/`VITE_` value is published in the bundle), npm runs "
               "the commands `.npmrc` names (`script-shell`, `node-options`), and twine, curl and git send the "
               "owner's passwords where `.pypirc` and `.netrc` say", excepts=(".env.example",), secret=True),
    HostConfig("editor and IDE settings", (".vscode/", "*.code-workspace", ".idea/"),
               "untrusted input must not change editor settings: the editor on the host runs their tasks when the "
               "folder opens and starts the interpreters, shells and tools they name"),
    HostConfig("coding agent settings", ("/.claude/settings.json", "/.claude/settings.local.json", ".mcp.json",
                                         "/.gemini/settings.json", ".cursor/", "/.aider.conf.yml"),
               "untrusted input must not change the coding agent's settings: the hooks and MCP servers they name run "
               "as commands when the owner starts the agent on the host (Claude Code, Gemini CLI, Cursor), and "
               "aider runs the lint and test commands its `.aider.conf.yml` names"),
    HostConfig("dev containers", (".devcontainer/", ".devcontainer.json"),
               "untrusted input must not change the dev container: its `initializeCommand` runs on the host"),
)


@dataclass(frozen=True)
class Touch:
    """A workspace path an operation changes, and which kind of host-executed configuration it is."""

    path: str
    kind: HostConfig


@lru_cache(maxsize=16384)
def kind_of(path: str) -> HostConfig | None:
    """The host-executed configuration `path` (a normalised workspace path) is, or None. Memoised: the monitor asks
    on every write-like decision, repeats included, and the union regex costs 3 µs a first-seen path."""
    if _ANY.match(path) is None:  # one regex for the common answer, "no"
        return None
    return next((k for k in HOST_CONFIG if k.matches(path)), None)


CHANGES = frozenset({"write", "create", "delete", "chmod", "rename", "link"})


def touched(op: str, target: str, dest: str | None = None) -> list[Touch]:
    """The host-executed configuration a workspace operation changes: both names of a rename (moving a hook away
    changes it too), the new name of a link. A path that does not normalise changes nothing (the monitor
    refuses it)."""
    if op not in CHANGES:
        return []
    names = [target, dest] if op == "rename" else [dest] if op == "link" else [target]
    out = []
    for name in names:
        try:
            path = normalise_path(name) if isinstance(name, str) else None
        except PatternError:
            continue
        kind = kind_of(path) if path else None
        if kind is not None:
            out.append(Touch(path, kind))
    return out


_ANY = re.compile("|".join(f"(?:{g.regex})" for k in HOST_CONFIG for g in k.compiled[0]), re.DOTALL)
