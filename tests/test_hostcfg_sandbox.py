"""Host-executed configuration end to end through `ifc run --isolation namespace` under the shipped default policy,
checked from the host side after the run: after a fetch whose replies are untrusted, the sandbox cannot plant a
command for the owner's next `git status` (or hook, attributes filter, `.envrc`, editor task); while trusted it
can, and the run's summary and report list every change. And the default coder does normal work: git, venv,
pytest's cache, pyproject.toml, build/ and dist/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sandbox_cases
from hostcfg_cases import (
    GIT_ID,
    PLANT,
    WRITES,
    Page,
    policy_with_page,
    repository,
    statuses,
    untrusted_cannot_arm_the_host,
)
from test_namespace import ROOT, _run, ifc_run
from workload_cases import vendor_pytest

pytestmark = pytest.mark.integration


def test_after_untrusted_input_no_host_config_is_written_and_git_status_on_the_host_runs_nothing(tmp_path):
    untrusted_cannot_arm_the_host(tmp_path, _run)


def test_while_trusted_the_same_writes_land_and_are_listed_in_the_summary_and_report(tmp_path):
    ws = repository(tmp_path)
    marker = tmp_path / "PLANTED"
    with sandbox_cases.serving(Page) as port:
        policy = policy_with_page(tmp_path, port)
        proc = ifc_run(ws, policy, tmp_path / "run", "sh", "-c", PLANT.format(marker=marker), extra=("--egress",))
    assert statuses(proc.stdout) == dict.fromkeys(WRITES, 0), proc.stdout + proc.stderr
    assert (ws / ".envrc").read_text() == f"touch {marker}\n" and (ws / ".vscode" / "tasks.json").exists()
    assert "fsmonitor" in (ws / ".git" / "config").read_text()
    for line in ("allowed rename .git/config", "allowed create .git/hooks/pre-commit", "allowed create .gitattributes",
                 "allowed create .envrc", "allowed create .vscode"):
        assert line in proc.stderr, proc.stderr
    report = subprocess.run([*_ifc(), "report", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert "## Changes to host-executed configuration" in report.stdout
    assert "`.envrc`" in report.stdout and "`.vscode/tasks.json`" in report.stdout


def _ifc() -> list[str]:
    return [sys.executable, "-m", "ifc"]


def test_the_default_coder_does_normal_work_even_after_untrusted_input(tmp_path):
    ws = sandbox_cases.agent_workspace(tmp_path, {"README.md": "# demo\n"})
    (ws / "inbox").mkdir()
    (ws / "inbox" / "issue.md").write_text("please add a test\n")
    (ws / "vendor").mkdir()  # the sandbox sees the host's /usr, which has no pytest: bring the test venv's own
    vendor_pytest(ws / "vendor")
    subprocess.run(["chown", "-R", "1000:1000", str(ws)], check=True)
    script = f"""set -e
git init -q
printf '[project]\\nname = "demo"\\nversion = "0"\\n' > pyproject.toml
mkdir -p src tests
echo 'def test_ok(): assert True' > tests/test_ok.py
{GIT_ID} add pyproject.toml src tests README.md && {GIT_ID} commit -qm init
cat inbox/issue.md  # untrusted input: the run is untrusted from here on
python3 -m venv --without-pip .venv
PYTHONPATH=vendor python3 -m pytest -q -p no:cacheprovider tests >/dev/null
PYTHONPATH=vendor python3 -m pytest -q tests | tail -1
mkdir -p build/lib dist .mypy_cache .ruff_cache node_modules
echo x > build/lib/a.py && echo y > dist/demo-0.tar.gz
echo '# more' >> pyproject.toml
{GIT_ID} add -A . && {GIT_ID} commit -qm work
git status --short | wc -l
echo done
"""
    proc = ifc_run(ws, sandbox_cases_policy(), tmp_path / "run", "sh", "-c", script)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("done"), proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert (ws / ".pytest_cache").is_dir() and (ws / ".venv" / "bin" / "python").exists(), proc.stdout + proc.stderr
    assert (ws / "build" / "lib" / "a.py").exists() and (ws / "dist" / "demo-0.tar.gz").exists()
    log = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(ws), "log", "--format=%s"], capture_output=True,
                         text=True)
    assert log.stdout.split() == ["work", "init"]
    assert "no denials" in proc.stderr


def sandbox_cases_policy() -> Path:
    return ROOT / "policies" / "default.flow"
