"""`ifc check` and secret files: bindings that cannot mean anything are errors at their place, and `--workspace`
lists what the mount will serve with sentinels, which keys, and where each may go — never a value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ifc.check import check
from ifc.cli.render import render_text
from ifc.policy import compile_text

ROOT = Path(__file__).resolve().parent.parent
BASE = """labels { secrecy public < internal < secret }
files { "**" internal
  ".env*", "*.pem" secret }
endpoints { "https://api.stripe.com" clearance internal }
agent a { read "**" connect "https://api.stripe.com" }
"""


def diagnostics(extra: str) -> str:
    text = BASE + extra
    result = check(compile_text(text, "p.flow"))
    return render_text([d for d in result.diagnostics if d.code.startswith("secret-")], {"p.flow": text})


def test_bindings_that_cannot_mean_anything_are_errors_with_carets():
    out = diagnostics('secret A from env "X" key "Y" to "https://api.stripe.com"\n'
                      'secret B from file "id_rsa.pem" key "K" to "https://api.stripe.com"\n'
                      'secret C from file "notes/.env" to "https://api.stripe.com"\n')
    assert "p.flow:6:27: error: `key` names a value of a file, and secret `A` comes from env" in out
    assert "p.flow:7:37: error: `id_rsa.pem` is not a file whose values can be named by key" in out
    assert "p.flow:8:20: error: secret `C` is a workspace file but names no key" in out
    carets = [line for line in out.splitlines() if line.strip().startswith("|") and line.rstrip().endswith("^")]
    assert len(carets) == 3  # each with its caret line
    # a policy that compiles: the checker's stage finds the binding the sandbox would read in clear
    out = diagnostics('secret D from file "config/app.json" key "db.password" to "https://api.stripe.com"\n')
    assert ("p.flow:6:20: error: secret `D` is a value of `config/app.json`, which is labelled `internal, "
            "trusted`, not `secret`: the sandbox reads its real values") in out


def test_a_sound_binding_and_a_host_file_key_are_clean():
    assert diagnostics('secret S from file ".env" key "STRIPE_KEY" to "https://api.stripe.com"\n'
                       'secret H from file "~/.aws/credentials" key "default.aws_secret_access_key" '
                       'to "https://api.stripe.com"\n') == ""


def test_workspace_lists_what_is_served_with_sentinels(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".env").write_text("# live keys\nSTRIPE_KEY=sk_live_123\nDATABASE_URL=postgres://u:pw@db/x\n")
    (ws / ".env.broken").write_text("not a dotenv line\n")
    (ws / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    policy = tmp_path / "p.flow"
    policy.write_text(BASE + 'secret STRIPE_KEY from file ".env" key "STRIPE_KEY" to "https://api.stripe.com"\n')
    proc = subprocess.run([sys.executable, "-m", "ifc", "check", str(policy), "--workspace", str(ws), "--format",
                           "json"], capture_output=True, text=True, cwd=ROOT)
    [audit] = json.loads(proc.stdout)["workspace"]
    assert audit["sentinels"] == [
        {"path": ".env", "format": "dotenv", "problem": None, "comments": 1,
         "keys": [{"key": "STRIPE_KEY", "to": "STRIPE_KEY to https://api.stripe.com"},
                  {"key": "DATABASE_URL", "to": "nowhere"}]},
        {"path": ".env.broken", "format": "dotenv", "problem": "does not parse as dotenv: served as it is, secret",
         "comments": 0, "keys": []},
    ]
    text = subprocess.run([sys.executable, "-m", "ifc", "check", str(policy), "--workspace", str(ws)],
                          capture_output=True, text=True, cwd=ROOT).stdout
    assert "  .env (dotenv, 2 value(s), 1 comment(s))\n    STRIPE_KEY: STRIPE_KEY to https://api.stripe.com\n" in text
    assert "sk_live_123" not in text + proc.stdout and "pw@" not in text
