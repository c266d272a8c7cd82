"""`ifc init`: a starter policy for a repository that `ifc check --workspace` passes cleanly and under which a real
`ifc run` of normal work (edit, test, commit) has no denials — on generated python, node and mixed repositories
with secrets, package configuration and git remotes — while the agent cannot touch the policy itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
GH_TOKEN = "ghp_" + "Zq8Lm2Xv7Rt4Wp9Ks3Jd6Hf1Nb5Cg0Ya8Ue2"  # token-shaped, for the audit to find

PYTHON = {
    "pyproject.toml": '[project]\nname = "widget"\nversion = "0.1"\n',
    "src/widget/__init__.py": "def add(a, b):\n    return a + b\n",
    "tests/test_widget.py": ("import unittest\n\nfrom widget import add\n\n\nclass T(unittest.TestCase):\n"
                             "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"),
    ".gitignore": ".venv/\n__pycache__/\n.env\n",
    ".env": "DATABASE_URL=postgres://app:Xk29fLq7Vb@db.internal/app\n",
    "README.md": "# widget\n",
}
NODE = {
    "package.json": json.dumps({"name": "web", "version": "1.0.0", "scripts": {"test": "node --test"}}) + "\n",
    "index.js": "exports.add = (a, b) => a + b;\n",
    "test/add.test.js": ("const test = require('node:test');\nconst assert = require('node:assert');\n"
                         "const { add } = require('../index.js');\n"
                         "test('add', () => assert.strictEqual(add(2, 3), 5));\n"),
    ".npmrc": "registry=https://npm.acme.example/\n//npm.acme.example/:_authToken=npm_Q8v2Lx9Tz4Rk7Wm3Pd6Hs1\n",
    ".gitignore": "node_modules/\n",
}
MIXED = {**PYTHON, **NODE, ".gitignore": ".venv/\n__pycache__/\n.env\nnode_modules/\n",
         "requirements.txt": "--extra-index-url https://pkgs.acme.example/simple\nrequests\n",
         "config/settings.py": f'GITHUB_TOKEN = "{GH_TOKEN}"\n'}
REPOS = {  # kind → (files, remote, the hosts the policy must name)
    "python": (PYTHON, "https://github.com/acme/widget.git", ["https://github.com", "https://pypi.org"]),
    "node": (NODE, "git@gitlab.com:acme/web.git", ["https://gitlab.com", "https://registry.npmjs.org",
                                                   "https://npm.acme.example"]),
    "mixed": (MIXED, "ssh://git@git.acme.example:2222/acme/mixed.git",
              ["https://git.acme.example", "https://pypi.org", "https://registry.npmjs.org",
               "https://pkgs.acme.example", "https://npm.acme.example", "https://pypi.corp.example:8443"]),
}


def make_repo(where: Path, files: dict[str, str], remote: str) -> Path:
    repo = where / "repo"
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git = ["git", "-c", "safe.directory=*", "-C", str(repo)]
    env = {**os.environ, **GIT_ENV}
    subprocess.run([*git, "init", "-q"], check=True, env=env)
    subprocess.run([*git, "remote", "add", "origin", remote], check=True, env=env)
    subprocess.run([*git, "add", "-A"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "init"], check=True, env=env)
    return repo


def host_env(where: Path) -> dict[str, str]:
    """The host user's environment, with a pip configuration that names a private index of its own."""
    home = where / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text("[global]\nextra-index-url = https://pypi.corp.example:8443/s\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "NPM_CONFIG_", "npm_config_"))}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def ifc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ifc", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=300)


