"""The containment rules on their own (`ifc.monitor.containment`), and through `Monitor.decide`: a request
carrying facts that break a rule is denied and logged with the rule's name; the adapters' label changes and
refusals are the monitor's too (`share_label`, `restore_labels`, `refuse`, `error`)."""

from __future__ import annotations

import ipaddress
import stat
from functools import cache

import pytest

from ifc.match import Endpoint
from ifc.monitor import EventLog, Monitor, Request
from ifc.monitor import containment as rules
from ifc.monitor.containment import Facts
from ifc.policy import Policy, compile_text, load_policy, shipped_policy

ROOT, MNT = "/srv/backing/ws", "/workspace"

POLICY = """
labels {
  secrecy public < internal < secret
}
files {
  "**"  internal
}
endpoints {
  "https://api.example.com"        clearance internal as api
  "tcp://db.example.com:5432"      clearance internal as db
  "http://10.1.0.0/16:8080" except "http://10.1.2.3:8080"   clearance internal as lan
  "smtp://mail.example.com:587"    clearance internal as mail
}
"""


@cache
def policy() -> Policy:
    result = compile_text(POLICY)
    assert result.policy is not None, result.errors
    return result.policy


@cache
def default() -> Policy:
    return load_policy(shipped_policy("default"))


def link_facts(target: str, symlinks: tuple[str, ...] = ()) -> Facts:
    return Facts(symlink_target=target, symlinks_on_walk=frozenset(symlinks), backing_root=ROOT, mountpoint=MNT)


# ------------------------------------------------------------------------------------------ symlinks

@pytest.mark.parametrize("target, why", [
    ("/etc/passwd", "points outside the workspace"),
    ("/srv/backing/ws/.env", "points into the backing directory"),
    ("/srv/backing/ws", "points into the backing directory"),
    ("/usr/../etc/shadow", "points outside the workspace"),  # normalised before the prefix test
    ("/workspace-other/x", "points outside the workspace"),  # a sibling of the mount point is not inside it
    ("../../etc/passwd", "climbs out of the workspace"),
    ("../..", "climbs out of the workspace"),
    ("", "empty symlink target"),
    ("a\0b", "empty symlink target"),
])
def test_symlinks_leaving_the_workspace_are_refused(target, why):
    refusal = rules.symlink("src/link", link_facts(target))
    assert refusal is not None and refusal.rule == "containment: symlink" and why in refusal.reason


@pytest.mark.parametrize("target", ["/usr/bin/python3", "/lib/x86_64-linux-gnu/libc.so.6", "/workspace/src/a.py",
                                    "/workspace", "app.py", "../docs/guide.md", "./x/../y", "../src/../src/a"])
def test_symlinks_staying_inside_or_into_system_trees_are_allowed(target):
    assert rules.symlink("src/link", link_facts(target)) is None


def test_after_walking_through_a_symlink_a_climb_is_refused():
    # src/dir_link is itself a symlink (to anywhere): `dir_link/..` is not `src`, so it cannot be judged by name
    assert rules.symlink_walk("src/link", "dir_link/../../x") == ["src/dir_link", "x"]
    assert rules.symlink("src/link", link_facts("dir_link/../../x")) is None
    refusal = rules.symlink("src/link", link_facts("dir_link/../../x", symlinks=("src/dir_link",)))
    assert refusal is not None and "climbs out" in refusal.reason
    # a symlink met later on the walk does not matter for the `..` before it
    assert rules.symlink("src/link", link_facts("../docs/dir_link", symlinks=("docs/dir_link",))) is None


def test_the_walk_is_by_name_and_absolute_targets_have_none():
    assert rules.symlink_walk("a/b/link", "../c/./d") == ["a/c", "a/c/d"]
    assert rules.symlink_walk("link", "../x") == []  # climbs out at once
    assert rules.symlink_walk("a/link", "/usr/bin") == []


@pytest.mark.parametrize("rel, target, symlinks, leads", [
    ("src/link", "app.py", (), "src/app.py"), ("a/b/link", "../c/./d", (), "a/c/d"), ("a/link", "..", (), ""),
    (".git/hooks/pre-commit", "../../scripts/hook", (), "scripts/hook"), ("src/link", "/workspace/docs", (), "docs"),
    ("src/link", "/workspace", (), ""), ("src/link", "/usr/bin/../bin/true", (), "/usr/bin/true"),
    ("src/link", "dir_link/x", ("src/dir_link",), None),  # past another symlink: unknown
])
def test_where_a_symlink_leads_by_name(rel, target, symlinks, leads):
    """What a symlink at a guarded name is judged by (`Monitor._symlink_guard`): the workspace name it leads to, a
    system tree's path, or None."""
    assert rules.symlink_destination(rel, link_facts(target, symlinks=symlinks)) == leads


