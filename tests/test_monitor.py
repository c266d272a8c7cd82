"""The reference monitor, decision by decision: authority (agent grants and real capability tokens), taint
(reads join, writes float, labels follow renames and hard links and persist), integrity, DNS, secret
sentinels, fail-closed behaviour, the explanation of a denial, and what the event log keeps."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
from functools import cache
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from caps import HostKey, Verifier, attenuate, mint
from ifc.monitor import EventLog, LabelStore, Monitor, Request
from ifc.monitor.containment import Facts
from ifc.monitor.events import open_readonly, read_events
from ifc.policy import Policy, compile_text, load_policy, shipped_policy

AUDIENCE = "run-monitor-tests"
NOW = 1_800_000_000.0  # a fixed clock: token expiry is decided by the monitor's clock, not the wall clock


@cache
def default() -> Policy:
    return load_policy(shipped_policy("default"))


@cache
def host() -> HostKey:
    return HostKey.generate()


def coder_monitor(**kwargs) -> Monitor:
    pol = default()
    return Monitor(pol, agent=pol.agents["coder"], **kwargs)


def flow_monitor(**kwargs) -> Monitor:
    """No agent: authority is not checked, only flow."""
    return Monitor(default(), **kwargs)


def describe(monitor: Monitor, path: str) -> str:
    return monitor.policy.lattice.describe(monitor.label_of(path))


def taint(monitor: Monitor, subject: str = "session") -> str:
    return monitor.policy.lattice.describe(monitor.subject(subject).taint)


def token(rights, *, ttl: float = 3600, now: float = NOW, audience: str = AUDIENCE, key: HostKey | None = None) -> str:
    return mint(key or host(), rights=rights, audience=audience, ttl=ttl, now=now)


@pytest.fixture
def verifier() -> Verifier:
    return Verifier([host().public], audience=AUDIENCE)


@pytest.fixture
def log(tmp_path):
    events = EventLog(tmp_path / "events.db")
    yield events
    events.close()


# ===================================================================================== authority
def test_agent_grants_allow_what_they_cover():
    m = coder_monitor()
    assert m.decide(Request("read", "src/app.py")).allowed
    assert m.decide(Request("write", "src/app.py")).allowed
    assert m.decide(Request("create", "tests/test_new.py")).allowed
    assert m.decide(Request("connect", "https://pypi.org")).allowed


@pytest.mark.parametrize(("op", "target", "needed"), [
    ("write", "ifc/core.py", "write"),
    ("delete", "LICENSE", "delete"),
    ("exec", "/bin/sh", "exec"),
    ("connect", "https://registry.npmjs.org", "connect"),
    ("chmod", "bin/tool", "write"),
])
def test_agent_without_a_grant_is_denied_naming_the_agent(op, target, needed):
    d = coder_monitor().decide(Request(op, target))
    assert not d.allowed
    assert d.rule == "agent coder"
    assert d.rule_span and "default.flow" in d.rule_span
    assert f"no `{needed}` grant" in d.reason
    assert d.token_block is None
    assert d.fix and "policy" in d.fix and "ifc caps mint" in d.fix["mint"]


def test_rename_needs_authority_over_both_names():
    m = coder_monitor()
    d = m.decide(Request("rename", "src/a.py", dest="ifc/a.py"))
    assert not d.allowed and d.rule == "agent coder" and "ifc/a.py" in d.reason
    assert m.decide(Request("rename", "src/a.py", dest="src/b.py")).allowed


def test_changing_a_file_with_several_names_needs_authority_over_each():
    """Hard links found on disk (`share_label`) are one content: coder may write `src/` but not `LICENSE`, so a
    write or chmod through `src/notice`, which is `LICENSE` too, is refused naming `LICENSE`; a read is not."""
    m = coder_monitor()
    m.share_label(Request("link", "src/notice"), ["src/notice", "LICENSE"])
    for op in ("write", "chmod"):
        d = m.decide(Request(op, "src/notice"))
        assert not d.allowed and d.reason == "agent `coder` has no `write` grant covering LICENSE", d.reason
    assert m.decide(Request("read", "src/notice")).allowed and m.decide(Request("write", "src/other")).allowed


def test_no_agent_means_no_authority_check():
    d = flow_monitor().decide(Request("write", "ifc/core.py"))
    assert d.allowed


def test_token_allows_what_its_rights_cover(verifier, log):
    tok = token(["read src/**", "connect https://pypi.org"])
    m = coder_monitor(verifier=verifier, log=log, clock=lambda: NOW)
    assert m.decide(Request("read", "src/x.py", token=tok)).allowed
    assert m.decide(Request("connect", "https://pypi.org", token=tok)).allowed
    uses = list(log.events("token"))
    assert len(uses) == 1, "the first use of a token is logged once"
    assert uses[0].token_id and uses[0].target == uses[0].token_id


def test_token_denial_names_the_token_and_block(verifier):
    tok = token(["read src/**", "connect https://pypi.org"])
    m = coder_monitor(verifier=verifier, clock=lambda: NOW)
    d = m.decide(Request("read", ".env", token=tok))
    assert not d.allowed
    assert d.token_block == 0
    assert d.rule.startswith("token ") and len(d.rule.split()[1]) == 32
    assert "read `.env`" in d.reason and "read src/**" in d.reason


def test_attenuated_token_denial_names_the_narrowing_block(verifier):
    parent = token(["read src/**"])
    child = attenuate(parent, rights=["read src/api/**"], now=NOW)
    m = coder_monitor(verifier=verifier, clock=lambda: NOW)
    assert m.decide(Request("read", "src/api/x.py", token=child)).allowed
    d = m.decide(Request("read", "src/x.py", token=child))
    assert not d.allowed and d.token_block == 1 and "block 1" in d.reason


def test_token_authority_for_two_path_ops(verifier):
    tok = token(["write src/**", "create src/new/**"])
    m = coder_monitor(verifier=verifier, clock=lambda: NOW)
    assert m.decide(Request("rename", "src/a.py", dest="src/new/a.py", token=tok)).allowed
    d = m.decide(Request("rename", "src/a.py", dest="tests/a.py", token=tok))
    assert not d.allowed and d.token_block == 0 and "create `tests/a.py`" in d.reason


def test_token_expires_on_the_monitors_clock(verifier):
    now = [NOW]
    tok = token(["read src/**"], ttl=60)
    m = coder_monitor(verifier=verifier, clock=lambda: now[0])
    assert m.decide(Request("read", "src/x.py", token=tok)).allowed
    now[0] = NOW + 61
    d = m.decide(Request("read", "src/x.py", token=tok))
    assert not d.allowed and d.rule == "token" and "token rejected (expired)" in d.reason


def _tampered(tok: str) -> str:
    i = len(tok) // 2
    return tok[:i] + ("A" if tok[i] != "A" else "B") + tok[i + 1:]


@pytest.mark.parametrize(("make", "why"), [
    (lambda: token(["read **"], ttl=10, now=NOW - 100), "expired"),
    (lambda: token(["read **"], key=HostKey.generate()), "unknown_key"),
    (lambda: _tampered(token(["read **"])), "bad_signature"),
    (lambda: token(["read **"], audience="another-run"), "wrong_audience"),
    (lambda: "ifc1_not-a-token", "malformed"),
    (lambda: "garbage", "malformed"),
    (lambda: b"\x00\x01\x02", "malformed"),
    (lambda: 12345, "malformed"),
], ids=["expired", "forged", "tampered", "wrong-audience", "bad-base64", "not-a-token", "bytes", "int"])
def test_bad_tokens_are_denied_with_the_reason(verifier, log, make, why):
    m = coder_monitor(verifier=verifier, log=log, clock=lambda: NOW)
    d = m.decide(Request("read", "src/x.py", token=make()))
    assert not d.allowed
    assert d.rule == "token"
    assert f"token rejected ({why})" in d.reason
    (event,) = log.events("deny")
    assert event.id == d.event and event.reason == d.reason


def test_token_without_a_verifier_is_denied():
    d = coder_monitor().decide(Request("read", "src/x.py", token=token(["read **"])))
    assert not d.allowed and "no verifier" in d.reason


def test_token_denial_event_names_the_token_id(verifier, log):
    tok = token(["read src/**"])
    m = coder_monitor(verifier=verifier, log=log, clock=lambda: NOW)
    d = m.decide(Request("read", ".env", token=tok))
    (event,) = log.events("deny")
    assert event.token_block == 0
    assert event.token_id == d.rule.split()[1]


# ===================================================================================== taint
def test_reading_joins_labels_into_the_taint():
    m = flow_monitor()
    d = m.decide(Request("read", "docs/index.md"))
    assert d.allowed and d.taint_after == "public, trusted"
    m.decide(Request("read", ".env"))
    d = m.decide(Request("read", "data/customers/accounts.csv"))
    assert d.taint_before == "secret, trusted"
    assert d.taint_after == "secret + customer, trusted"
    assert m.subject("session").taint.secrecy == {"internal", "secret", "customer"}
    assert dict((obj, part) for part, obj in d.tainted_by) == {".env": "secret",
                                                               "data/customers/accounts.csv": "customer"}


def test_writing_floats_the_file_label_up_to_the_taint(log):
    m = coder_monitor(log=log)
    m.decide(Request("read", ".env"))
    d = m.decide(Request("write", "src/notes.txt", pid=42, cmdline="cp .env src/notes.txt"))
    assert d.allowed and d.object_label == "secret, trusted"
    assert "floats up" in d.reason
    assert describe(m, "src/notes.txt") == "secret, trusted"
    (event,) = log.events("label")
    assert event.target == "src/notes.txt" and event.object_label == "secret, trusted"
    assert event.pid == 42 and event.cmdline == "cp .env src/notes.txt" and event.subject == "session"


def test_a_write_that_adds_nothing_changes_no_label(log):
    m = coder_monitor(log=log)
    m.decide(Request("read", "src/a.py"))
    assert m.decide(Request("write", "src/b.py")).allowed
    assert m.labels.get("src/b.py") is None
    assert list(log.events("label")) == []


def next_run(m: Monitor) -> Monitor:
    """A new run on the same workspace: a clean taint, the workspace's floated labels."""
    return Monitor(m.policy, agent=m.agent, labels=m.labels, verifier=m.verifier, clock=m.clock)