@pytest.mark.parametrize("kind", sorted(REPOS))
def test_init_writes_a_policy_that_checks_cleanly_on_the_workspace(tmp_path, kind):
    files, remote, hosts = REPOS[kind]
    repo = make_repo(tmp_path, files, remote)
    env = host_env(tmp_path)
    proc = ifc("init", str(repo), env=env)
    assert proc.returncode == 0, proc.stderr
    policy = repo / ".ifc" / "policy.flow"
    check = ifc("check", str(policy), "--workspace", str(repo), "--fail-on", "warning", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{policy}: 0 errors, 0 warnings" in check.stdout, check.stdout
    text = policy.read_text()
    endpoints = text.split("endpoints {", 1)[1].split("}", 1)[0]
    for host in hosts:
        assert f'"{host}"' in endpoints, (host, endpoints)
    if kind == "mixed":  # the token in config/settings.py is no name the secret globs know: the audit found it
        assert '"/config/settings.py"  secret' in text
    # environment and credential files are secret and host configuration (served with sentinels, so npm reading
    # `.npmrc` on every command does not make the run secret)
    assert '".env*", ".netrc", ".npmrc", ".pypirc"  secret except ".env.example" writes require trusted' in text
    labels = ifc("check", str(policy), "--workspace", str(repo), "--list", env=env).stdout
    secret = {line.split()[-1] for line in labels.splitlines() if line.strip().startswith("secret")}
    assert {".env", ".npmrc", "config/settings.py"} & set(files) <= secret, labels


def test_init_never_replaces_a_policy_without_force_nor_writes_where_the_agent_may(tmp_path):
    repo = make_repo(tmp_path, PYTHON, "https://github.com/acme/widget.git")
    env = host_env(tmp_path)
    assert ifc("init", str(repo), env=env).returncode == 0
    policy = repo / ".ifc" / "policy.flow"
    policy.write_text("# the owner's edits\n")
    again = ifc("init", str(repo), env=env)
    assert again.returncode == 2 and again.stderr.startswith(f"ifc init: error: `{policy}` exists")
    assert "--force" in again.stderr and policy.read_text() == "# the owner's edits\n"
    forced = ifc("init", "--force", str(repo), env=env)
    assert forced.returncode == 0 and "agent coder" in policy.read_text()
    inside = ifc("init", "--output", str(repo / "policy.flow"), str(repo), env=env)
    assert inside.returncode == 2 and "where the agent may write its own policy" in inside.stderr
    assert not (repo / "policy.flow").exists()
    elsewhere = tmp_path / "policies" / "widget.flow"
    assert ifc("init", "--output", str(elsewhere), "--preset", "node", str(repo), env=env).returncode == 0
    assert '"https://registry.npmjs.org"' in elsewhere.read_text()
    assert '"https://pypi.org"' not in elsewhere.read_text()  # the preset given, not the one found
    (repo / ".npmrc").write_text("registry=https://npm.acme.example/\n")  # no token: the audit does not list it
    assert ifc("init", "--force", str(repo), env=env).returncode == 0
    assert '"/.npmrc"' not in policy.read_text() and '"https://npm.acme.example"' in policy.read_text()


# --------------------------------------------------------------------------------- under a real `ifc run`

def _namespace_skip() -> str | None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return "ifc run needs root and /dev/fuse"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--net", "--user", "--fork", "true"], capture_output=True)
    return "cannot create namespaces" if probe.returncode else None


WORK = {  # normal work per kind: edit, run the tests, commit
    "python": ("python3 -m venv --without-pip .venv && "
               "sed -i 's/return a + b/return b + a/' src/widget/__init__.py && "
               "PYTHONPATH=src .venv/bin/python -m unittest discover -s tests -q 2>/tmp/unittest.log && "
               "echo python-tests-ok"),
    "node": ("sed -i 's/a + b/b + a/' index.js && npm_config_update_notifier=false npm test --silent >/dev/null && "
             "echo node-tests-ok"),
}
WORK["mixed"] = WORK["python"] + " && " + WORK["node"]
COMMIT = (" && git add -A && git -c user.name=agent -c user.email=a@a commit -qm 'agent: edit' && "
          "git --no-pager log --format=%s -1")


@pytest.mark.integration
@pytest.mark.skipif(_namespace_skip() is not None, reason=str(_namespace_skip()))
@pytest.mark.parametrize("kind", sorted(REPOS))
def test_normal_work_under_the_starter_policy_has_no_denials_and_the_policy_is_out_of_reach(tmp_path, kind):
    normal_work(tmp_path, kind, "namespace", {})


def normal_work(tmp_path: Path, kind: str, isolation: str, extra_env: dict[str, str]) -> None:
    """`ifc init`, then under `ifc run --isolation ISOLATION --egress`: normal work (venv, edit, tests, commit)
    has no denials; tampering with the policy is refused by the monitor, each attempt logged. tests/test_vm.py
    runs it in the microVM."""
    files, remote, _ = REPOS[kind]
    repo = make_repo(tmp_path, files, remote)
    subprocess.run(["chown", "-R", "1000:1000", str(repo)], check=True)
    env = {**host_env(tmp_path), **extra_env}
    assert ifc("init", str(repo), env=env).returncode == 0
    policy = repo / ".ifc" / "policy.flow"
    subprocess.run(["chown", "-R", "1000:1000", str(repo / ".ifc")], check=True)  # only the policy stops it
    before = policy.read_text()
    run = ["run", "--isolation", isolation, "--egress", "--policy", str(policy), "--workspace", str(repo)]
    work = ifc(*run, "--run-dir", str(tmp_path / "run1"), "--", "sh", "-c", WORK[kind] + COMMIT, env=env)
    assert work.returncode == 0, work.stdout + work.stderr
    ran = {"python": ["python-tests-ok"], "node": ["node-tests-ok"], "mixed": ["python-tests-ok", "node-tests-ok"]}
    assert work.stdout.split() == [*ran[kind], "agent:", "edit"], work.stdout
    assert "ifc run: no denials" in work.stderr, work.stderr
    assert "refused by the policy" not in work.stderr  # the host's private index is in the starter's endpoints
    tamper = ("{ echo 'agent x { read \"**\" }' >> .ifc/policy.flow; } 2>/dev/null; echo append=$?; "
              "mv .ifc .old 2>/dev/null; echo move=$?; rm -f .ifc/policy.flow 2>/dev/null; echo remove=$?; "
              "mkdir -p x && echo 'x' > x/policy.flow && mv x/policy.flow .ifc/ 2>/dev/null; echo replace=$?")
    proc = ifc(*run, "--run-dir", str(tmp_path / "run2"), "--", "sh", "-c", tamper, env=env)
    assert [line.split("=")[0] + ("=failed" if line[-2:] != "=0" else "=0") for line in proc.stdout.split()] == [
        "append=failed", "move=failed", "remove=failed", "replace=failed"], proc.stdout + proc.stderr
    assert "ifc run: 4 denial(s):" in proc.stderr, proc.stderr  # each refused by the monitor, and logged
    assert policy.read_text() == before
