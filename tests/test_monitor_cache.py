"""The monitor's fast-path cache never changes an answer (hypothesis).

Two monitors on the shipped default policy see the same random request sequence: one answers repeats from its
fast-path cache (and its memo of write verdicts), the other has both emptied before every decision, so it
decides everything in full. Sequences mix subjects (some children of others), every operation, secret,
untrusted and plain files, known and unknown endpoints, and capability tokens — one expiring mid-sequence on
the monitor's clock and one revoked mid-sequence — so taint rises, labels float, move and are forgotten, and
tokens lapse between repeats. After each step the two must agree on the whole Decision (step, reason, labels,
provenance), and at the end on every subject's taint, every floated label, the provenance graph and the allow
counts.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from functools import cache

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from caps import HostKey, Verifier, mint, revoke
from ifc.monitor import EventLog, Monitor, Request
from ifc.monitor.monitor import Repeat
from ifc.policy import Policy, load_policy, shipped_policy

NOW = 1_800_000_000.0
AUDIENCE = "run-cache-tests"
HOST = HostKey.generate()
SHORT = mint(HOST, rights=["read **", "write src/**", "connect https://api.anthropic.com"], audience=AUDIENCE,
             ttl=30, now=NOW)
LONG = mint(HOST, rights=["read src/**", "create src/**", "delete src/**", "write src/**",
                          "connect https://pypi.org"], audience=AUDIENCE, ttl=3600, now=NOW)
REVOKED = mint(HOST, rights=["read **", "write **"], audience=AUDIENCE, ttl=3600, now=NOW)

FILES = ("src/notes.txt", ".env", "inbox/issue-42.md", ".git/hooks/pre-commit", "src/../.env")
ENDPOINTS = ("https://api.anthropic.com", "https://pypi.org", "smtp.gmail.com:587", "https://unknown.example")
SUBJECTS = ("session", "s1")

# reads and writes are most of a session, and what makes taint rise and labels float between repeats
_file_op = st.tuples(st.sampled_from(("read", "read", "read", "write", "write", "create", "delete", "exec", "chmod")),
                     st.sampled_from(FILES), st.none())
_move = st.tuples(st.sampled_from(("rename", "link")), st.sampled_from(FILES), st.sampled_from(FILES))
_net = st.tuples(st.sampled_from(("connect", "dns")), st.sampled_from(ENDPOINTS), st.none())
_send = st.tuples(st.just("send"), st.sampled_from(("GITHUB_TOKEN@https://github.com", "NOPE@https://pypi.org")),
                  st.none())
_request = st.builds(
    lambda what, subject, parent, token: Request(what[0], what[1], subject=subject, dest=what[2], token=token,
                                                 parent=parent),
    st.one_of(_file_op, _file_op, _file_op, _move, _net, _send), st.sampled_from(SUBJECTS),
    st.sampled_from((None, "session")), st.sampled_from((None, None, None, SHORT, LONG, REVOKED)))
# each step: a request, asked 1-3 times in a row (repeats are what the cache answers), then the clock moves
_steps = st.lists(st.tuples(_request, st.integers(1, 3), st.sampled_from((0.0, 0.0, 5.0, 20.0))), min_size=5,
                  max_size=40)


@cache
def policy() -> Policy:
    return load_policy(shipped_policy("default"))


class Run:
    """One monitor with its own clock, verifier and log."""

    def __init__(self, tmp, name: str, sqlite: bool = False):
        """`sqlite`: the labels in a SQLite store, `<name>-labels.db` (as `ifc run` keeps them), not in memory."""
        from ifc.monitor import LabelStore

        self.now = NOW
        self.verifier = Verifier([HOST.public], audience=AUDIENCE)
        self.log = EventLog(tmp / f"{name}.db")
        pol = policy()
        self.monitor = Monitor(pol, agent=pol.agents["coder"], verifier=self.verifier, log=self.log,
                               clock=lambda: self.now,
                               labels=LabelStore(tmp / f"{name}-labels.db") if sqlite else None)

    def revoke(self) -> None:
        self.verifier.set_revocations(revoke(REVOKED, self.verifier.revocations))

    def state(self) -> tuple:
        m = self.monitor
        self.log.flush()
        allows = sorted(self.log._db.execute("SELECT subject, op, object, count FROM allows"))
        return ({name: s.taint for name, s in m.subjects.items()}, m.labels.snapshot(), m.graph.edges,
                m.graph.origin, allows, [(e.kind, e.target, e.reason) for e in self.log.events()])


# the invalidations a random sequence rarely lines up, pinned: a label floats under a cached read
@example(steps=[(Request("read", "src/notes.txt", subject="s1"), 2, 0.0), (Request("read", ".env"), 1, 0.0),
                (Request("write", "src/notes.txt"), 1, 0.0), (Request("read", "src/notes.txt", subject="s1"), 1, 0.0)],
         revoke_at=40)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps, revoke_at=st.integers(0, 40))
def test_the_fast_path_cache_never_changes_a_decision(tmp_path_factory, steps, revoke_at):
    tmp = tmp_path_factory.mktemp("cache")
    _replay(Run(tmp, "cached"), Run(tmp, "full"), steps, revoke_at)


def _replay(cached: Run, full: Run, steps, revoke_at: int | None = None, warm: Warm | None = None) -> None:
    """The same steps through both monitors, `full` deciding each in full: every answer and the end state agree.
    With `warm`, `cached`'s reads are first offered to it, as the mount's fast path is asked before Python."""
    try:
        for index, (request, repeats, advance) in enumerate(steps):
            if index == revoke_at:
                cached.revoke()
                full.revoke()
            for _ in range(repeats):
                full.monitor._fast.clear()  # every decision in full
                full.monitor._write_verdicts.clear()
                if warm is not None and warm.serve(request, cached.now):
                    decision = full.monitor.decide(request)  # what deciding it in full answers instead
                    assert decision.allowed and decision.taint_after == decision.taint_before, (request, decision)
                    continue
                if warm is None:
                    assert cached.monitor.decide(request) == full.monitor.decide(request), request
                    continue
                tick = warm.tick
                decision, repeat = cached.monitor.decide_repeatable(request)
                assert decision == full.monitor.decide(request), request
                warm.record(request, tick, repeat)
                if request.op == "create" and decision.allowed:  # as the mount does: the new file's change
                    change, tick = replace(request, op="chmod"), warm.tick
                    warm.record(change, tick, cached.monitor.anticipate(change))
            cached.now += advance
            full.now += advance
        assert cached.state() == full.state()
    finally:
        cached.log.close()
        full.log.close()


class Warm:
    """The mount's warm answers (`ifc.enforce.fastpath`, `fastpath.c`), modelled as the C side keeps them: a read (an
    open) or a chmod (a change of mode, owner or times) the monitor called repeatable is recorded with the clock
    tick read before it was decided, and served without asking the monitor while no later tick covers it — one
    for every name (the monitor's `on_taint`, the verifier's `on_revocations`, the label store's `on_change`
    without names) or for its name (`on_change` with names) — the time is inside its window, and the label
    store's WAL header is what the latest record saw; its hits are handed back with `repeated`. Names the mount
    never sees (with `..`) are not modelled."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self.tick, self.floor = 1, 1
        self.stale_at: dict[str, int] = {}
        self.entries: dict[tuple, tuple] = {}
        self.seen: tuple[int, bytes] | None = None
        self.served = 0
        monitor.on_taint.append(self.stale)
        monitor.labels.on_change.append(self.stale)
        monitor.verifier.on_revocations.append(self.stale)

    def stale(self, names: frozenset[str] | None = None) -> None:
        self.tick += 1
        if names is None:
            self.floor = self.tick
        for name in names or ():
            self.stale_at[name] = self.tick

    @staticmethod
    def modelled(request: Request) -> bool:
        return request.op in ("read", "chmod") and ".." not in request.target.split("/")

    def record(self, request: Request, tick: int, repeat: Repeat | None) -> None:
        if repeat is not None and self.modelled(request) and repeat.target == request.target:
            self.entries[(request.subject, request.token, request.op, request.target)] = (tick, repeat)
            self.seen = repeat.labels

    def serve(self, request: Request, now: float) -> bool:
        key = (request.subject, request.token, request.op, request.target)
        entry = self.entries.get(key) if self.modelled(request) else None
        if entry is None:
            return False
        tick, repeat = entry
        if tick < self.floor or self.stale_at.get(request.target, 0) > tick:
            return False
        if not repeat.window[0] <= now < repeat.window[1]:
            return False
        if self.seen is not None and os.pread(self.seen[0], len(self.seen[1]), 0) != self.seen[1]:
            return False
        self.served += 1
        self.monitor.repeated(repeat, 1, now)
        return True