def test_a_new_run_sees_the_floated_label():
    m = coder_monitor()
    m.decide(Request("read", ".env"))
    m.decide(Request("write", "src/notes.txt"))
    m2 = next_run(m)
    assert taint(m2) == "public, trusted"
    d = m2.decide(Request("read", "src/notes.txt"))
    assert d.object_label == "secret, trusted" and d.taint_after == "secret, trusted"
    d = m2.decide(Request("connect", "https://api.anthropic.com"))
    assert not d.allowed
    assert d.rule.startswith("deny secret -> external")
    assert d.tainted_by == (("secret", "src/notes.txt"),)


@pytest.mark.parametrize("make", [
    Request("create", "src/sk_live_51HxReal"), Request("create", "sk_live_51HxReal.txt"),
    Request("rename", "src/a.py", dest="src/sk_live_51HxReal"),
    Request("link", "src/a.py", dest="src/sk_live_51HxReal"),
    Request("delete", "src/a.py"), Request("rename", "src/a.py", dest="build/a.py"),  # removed: src/ shows it gone
])
def test_names_a_secret_run_makes_are_secret_to_whoever_reads_them_later(make):
    """A name spells data (`src/sk_live_…`, or one file per bit): the directory a secret run makes a name in takes
    the run's secrecy beyond its own policy label, and a later run that lists that directory, or looks a name up in
    it, reads it — so it cannot send what it learnt. Names a clean run made, and the policy labels of directories
    (`ls inbox/` reads no message), taint nobody."""
    m = coder_monitor()
    assert m.decide(Request("read", "src/a.py")).allowed and m.decide(Request("create", "src/plain.py")).allowed
    directory = (make.target if make.op in ("delete", "rename") else make.dest or make.target).rpartition("/")[0]
    assert m.labels.get(directory) is None
    m.decide(Request("read", "id_rsa"))
    assert m.decide(make).allowed
    expected = {"secret"} if directory else {"internal", "secret"}  # beyond `src`'s label; the root has none
    assert m.labels.get(directory).secrecy == expected
    m2 = next_run(m)
    for clean in ("docs", "inbox", "src/sub"):
        assert m2.decide(Request("list", clean)).allowed
    assert taint(m2) == "public, trusted"
    d = m2.decide(Request("list", directory))
    assert d.allowed and m2.taint_of("session").secrecy == expected and ("secret", directory or "/") in d.tainted_by
    assert not m2.decide(Request("connect", "https://api.anthropic.com")).allowed


def test_a_name_a_secret_run_made_or_removed_is_read_by_looking_it_up():
    """A secret run deletes `src/a.py` and makes `src/new` (one file per bit): a later run that looks either name
    up (finding it absent, or there) reads it; one that looks up a name nobody tainted made or removed, beside
    them — `src` itself included, whose label is its names' — reads nothing; once a clean run makes `src/a.py`
    again, whether it is there says nothing of the secret run any more."""
    m = coder_monitor()
    m.decide(Request("read", "id_rsa"))
    assert m.decide(Request("delete", "src/a.py")).allowed and m.decide(Request("create", "src/new")).allowed
    assert m.labels.named("src/a.py") == m.labels.named("src/new") == {"secret"}
    for name in ("src/a.py", "src/new"):
        m2 = next_run(m)
        directory = Facts(node_type=stat.S_IFDIR)
        assert m2.decide(Request("lookup", "src/b.py")).allowed and \
            m2.decide(Request("lookup", "src", facts=directory)).allowed
        assert taint(m2) == "public, trusted"
        d = m2.decide(Request("lookup", name))
        assert d.allowed and taint(m2) == "secret, trusted" and ("secret", name) in d.tainted_by
    assert next_run(m).decide(Request("create", "src/a.py")).allowed and m.labels.named("src/a.py") is None
    m3 = next_run(m)
    assert m3.decide(Request("lookup", "src/a.py")).allowed and taint(m3) == "public, trusted"


