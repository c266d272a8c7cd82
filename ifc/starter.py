"""`ifc init`: a starter policy for one repository, from what the repository and the host say about it.

What it looks at (read-only; nothing in the repository is run — git's remotes are read with `git config --file`,
which reads that one file and runs nothing from it):

* **the kind of project** (`PRESETS`: python, node; found from `pyproject.toml`, `package.json`, ... unless
  `--preset` names it): its package hosts, and its build and cache directories (`.venv`, `node_modules`,
  `.pytest_cache`, `__pycache__`, `build`, `dist`, ...) the agent must be able to create and remove;
* **the forge hosts** its git remotes name (https, ssh and scp-like URLs; GitHub brings its API and raw hosts);
* **the package hosts** the package configuration names: the repository's own (`.npmrc` registries,
  `--index-url` lines in `requirements*.txt`) and the host user's (`vmm.packagecfg`, what `ifc run` carries
  into the sandbox), so `ifc run` does not report them refused;
* **its top-level directories**, which the agent may write, with `.git`'s internals (so it can commit; the
  host-executed parts of `.git` and the rest of `ifc.policy.hostcfg` stay `writes require trusted`);
* **the workspace audit** (`ifc.check.workspace`): every file that looks secret and is not labelled so is
  added by exact path as `secret`, so `ifc check --workspace` passes cleanly.

The policy is data (`render` returns text), checked with the same stages as `ifc check` before it is written.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ifc.lang.lower import encode_string
from ifc.policy.hostcfg import HOST_CONFIG

DEFAULT_OUTPUT = Path(".ifc") / "policy.flow"  # inside the repository; the agent gets no grant under `.ifc/`


@dataclass(frozen=True)
class Preset:
    """A kind of project: how to recognise it, where its packages come from, what its tools write."""

    name: str
    markers: tuple[str, ...]  # root names (globs) that say the repository is this kind
    package_hosts: tuple[str, ...]
    writes: tuple[str, ...]  # build and cache directories its tools make (grant globs)
    execs: tuple[str, ...]  # where its tools put programs the agent runs from the workspace


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("python", ("pyproject.toml", "setup.py", "setup.cfg", "requirements*.txt", "Pipfile", "tox.ini"),
           ("https://pypi.org", "https://files.pythonhosted.org"),
           ("/.venv/", "/venv/", "__pycache__/", "/.pytest_cache/", "/pytest-cache-files-*", "/build/", "/dist/",
            "*.egg-info/", "/.tox/", "/.nox/", "/.mypy_cache/", "/.ruff_cache/", "/htmlcov/", "/.coverage*"),
           (".venv/bin/**", "venv/bin/**")),
    Preset("node", ("package.json",), ("https://registry.npmjs.org",),
           ("/node_modules/", "/dist/", "/build/", "/coverage/", "/.nyc_output/", "/.next/", "/.cache/",
            "/.eslintcache"),
           ("node_modules/.bin/**",)),
)}
# `.env*`, `.netrc`, `.npmrc` and `.pypirc` are host configuration as well as secrets: the host-config loop below
# writes them `secret ... writes require trusted` (ifc/policy/hostcfg.py); a project `.npmrc` is served with
# sentinels, so npm reading it on every command does not make the run secret
SECRET_GLOBS = '"*.pem", "*.key", "id_rsa*", "id_ed25519*", "secrets/", "**/credentials*"  secret except "*.pub"'
# every root entry but `.ifc`, where `ifc init` writes the policy: no grant lets the agent create, rename,
# remove or write into it (grants have no `except`, so the name is excluded one character at a time)
ROOT_ENTRIES = ("/[!.]*", "/.[!i]*", "/.i[!f]*", "/.if[!c]*", "/.ifc?*")
# forges whose web, API and raw-content hosts differ
FORGE_HOSTS = {"github.com": ("https://github.com", "https://*.github.com", "https://*.githubusercontent.com")}
_GLOB_META = re.compile(r"([*?\[\]\\])")
_SCP_LIKE = re.compile(r"^(?:[^@/\s]+@)?([A-Za-z0-9.-]+):(?!//)")


class StarterError(Exception):
    """Something `ifc init` cannot survey; the message says what."""


@dataclass
class Survey:
    """What `ifc init` found, each list in the order found, without repeats."""

    root: Path
    presets: list[str] = field(default_factory=list)
    forges: list[str] = field(default_factory=list)  # endpoint patterns
    packages: list[str] = field(default_factory=list)  # endpoint patterns
    dirs: list[str] = field(default_factory=list)  # top-level directories (not .git, not .ifc)
    secrets: list[str] = field(default_factory=list)  # exact globs the workspace audit flagged


def survey(root: Path, presets: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> Survey:
    """Look at the repository at `root` (and, for package hosts, the host's configuration in `environ`)."""
    found = Survey(root)
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise StarterError(f"cannot list `{root}`: {(exc.strerror or str(exc)).lower()}") from None
    chosen = list(presets) or [p.name for p in PRESETS.values()
                               if any(Path(n).match(m) for n in names for m in p.markers)]
    found.presets = list(dict.fromkeys(chosen))
    found.dirs = [n for n in names if n not in (".git", ".ifc") and (root / n).is_dir()
                  and not (root / n).is_symlink()]
    for host in _remote_hosts(root):
        found.forges += [p for p in FORGE_HOSTS.get(host, (f"https://{host}",)) if p not in found.forges]
    packages = [h for name in found.presets for h in PRESETS[name].package_hosts]
    packages += _repo_indexes(root, names)
    if environ is not None:
        from vmm.packagecfg import PackageConfigError, collect

        try:
            packages += [origin(i.url) for i in collect(environ).indexes]
        except PackageConfigError as exc:
            raise StarterError(str(exc)) from None
    found.packages = [p for p in dict.fromkeys(packages) if p and p not in found.forges]
    return found


def origin(url: str) -> str:
    """`scheme://host[:port]` of an http(s) URL, the default port left out; "" for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    try:
        port = parts.port
    except ValueError:
        return ""
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _remote_hosts(root: Path) -> list[str]:
    """The hosts of the repository's remotes (`remote.*.url` and `pushurl`), from `.git/config` alone."""
    config = root / ".git" / "config"
    if not config.is_file():
        return []
    proc = subprocess.run(["git", "config", "--file", str(config), "--get-regexp", r"^remote\..*\.(push)?url$"],
                          capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                               "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"})
    hosts = []
    for line in proc.stdout.splitlines():
        url = line.split(None, 1)[1] if " " in line else ""
        parts = urlsplit(url)
        host = parts.hostname if parts.scheme in ("https", "http", "ssh", "git") else None
        if host is None and (scp := _SCP_LIKE.match(url)):
            host = scp.group(1)
        if host and host.lower() not in hosts:
            hosts.append(host.lower())
    return hosts