@example(steps=[(Request("read", "src/notes.txt", subject="s1"), 3, 0.0), (Request("read", ".env"), 1, 0.0),
                (Request("read", "src/notes.txt", subject="s1"), 2, 0.0),
                (Request("read", "src/notes.txt", token=SHORT), 3, 20.0),
                (Request("read", "src/notes.txt", token=SHORT), 2, 20.0)], revoke_at=40)
# a name deleted, renamed onto (storing no label: the version stays) and deleted again: the second deletion was
# answered from the cache, which left the renamed node in the provenance graph
@example(steps=[(Request("delete", ".env"), 1, 0.0), (Request("rename", "src/notes.txt", dest=".env"), 1, 0.0),
                (Request("delete", ".env"), 1, 0.0)], revoke_at=0)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps, revoke_at=st.integers(0, 40))
def test_what_is_served_warm_is_what_the_monitor_would_allow_without_a_change(tmp_path_factory, steps, revoke_at):
    """Reads and chmods the monitor called repeatable (`Monitor.repeatable`), or anticipated when a file was made
    (`Monitor.anticipate`), served without asking it while nothing they depend on moved (the mount's warm opens,
    modelled by `Warm`), are each allowed by a full decision that raises no taint, and once counted back
    (`Monitor.repeated`) leave the taint, labels, graph and allow counts as deciding every one in full does
    (an anticipated change never made leaves nothing)."""
    tmp = tmp_path_factory.mktemp("warm")
    cached = Run(tmp, "cached")
    _replay(cached, Run(tmp, "full"), steps, revoke_at, Warm(cached.monitor))