@pytest.mark.parametrize("change", ["chmod", "write"])
def test_what_a_secret_run_changes_in_a_files_attributes_is_read_by_looking_it_up(change):
    """A run that read a key changes a clean file's times, mode or owner (`chmod`: `touch -d @<bits> src/a.py`), or
    appends as many bytes: the file's stored label takes the run's taint, and a later run that looks the name up
    (a `stat`: the kernel's lookup brings the attributes) reads it — a directory's lookup reads only its name's
    record (its stored label is its names', read by a listing); the owner's files beside it read nothing."""
    m = coder_monitor()
    m.decide(Request("read", "id_rsa"))
    assert m.decide(Request(change, "src/a.py")).allowed
    assert m.labels.get("src/a.py") is not None and "secret" in m.labels.get("src/a.py").secrecy
    m2 = next_run(m)
    regular = Facts(node_type=stat.S_IFREG)
    assert m2.decide(Request("lookup", "src/b.py", facts=regular)).allowed and taint(m2) == "public, trusted"
    d = m2.decide(Request("lookup", "src/a.py", facts=regular))
    assert d.allowed and taint(m2) == "secret, trusted" and ("secret", "src/a.py") in d.tainted_by
    m3 = next_run(m)
    assert m3.decide(Request("chmod", "src")).allowed and taint(m3) == "public, trusted"  # a clean run: no raise
    m.decide(Request("chmod", "docs"))  # the secret run's: a directory's stored label is read by its listing
    m4 = next_run(m)
    assert m4.decide(Request("lookup", "docs", facts=Facts(node_type=stat.S_IFDIR))).allowed
    assert taint(m4) == "public, trusted"
    assert m4.decide(Request("list", "docs")).allowed and taint(m4) == "secret, trusted"


def test_a_link_a_secret_run_makes_or_removes_is_read_off_the_files_other_names():
    """A link made or removed changes the link count and change time of the file's other names: a run holding
    `secret` that links the owner's `src/a.py` (or removes a link a clean run made to `src/b.py`, or renames another
    file over one made to `src/c.py`) raises that file's label, and a later run's lookup of it is tainted; a clean
    run's links raise nothing."""
    m = coder_monitor()
    assert m.decide(Request("link", "src/b.py", dest="src/b2")).allowed  # clean: nothing beyond b.py's label
    assert "secret" not in m.label_of("src/b.py").secrecy
    assert m.decide(Request("link", "src/c.py", dest="src/c2")).allowed
    m.decide(Request("read", "id_rsa"))
    assert m.decide(Request("link", "src/a.py", dest="src/l")).allowed
    assert m.decide(Request("delete", "src/b2")).allowed
    assert m.decide(Request("rename", "src/new", dest="src/c2")).allowed  # renamed over c.py's other name
    regular = Facts(node_type=stat.S_IFREG)
    for name in ("src/a.py", "src/b.py", "src/c.py"):
        m2 = next_run(m)
        assert m2.decide(Request("lookup", name, facts=regular)).allowed and taint(m2) == "secret, trusted", name


FILES = ("src/a", "src/b", "src/c", "src/d", "src/e")
changes = st.lists(st.tuples(st.sampled_from(("create", "write", "chmod", "delete", "link", "rename")),
                             st.sampled_from(FILES), st.sampled_from(FILES)), max_size=8)


@settings(max_examples=200, deadline=None)
@given(before=changes, after=changes)
def test_nothing_a_secret_run_changes_is_read_clean_by_a_later_lookup(before, after):
    """Property: whatever a clean run did first (`before`, on the owner's `src/a`..`src/c`), every name a run
    holding `secret` then made or removed, and every name of a file it wrote, changed the mode or times of,
    renamed, or linked or unlinked (its link count and change time), taints a later run's lookup (`after`): the
    ops as a filesystem allows them (no link onto a name that is there; a rename replaces one)."""
    m = coder_monitor()
    files = {name: frozenset({name}) for name in FILES[:3]}  # each name there -> every name of its file

    def apply(ops, touched: set[str] | None) -> None:
        for op, a, b in ops:
            two = op in ("link", "rename")
            if (op == "create") == (a in files) or (two and (a == b or (op == "link") == (b in files))):
                continue  # not as a filesystem would do it
            if not m.decide(Request(op, a, dest=b if two else None)).allowed:
                continue
            hit = {a}
            if op == "create":
                files[a] = frozenset({a})
            elif op in ("write", "chmod"):
                hit = set(files[a])
            elif op == "link":
                group = files[a] | {b}
                files.update(dict.fromkeys(group, group))
                hit = set(group)
            else:  # delete, rename: `a` goes; a rename's file takes `b`, and a file at `b` loses that name
                group = files.pop(a) - {a}
                files.update(dict.fromkeys(group, group))
                hit |= group
                if op == "rename":
                    lost = files.pop(b, frozenset()) - {b}
                    files.update(dict.fromkeys(lost, lost))
                    moved = group | {b}
                    files.update(dict.fromkeys(moved, moved))
                    hit |= lost | moved
            if touched is not None:
                touched |= hit

    apply(before, None)
    m.decide(Request("read", "id_rsa"))
    touched: set[str] = set()
    apply(after, touched)
    for name in touched:
        m2 = next_run(m)
        assert m2.decide(Request("lookup", name, facts=Facts(node_type=stat.S_IFREG))).allowed
        assert "secret" in m2.taint_of("session").secrecy, (name, before, after)


def test_an_anticipated_change_that_would_raise_a_label_is_left_to_be_decided():
    """`anticipate` decides without effect: a change a tainted run would make to a clean file raises its label, so
    it is no repeat — nothing is stored, and the change is decided in full when it comes."""
    m = coder_monitor()
    m.decide(Request("read", "id_rsa"))
    assert m.anticipate(Request("chmod", "src/a.py")) is None and m.labels.get("src/a.py") is None
    assert m.decide(Request("create", "src/new")).allowed  # made at the run's taint: its change raises nothing
    assert m.anticipate(Request("chmod", "src/new")) is not None