@pytest.mark.parametrize("at, to, allowed", [
    (".git/config", "../src/cfg", False), (".git/hooks/pre-commit", "../../scripts/hook", False),
    (".envrc", "/workspace/src/env", False), (".git", "src/g", False), (".git/hooks", "../hooks2", False),
    (".git/hooks/pre-commit", "dir_link/x", False),  # unknown: past another symlink
    (".git/hooks/pre-push", "pre-commit", True), (".git/hooks/pre-commit", "/usr/bin/true", True),
    ("src/link", "../.git/config", True),  # reached through it, a write is a write of `.git/config`
])
def test_a_symlink_at_a_name_the_host_runs_leads_only_where_writes_require_as_much(at, to, allowed):
    """Made while the run is trusted, `.git/config -> ../src/cfg` would let a write to `src/cfg` after untrusted
    input set `core.fsmonitor`: refused whatever the taint, with git's message and a fix."""
    policy = load_policy(shipped_policy("default"))
    d = Monitor(policy, agent=policy.agents["coder"]).decide(
        Request("create", at, facts=link_facts(to, symlinks=("src/dir_link", ".git/hooks/dir_link"))))
    assert d.allowed == allowed, d.reason
    if not allowed:
        assert d.reason.startswith(f"a symlink at {at} (writes require trusted) would lead to ") and d.fix
        assert d.rule.endswith("writes require trusted") and d.rule_span


def test_every_system_prefix_is_a_real_tree_and_root_is_never_one():
    assert "/usr" in rules.SYSTEM_PREFIXES
    assert rules.symlink("l", Facts(symlink_target="/", backing_root=ROOT)) is not None


# ------------------------------------------------------------------------------------------ other file facts

def test_hard_links_outside_device_nodes_and_guarded_xattrs():
    # through a hard link whose other names lie outside: reading, renaming, deleting, linking touch only the
    # workspace; a change to the inode would change the file outside
    for op in ("write", "chmod"):
        assert rules.check(default(), op, "a", None, Facts(outside_links=True)).rule == "containment: hard link"
    for op in ("read", "exec", "link", "rename", "delete"):
        assert rules.check(default(), op, "a", None, Facts(outside_links=True)) is None
    assert rules.check(default(), "write", "a", None, Facts(outside_links=False)) is None
    for node in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFDIR):
        assert rules.check(default(), "create", "n", None, Facts(node_type=node)).rule == "containment: device"
    for node in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
        assert rules.check(default(), "create", "n", None, Facts(node_type=node)) is None
    for name in ("security.capability", "trusted.ifc.label", "security.selinux"):
        assert rules.xattr(name).rule == "containment: xattr"
    for name in ("user.mime_type", "system.posix_acl_access", "noprefix"):
        assert rules.xattr(name) is None
    assert rules.xattr_namespace("user.a.b") == "user" and rules.xattr_namespace("plain") == ""


# ------------------------------------------------------------------------------------------ addresses

@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("fd12::1", "private"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("169.254.169.254", "cloud-metadata"), ("fd00:ec2::254", "cloud-metadata"), ("100.100.100.200", "cloud-metadata"),
    ("100.64.1.1", "shared (CGNAT)"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
    ("93.184.216.34", None), ("2606:4700::1111", None),
])
def test_address_classes(address, kind):
    assert rules.special_kind(ipaddress.ip_address(address)) == kind


def test_ip_literals():
    assert rules.is_ip_literal("10.0.0.1") and rules.is_ip_literal("[::1]") and rules.is_ip_literal("::1")
    assert not rules.is_ip_literal("example.com") and not rules.is_ip_literal("10.0.0.1.nip.io")


def test_only_a_rule_naming_the_address_by_ip_or_cidr_admits_it():
    pol = policy()
    assert rules.named_by_ip(pol, "http", "10.1.9.9", 8080)
    assert not rules.named_by_ip(pol, "http", "10.1.2.3", 8080)  # the rule's `except`
    assert not rules.named_by_ip(pol, "http", "10.1.9.9", 80)  # another port
    assert not rules.named_by_ip(pol, "http", "10.2.0.1", 8080)
    assert rules.ip_literal(pol, Endpoint.parse("http://10.1.9.9:8080")) is None
    refusal = rules.ip_literal(pol, Endpoint.parse("https://93.184.216.34:443"))
    assert refusal.rule == "containment: ip literal" and "IP literal" in refusal.reason
    assert rules.ip_literal(pol, Endpoint.parse("https://api.example.com")) is None


