"""Shared by every test: the user's state directory (where workspaces keep their floated labels) is a
temporary one, so tests neither read labels left by real runs nor leave theirs behind; the microVM tests'
guest image (`image_env`); and the real agents, installed once per session (`claude_code`, `codex`, `gemini`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# The modules that boot microVMs or start real agents: under pytest-xdist (`make test` runs two workers) they
# share one worker, so two TCG guests never compete for the two cores and each agent is installed once.
SERIAL_MODULES = ("test_vm", "test_agent")


def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup`, a module's tests stay together on one worker (module fixtures such as a live
    mount or an installed agent are built once), and the heavy modules stay together on one."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        group = "microvm-and-agents" if module.startswith(SERIAL_MODULES) else item.nodeid.partition("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory):
    os.environ["IFC_STATE_DIR"] = str(tmp_path_factory.mktemp("ifc-state"))
    yield
    os.environ.pop("IFC_STATE_DIR", None)


@pytest.fixture(scope="module")
def image_env(tmp_path_factory):
    """A built guest image: the user's cache if it is current, else one built into a temporary cache."""
    from vmm import image

    # always named: a test that gives the run another HOME must still find the image (vmm.image looks under
    # $XDG_CACHE_HOME, else ~/.cache)
    env = {**os.environ, "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME")
           or os.path.join(os.path.expanduser("~"), ".cache")}
    try:
        image.current()
    except image.ImageError:
        cache = tmp_path_factory.mktemp("cache")
        env["XDG_CACHE_HOME"] = str(cache)
        proc = subprocess.run([sys.executable, "-m", "ifc", "vm", "build"], env=env, capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode != 0:
            pytest.skip(f"cannot build the guest image: {proc.stderr.strip()[-200:]}")
    return env


@pytest.fixture(scope="session")
def agent_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("agents")


@pytest.fixture(scope="session")
def claude_code(agent_cache) -> Path:
    from agent_support import install

    install(agent_cache, "claude-code")
    return agent_cache


@pytest.fixture(scope="session")
def codex(agent_cache) -> Path:
    from agent_support import install

    install(agent_cache, "codex")
    return agent_cache


@pytest.fixture(scope="session")
def gemini(agent_cache) -> Path:
    from agent_support import install

    install(agent_cache, "gemini")
    return agent_cache