def test_names_within_their_directorys_label_float_nothing():
    """An `internal` run making `src/x.py` or `docs/new.md` (`docs/**` labels what is inside; the directory is
    `**`'s) writes nothing into the directory; at the root, which has no label of its own, `.pytest_cache` does:
    a later run that lists the root, or looks that name up, reads `internal`; one that looks up the owner's
    `pyproject.toml` beside it reads nothing."""
    m = coder_monitor()
    m.decide(Request("read", "src/a.py"))
    for name in ("src/x.py", "docs/new.md"):
        assert m.decide(Request("create", name)).allowed
    assert set(m.labels.snapshot()) == {"docs/new.md"}  # its content's label, as before: no directory's
    assert m.labels.named("src/x.py") is None and m.labels.named("docs/new.md") is None
    assert m.decide(Request("create", ".pytest_cache")).allowed and m.labels.get("").secrecy == {"internal"}
    for op, target in (("list", ""), ("lookup", ".pytest_cache")):
        m2 = next_run(m)
        assert m2.decide(Request("lookup", "pyproject.toml")).allowed and taint(m2) == "public, trusted"
        assert m2.decide(Request(op, target)).allowed and taint(m2) == "internal, trusted"


def test_names_a_secret_run_makes_in_a_secret_directory_are_recorded():
    """`src/credentials/` is `secret` by its own name (`**/credentials*`), and a listing reads no policy label: a
    run holding `secret` that makes names there raises the directory and records each name, so a later run that
    lists it or looks one up is tainted. What every name holds by policy (`"**" internal`) stays out: an
    `internal` run making a name there records nothing."""
    m = coder_monitor()
    assert m.policy.file_label("src/credentials").label.secrecy == {"internal", "secret"}
    m.decide(Request("read", "src/a.py"))
    assert m.decide(Request("create", "src/credentials/plain")).allowed and m.labels.snapshot() == {}
    m.decide(Request("read", "id_rsa"))
    assert m.decide(Request("create", "src/credentials/sk-MIIEvQ")).allowed
    assert m.labels.named("src/credentials/sk-MIIEvQ") == {"secret"}
    for op, target in (("list", "src/credentials"), ("lookup", "src/credentials/sk-MIIEvQ")):
        m2 = next_run(m)
        assert m2.decide(Request(op, target)).allowed and taint(m2) == "secret, trusted", op


def test_every_subject_shares_the_runs_taint():
    """Inside one sandbox any process can hand data to any other: no subject of the run starts clean, and
    what any of them reads taints them all."""
    m = coder_monitor()
    m.decide(Request("read", ".env"))
    assert taint(m, "s2") == "secret, trusted", "a subject first seen after the read starts at the run's taint"
    d = m.decide(Request("connect", "https://api.anthropic.com", subject="s2"))
    assert not d.allowed and d.tainted_by == (("secret", ".env"),)
    assert d.explanation == ".env --read--> session --same run--> s2 --connect--> https://api.anthropic.com:443"
    m.decide(Request("read", "data/customers/x.csv", subject="s3"))
    assert "customer" in m.subject("session").taint.secrecy, "a later subject's reads reach the session"


def test_a_child_subject_inherits_its_parents_taint():
    m = coder_monitor()
    m.decide(Request("read", ".env"))
    d = m.decide(Request("read", "src/app.py", subject="child", parent="session"))
    assert d.taint_before == "secret, trusted"
    d = m.decide(Request("connect", "https://api.anthropic.com", subject="child"))
    assert not d.allowed and d.tainted_by == (("secret", ".env"),)
    # the child's own reads flow back into the parent: they share the run's taint
    m.decide(Request("read", "data/customers/x.csv", subject="child"))
    assert "customer" in m.subject("session").taint.secrecy


def test_a_child_subjects_denial_explains_the_parents_read():
    m = coder_monitor()
    m.decide(Request("read", ".env"))
    m.decide(Request("read", "src/app.py", subject="child", parent="session"))
    d = m.decide(Request("connect", "https://api.anthropic.com", subject="child"))
    assert d.explanation.startswith(".env --read--> session --")
    assert d.explanation.endswith("--> child --connect--> https://api.anthropic.com:443")


# ===================================================================================== rename, link, delete
def _float_secret(m: Monitor, path: str) -> None:
    assert m.decide(Request("read", ".env")).allowed
    assert m.decide(Request("write", path)).allowed
    assert describe(m, path) == "secret, trusted"


def test_rename_moves_the_floated_label(log):
    m = coder_monitor(log=log)
    _float_secret(m, "src/a.txt")
    d = m.decide(Request("rename", "src/a.txt", dest="src/b.txt"))
    assert d.allowed and d.target == "src/a.txt -> src/b.txt"
    assert describe(m, "src/b.txt") == "secret, trusted"
    assert describe(m, "src/a.txt") == "internal, trusted", "a new file under the old name starts from the policy"
    # and the new name, made by a secret run, is data of `src`'s (`_name_made`)
    assert [e.target for e in log.events("label")] == ["src/a.txt", "src/b.txt", "src"]
    assert m.decide(Request("read", "src/b.txt", subject="s2")).taint_after == "secret, trusted"


def test_a_public_name_does_not_launder_a_floated_label():
    m = coder_monitor()
    _float_secret(m, "src/a.txt")
    assert m.decide(Request("rename", "src/a.txt", dest="docs/a.md")).allowed
    assert describe(m, "docs/a.md") == "secret, trusted"
    d = m.decide(Request("read", "docs/a.md", subject="s2"))
    assert d.taint_after == "secret, trusted"


def test_renaming_a_directory_moves_the_labels_beneath_it():
    m = coder_monitor()
    _float_secret(m, "src/dir/a.txt")
    assert m.decide(Request("rename", "src/dir", dest="src/moved")).allowed
    assert describe(m, "src/moved/a.txt") == "secret, trusted"


def private_monitor(**kwargs) -> Monitor:
    """The default policy with `src/private/**` secret: a directory the agent may write whose names are secret
    by where they are, not by what they are called (a directory rename must carry that)."""
    text = (Path(__file__).resolve().parent.parent / "policies" / "default.flow").read_text()
    text = text.replace('  "data/customers/**"                     pii\n',
                        '  "data/customers/**"                     pii\n  "src/private/**"  secret\n')
    pol = compile_text(text, "private.flow").policy
    return Monitor(pol, agent=pol.agents["coder"], **kwargs)


def test_a_directory_rename_carries_the_labels_its_names_had_by_where_they_were(log):
    m = private_monitor(log=log)
    assert describe(m, "src/private/keys/prod.txt") == "secret, trusted"
    d = m.decide(Request("rename", "src/private", dest="src/open",
                         facts=Facts(beneath=("keys", "keys/prod.txt", "notes.md"))))
    assert d.allowed
    for name in ("src/open/keys", "src/open/keys/prod.txt", "src/open/notes.md"):
        assert describe(m, name) == "secret, trusted", name
    assert {e.target for e in log.events("label")} >= {"src/open/keys/prod.txt", "src/open/notes.md"}
    d = m.decide(Request("read", "src/open/keys/prod.txt", subject="s2"))
    assert d.taint_after == "secret, trusted"
    d = private_monitor().decide(Request("rename", "src/d", dest="src/e", facts=Facts(beneath=("k.pem",))))
    assert d.object_label == "internal, trusted"  # the directory's label, not its last name's
    # without the names beneath (an enforcement point that did not walk), only the directory would carry it
    m = private_monitor()
    m.decide(Request("rename", "src/private", dest="src/open"))
    assert describe(m, "src/open/keys/prod.txt") == "internal, trusted"


