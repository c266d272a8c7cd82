"""The CLI end to end: exit codes, compiler-style output, goldens, JSON — through `ifc.cli.main`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ifc.cli import main

GOLDEN = Path(__file__).parent / "golden" / "check"
UPDATE = os.environ.get("IFC_UPDATE_GOLDEN") == "1"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.flow")))
def test_check_golden(capsys, monkeypatch, name):
    monkeypatch.chdir(GOLDEN)
    code, out, _ = run(capsys, "check", f"{name}.flow")
    expected_file = GOLDEN / f"{name}.expected"
    got = f"exit {code}\n{out}"
    if UPDATE:
        expected_file.write_text(got)
    assert got == expected_file.read_text()


def test_three_mistakes_reported_with_locations_and_exit_2(capsys, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    code, out, _ = run(capsys, "check", "three-mistakes.flow")
    assert code == 2
    locations = [line.split(": ")[0] for line in out.splitlines() if ": error: " in line]
    assert locations == ["three-mistakes.flow:7:13", "three-mistakes.flow:10:13", "three-mistakes.flow:14:3"]
    assert "did you mean `secret`?" in out and "did you mean `connect`?" in out
    assert "Traceback" not in out


def test_shipped_policies_check_clean_but_for_reads_that_cut_the_agent_off_from_its_model(capsys):
    shipped = sorted(str(p) for p in Path("policies").glob("*.flow"))
    code, out, _ = run(capsys, "check", *shipped)
    assert code == 0, out
    assert ": error: " not in out
    warnings = [line for line in out.splitlines() if ": warning: " in line]
    assert warnings and all("after that read every call to its model" in line for line in warnings), out
    assert out.count("0 errors, ") == len(shipped)


def test_fail_on_warning(capsys, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    assert run(capsys, "check", "lints.flow")[0] == 1  # it has an error-level lint (allow-denied)
    code, _, _ = run(capsys, "check", "../../../policies/default.flow", "--fail-on", "warning")
    assert code == 1  # its model-cutoff warnings
    code, _, _ = run(capsys, "check", "../../../policies/default.flow", "--fail-on", "error")
    assert code == 0


def test_json_format(capsys, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    code, out, _ = run(capsys, "check", "three-mistakes.flow", "--format", "json")
    data = json.loads(out)
    assert code == 2
    assert [(d["line"], d["column"], d["severity"]) for d in data["diagnostics"]][:3] == [
        (7, 13, "error"), (10, 13, "error"), (14, 3, "error")]


def test_max_errors_caps_output(capsys, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    _, out, _ = run(capsys, "check", "three-mistakes.flow", "--max-errors", "1")
    assert out.count(": error: ") == 1 and "2 more not shown" in out


def test_missing_file_is_a_one_line_error(capsys):
    code, out, _ = run(capsys, "check", "no/such.flow")
    assert code == 2 and "cannot find `no/such.flow`" in out and "Traceback" not in out


def test_decide_names_rule_and_the_file_that_tainted(capsys):
    code, out, _ = run(capsys, "decide", "--policy", "policies/default.flow", "read", ".env",
                       "connect", "smtp.gmail.com:587")
    assert code == 1
    step2 = out.split("  2. ")[1]
    assert step2.startswith("DENY  connect smtp://smtp.gmail.com:587")
    assert 'deny secret -> external "secrets never leave the sandbox"' in step2
    assert "policies/default.flow:" in step2
    assert "secret from .env" in step2


def test_decide_allows_clean_sequence_and_json(capsys):
    code, out, _ = run(capsys, "decide", "--policy", "policies/default.flow", "--format", "json",
                       "read", "src/app.py", "connect", "https://api.anthropic.com")
    data = json.loads(out)
    assert code == 0 and [s["allowed"] for s in data["steps"]] == [True, True]
    assert data["steps"][1]["taint_before"] == "internal, trusted"


@pytest.mark.parametrize(("argv", "fragment"), [
    (["read"], "has no target"),
    (["fly", "x"], "unknown operation `fly`"),
])
def test_decide_usage_errors(capsys, argv, fragment):
    code, _, err = run(capsys, "decide", "--policy", "policies/default.flow", *argv)
    assert code == 2 and fragment in err


def test_decide_bad_endpoint_is_a_denial_not_a_crash(capsys):
    code, out, _ = run(capsys, "decide", "--policy", "policies/default.flow", "--agent", "none",
                       "connect", "https://[::1")
    assert code == 1 and "bad endpoint" in out


@pytest.mark.integration
def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "ifc", "check", "policies/default.flow"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("1 agent)")


def test_shipped_policies_are_canonically_formatted(capsys):
    code, out, _ = run(capsys, "fmt", "--check", *sorted(str(p) for p in Path("policies").glob("*.flow")))
    assert code == 0, out


def test_run_refuses_a_token_that_cannot_serve_the_run_in_one_line(capsys, tmp_path):
    """`ifc run --token` is checked before anything starts: no run dir to name it, no key, wrong audience."""
    import caps
    from caps.keys import write_key

    policy = str(Path(__file__).parent.parent / "policies" / "default.flow")
    host = caps.HostKey.generate()
    _, public = write_key(tmp_path / "host", host)
    token = caps.mint(host, rights=["read **"], audience="elsewhere", ttl=600)
    code, _, err = run(capsys, "run", "--policy", policy, "--token", token, "--", "true")
    assert code == 2 and "--token needs --run-dir" in err
    code, _, err = run(capsys, "run", "--policy", policy, "--token", "ifc1_AAAA", "--key", str(public),
                       "--run-dir", str(tmp_path / "r1"), "--", "true")
    assert code == 2 and "--token:" in err and "Traceback" not in err
    code, _, err = run(capsys, "run", "--policy", policy, "--token", token, "--key", str(public),
                       "--run-dir", str(tmp_path / "r2"), "--", "true")
    assert code == 2 and "not addressed to `r2`" in err and "--audience r2" in err
    code, _, err = run(capsys, "run", "--policy", policy, "--key", str(public), "--", "true")
    assert code == 2 and "--key goes with --token" in err