def test_a_decision_repeats_once_asking_again_would_change_nothing_and_says_for_how_long(tmp_path):
    run = Run(tmp_path, "run")
    m = run.monitor
    first = Request("read", "src/notes.txt")
    decision, repeat = m.decide_repeatable(first)
    assert decision.allowed and repeat is None  # the read raised the taint: asked again, it is decided in full
    decision, repeat = m.decide_repeatable(first)
    assert decision.allowed and repeat.window == (-math.inf, math.inf) and repeat.target == "src/notes.txt"
    assert (repeat.subject, repeat.op) == ("session", "read")
    assert repeat.edges and repeat.labels is None  # counted in the graph; a store in memory has nothing to watch
    assert m.decide_repeatable(Request("write", "src/notes.txt"))[1] is not None  # any repeat: the mount asks reads
    token = Request("read", "src/notes.txt", token=LONG)
    assert m.decide_repeatable(token)[1].window == (NOW, NOW + 3600)
    run.now += 3600
    assert m.decide_repeatable(token)[1] is None  # expired: denied
    moved = []
    m.verifier.on_revocations.append(lambda: moved.append("revocations"))
    m.labels.on_change.append(lambda names: moved.append(names))
    run.revoke()
    m.labels.raise_to("src/notes.txt", m.policy.lattice.bottom)
    assert moved == ["revocations", frozenset({"src/notes.txt"})]
    count = m.steps
    m.repeated(repeat, 5, NOW + 1)
    assert m.steps == count + 5 and m.graph.edges[(*repeat.edges[0][::2], "read")][0] >= 7


def test_an_anticipated_change_is_decided_without_effect(tmp_path):
    """`anticipate` answers what `decide_repeatable` would of a change the mount expects, and changes nothing:
    no allow count, edge or event until the change is made and handed back (`repeated`)."""
    run = Run(tmp_path, "run")
    m = run.monitor
    assert m.decide(Request("create", "src/new.py")).allowed
    before = run.state()
    repeat = m.anticipate(Request("chmod", "src/new.py"))
    assert repeat is not None and (repeat.op, repeat.target) == ("chmod", "src/new.py") and repeat.edges
    assert run.state() == before
    m.repeated(repeat, 1, NOW)
    assert run.state() != before and ("session", "chmod", "src/new.py", 1) in run.state()[4]
    assert m.anticipate(Request("chmod", ".git/hooks/pre-commit")) is None  # an event each time
    assert m.anticipate(Request("chmod", "secrets/k")) is None  # denied (no grant)
    assert m.decide(Request("read", "inbox/mail")).allowed
    before = run.state()
    assert m.anticipate(Request("chmod", ".github/workflows/ci.yml")) is None  # untrusted now: denied
    assert run.state() == before  # and the denial is no event: nothing was asked
    with pytest.raises(ValueError):
        m.anticipate(Request("read", "src/new.py"))


def test_changing_a_returned_decision_changes_no_later_answer():
    pol = policy()
    m = Monitor(pol, agent=pol.agents["coder"])
    request = Request("read", "src/app.py")
    first = m.decide(request)
    first.allowed, first.reason = False, "scribbled on by a caller"
    again = m.decide(request)  # answered from the fast-path cache
    assert again.allowed and again.reason != "scribbled on by a caller" and again.step == first.step + 1
    again.reason = "scribbled again"
    assert m.decide(request).reason == Monitor(pol, agent=pol.agents["coder"]).decide(request).reason