def test_a_directory_rename_is_judged_name_by_name_where_the_names_land():
    """Untrusted input read, a workflow staged under src/ (allowed there) and the directory renamed onto
    `.github`: the workflow's new name requires trusted data, so the rename is refused, naming it."""
    m = coder_monitor()
    m.decide(Request("read", "inbox/issue.txt"))
    assert m.decide(Request("create", "src/stage/workflows/ci.yml")).allowed
    beneath = Facts(beneath=("workflows", "workflows/ci.yml"))
    d = m.decide(Request("rename", "src/stage", dest=".github", facts=beneath))
    assert not d.allowed and ".github/workflows/ci.yml requires `trusted`" in d.reason
    assert not [name for name in m.labels.snapshot() if name.startswith(".github")]
    # a run that read nothing untrusted may (the rule asks for trusted data, not for no renames)
    assert coder_monitor().decide(Request("rename", "src/stage", dest=".github", facts=beneath)).allowed


def test_authority_over_a_directory_covers_the_names_beneath_it(verifier):
    """Why a directory's rename checks no authority name by name: a grant or a token's right that matches a
    name covers what lies beneath it, so its names are covered whenever the directory is."""
    for rights in (["create src/new/*"], ["create src/new/d"], ["create src/**/d"]):
        m = coder_monitor(verifier=verifier, clock=lambda: NOW)
        tok = token(rights)
        assert m.decide(Request("create", "src/new/d", token=tok)).allowed
        assert m.decide(Request("create", "src/new/d/deep/a.py", token=tok)).allowed
    assert coder_monitor().agent.allows("write", ".pytest_cache/v/cache/nodeids")  # `/*.*` matches the directory


@pytest.mark.parametrize("sub", ["../../.env", "/etc/passwd", "a/../../x", "a\x00b"])
def test_names_beneath_a_renamed_directory_that_are_not_beneath_it_are_refused(sub):
    d = coder_monitor().decide(Request("rename", "src/d", dest="src/e", facts=Facts(beneath=("ok", sub))))
    assert not d.allowed and "bad path" in d.reason


def test_a_rename_within_its_names_label_stores_nothing():
    """rsync and editors write a temporary name and rename it: nothing the store must keep (no transaction)."""
    m = coder_monitor()
    version = m.labels.version
    assert m.decide(Request("rename", "src/.a.py.tmp", dest="src/a.py")).allowed
    assert m.decide(Request("rename", "src/d", dest="tests/d", facts=Facts(beneath=("x.py",)))).allowed
    assert m.labels.snapshot() == {} and m.labels.version == version
    assert m.decide(Request("rename", "src/k.pem", dest="src/k.txt")).allowed  # a secret name: stored
    assert describe(m, "src/k.txt") == "secret, trusted"