def test_resolved_addresses():
    pol = policy()
    api = Endpoint.parse("https://api.example.com")
    assert rules.addresses(pol, api, ("93.184.216.34", "2606:4700::1111")) is None
    refusal = rules.addresses(pol, api, ("93.184.216.34", "127.0.0.1"))  # one bad address refuses the connect
    assert refusal.rule == "containment: address" and "loopback address 127.0.0.1" in refusal.reason
    assert "cloud-metadata" in rules.addresses(pol, api, ("169.254.169.254",)).reason
    assert "not an address" in rules.addresses(pol, api, ("localhost",)).reason
    assert "no address" in rules.addresses(pol, api, ()).reason
    lan = Endpoint("http", "lan.example.com", 8080)
    assert rules.addresses(pol, lan, ("10.1.0.7",)) is None  # private, but named by CIDR


def test_which_rule_judges_a_connect():
    pol = policy()
    assert rules.connect_scheme(pol, "db.example.com", 5432) == "tcp"  # a raw-TCP rule names it: spliced bytes
    assert rules.connect_scheme(pol, "db.example.com", 443) == "https"
    assert rules.connect_scheme(pol, "mail.example.com", 587) == "smtp"  # judged as mail, whatever rides inside
    assert rules.connect_scheme(pol, "api.example.com", 443) == "https"


# ------------------------------------------------------------------------------------------ through the monitor

def test_a_containment_denial_is_a_logged_decision(tmp_path):
    pol = default()
    log = EventLog(tmp_path / "events.db")
    m = Monitor(pol, agent=pol.agents["coder"], log=log)
    inside = link_facts("../docs/guide.md")
    assert m.decide(Request("create", "src/link", facts=inside)).allowed
    escape = link_facts("/etc/shadow")
    d = m.decide(Request("create", "src/link", facts=escape))
    assert not d.allowed and d.rule == "containment: symlink" and d.event is not None
    # the same request without facts, answered before: the fast path keys on the facts, never mixes them up
    assert m.decide(Request("create", "src/link")).allowed
    assert not m.decide(Request("create", "src/link", facts=escape)).allowed
    assert [e.rule for e in log.events("deny")] == ["containment: symlink"] * 2


def test_containment_only_ops_need_no_grant():
    pol = default()
    m = Monitor(pol, agent=pol.agents["coder"])
    # `coder` may not read .git/hooks, but may see where a symlink there leads, if it stays inside
    assert m.decide(Request("readlink", ".git/hooks/x", facts=link_facts("pre-commit"))).allowed
    assert m.decide(Request("readlink", ".git/hooks/x", facts=link_facts("/etc/passwd"))).rule == "containment: symlink"
    assert m.decide(Request("resolve", "https://api.anthropic.com", facts=Facts(addresses=("1.1.1.1",)))).allowed
    d = m.decide(Request("resolve", "https://api.anthropic.com", facts=Facts(addresses=("10.0.0.1",))))
    assert not d.allowed and d.rule == "containment: address"
    assert m.decide(Request("connect", "https://1.1.1.1")).rule == "containment: ip literal"
    assert m.decide(Request("read", "src/a.py", facts="not facts")).reason.startswith("malformed")  # type: ignore[arg-type]
    assert m.taint_of("session") == m.taint_of("nobody") == pol.lattice.bottom
    m.decide(Request("read", ".env", subject="somebody"))
    assert m.taint_of("nobody") == m.run.taint and "secret" in m.run.taint.secrecy  # one taint per run


def test_adapter_effects_are_the_monitors(tmp_path):
    pol = default()
    log = EventLog(tmp_path / "events.db")
    m = Monitor(pol, log=log)
    m.decide(Request("read", ".env"))
    m.decide(Request("write", "src/copy.txt"))  # floats to secret
    secret = m.label_of("src/copy.txt")
    saved = m.stored_labels("src/copy.txt")
    m.decide(Request("delete", "src/copy.txt"))
    assert m.label_of("src/copy.txt") != secret
    m.restore_labels(Request("delete", "src/copy.txt"), saved)  # the unlink failed on disk
    assert m.label_of("src/copy.txt") == secret
    m.share_label(Request("link", "src/alias.txt"), ["src/alias.txt", "src/copy.txt"])
    assert m.label_of("src/alias.txt") == secret
    refused = m.refuse(Request("connect", "(garbage)", subject="s1"), "bad request line", "egress: http")
    assert not refused.allowed and refused.event is not None
    m.error(Request("read", "src/a.py"), "internal error in the filesystem, denied: OSError: x")
    events = list(log.events())
    labels = [(e.target, e.reason) for e in events if e.kind == "label"]
    assert any(t == "src/copy.txt" and "`secret" in r and "(restored: the delete failed)" in r for t, r in labels)
    assert any(t == "src/alias.txt" and "hard links of one file" in r for t, r in labels)
    assert [(e.kind, e.rule) for e in events if not e.allowed] == [("deny", "egress: http"), ("error", None)]
