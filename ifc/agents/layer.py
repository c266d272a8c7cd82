"""The agent layer: each agent installed with its package manager's ordinary client into a versioned directory
on the host, shown to the sandbox read-only at `catalog.GUEST_LAYER` (a read-only virtiofs share in the microVM, a
read-only bind in the namespaces): the agent cannot change its own code, and a later run starts the same code.

Layout: ROOT/<name>/<version>/ (npm: `node_modules/`; PyPI: `venv/`, a venv over /usr/bin/python3, which the
sandbox sees through its /usr, run as `venv/bin/python -m MODULE` so the scripts' shebangs, which name the
directory it was made in, do not matter), ROOT/<name>/<version>/layer.json (what was installed, when),
ROOT/<name>/current (the version `ifc run --preset` uses). ROOT is `$IFC_AGENT_CACHE`, else
`$XDG_CACHE_HOME/ifc-sandbox/agents`, else `~/.cache/ifc-sandbox/agents`. An install goes to a temporary
directory first and is renamed into place, so a failed one leaves the current layer as it was.

Trust: installing runs the package manager on the host as the user who asked (npm runs the package's install
scripts, as `npm install` always does): it is the same trust as installing the agent outside a sandbox. The
sandbox contains what the agent *does*, not what its vendor shipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ifc.agents.catalog import AgentKind
from ifc.errors import UserError

SYSTEM_PYTHON = "/usr/bin/python3"  # the sandbox sees the host's /usr, so a venv over it runs there too


class AgentError(UserError):
    """An agent cannot be installed or found; the message says why, `help` what to do."""


@dataclass(frozen=True)
class Layer:
    kind: AgentKind
    version: str
    directory: Path  # ROOT/<name>/<version>

    def argv(self) -> list[str]:
        """The agent's command as the host sees it (the sandbox's is `kind.argv()`)."""
        return self.kind.argv(str(self.directory))


def root() -> Path:
    explicit = os.environ.get("IFC_AGENT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ifc-sandbox" / "agents"


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AgentError(f"`{argv[0]}` is not installed", "install node and npm (or python3-venv) on the host") \
            from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()] or ["no output"]
        raise AgentError(f"{what} failed: {lines[-1].strip()}")
    return proc.stdout


def _install_npm(kind: AgentKind, spec: str, into: Path) -> str:
    _run(["npm", "install", "--prefix", str(into), "--no-save", "--no-audit", "--no-fund", "--omit=dev", spec],
         f"`npm install {spec}`")
    manifest = into / "node_modules" / kind.package / "package.json"
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        raise AgentError(f"`npm install {spec}` left no {manifest.relative_to(into)}") from None


def _install_pypi(kind: AgentKind, spec: str, into: Path) -> str:
    venv = into / "venv"
    _run([SYSTEM_PYTHON, "-m", "venv", str(venv)], f"`{SYSTEM_PYTHON} -m venv`")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", spec], f"`pip install {spec}`")
    return _run([str(venv / "bin" / "python"), "-c",
                 f"import importlib.metadata as m; print(m.version({kind.package!r}))"], "reading the version").strip()


def install(kind: AgentKind, version: str | None = None, progress: Callable[[str], None] = lambda line: None) -> Layer:
    """Install `kind` (its newest version, or `version`) with npm or pip into a new layer and make it current."""
    home = root() / kind.name
    home.mkdir(parents=True, exist_ok=True)
    sep = "@" if kind.manager == "npm" else "=="
    spec = f"{kind.package}{sep}{version}" if version else kind.package
    started = time.monotonic()
    progress(f"installing {spec} with {'npm' if kind.manager == 'npm' else 'pip'}")
    tmp = Path(tempfile.mkdtemp(prefix=".installing-", dir=home))
    tmp.chmod(0o755)  # the agent runs as another user in the sandbox: it must read (never write) its layer
    try:
        installed = (_install_npm if kind.manager == "npm" else _install_pypi)(kind, spec, tmp)
        (tmp / "layer.json").write_text(json.dumps({"name": kind.name, "package": kind.package, "version": installed,
                                                    "manager": kind.manager, "installed": time.time()}, indent=2)
                                        + "\n", encoding="utf-8")
        target = home / installed
        if target.exists():  # a reinstall of the same version replaces it whole
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp_marker = home / ".current.tmp"
    tmp_marker.write_text(installed + "\n", encoding="utf-8")
    os.replace(tmp_marker, home / "current")
    progress(f"{kind.name} {installed} ready in {target} ({time.monotonic() - started:.1f}s)")
    return Layer(kind, installed, target)


def current(kind: AgentKind) -> Layer:
    """The layer `ifc run --preset` uses, without touching the network; AgentError when none is installed."""
    home = root() / kind.name
    try:
        version = (home / "current").read_text(encoding="utf-8").strip()
    except OSError:
        raise AgentError(f"`{kind.name}` is not installed", f"run `ifc agent install {kind.name}`") from None
    layer = Layer(kind, version, home / version)
    if not (layer.directory / kind.command[0]).exists():
        raise AgentError(f"the `{kind.name}` layer {version} is incomplete ({layer.directory})",
                         f"run `ifc agent install {kind.name}`")
    return layer


def installed() -> list[tuple[Layer, bool]]:
    """Every installed layer, with whether it is its agent's current one."""
    from ifc.agents.catalog import AGENTS

    out = []
    for kind in AGENTS.values():
        home = root() / kind.name
        if not home.is_dir():
            continue
        chosen = (home / "current").read_text(encoding="utf-8").strip() if (home / "current").exists() else None
        for directory in sorted(p for p in home.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out.append((Layer(kind, directory.name, directory), directory.name == chosen))
    return out