NAMES = st.lists(st.sampled_from(["a", "b", ".env", "k.pem", "secrets", "private", "docs", "x.py", "README",
                                  ".git", "config", "hooks", "workflows", ".github"]), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(src=NAMES, dst=NAMES, beneath=st.lists(NAMES, max_size=6), tainted=st.booleans())
def test_a_directory_rename_never_lowers_a_label_beneath_it(src, dst, beneath, tainted):
    src, dst = "/".join(["src", *src]), "/".join(["src", *dst])
    assume(src != dst and not dst.startswith(src + "/") and not src.startswith(dst + "/"))
    subs = tuple(dict.fromkeys("/".join(sub) for sub in beneath))
    m = private_monitor()
    if tainted:
        m.decide(Request("read", "inbox/mail.txt"))
    before = {sub: m.label_of(f"{src}/{sub}") for sub in subs}
    if m.decide(Request("rename", src, dest=dst, facts=Facts(beneath=subs))).allowed:
        for sub, label in before.items():
            assert label.flows_to(m.label_of(f"{dst}/{sub}")), sub


def test_a_hard_link_shares_the_label_both_ways():
    m = coder_monitor()
    assert m.decide(Request("link", "src/a.txt", dest="src/b.txt")).allowed
    assert describe(m, "src/a.txt") == describe(m, "src/b.txt") == "internal, trusted"
    m.decide(Request("read", ".env"))
    m.decide(Request("write", "src/b.txt"))  # raise through one name ...
    d = m.decide(Request("read", "src/a.txt", subject="s2"))  # ... read through the other
    assert d.object_label == "secret, trusted" and d.taint_after == "secret, trusted"


def test_a_link_to_a_floated_file_carries_its_label():
    m = coder_monitor()
    _float_secret(m, "src/a.txt")
    d = m.decide(Request("link", "src/a.txt", dest="src/c.txt"))
    assert d.allowed and "carries `secret, trusted`" in d.reason
    assert describe(m, "src/c.txt") == "secret, trusted"


def test_delete_forgets_the_floated_label():
    m = coder_monitor()
    _float_secret(m, "src/a.txt")
    assert m.decide(Request("delete", "src/a.txt")).allowed
    assert m.labels.get("src/a.txt") is None
    assert describe(m, "src/a.txt") == "internal, trusted"


def test_deleting_one_hard_link_keeps_the_other():
    m = coder_monitor()
    _float_secret(m, "src/a.txt")
    m.decide(Request("link", "src/a.txt", dest="src/b.txt"))
    m.decide(Request("delete", "src/a.txt"))
    assert describe(m, "src/b.txt") == "secret, trusted"


def test_renaming_a_file_onto_itself_keeps_its_label():
    m = coder_monitor()
    _float_secret(m, "src/notes.txt")
    assert m.decide(Request("rename", "src/notes.txt", dest="src/./notes.txt")).allowed
    assert describe(m, "src/notes.txt") == "secret, trusted"
    m.decide(Request("read", "src/notes.txt", subject="s2"))
    assert not m.decide(Request("connect", "https://api.anthropic.com", subject="s2")).allowed


def test_linking_a_file_onto_itself_keeps_its_label():
    m = coder_monitor()
    _float_secret(m, "src/notes.txt")
    m.decide(Request("link", "src/notes.txt", dest="src/notes.txt"))
    assert describe(m, "src/notes.txt") == "secret, trusted"


def test_renaming_onto_another_link_of_the_same_file_keeps_both_labels():
    m = coder_monitor()
    _float_secret(m, "src/notes.txt")
    m.decide(Request("link", "src/notes.txt", dest="src/copy.txt"))
    m.decide(Request("rename", "src/notes.txt", dest="src/copy.txt"))
    assert describe(m, "src/notes.txt") == "secret, trusted"


_LAUNDERING = ("Monitor._write_like raises the stored object only when `label_of(path).join(taint)` differs from "
               "`label_of(path)` - the name's policy label included - but only the object's stored label travels "
               "with the content through other names. So data already within the name's policy label (secret "
               "into a `secrets/**` name) is never recorded on the content, and leaves through the other name")


def test_a_write_through_a_hard_link_reaches_the_other_name():
    m = flow_monitor()
    assert m.decide(Request("link", "src/a.txt", dest="secrets/x")).allowed
    m.decide(Request("read", ".env"))
    assert m.decide(Request("write", "secrets/x")).allowed  # .env's content is now in src/a.txt too
    m.decide(Request("read", "src/a.txt", subject="s2"))
    d = m.decide(Request("connect", "https://api.anthropic.com", subject="s2"))
    assert not d.allowed, "the contents of .env reach the model API through the other name"


def test_a_file_moved_out_of_a_secret_name_keeps_what_was_written_there():
    m = flow_monitor()
    m.decide(Request("rename", "src/a.txt", dest="secrets/tmp"))
    m.decide(Request("read", ".env"))
    m.decide(Request("write", "secrets/tmp"))
    m.decide(Request("rename", "secrets/tmp", dest="src/out.txt"))
    assert describe(m, "src/out.txt") == "secret, trusted"


def test_a_link_onto_an_existing_name_keeps_its_label():
    m = coder_monitor()
    _float_secret(m, "src/notes.txt")
    m.decide(Request("link", "src/other.txt", dest="src/notes.txt"))
    assert describe(m, "src/notes.txt") == "secret, trusted"


def test_labels_persist_across_monitor_instances(tmp_path):
    path = tmp_path / "labels.db"
    first = coder_monitor(labels=LabelStore(path))
    _float_secret(first, "src/a.txt")
    first.decide(Request("link", "src/a.txt", dest="src/b.txt"))
    first.decide(Request("rename", "src/a.txt", dest="src/c.txt"))
    first.decide(Request("link", "src/plain.txt", dest="src/plain-link.txt"))
    first.close()

    second = coder_monitor(labels=LabelStore(path))
    assert describe(second, "src/a.txt") == "internal, trusted"
    assert describe(second, "src/b.txt") == describe(second, "src/c.txt") == "secret, trusted"
    d = second.decide(Request("read", "src/c.txt", subject="next-run"))
    assert d.taint_after == "secret, trusted"
    # the hard link is still shared in the new run: a raise through one name shows through the other
    second.decide(Request("write", "src/plain-link.txt", subject="next-run"))
    assert describe(second, "src/plain.txt") == "secret, trusted"
    second.close()

    third = coder_monitor(labels=LabelStore(path))
    assert describe(third, "src/plain.txt") == "secret, trusted"
    third.close()


# ===================================================================================== integrity
def test_an_untrusted_reply_lowers_integrity_and_mail_refuses_it():
    m = flow_monitor()
    d = m.decide(Request("connect", "https://pypi.org"))
    assert d.allowed and "the reply is `untrusted`" in d.reason
    assert d.taint_after == "public, untrusted"
    d = m.decide(Request("connect", "smtp.gmail.com:587"))
    assert not d.allowed
    assert d.rule.startswith("deny untrusted -> mail")
    assert d.tainted_by == (("untrusted", "https://pypi.org:443"),)
    assert d.explanation == "https://pypi.org:443 --reply--> session --connect--> smtp://smtp.gmail.com:587"


def test_an_untrusted_file_lowers_integrity_and_guards_ci():
    m = flow_monitor()
    m.decide(Request("read", "inbox/issue-42.md"))
    d = m.decide(Request("write", ".github/workflows/ci.yml"))
    assert not d.allowed and "requires `trusted`" in d.reason
    assert d.tainted_by == (("internal + untrusted", "inbox/issue-42.md"),)
    assert d.explanation.startswith("inbox/issue-42.md --read--> session --write--> .github/workflows/ci.yml")


def test_a_trusted_reply_keeps_integrity():
    m = flow_monitor()
    assert m.decide(Request("connect", "https://api.anthropic.com")).taint_after == "public, trusted"


# ===================================================================================== dns, send
@pytest.mark.parametrize("name", ["github.com", "api.github.com", "API.Anthropic.com.", "smtp.gmail.com"])
def test_dns_resolves_names_the_policy_knows(name):
    d = flow_monitor().decide(Request("dns", name))
    assert d.allowed and d.rule == "endpoints"


@pytest.mark.parametrize("name", ["evil.example", "github.com.evil.example", "a.b.github.com", "anthropic.com"])
def test_dns_refuses_unknown_names(name):
    d = coder_monitor().decide(Request("dns", name))
    assert not d.allowed and "lookups of unknown names are refused" in d.reason


def test_send_a_secret_to_its_bound_endpoint():
    d = coder_monitor().decide(Request("send", "ANTHROPIC_API_KEY@https://api.anthropic.com"))
    assert d.allowed and d.rule == "secret ANTHROPIC_API_KEY"


def test_send_a_secret_elsewhere_is_denied():
    d = flow_monitor().decide(Request("send", "ANTHROPIC_API_KEY@https://evil.example"))
    assert not d.allowed and d.rule == "secret ANTHROPIC_API_KEY"
    assert "bound to https://api.anthropic.com" in d.reason


def test_send_an_unknown_secret_is_denied():
    d = flow_monitor().decide(Request("send", "AWS_KEY@https://api.anthropic.com"))
    assert not d.allowed and "no secret named `AWS_KEY`" in d.reason


# ===================================================================================== never raises
GARBAGE = [
    Request("frobnicate", "src/a.py"),
    Request("", "src/a.py"),
    Request("read", "../outside"),
    Request("read", "src/\x00nul"),
    Request("read", 42),
    Request("write", b"bytes/path"),
    Request("rename", "src/a.py"),
    Request("link", "src/a.py", dest="../../etc/passwd"),
    Request("rename", "src/a.py", dest=7),
    Request("connect", "bad host:99"),
    Request("connect", "https://x.example/path"),
    Request("connect", "ftp://x.example"),
    Request("connect", "x.example:99999"),
    Request("connect", ""),
    Request("connect", 5),
    Request("dns", 3.5),
    Request("send", "no-at-sign"),
    Request("send", "KEY@not an endpoint"),
    Request("read", "src/a.py", token="garbage"),
    Request("read", "src/a.py", token=object()),
]


@pytest.mark.parametrize("request_", GARBAGE, ids=lambda r: f"{r.op}:{r.target!r}:{r.dest!r}:{type(r.token).__name__}")
def test_garbage_is_denied_with_a_reason_never_raised(verifier, log, request_):
    m = coder_monitor(verifier=verifier, log=log, clock=lambda: NOW)
    d = m.decide(request_)
    assert d.allowed is False
    assert d.reason
    assert d.event is not None, "every denial is logged"


GARBAGE_RAISING = [
    pytest.param(Request(None, "src/a.py"), id="op-None"),
    pytest.param(Request(["read"], "src/a.py"), id="op-list"),
    pytest.param(Request("read", ["src/a.py"]), id="target-list"),
    pytest.param(Request("read", None), id="read-None"),
    pytest.param(Request("connect", None), id="connect-None"),
    pytest.param(Request("dns", None), id="dns-None"),
    pytest.param(Request("send", None), id="send-None"),
    pytest.param(Request("read", "src/a.py", subject=["s"]), id="subject-list"),
    pytest.param(Request("read", "src/a.py", parent={"p": 1}), id="parent-dict"),
    pytest.param(Request("frob", "src/a.py", pid=["not", "an", "int"]), id="pid-list"),
]


@pytest.mark.parametrize("request_", GARBAGE_RAISING)
def test_garbage_with_a_log_is_denied_never_raised(verifier, log, request_):
    m = coder_monitor(verifier=verifier, log=log, clock=lambda: NOW)
    d = m.decide(request_)
    assert d.allowed is False and d.reason


def test_garbage_targets_are_denied_without_a_log():
    m = coder_monitor()
    for req in (Request(None, "x"), Request("read", None), Request("connect", None), Request("dns", None),
                Request("send", None), Request(["read"], "x")):
        d = m.decide(req)
        assert not d.allowed and d.reason


def test_an_internal_error_is_a_logged_denial(monkeypatch, log):
    m = coder_monitor(log=log)

    def boom(*args, **kwargs):
        raise RuntimeError("label store on fire")

    monkeypatch.setattr(m, "_absorb", boom)
    d = m.decide(Request("read", "src/a.py", pid=7, cmdline="cat src/a.py"))
    assert not d.allowed
    assert d.reason == "internal error, denied: RuntimeError: label store on fire"
    (event,) = log.events("deny")
    assert event.id == d.event and event.reason == d.reason and event.pid == 7


def test_an_internal_error_in_the_flow_check_is_a_denial(monkeypatch):
    m = coder_monitor()
    monkeypatch.setattr("ifc.monitor.monitor.check_send", lambda *a, **k: 1 / 0)
    d = m.decide(Request("connect", "https://pypi.org"))
    assert not d.allowed and d.reason.startswith("internal error, denied: ZeroDivisionError")
    assert m.decide(Request("read", "src/a.py")).allowed, "the monitor keeps working after an internal error"


def test_a_failed_allow_flush_does_not_swallow_later_denials(tmp_path):
    log = EventLog(tmp_path / "events.db", flush_every=2)
    m = flow_monitor(log=log)
    for req in (Request("read", "src/a.py", subject=None), Request("read", "src/b.py")):
        with contextlib.suppress(Exception):  # decide raising is the bug tested above; here: what it leaves
            m.decide(req)
    d = m.decide(Request("connect", "https://evil.example"))
    assert not d.allowed and d.event is not None
    other = sqlite3.connect(tmp_path / "events.db")
    assert other.execute("SELECT kind FROM events WHERE id = ?", (d.event,)).fetchall() == [("deny",)]


# ===================================================================================== explain
def test_explain_follows_the_whole_path_across_subjects():
    m = coder_monitor()
    steps = [Request("read", ".env", subject="reader"), Request("write", "src/notes.txt", subject="s2"),
             Request("read", "src/notes.txt", subject="s2"), Request("connect", "smtp.gmail.com:587", subject="s3")]
    decisions = [m.decide(r) for r in steps]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    d = decisions[-1]
    assert d.explanation == ".env --read--> reader --same run--> s3 --connect--> smtp://smtp.gmail.com:587"
    assert [(h.source, h.op, h.target) for h in d.path] == [
        ("file:.env", "read", "subject:reader"),
        ("subject:reader", "same run", "subject:s3"),
        ("subject:s3", "connect", "endpoint:smtp://smtp.gmail.com:587"),
    ]
    as_dict = d.to_dict()
    assert as_dict["explanation"] == d.explanation and len(as_dict["path"]) == 3


def test_explain_without_an_agent_on_the_top_level_name():
    m = flow_monitor()
    for r in (Request("read", ".env"), Request("write", "notes.txt")):
        assert m.decide(r).allowed
    d = m.decide(Request("connect", "smtp.gmail.com:587"))
    assert d.explanation == ".env --read--> session --connect--> smtp://smtp.gmail.com:587"
    m2 = Monitor(m.policy, labels=m.labels)
    assert m2.decide(Request("read", "notes.txt")).allowed
    d = m2.decide(Request("connect", "smtp.gmail.com:587"))
    assert d.explanation == "notes.txt --read--> session --connect--> smtp://smtp.gmail.com:587"


def test_explain_follows_a_rename():
    m = coder_monitor()
    _float_secret(m, "src/a.txt")
    m.decide(Request("rename", "src/a.txt", dest="src/b.txt"))
    m2 = next_run(m)
    m2.decide(Request("read", "src/b.txt"))
    d = m2.decide(Request("connect", "https://api.anthropic.com"))
    assert not d.allowed and d.tainted_by == (("secret", "src/b.txt"),)
    assert d.explanation == "src/b.txt --read--> session --connect--> https://api.anthropic.com:443"


def test_flow_denial_offers_a_fix():
    pol = compile_text(DECLASSIFY_POLICY).policy
    m = Monitor(pol)
    m.decide(Request("read", "internal.txt"))
    d = m.decide(Request("connect", "https://pub.example"))
    assert not d.allowed
    assert d.fix["policy"] == 'allow internal -> "https://pub.example:443" "why this data may go there"'
    assert "--declassify 'internal to https://pub.example:443'" in d.fix["mint"]


# ===================================================================================== declassification
DECLASSIFY_POLICY = """
labels {
  secrecy public < internal < secret
  secrecy customer
  integrity untrusted < trusted
}
files {
  "**"            public
  "internal.txt"  internal
  "secret.txt"    secret
  "crm.csv"       customer
}
endpoints {
  "https://pub.example"  clearance public returns trusted as ext
  "https://int.example"  clearance internal returns trusted as ext
}
declassify release: secret -> "https://pub.example"  "a reviewer approved the release"
"""


@cache
def declassify_policy() -> Policy:
    result = compile_text(DECLASSIFY_POLICY)
    assert result.policy is not None, [d.message for d in result.diagnostics]
    return result.policy


def test_a_held_declassification_is_used_and_logged(log):
    m = Monitor(declassify_policy(), held=frozenset({"release"}), log=log)
    m.decide(Request("read", "secret.txt"))
    d = m.decide(Request("connect", "https://pub.example", pid=9))
    assert d.allowed and d.capabilities_used == ("release",)
    (event,) = log.events("declassify")
    assert event.target == "https://pub.example:443" and "release" in event.reason
    assert event.message == "a reviewer approved the release" and event.pid == 9


def test_a_declassification_covers_only_its_tags():
    m = Monitor(declassify_policy(), held=frozenset({"release"}))
    m.decide(Request("read", "secret.txt"))
    m.decide(Request("read", "crm.csv"))
    d = m.decide(Request("connect", "https://pub.example"))
    assert not d.allowed and "`customer` exceeds" in d.reason


def test_without_the_capability_the_connect_is_denied():
    m = Monitor(declassify_policy())
    m.decide(Request("read", "secret.txt"))
    assert not m.decide(Request("connect", "https://pub.example")).allowed


def test_a_token_declassify_right_is_used_and_logged(verifier, log):
    tok = token(["connect https://int.example", "declassify secret to https://int.example"])
    m = Monitor(declassify_policy(), verifier=verifier, log=log, clock=lambda: NOW)
    m.decide(Request("read", "secret.txt"))
    d = m.decide(Request("connect", "https://int.example", token=tok))
    assert d.allowed and d.capabilities_used == ("token: declassify secret",)
    (event,) = log.events("declassify")
    assert event.target == "https://int.example:443"
    other = m.decide(Request("connect", "https://int.example", subject="s2",
                             token=token(["connect https://int.example"])))
    assert not other.allowed, "s2 shares the run's taint and holds no declassification"


def test_the_suggested_mint_fix_really_fixes_the_denial(verifier):
    m = Monitor(declassify_policy(), verifier=verifier, clock=lambda: NOW)
    m.decide(Request("read", "secret.txt"))
    denied = m.decide(Request("connect", "https://pub.example"))
    assert "--declassify 'secret to https://pub.example:443'" in denied.fix["mint"]
    tok = token(["connect https://pub.example", "declassify secret to https://pub.example:443"])
    d = m.decide(Request("connect", "https://pub.example", token=tok))
    assert d.allowed, d.reason


def test_a_deny_rule_beats_a_token_declassification(verifier):
    tok = token(["read **", "connect https://pypi.org", "declassify secret to https://pypi.org",
                 "declassify internal to https://pypi.org"])
    m = Monitor(default(), verifier=verifier, clock=lambda: NOW)
    m.decide(Request("read", ".env", token=tok))
    d = m.decide(Request("connect", "https://pypi.org", token=tok))
    assert not d.allowed and d.rule.startswith("deny secret -> external")


# ===================================================================================== the event log
def test_every_denial_and_label_change_is_logged_with_its_fields(verifier, tmp_path):
    log = EventLog(tmp_path / "events.db")
    m = coder_monitor(log=log, verifier=verifier, clock=lambda: NOW)
    requests = [
        Request("read", ".env", pid=10, cmdline="cat .env"),
        Request("write", "src/notes.txt", pid=11, cmdline="tee src/notes.txt"),
        Request("connect", "smtp.gmail.com:587", pid=12, cmdline="sendmail"),  # flow denial
        Request("write", "ifc/x.py", pid=13, cmdline="vim ifc/x.py"),  # authority denial
        Request("dns", "exfil.example", pid=14, cmdline="dig exfil.example"),  # dns denial
        Request("read", "src/a.py", token="garbage", pid=15, cmdline="cat src/a.py"),  # token denial
        Request("rename", "src/notes.txt", dest="tests/notes.txt", pid=16, cmdline="mv"),  # label change
    ]
    decisions = [m.decide(r) for r in requests]
    denials = [d for d in decisions if not d.allowed]
    assert len(denials) == 4
    # committed before decide returned: a second connection sees them without any flush or close
    other = open_readonly(tmp_path / "events.db")
    events = {e.id: e for e in read_events(other, "deny")}
    assert sorted(events) == sorted(d.event for d in denials)
    for d, req in ((d, r) for d, r in zip(decisions, requests, strict=True) if not d.allowed):
        e = events[d.event]
        assert (e.kind, e.allowed, e.subject, e.op, e.target) == ("deny", False, "session", req.op, d.target)
        assert e.reason == d.reason and e.rule == d.rule
        assert (e.pid, e.cmdline) == (req.pid, req.cmdline)
        assert e.taint_before == e.taint_after == "secret, trusted"
        assert e.ts > 0
    flow = events[decisions[2].event]
    assert flow.rule_span and flow.message == "secrets never leave the sandbox"
    assert flow.object_label.startswith("clearance public")
    assert flow.path == [["file:.env", "read", "subject:session"],
                         ["subject:session", "connect", "endpoint:smtp://smtp.gmail.com:587"]]
    assert flow.fix and "policy" in flow.fix
    authority = events[decisions[3].event]
    assert authority.rule == "agent coder" and authority.rule_span and authority.fix["mint"].startswith("ifc caps")
    labels = list(read_events(other, "label"))
    assert [(e.target, e.object_label, e.op) for e in labels] == [
        ("src/notes.txt", "secret, trusted", "write"), ("tests/notes.txt", "secret, trusted", "rename"),
        ("tests", "secret, trusted", "rename"), ("src", "secret, trusted", "rename")]  # names a secret run made
    # and removed: their directories' (`_name_made`)
    for e in labels:
        assert e.reason and e.pid and e.cmdline and e.subject == "session" and e.allowed
    log.close()


def test_allows_are_aggregated_with_counts(tmp_path):
    log = EventLog(tmp_path / "events.db")
    m = coder_monitor(log=log)
    for _ in range(5):
        assert m.decide(Request("read", "src/a.py")).allowed
    for _ in range(3):
        assert m.decide(Request("read", "src/b.py", subject="s2")).allowed
    m.decide(Request("connect", "https://pypi.org"))
    assert m.decide(Request("write", "nope/x")).allowed is False
    m.close()
    db = sqlite3.connect(tmp_path / "events.db")
    rows = sorted(db.execute("SELECT subject, op, object, count FROM allows"))
    assert rows == [("s2", "read", "src/b.py", 3), ("session", "connect", "https://pypi.org:443", 1),
                    ("session", "read", "src/a.py", 5)]
    assert db.execute("SELECT count(*) FROM events WHERE allowed = 1 AND kind = 'allow'").fetchone() == (0,)
    first, last = db.execute("SELECT first_ts, last_ts FROM allows WHERE object = 'src/a.py'").fetchone()
    assert first <= last


def test_allows_flush_every_n(tmp_path):
    log = EventLog(tmp_path / "events.db", flush_every=4)
    m = coder_monitor(log=log)
    for _ in range(4):
        m.decide(Request("read", "src/a.py"))
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("SELECT count FROM allows").fetchall() == [(4,)]
    for _ in range(4):
        m.decide(Request("read", "src/a.py"))
    assert db.execute("SELECT count FROM allows").fetchall() == [(8,)]
    log.close()


def test_decisions_are_numbered_in_order():
    m = coder_monitor()
    steps = [m.decide(Request("read", "src/a.py")).step for _ in range(3)]
    assert steps == [1, 2, 3]

