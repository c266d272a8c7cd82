"""`ifc caps ...` end to end, through the real `ifc` entry point (and once through a subprocess)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from caps_testkit import NOW

import caps
from ifc.cli import main

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policies" / "default.flow"
LATER = str(NOW + 30)


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["caps", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    for line in err.splitlines():
        assert line.startswith(("ifc caps: error: ", "  help: ")), line
    return code, out, err


@pytest.fixture
def key(tmp_path, capsys):
    path = tmp_path / "host.key"
    code, out, _ = run(capsys, "keygen", "--out", str(path))
    assert code == 0 and "mode 0600" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path


def mint_policy(capsys, key, tmp_path, *extra) -> Path:
    out_file = tmp_path / "t0"
    code, out, _ = run(
        capsys,
        "mint",
        "--key",
        str(key),
        "--policy",
        str(POLICY),
        "--grant",
        "coder",
        "--audience",
        "run-42",
        "--ttl",
        "1h",
        "--now",
        str(NOW),
        "--out",
        str(out_file),
        *extra,
    )
    assert code == 0 and out == ""
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    return out_file


def test_done_when_scenario(capsys, key, tmp_path, monkeypatch):
    """Minted from default.flow's agent grant, attenuated twice by the holder, verified for an allowed
    request; a widened, expired, revoked, tampered or misaddressed request fails with the right reason."""
    t0 = mint_policy(capsys, key, tmp_path)
    code, t1, _ = run(capsys, "attenuate", f"@{t0}", "--read", "src/**", "--ttl", "10m", "--now", str(NOW))
    assert code == 0
    code, t2, _ = run(
        capsys, "attenuate", "-", "--read", "src/*.py", "--now", str(NOW), stdin=t1, monkeypatch=monkeypatch
    )
    assert code == 0
    t2 = t2.strip()
    pub = str(key) + ".pub"
    base = ("verify", t2, "--key", pub, "--audience", "run-42", "--now", LATER)

    code, out, _ = run(capsys, *base, "--op", "read", "--target", "src/a.py")
    assert code == 0 and out.startswith("ok: ") and "allows read `src/a.py`" in out

    def rejected(*argv, reason, token=t2):
        args = list(base)
        args[1] = token
        code, _, err = run(capsys, *args, *argv)
        assert code == 1, err
        assert err.startswith(f"ifc caps: error: {reason}: "), err
        return err

    rejected("--op", "write", "--target", "src/a.py", reason="not_allowed")  # widened: parent allows it
    rejected("--op", "read", "--target", "src/sub/a.py", reason="not_allowed")
    rejected("--op", "read", "--target", "src/../.env", reason="not_allowed")
    rejected("--now", str(NOW + 601), reason="expired")
    code, _, err = run(capsys, "verify", t2, "--key", pub, "--audience", "run-43", "--now", LATER)
    assert code == 1 and err.startswith("ifc caps: error: wrong_audience: ")
    tampered = t2[:40] + ("A" if t2[40] != "A" else "B") + t2[41:]
    code, _, err = run(capsys, "verify", tampered, "--key", pub, "--audience", "run-42", "--now", LATER)
    assert code == 1 and any(r in err for r in ("bad_signature", "malformed"))

    revoked = tmp_path / "revoked.json"
    code, out, _ = run(capsys, "revoke", t1.strip(), "--list", str(revoked))
    assert code == 0 and "epoch 1" in out
    rejected("--revocations", str(revoked), reason="revoked")
    # The parent of the revoked token is untouched.
    code, _, _ = run(
        capsys,
        "verify",
        f"@{t0}",
        "--key",
        pub,
        "--audience",
        "run-42",
        "--now",
        LATER,
        "--revocations",
        str(revoked),
        "--op",
        "write",
        "--target",
        "src/a.py",
    )
    assert code == 0

    # The same from Python.
    v = caps.Verifier([caps.load_public_key(pub)], audience="run-42", revocations=caps.RevocationList.load(revoked))
    assert v.authorize(t0.read_text().strip(), "read", "README.md", now=NOW + 30).allowed
    assert v.authorize(t2, "read", "src/a.py", now=NOW + 30).reason is caps.Reason.REVOKED


def test_policy_delegation_applies_to_derived_tokens(capsys, key, tmp_path):
    t0 = mint_policy(capsys, key, tmp_path)
    token = t0.read_text().strip()
    v = caps.Verifier([caps.load_public_key(key)], audience="run-42")
    assert v.authorize(token, "write", "src/a.py", now=NOW).allowed
    derived = caps.attenuate(token, ttl=60, now=NOW)  # restricts nothing but time...
    assert not v.authorize(derived, "write", "src/a.py", now=NOW).allowed  # ...yet delegation bounds it
    assert v.authorize(derived, "read", "tests/t.py", now=NOW).allowed
    assert v.authorize(derived, "connect", "https://pypi.org", now=NOW).allowed


def test_inspect_text_and_json(capsys, key, tmp_path):
    t0 = mint_policy(capsys, key, tmp_path)
    code, t1, _ = run(capsys, "attenuate", f"@{t0}", "--read", "src/**", "--now", str(NOW), "--seal")
    code, out, _ = run(capsys, "inspect", t1.strip(), "--now", str(NOW))
    assert code == 0
    assert "2 blocks, sealed" in out and "signatures not checked" in out
    assert "allows only read `src/**`" in out and "derived tokens may read `src/**`" in out
    code, out, _ = run(capsys, "inspect", t1.strip(), "--format", "json")
    body = json.loads(out)
    assert body["sealed"] is True and body["verified"] is False and len(body["blocks"]) == 2
    assert body["blocks"][1]["rights"] == [{"op": "read", "pattern": "src/**"}]
    code, _, err = run(capsys, "attenuate", t1.strip(), "--ttl", "1m")
    assert code == 2 and "sealed: token is sealed" in err


def test_explicit_rights_and_json_verify(capsys, key):
    code, token, _ = run(
        capsys,
        "mint",
        "--key",
        str(key),
        "--read",
        "docs/**",
        "--connect",
        "https://pypi.org",
        "--declassify",
        "pii to https://crm.example.com",
        "--audience",
        "r1",
        "--ttl",
        "5m",
        "--now",
        str(NOW),
    )
    assert code == 0
    common = (
        "verify",
        token.strip(),
        "--key",
        str(key),
        "--audience",
        "r1",
        "--now",
        LATER,
        "--format",
        "json",
    )
    code, out, _ = run(capsys, *common, "--op", "declassify", "--tag", "pii", "--target", "https://crm.example.com")
    assert code == 0 and json.loads(out)["allowed"] is True
    code, out, _ = run(capsys, *common, "--op", "connect", "--target", "https://evil.example.com")
    assert code == 1 and json.loads(out)["reason"] == "not_allowed"
    code, out, _ = run(capsys, *common[:-4], "--now", str(NOW + 301), "--format", "json")
    assert code == 1 and json.loads(out) == {
        "valid": False,
        "allowed": False,
        "reason": "expired",
        "message": json.loads(out)["message"],
    }


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["mint", "--read", "x", "--ttl", "1h"], "needs an audience"),
        (["mint", "--read", "x", "--audience", "r"], "needs an expiry"),
        (["mint", "--audience", "r", "--ttl", "1h"], "needs rights"),
        (["mint", "--read", "x", "--audience", "r", "--ttl", "soon"], "is not a duration"),
        (["mint", "--read", "a[", "--audience", "r", "--ttl", "1h"], "bad glob"),
        (["mint", "--grant", "coder", "--audience", "r", "--ttl", "1h"], "needs `--policy"),
        (
            ["mint", "--policy", str(POLICY), "--grant", "codr", "--audience", "r", "--ttl", "1h"],
            "no agent `codr`",
        ),
        (
            [
                "mint",
                "--policy",
                str(POLICY),
                "--grant",
                "coder",
                "--read",
                "x",
                "--audience",
                "r",
                "--ttl",
                "1h",
            ],
            "not both",
        ),
        (
            ["mint", "--policy", "/nonexistent.flow", "--grant", "coder", "--audience", "r", "--ttl", "1h"],
            "policy",
        ),
        (["attenuate", "@/nonexistent/token", "--ttl", "1m"], "cannot read token file"),
        (["attenuate", "ifc1_AAAA", "--ttl", "1m"], "malformed"),
        (["verify", "x", "--audience", "r", "--op", "read"], "go together"),
        (["revoke", "--list", "x.json"], "nothing to revoke"),
        (["revoke", "--list", "x.json", "--id", "nothex"], "not a revocation id"),
    ],
)
def test_usage_errors(capsys, key, argv, fragment, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "mint":
        argv = [*argv, "--key", str(key)]
    if argv[0] == "verify":
        argv = [*argv, "--key", str(key)]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert fragment in err


def test_broken_policy_is_a_clear_error(capsys, key, tmp_path):
    bad = tmp_path / "bad.flow"
    bad.write_text("agent coder { read }\n")
    code, _, err = run(
        capsys,
        "mint",
        "--key",
        str(key),
        "--policy",
        str(bad),
        "--grant",
        "coder",
        "--audience",
        "r",
        "--ttl",
        "1h",
    )
    assert code == 2 and "does not compile" in err and "ifc check" in err


def test_key_permission_errors(capsys, key):
    key.chmod(0o644)
    code, _, err = run(capsys, "mint", "--key", str(key), "--read", "x", "--audience", "r", "--ttl", "1h")
    assert code == 2 and "group or others" in err and "chmod 600" in err
    code, _, err = run(capsys, "keygen", "--out", str(key))
    assert code == 2 and "already exists" in err


def test_default_key_from_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("IFC_CAPS_KEY", str(tmp_path / "env.key"))
    assert run(capsys, "keygen")[0] == 0
    code, token, _ = run(capsys, "mint", "--read", "x", "--audience", "r", "--ttl", "1h")
    assert code == 0
    code, out, _ = run(capsys, "verify", token.strip(), "--audience", "r")
    assert code == 0 and out.startswith("ok: ")


def test_no_subcommand_prints_help(capsys):
    code = main(["caps"])
    assert code == 2
    assert "keygen" in capsys.readouterr().err


@pytest.mark.integration
def test_subprocess_reads_token_from_stdin(tmp_path):
    env = {**os.environ, "IFC_CAPS_KEY": str(tmp_path / "host.key")}
    cli = [sys.executable, "-m", "ifc.cli", "caps"]
    subprocess.run([*cli, "keygen"], check=True, env=env, capture_output=True)
    token = subprocess.run(
        [*cli, "mint", "--read", "src/**", "--audience", "r", "--ttl", "1h"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    ok = subprocess.run(
        [*cli, "verify", "-", "--audience", "r", "--op", "read", "--target", "src/a.py"],
        input=token,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [*cli, "verify", "-", "--audience", "r"],
        input="ifc1_garbage!",
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("ifc caps: error: malformed: ")
    assert "Traceback" not in bad.stderr