def _repo_indexes(root: Path, names: list[str]) -> list[str]:
    """Package indexes the repository's own configuration names: `.npmrc` registries, `--index-url` and
    `--extra-index-url` (`-i`) lines in root `requirements*.txt`."""
    out = []
    if ".npmrc" in names:
        for line in _lines(root / ".npmrc"):
            key, _, value = line.partition("=")
            if key.strip().endswith("registry"):
                out.append(origin(value))
    for name in names:
        if Path(name).match("requirements*.txt"):
            for line in _lines(root / name):
                words = line.replace("=", " ").split()
                if len(words) >= 2 and words[0] in ("-i", "--index-url", "--extra-index-url"):
                    out.append(origin(words[1]))
    return out


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


# ------------------------------------------------------------------------------------------ the text

def _quoted(globs: Iterable[str]) -> str:
    return ", ".join(g if g.startswith('"') else encode_string(g) for g in globs)


def render(found: Survey) -> str:
    """The starter policy's text for what `survey` found."""
    kinds = ", ".join(found.presets) or "no known kind"
    lines = [
        f"# A starter policy for {found.root.name} ({kinds}), written by `ifc init`. Review it, then",
        "#   ifc check THIS_FILE --workspace REPO   and   ifc run --policy THIS_FILE --workspace REPO --egress -- CMD",
        "# The agent reads the repository, writes its code, build and cache directories and `.git` (so it can",
        "# commit), and reaches the forge and package hosts below; secrets never leave, and after untrusted input",
        "# (a fetch, a package) it cannot change what tools on the host run (ifc/policy/hostcfg.py).",
        "# A model provider is not listed: add its endpoint, its key as a `secret`, and a `connect` grant.",
        "# No grant reaches `.ifc/`, where this policy lives: the agent cannot rewrite its own policy.",
        "",
        "labels {",
        "  secrecy public < internal < secret",
        "  integrity untrusted < trusted",
        "}",
        "",
        "files {  # the last matching rule wins: most secret last",
        '  "**"  internal',
        '  "/README*", "/LICENSE*", "docs/**"  public',
        "  # host-executed configuration: tools on the host run commands from these (ifc/policy/hostcfg.py)",
    ]
    for kind in sorted(HOST_CONFIG, key=lambda k: k.secret):  # secret kinds last: the last matching rule wins
        excepts = f" except {_quoted(kind.excepts)}" if kind.excepts else ""
        label = "secret" if kind.secret else "internal"
        lines.append(f"  {_quoted(kind.globs)}  {label}{excepts} writes require trusted  # {kind.what}")
    lines.append(f"  {SECRET_GLOBS}")
    if found.secrets:
        lines.append("  # found by the workspace audit (ifc check --workspace): they look like secrets")
        lines.append(f"  {_quoted(found.secrets)}  secret")
    lines += ["}", "", "endpoints {"]
    if found.forges:
        lines.append(f"  {_quoted(found.forges)}  clearance internal returns untrusted as forge, external")
    if found.packages:
        lines.append(f"  {_quoted(found.packages)}  clearance internal returns untrusted as packages, external")
    lines += ["}", "", "agent coder {", '  read "**"',
              "  # every root entry but `.ifc`, `.git` and the top-level directories there were when `ifc init` ran",
              "  # (add new ones here), and the build and cache directories of the project's tools"]
    writes = [*ROOT_ENTRIES, "/.git/", *("/" + _GLOB_META.sub(r"\\\1", d) + "/" for d in found.dirs)]
    for name in found.presets:
        writes += PRESETS[name].writes
    writes = list(dict.fromkeys(writes))
    execs = list(dict.fromkeys(["scripts/**", *(e for n in found.presets for e in PRESETS[n].execs)]))
    for op in ("write", "create", "delete"):
        lines.append(f"  {op} {_quoted(writes)}")
    lines.append(f"  exec {_quoted(execs)}")
    if found.forges or found.packages:
        lines.append(f"  connect {_quoted([*found.forges, *found.packages])}")
    lines += ["}", "", 'deny secret -> external "secrets never leave the sandbox"', ""]
    return "\n".join(lines)



@dataclass(frozen=True)
class Starter:
    survey: Survey
    text: str


def build(root: Path, presets: Iterable[str], environ: Mapping[str, str] | None, output: Path) -> Starter:
    """Survey, render, and add what the workspace audit flags; the policy must then check cleanly (no errors,
    no warnings, an audit with no findings), else `StarterError` says why (a bug: nothing is written)."""
    from ifc.check import check
    from ifc.check.workspace import audit_workspace
    from ifc.diagnostics import Severity
    from ifc.policy.compile import compile_text

    found = survey(root, presets, environ)
    for attempt in range(2):
        text = render(found)
        result = compile_text(text, filename=str(output))
        problems = [d for d in check(result).diagnostics if d.severity >= Severity.WARNING]
        if result.policy is None or problems:
            raise StarterError(f"the starter policy does not check cleanly: {problems[0].message if problems else '?'}")
        audit = audit_workspace(result.policy, root)
        if not audit.suspects:
            return Starter(found, text)
        if attempt:
            raise StarterError(f"the workspace audit still flags {audit.suspects[0]}")
        found.secrets = list(audit.suspects)
    raise AssertionError("unreachable")
