"""`ifc check --workspace`: labelling a tree, and flagging secrets the policy leaves unlabelled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ifc.check import workspace
from ifc.check.workspace import NAME_RULES, SECRET_PATTERNS, WorkspaceAudit, audit_workspace, scan_content
from ifc.diagnostics import Severity
from ifc.policy import compile_text, load_policy, shipped_policy

AWS_KEY = "AKIAQ3EGRZ4T7JX2M5WV"
GH_TOKEN = "ghp_" + "Zx8Kq2Lm4Np6Rs8Tv0Wy2Ab4Cd6Ef8Gh0Ij2"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7s1y\n-----END RSA PRIVATE KEY-----\n"

INLINE = """
labels {
  secrecy public < internal < secret
}
files {
  "**"      internal
  "*.pem"   secret except "certs/*.pem"
}
"""


# Shaped like the shipped default, but fixed here so that these tests do not move when it changes.
POLICY = """
labels {
  secrecy public < internal < secret
  secrecy customer
  integrity untrusted < trusted
  label pii = internal + customer
}
files {
  "**"                         internal
  "README*", "docs/**"         public
  ".env*", "*.pem", "*.key", "id_rsa*", "**/credentials*" secret except ".env.example", "*.pub"
  "data/customers/**"          pii
  "inbox/**"                   internal + untrusted
}
"""


def inline(text: str):
    result = compile_text(text)
    assert result.policy is not None, result.diagnostics
    return result.policy


@pytest.fixture(scope="module")
def policy():
    return inline(POLICY)


@pytest.fixture(scope="module")
def default_policy():
    return load_policy(shipped_policy())


def write(root: Path, rel: str, body: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    return path


def by_file(audit: WorkspaceAudit) -> dict[str, list]:
    out: dict[str, list] = {}
    for d in audit.diagnostics:
        out.setdefault(d.span.file, []).append(d)
    return out


def everything_said(audit: WorkspaceAudit) -> str:
    """Every string the audit would let a renderer print."""
    parts = [repr(audit.counts), repr(audit.files), repr(audit.skipped)]
    for d in audit.diagnostics:
        parts += [d.message, d.help or "", str(d.span), *(r.message for r in d.related)]
    return "\n".join(parts)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    write(root, ".env", f"AWS_ACCESS_KEY_ID={AWS_KEY}\n")
    write(root, ".env.example", "DATABASE_URL=postgres://user:password@localhost/app\nSTRIPE_API_KEY=\n")
    write(root, "README.md", "# demo\n")
    write(root, "docs/usage.md", "run it\n")
    write(root, "src/app.py", "def main():\n    return 1\n")
    write(root, "config/settings.py", f'# settings\nREGION = "eu-west-1"\nAWS_ACCESS_KEY_ID = "{AWS_KEY}"\n')
    write(root, "config/prod.env", "DEBUG=0\n")
    write(root, "deploy/server.key", PEM)
    write(root, "data/customers/accounts.csv", "id,name\n1,ada\n")
    write(root, "data/customers/.env", "X=1\n")
    write(root, "inbox/issue-42.md", "please run curl | sh\n")
    write(root, ".git/config", f"[credential]\n  token = {GH_TOKEN}\n")
    write(root, ".git/objects/ab/cdef", b"\x78\x9c" + GH_TOKEN.encode())
    outside = tmp_path / "outside"
    write(outside, "id_rsa", PEM)
    write(outside, "notes.txt", f"{GH_TOKEN}\n")
    (root / "leak").symlink_to(outside / "id_rsa")
    (root / "vendor").symlink_to(outside, target_is_directory=True)
    (root / "src" / "alias.py").symlink_to(root / "src" / "app.py")
    return root


# ------------------------------------------------------------------------------------- labelling


def test_counts_and_total_label_every_file_like_the_policy(tree: Path, policy):
    audit = audit_workspace(policy, tree, want_files=True)
    files = dict(audit.files)
    assert files[".env"] == "secret, trusted"
    assert files[".env.example"] == "internal, trusted"
    assert files["README.md"] == "public, trusted"
    assert files["data/customers/accounts.csv"] == "internal + customer, trusted"
    assert files["inbox/issue-42.md"] == "internal, untrusted"
    assert files["deploy/server.key"] == "secret, trusted"
    # every file, .git contents and symlinks included, is labelled exactly as the policy does
    for rel, text in audit.files:
        assert text == policy.lattice.describe(policy.file_label(rel).label)
    assert audit.total == len(audit.files) == 16
    assert sum(n for _, n in audit.counts) == audit.total
    counts = dict(audit.counts)
    assert counts["secret, trusted"] == 2  # .env, deploy/server.key (`leak` is labelled by its own name)
    assert [n for _, n in audit.counts] == sorted((n for _, n in audit.counts), reverse=True)


def test_files_listed_only_on_request_and_sorted(tree: Path, policy):
    assert audit_workspace(policy, tree).files == ()
    listed = audit_workspace(policy, tree, want_files=True).files
    assert [rel for rel, _ in listed] == sorted(rel for rel, _ in listed)
    assert "vendor" in dict(listed) and not any(rel.startswith("vendor/") for rel, _ in listed)


def test_counts_sorted_by_count_then_label(tmp_path: Path):
    policy = inline('labels {\n  secrecy public < internal < secret\n}\nfiles {\n  "a/**" internal\n'
                    '  "b/**" secret\n}\n')
    for rel in ("a/1", "a/2", "b/1", "b/2", "c/1", "c/2", "c/3"):
        write(tmp_path, rel, "x\n")
    audit = audit_workspace(policy, tmp_path)
    assert audit.counts == (("public, trusted", 3), ("internal, trusted", 2), ("secret, trusted", 2))


# --------------------------------------------------------------------------------------- findings


def test_flags_secret_looking_files_that_are_not_labelled_secret(tree: Path, policy):
    audit = audit_workspace(policy, tree)
    found = by_file(audit)
    assert set(found) == {str(tree / "config/settings.py"), str(tree / "config/prod.env"),
                          str(tree / "data/customers/.env")}
    assert all(d.code == "unlabelled-secret" and d.severity is Severity.WARNING for d in audit.diagnostics)

    (aws,) = found[str(tree / "config/settings.py")]
    assert aws.message == ("`config/settings.py` looks like a secret (an AWS access key id `AKIA…`) "
                           "but is labelled `internal`")
    assert (aws.span.line, aws.span.column) == (3, 22)
    assert aws.span.end_column == 22 + len(AWS_KEY)
    assert aws.help == 'label it: add `"config/settings.py"` to the `secret` rule in `files { }`'
    assert [r.span.line for r in aws.related] == [9, 11]  # the rule that labels it, the secret rule

    (env,) = found[str(tree / "config/prod.env")]
    assert "an environment file" in env.message and (env.span.line, env.span.column) == (1, 1)


def test_not_flagged_when_labelled_secret_example_git_or_outside(tree: Path, policy):
    flagged = set(by_file(audit_workspace(policy, tree)))
    for rel in (".env", ".env.example", "deploy/server.key", ".git/config", ".git/objects/ab/cdef", "leak",
                "vendor", "src/alias.py"):
        assert str(tree / rel) not in flagged, rel


def test_never_prints_the_secret(tree: Path, policy):
    audit = audit_workspace(policy, tree, want_files=True)
    said = everything_said(audit)
    assert AWS_KEY not in said and AWS_KEY[:5] not in said
    assert GH_TOKEN[:5] not in said
    assert "MIIE" not in said


def test_help_when_a_later_rule_would_override(tree: Path, policy):
    (d,) = by_file(audit_workspace(policy, tree))[str(tree / "data/customers/.env")]
    assert "is labelled `internal + customer`" in d.message
    assert d.help == ('label it: add `"data/customers/.env" secret` at the end of `files { }`: the later '
                      '`pii` rule would override an earlier `secret` rule')


def test_help_when_an_except_takes_it_out(tmp_path: Path):
    write(tmp_path, "certs/server.pem", PEM)
    write(tmp_path, "tls/server.pem", PEM)
    audit = audit_workspace(inline(INLINE), tmp_path)
    (d,) = audit.diagnostics
    assert d.span.file == str(tmp_path / "certs/server.pem")
    assert d.message.startswith("`certs/server.pem` looks like a secret (a PEM file)")
    assert d.help == ("label it: remove the `except` that takes `certs/server.pem` out of the `secret` rule "
                      "in `files { }`")


def test_no_rule_and_no_secret_rule(tmp_path: Path):
    policy = inline('labels {\n  secrecy public < internal < secret\n}\nfiles {\n  "src/**" internal\n}\n')
    write(tmp_path, "keys/id_ed25519", PEM)
    (d,) = audit_workspace(policy, tmp_path).diagnostics
    assert d.message == ("`keys/id_ed25519` looks like a secret (an SSH private key) but no file rule "
                         "labels it (it is `public`)")
    assert d.help == 'label it: add `"keys/id_ed25519" secret` to `files { }`'
    assert d.related == ()


def test_without_a_chain_any_secrecy_tag_counts(tmp_path: Path):
    policy = inline('labels {\n  secrecy customer\n}\nfiles {\n  "crm/**" customer\n}\n')
    write(tmp_path, "crm/.env", "X=1\n")
    write(tmp_path, "app/.env", "X=1\n")
    (d,) = audit_workspace(policy, tmp_path).diagnostics
    assert d.span.file == str(tmp_path / "app/.env")
    assert d.help == 'label it: add `"app/.env"` to the `customer` rule in `files { }`'


def test_following_the_help_fixes_the_finding(tmp_path: Path):
    base = 'labels {\n  secrecy public < internal < secret\n}\nfiles {\n  "**" internal\n%s}\n'
    write(tmp_path, "config/settings.py", f'k = "{AWS_KEY}"\n')
    write(tmp_path, "odd/we[ird]*name?.pem", "x\n")
    write(tmp_path, "odd/back\\slash.env", "x\n")
    with open(os.path.join(os.fsencode(tmp_path), b"odd", b"bad\xff.key"), "w") as f:
        f.write("x\n")
    findings = audit_workspace(inline(base % ""), tmp_path).diagnostics
    assert len(findings) == 4
    added = ""
    for d in findings:
        literal = d.help.split("`")[1]
        assert literal.startswith('"') and literal.endswith(('"', '" secret'))
        added += f"  {literal.removesuffix(' secret')} secret\n"
    assert audit_workspace(inline(base % added), tmp_path).diagnostics == ()


def test_names_that_are_secrets(tmp_path: Path):
    policy = inline('labels {\n  secrecy public < internal < secret\n}\nfiles {\n  "**" internal\n}\n')
    flagged = [".env", ".env.local", "prod.env", "a.pem", "b.key", "c.p12", "d.PFX", "id_rsa", "id_ecdsa",
               ".netrc", ".pypirc", ".aws/credentials", "vault.kdbx", ".git-credentials", ".kube/config",
               "ci.kubeconfig"]
    quiet = [".env.example", ".env.sample", ".env.template", "id_rsa.pub", "credentials", "config", ".npmrc",
             "package.json"]
    for rel in flagged + quiet:
        write(tmp_path, rel, "nothing to see\n")
    write(tmp_path, "npm/.npmrc", "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=abc\n")
    write(tmp_path, "gcp/sa.json", '{\n  "type": "service_account",\n  "private_key": "k"\n}\n')
    found = {d.span.file: d for d in audit_workspace(policy, tmp_path).diagnostics}
    assert set(found) == {str(tmp_path / rel) for rel in [*flagged, "npm/.npmrc", "gcp/sa.json"]}
    assert found[str(tmp_path / "npm/.npmrc")].span.line == 2
    assert "an npm auth token" in found[str(tmp_path / "npm/.npmrc")].message
    assert "a Google service-account key" in found[str(tmp_path / "gcp/sa.json")].message


def test_binary_large_and_special_files_are_not_read(tmp_path: Path):
    policy = inline(INLINE)
    write(tmp_path, "blob.bin", b"\x00\x01" + AWS_KEY.encode())
    write(tmp_path, "big.txt", b"x" * workspace.SIZE_LIMIT + AWS_KEY.encode())
    write(tmp_path, "late.txt", b"y" * workspace.READ_LIMIT + AWS_KEY.encode())
    write(tmp_path, "small.txt", AWS_KEY)
    os.mkfifo(tmp_path / "pipe")  # opening it for reading without O_NONBLOCK would hang the audit
    audit = audit_workspace(policy, tmp_path)
    assert [d.span.file for d in audit.diagnostics] == [str(tmp_path / "small.txt")]
    assert audit.total == 5


# ------------------------------------------------------------------------------------------ the walk


def test_symlinks_are_not_followed_and_escapes_are_recorded(tree: Path, policy):
    audit = audit_workspace(policy, tree, want_files=True)
    skipped = dict(audit.skipped)
    assert skipped["leak"] == skipped["vendor"] == "symlink points outside the workspace, not followed"
    assert "src/alias.py" not in skipped  # inside the tree: labelled, not followed, not an escape
    assert not any("notes.txt" in rel for rel, _ in audit.files)


def test_unreadable_directory_is_skipped_not_raised(tree: Path, policy, monkeypatch):
    real = os.scandir
    blocked = str(tree / "config")

    def scandir(path):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real(path)

    monkeypatch.setattr(workspace.os, "scandir", scandir)
    audit = audit_workspace(policy, tree)
    assert ("config", "cannot list: permission denied") in audit.skipped
    assert str(tree / "config/settings.py") not in by_file(audit)


def test_unreadable_file_is_skipped_not_raised(tree: Path, policy, monkeypatch):
    real = os.open

    def fake_open(path, flags, *args):
        if os.fspath(path).endswith("settings.py"):
            raise PermissionError(13, "Permission denied", path)
        return real(path, flags, *args)

    monkeypatch.setattr(workspace.os, "open", fake_open)
    audit = audit_workspace(policy, tree, want_files=True)
    assert ("config/settings.py", "cannot read: permission denied") in audit.skipped
    assert dict(audit.files)["config/settings.py"] == "internal, trusted"  # still labelled


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 directory anyway; the monkeypatched "
                                              "scandir test covers the error path")
def test_chmod_000_directory(tree: Path, policy):
    locked = tree / "config"
    locked.chmod(0)
    try:
        audit = audit_workspace(policy, tree)
    finally:
        locked.chmod(0o755)
    assert ("config", "cannot list: permission denied") in audit.skipped


def test_missing_root_is_skipped(tmp_path: Path, policy):
    audit = audit_workspace(policy, tmp_path / "nope")
    assert audit.total == 0 and audit.counts == () and audit.diagnostics == ()
    assert audit.skipped == ((".", "cannot list: no such file or directory"),)


def test_undecodable_and_control_character_names(tmp_path: Path):
    policy = inline(INLINE)
    os.makedirs(os.path.join(os.fsencode(tmp_path), b"d"), exist_ok=True)
    with open(os.path.join(os.fsencode(tmp_path), b"d", b"bad\xff.env"), "w") as f:
        f.write("x\n")
    write(tmp_path, "line\nbreak.env", "x\n")
    audit = audit_workspace(policy, tmp_path, want_files=True)
    assert audit.total == 2
    messages = [d.message for d in audit.diagnostics]
    assert len(messages) == 2
    assert all("\n" not in m for m in messages)
    json.dumps([m.encode("utf-8").decode() for m in messages])  # printable, encodable text


def test_relative_root_gives_relative_spans(tree: Path, policy, monkeypatch):
    monkeypatch.chdir(tree.parent)
    audit = audit_workspace(policy, Path("ws"))
    assert "ws/config/settings.py" in {d.span.file for d in audit.diagnostics}
    monkeypatch.chdir(tree)
    audit = audit_workspace(policy, Path("."))
    assert "config/settings.py" in {d.span.file for d in audit.diagnostics}


def test_shipped_default_policy(tree: Path, default_policy):
    audit = audit_workspace(default_policy, tree, want_files=True)
    for rel, text in audit.files:
        assert text == default_policy.lattice.describe(default_policy.file_label(rel).label)
    flagged = {d.span.file for d in audit.diagnostics}
    assert str(tree / "config/settings.py") in flagged and str(tree / ".env") not in flagged


def test_shipped_example_workspace(default_policy):
    root = Path(__file__).resolve().parent.parent / "examples" / "webapp"
    if not root.is_dir():
        pytest.skip("examples/webapp is not in this checkout")
    audit = audit_workspace(default_policy, root)
    assert [Path(d.span.file).name for d in audit.diagnostics] == ["settings.py"]


# ---------------------------------------------------------------------------------- the patterns


POSITIVE = {
    "private-key": "-----BEGIN OPENSSH PRIVATE KEY-----",
    "aws-access-key-id": f"key: {AWS_KEY}",
    "github-token": f"token {GH_TOKEN}",
    "github-pat": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "slack-token": "SLACK=xoxb-2048-1234567890-aBcDeFgH",
    "anthropic-key": "ANTHROPIC_API_KEY=sk-ant-api03-Ab1Cd2Ef3Gh4Ij5Kl6Mn7",
    "openai-key": "OPENAI=sk-proj-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8",
    "google-api-key": "maps: AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "stripe-key": "stripe = sk_live_51Hc2bE3fG4hI5jK",
    "jwt": "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
    "url-password": "DATABASE_URL=postgres://app:hunter2@db.internal/app",
    "credential-assignment": 'client_secret = "q8Hf3Lk2Pz9Wm4Rt7Yb1"',
    "credential-field": "apiKey: Zt4Rw9Qp2Lx7Mn3Vb8Kc",
}

NEGATIVE = [
    "postgres://user:password@localhost/app",
    'tokenizer = "bert-base-uncased-v2x"',
    'cache_key = "Zt4Rw9Qp2Lx7Mn3Vb8Kc"',
    'api_key = "your-api-key-goes-here-0"',
    'password = "aaaaaaaaaaaaaaaaaaaa"',
    "task-manager-for-the-whole-team-2024",
    "xAKIAQ3EGRZ4T7JX2M5WV",
    "AKIAQ3EGRZ4T7JX2M5WVX",
    "-----BEGIN CERTIFICATE-----",
    "nightly_live_update_for_customers",
]


@pytest.mark.parametrize("name", [p.name for p in SECRET_PATTERNS])
def test_every_pattern_has_a_positive_example(name):
    what = next(p.what for p in SECRET_PATTERNS if p.name == name)
    hit = scan_content(("# a comment\n" + POSITIVE[name] + "\n").encode())
    assert hit is not None and hit.what == what and hit.line == 2


@pytest.mark.parametrize("text", NEGATIVE)
def test_look_alikes_are_not_flagged(text):
    assert scan_content(text.encode()) is None


def test_specific_kinds_win_then_the_earliest_and_generic_ones_point_at_the_value():
    text = f'x = 1\napi_token = "q8Hf3Lk2Pz9Wm4Rt7Yb1"\nk = "{GH_TOKEN}"\nj = "{AWS_KEY}"\n'
    hit = scan_content(text.encode())
    assert (hit.what, hit.line, hit.column, hit.preview) == ("a GitHub token", 3, 6, "ghp_…")
    hit = scan_content(b'x = 1\napi_token = "q8Hf3Lk2Pz9Wm4Rt7Yb1"\n')
    assert hit.what == "a hard-coded credential" and (hit.line, hit.column, hit.end_column) == (2, 14, 34)
    assert hit.preview is None
    hit = scan_content(f"é = '{AWS_KEY}'".encode())  # columns count characters, not bytes
    assert (hit.column, hit.preview) == (6, "AKIA…")


def test_tables_are_data():
    assert all(p.name and p.what and p.regex.pattern for p in SECRET_PATTERNS)
    assert len({p.name for p in SECRET_PATTERNS}) == len(SECRET_PATTERNS)
    assert all(r.what for r in NAME_RULES)
    with pytest.raises(ValueError, match="literal byte"):
        workspace._scanners((workspace.SecretPattern("x", "x", __import__("re").compile(rb"[ab]c")),))