def test_a_repeat_is_not_answered_past_a_label_another_run_raised(tmp_path):
    """Two runs on one workspace share its label store: a read the first run's cache holds must see a raise the
    second run committed since (before, the repeat was answered from the cache without looking at the store,
    so the first run's taint stayed below what it had just read)."""
    from ifc.monitor import LabelStore
    from ifc.policy.labels import Label

    pol = policy()
    first = Monitor(pol, agent=pol.agents["coder"], labels=LabelStore(tmp_path / "labels.db"))
    second = LabelStore(tmp_path / "labels.db")
    request = Request("read", "src/notes.txt")
    assert "secret" not in first.decide(request).taint_after
    assert first.decide(request).taint_after == first.decide(request).taint_after  # a cached repeat
    second.raise_to("src/notes.txt", Label(frozenset({"secret"}), pol.lattice.bottom.integrity))
    again = first.decide(request)
    assert again.allowed and "secret" in first.run.taint.secrecy, again


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_the_fast_path_cache_never_changes_a_decision_with_the_sqlite_store(tmp_path_factory, steps):
    """As above, with each monitor's labels in a SQLite store (as `ifc run` keeps them): deletions and renames of
    names without a label leave the store's version alone, and cached decisions must still match."""
    tmp = tmp_path_factory.mktemp("cache-sqlite")
    _replay(Run(tmp, "cached", sqlite=True), Run(tmp, "full", sqlite=True), steps)


def test_the_warm_model_serves_what_nothing_moved_under_and_nothing_else(tmp_path):
    notes, secret = Request("read", "src/notes.txt", subject="s1"), Request("read", ".env")
    short = Request("read", "src/notes.txt", token=SHORT)
    cached = Run(tmp_path, "cached")
    warm = Warm(cached.monitor)
    # notes: decided (it raises the taint), decided again (now repeatable), served; the secret's read moves the
    # taint, so notes is decided once more (repeatable at once: it raises nothing now), then served twice; the
    # short token's read likewise, until the token has expired
    steps = [(notes, 3, 0.0), (secret, 1, 0.0), (notes, 3, 0.0), (short, 3, 40.0), (short, 2, 0.0)]
    _replay(cached, Run(tmp_path, "full"), steps, None, warm)
    assert warm.served == 1 + 2 + 2


def test_a_warm_read_is_not_served_past_a_label_another_run_committed(tmp_path):
    """The label store is the workspace's, shared by concurrent runs: a raise another run commits changes no
    generation in this process, so a warm read is served only while the store's WAL header is as the monitor last
    saw it — the next read is decided, and taints the run."""
    from ifc.monitor import LabelStore
    from ifc.policy.labels import Label

    pol = policy()
    run = Run(tmp_path, "run", sqlite=True)
    warm, other = Warm(run.monitor), LabelStore(tmp_path / "run-labels.db")
    request = Request("read", "src/notes.txt")
    for _ in range(2):
        tick = warm.tick
        warm.record(request, tick, run.monitor.decide_repeatable(request)[1])
    assert warm.serve(request, run.now) and warm.seen is not None
    other.raise_to("src/notes.txt", Label(frozenset({"secret"}), pol.lattice.bottom.integrity))
    assert not warm.serve(request, run.now)
    assert run.monitor.decide(request).allowed and "secret" in run.monitor.run.taint.secrecy
    other.close()
    run.log.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps, revoke_at=st.integers(0, 40))
def test_reads_served_warm_with_the_sqlite_store_change_no_answer(tmp_path_factory, steps, revoke_at):
    """As the warm test above, with the labels in a SQLite store: its WAL header is part of what must not move."""
    tmp = tmp_path_factory.mktemp("warm-sqlite")
    cached = Run(tmp, "cached", sqlite=True)
    _replay(cached, Run(tmp, "full", sqlite=True), steps, revoke_at, Warm(cached.monitor))


def test_a_rename_elsewhere_leaves_a_warm_read_standing_and_one_onto_its_name_does_not(tmp_path):
    """Every rename commits to the label store (the content takes its label to the new name), but only the two
    names change label: a warm read of a third name stays warm; a rename onto the warm name makes its next read
    a decision again — which taints the run with what was moved there."""
    notes = Request("read", "src/notes.txt")
    elsewhere = Request("rename", "src/a.txt", dest="src/b.txt")
    onto = Request("rename", ".env", dest="src/notes.txt")
    cached = Run(tmp_path, "cached")
    warm = Warm(cached.monitor)
    steps = [(notes, 2, 0.0), (elsewhere, 1, 0.0), (notes, 2, 0.0), (onto, 1, 0.0), (notes, 1, 0.0)]
    _replay(cached, Run(tmp_path, "full"), steps, None, warm)
    assert warm.served == 2
    assert "secret" in cached.monitor.run.taint.secrecy
