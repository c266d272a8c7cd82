"""The reference monitor: the one place a decision is made.

`Monitor.decide(request)` first applies the containment rules (`ifc.monitor.containment`: symlinks, hard
links, devices, xattrs, addresses — on the facts the enforcement point collected), then asks two questions
and both must say yes:

  authority — does the subject's capability token (or, without one, its agent's grants) allow the
              operation on the object? The token block that refused is named.
  flow      — given the run's taint, may the data go there? (`ifc.policy.flows`, shared with the
              static checker.)

Taint belongs to the run, not to a subject: inside one sandbox every process can hand data to every other
(tmpfs, pipes, shared memory), so every subject — the session, a process presenting its own token, a token the
sandbox derived offline from its own — shares one `RunState`. Subjects differ only in *authority* (which
token or grants decide what they may touch); none is ever below the run's taint.

Then it applies the effects of an allowed operation: reads raise the run's taint; writes float the
object's label up to the taint (kept per object in the `LabelStore`, so renames and hard links carry
it); replies from endpoints lower integrity. A decision holds for the life of what it allowed: egress
streams are registered (`open_stream`), and when the taint rises every open stream is decided again, inside
the decision that raised it, and cut (its `cut` callback, a non-blocking socket shutdown) when no longer
cleared — before the read that raised the taint returns any data to the sandbox.

Every decision becomes an event; denials, label changes, declassifications, first token uses and every change to
host-executed configuration (`ifc.policy.hostcfg`, allowed or not) are
committed to the log before `decide` returns. It never raises: an internal error is a denial that says why.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import stat as stat_mod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from caps import TokenError
from ifc.lang.lower import encode_string
from ifc.match import HTTP_SCHEMES, Endpoint, EndpointPattern, PatternError, glob_literal, methods_text, normalise_path
from ifc.monitor import containment, denials
from ifc.monitor.containment import CONTAINMENT_OPS, Facts
from ifc.monitor.cutoff import Cutoff, is_model, lowering_commands, policy_named, what_was_read
from ifc.monitor.events import EventLog
from ifc.monitor.labelstore import LabelStore, Why
from ifc.monitor.provenance import Hop, ProvenanceGraph, draw, node
from ifc.policy import hostcfg
from ifc.policy.flows import FlowVerdict, check_send, check_write
from ifc.policy.labels import Label
from ifc.policy.model import Agent, Policy

FILE_OPS = ("read", "write", "create", "delete", "exec", "chmod")
TWO_PATH_OPS = ("rename", "link")
NET_OPS = ("connect", "dns", "send")
# a directory's names read (a listing); whether one name is there, and the attributes of what is (a lookup)
LIST, LOOKUP = "list", "lookup"
ALL_OPS = (*FILE_OPS, *TWO_PATH_OPS, *NET_OPS, *CONTAINMENT_OPS, LIST, LOOKUP)
# never answered from the cache: a move renames the provenance graph's node, a deletion forgets it (a repeat from the
# cache would only add edges; a name renamed in and deleted again left its node behind)
_GRAPH_CHANGES = frozenset({"rename", "link", "delete"})
_AUTHORITY_OP = {"chmod": "write", "rename": "write", "link": "create", "dns": "connect", "send": "connect"}


@dataclass(slots=True)
class Request:
    """One question for the monitor. Not frozen: a frozen dataclass pays an `object.__setattr__` per field
    (1.7 µs against 0.3 µs here), and the monitor keeps no request, only the values it reads from one."""

    op: str
    target: str
    subject: str = "session"
    dest: str | None = None  # rename/link destination
    token: str | bytes | None = None
    parent: str | None = None  # the subject that started this one (a sub-process), for the graph
    pid: int | None = None
    # the command behind the request, for the log: text, or a function reading it, called only when an event
    # is recorded (allows record none, and reading /proc/PID/cmdline for each one cost ~10 µs)
    cmdline: str | Callable[[], str | None] | None = None
    # what the enforcement point saw on disk or on the network, for the containment rules
    facts: Facts | None = None


@dataclass
class Decision:
    """The answer, and what a reviewer needs to understand it. Not frozen, for speed (4.5 µs against 1.2 µs
    to build one: a first-seen decision builds one); so the fast-path cache keeps a copy of its fields and
    hands out new decisions (`_restep`): changing a decision one was given changes no later answer."""

    step: int
    op: str
    target: str
    allowed: bool
    reason: str
    rule: str | None = None
    rule_span: str | None = None
    message: str | None = None
    object_label: str | None = None
    taint_before: str = ""
    taint_after: str = ""
    tainted_by: tuple[tuple[str, str], ...] = ()  # (label part, object it came from)
    capabilities_used: tuple[str, ...] = ()
    subject: str = "session"
    token_id: str | None = None
    token_block: int | None = None
    path: tuple[Hop, ...] = ()  # for a flow denial: source → ... → sink
    event: int | None = None
    fix: dict | None = None
    cutoff: Cutoff | None = None  # a flow denial of the agent's own model endpoint (`as model`)

    @property
    def explanation(self) -> str:
        return draw(list(self.path))

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "path"}
        out["tainted_by"] = [list(p) for p in self.tainted_by]
        out["capabilities_used"] = list(self.capabilities_used)
        out["path"] = [[h.source, h.op, h.target] for h in self.path]
        out["cutoff"] = self.cutoff.to_dict() if self.cutoff is not None else None
        out["explanation"] = self.explanation
        return out


def _restep(fields: dict, step: int) -> Decision:
    """A new Decision from a cached decision's fields, under a new step number. Built from the instance dict
    directly: `copy.copy` and `dataclasses.replace` cost 3-5 µs, half a cached decision."""
    fresh = object.__new__(Decision)
    fresh.__dict__ = {**fields, "step": step}
    return fresh


def _cmdline(request: Request) -> str | None:
    """The request's command line for an event. Attribution is best effort: failing to read it must never
    cost a denial its log entry."""
    cmdline = request.cmdline
    if not callable(cmdline):
        return cmdline
    try:
        text = cmdline()
    except Exception:
        return None
    return text if isinstance(text, str) else None


def _endpoint(text: str, facts: Facts | None) -> Endpoint:
    """The endpoint a network request names; a connection is `inspected` when the hook says it will decide
    every request on it (`Facts.inspected`: a plain-HTTP forward, a TLS tunnel it terminates)."""
    endpoint = Endpoint.parse(text)
    if facts is not None and facts.inspected and endpoint.path is None and endpoint.scheme in HTTP_SCHEMES:
        return replace(endpoint, inspected=True)
    return endpoint


def _moves(target: str, dest: str, beneath: tuple[str, ...]) -> tuple[tuple[str, str], ...] | None:
    """(old, new) of every name beneath a directory renamed from `target` to `dest`; None if one of `beneath`
    does not stay beneath (an enforcement point's walk gives plain relative names: anything else fails closed)."""
    moves = []
    for sub in beneath:
        try:
            if not isinstance(sub, str) or not sub or sub.startswith("/") or normalise_path(sub) != sub:
                return None
        except PatternError:
            return None
        moves.append((f"{target}/{sub}", f"{dest}/{sub}"))
    return tuple(moves)


def _malformed(request: Request) -> str | None:
    """Why a request is not well-typed (enforcement points build them from wire data), or None.

    Asked on every decision, the cached ones too: one test per field, no loops (half the cost of a loop
    over field names)."""
    op, target, subject, dest, parent, cmdline, pid = (request.op, request.target, request.subject, request.dest,
                                                        request.parent, request.cmdline, request.pid)
    if not isinstance(op, str):
        return "`op` must be text"
    if not isinstance(target, str):
        return "`target` must be text"
    if not isinstance(subject, str):
        return "`subject` must be text"
    if dest is not None and not isinstance(dest, str):
        return "`dest` must be text"
    if parent is not None and not isinstance(parent, str):
        return "`parent` must be text"
    if cmdline is not None and not isinstance(cmdline, str) and not callable(cmdline):
        return "`cmdline` must be text (or a function giving it)"
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        return "`pid` must be a number"
    if request.facts is not None and not isinstance(request.facts, Facts):
        return "`facts` must be Facts"
    if "\x00" in target or "\x00" in subject:
        return "NUL byte"
    return None


@dataclass
class RunState:
    """The run's taint, shared by every subject of the run (see the module docstring)."""

    taint: Label
    sources: dict[str, str] = field(default_factory=dict)  # label part -> graph node it came from
    readers: dict[str, str] = field(default_factory=dict)  # label part -> subject node that absorbed it
    arrived: dict[str, float] = field(default_factory=dict)  # label part -> when it joined the taint
    provenance: tuple | None = None  # `_provenance` of the current sources; None when they changed



class Repeat(NamedTuple):
    """A decision the monitor would answer again from its cache (`Monitor.decide_repeatable`). A named tuple, not
    a dataclass: one is made for every read the mount decides, and a tuple is made in a fraction of the time."""

    subject: str
    op: str
    target: str  # as the decision named it (normalised)
    window: tuple[float, float]  # when it holds: the token's validity (not before, expires), else unbounded
    edges: tuple  # the provenance edges each repeat records
    labels: tuple[int, bytes] | None  # the label store's WAL index (descriptor, header) as of the decision


class Made(NamedTuple):
    """A create, delete, change of mode or read an enforcement point may answer itself for every name of its class
    (`Monitor.decide_made`): decided without effect but the provenance edge and the count, which `made` records
    for each name it answers. Holds while the run's taint and the labels stay as they are (as `Repeat`)."""

    subject: str
    op: str
    taint: Label  # the run's, as the decision saw it
    window: tuple[float, float]
    labels: tuple[int, bytes] | None


MADE_OPS = frozenset({"create", "delete", "chmod", "read"})


@dataclass(eq=False)
class Stream:
    """An open egress stream the monitor allowed: re-decided whenever the run's taint rises.

    `cut(reason)` is the enforcement point's way to stop it at once; it is called from whichever thread
    raised the taint (a FUSE worker), so it must be thread-safe and must not block (a socket shutdown)."""

    subject: str
    endpoint: Endpoint
    token: str | bytes | None
    describe: str
    cut: Callable[[str], None]
    alive: bool = True
    cut_reason: str | None = None


class Monitor:
    def __init__(self, policy: Policy, *, agent: Agent | None = None, held: frozenset[str] = frozenset(),
                 verifier=None, labels: LabelStore | None = None, log: EventLog | None = None,
                 clock: Callable[[], float] = time.time, policy_path: str | None = None,
                 audience: str | None = None):
        self.policy = policy
        self.agent = agent
        self.held = frozenset(held) | frozenset(agent.holds if agent else ())
        self.verifier = verifier
        self.labels = labels if labels is not None else LabelStore()
        self.log = log
        self.clock = clock
        self.policy_path = policy_path or (policy.sources[0] if policy.sources else "policy.flow")
        self.audience = audience
        self.graph = ProvenanceGraph()
        self.run = RunState(policy.lattice.bottom)
        self.subjects: dict[str, RunState] = {}  # every name maps to `self.run`
        self.streams: set[Stream] = set()
        # called, under the monitor's lock, each time the run's taint rises (the mount's fast path: a write
        # decided at the old taint must be decided again)
        self.on_taint: list[Callable[[], None]] = []
        self.steps = 0
        self._tokens_seen: set[str] = set()
        self._cutoffs: set[int] = set()  # model endpoint rules whose loss this run has logged
        # the workspace the label store is for (`ifc labels WORKSPACE` in a denial's fix); read once, here
        self.workspace = self.labels.meta("workspace")
        # Repeated decisions: an allowed decision whose effects are idempotent (same run taint, same label
        # store version, nothing declassified) is answered from here; its graph edges and allow count are
        # still recorded. Bounded; cleared when full.
        self._fast: dict[tuple, tuple] = {}
        # `check_write` verdicts by exactly what they depend on (the policy is fixed for the monitor's life): a
        # file is written, created, chmod-ed, renamed and deleted under several operations, each first-seen for
        # the fast path above but the same flow question (~20 µs of glob matching) for this one. Bounded.
        self._write_verdicts: dict[tuple, FlowVerdict] = {}
        self._trace: list | None = None
        self._verified = None
        self._dry = False  # deciding without effect (`anticipate`): no step, edge, count, event or note
        # what every name holds by policy: the label of a name only the catch-all rules match (no glob with a literal
        # matches a NUL, which no path holds) — the most a directory's label can keep out of its names (`_name_made`)
        self._names_floor = policy.file_label("\0").label.secrecy
        self._lock = threading.RLock()
        # an enforcement point's answers by class (`made`) not yet recorded: recorded, in order, before every decision
        self.on_decide: list[Callable[[], None]] = []
        self._effect_free: tuple | None = None  # (key, token validity) of the last decision `_remember` found pure
        self.denials = denials.RecentDenials()  # what the sandbox may read about its own denials

    # ------------------------------------------------------------------------------------ queries
    def subject(self, name: str, parent: str | None = None) -> RunState:
        """The state a subject decides with: the run's, whoever it is (a new subject cannot start clean)."""
        state = self.subjects.get(name)
        if state is None:
            state = self.subjects[name] = self.run
            if parent is not None and parent in self.subjects:  # for the graph: who started whom
                self.graph.record(node("subject", parent), "spawn", node("subject", name), self.clock(), None)
        return state

    def label_of(self, path: str) -> Label:
        base = self.policy.file_label(path).label
        extra = self.labels.get(path)
        return base.join(extra) if extra else base

    def served_label_of(self, path: str) -> Label:
        """What a read of a file served with sentinels carries: its policy label without the tag that made it
        a secret file (`Policy.served_label`), joined with everything writes floated into it — a write by a run
        that held a secret records that secret here (`_write_like`), so keys copied from it stay secret."""
        base = self.policy.served_label(path)
        extra = self.labels.get(path)
        return base.join(extra) if extra else base

    # ------------------------------------------------------------------------------------ decide
    def decide(self, request: Request) -> Decision:
        return self._decide_keyed(request)[0]

    def _decide_keyed(self, request: Request) -> tuple[Decision, tuple | None]:
        """The decision, and its key in `_fast` (None when it has none: a malformed request, an internal error)."""
        key = None
        with self._lock:
            self._effect_free = None
            try:  # what an enforcement point answered by class first; failing that, deny (it is not recorded)
                self._catch_up()
            except Exception as exc:
                return self._log_safely(request, Decision(self.steps, request.op, request.target, False,
                                                          f"internal error, denied: {type(exc).__name__}: {exc}",
                                                          subject=request.subject)), None
            self.steps += 1
            problem = _malformed(request)
            if problem is not None:
                return self._log_safely(request, Decision(self.steps, str(request.op)[:64], str(request.target)[:256],
                                                          False, f"malformed request: {problem}", subject="?")), None
            before = ""
            try:
                # one look at the label store per decision: another run's commits are read before the cache key
                # (which holds the store's version) is made, so a repeat is never answered past a label raised
                # elsewhere; a decided-in-full one sees that one view throughout (`pinned`)
                labels = self.labels
                labels.refresh()
                state = self.subjects.get(request.subject)
                if state is None:
                    state = self.subject(request.subject, request.parent)
                key = self._key(request, state)
                hit = self._fast.get(key)
                if hit is not None:
                    cached, edges, validity = hit
                    now = self.clock()
                    if self._holds(validity, now):
                        for source, op, target in () if self._dry else edges:  # a repeat counts in the graph
                            self.graph.record(source, op, target, now, None)
                        return self._log_safely(request, _restep(cached, self.steps)), key
                    del self._fast[key]  # the token's window or the revocation list moved on
                before = self.policy.lattice.describe(state.taint)
                self._trace = []
                with labels.pinned():
                    decision = self._decide(request, state, before)
                    self._remember(key, decision, state, request)
            except Exception as exc:  # fail closed, and say why
                key = None
                decision = Decision(self.steps, request.op, request.target, False,
                                    f"internal error, denied: {type(exc).__name__}: {exc}",
                                    taint_before=before, taint_after=before, subject=request.subject)
            return self._log_safely(request, decision), key

    def _holds(self, validity: tuple | None, now: float) -> bool:
        """Does a cached answer's token validity (`_remember`: not before, expires, revocation epoch; None: no
        token) still hold at `now`?"""
        return validity is None or (validity[0] <= now < validity[1]
                                    and self.verifier.revocations.epoch == validity[2]
                                    and not self.verifier.revocations_unreadable)

    def _key(self, request: Request, state: RunState) -> tuple:
        """What a repeated decision depends on, as the key of `_fast`."""
        taint = state.taint  # by its parts: a Label (a dataclass) would hash and compare in Python
        return (request.subject, taint.secrecy, taint.integrity, request.op, request.target, request.dest,
                request.token, self.labels.version, request.facts)

    def decide_repeatable(self, request: Request) -> tuple[Decision, Repeat | None]:
        """`decide`, and how long the same request asked again would be answered from the monitor's own cache
        (allowed, its repetition changing nothing but counters): what lets an enforcement point answer repeats
        itself — the mount's warm opens (`ifc.enforce.fastpath`). None when it would be decided in full (the
        first read of a file, which raised the taint, is not a repeat; the second is).

        The answer holds while the run's taint, the labels and the revocation list stay as they are (`on_taint`,
        `labels.on_change`, the verifier's `on_revocations` say when they move; `Repeat.labels` is how to see
        another process's commit) and the time is inside `Repeat.window`. The repeats must be handed back
        (`repeated`), to be counted as the cache's own hits are."""
        with self._lock:  # the decision's own look at the label store is the one the answer is current with
            decision, key = self._decide_keyed(request)
            return decision, self._repeat(request, decision, key)

    def anticipate(self, request: Request) -> Repeat | None:
        """What `decide_repeatable` would say of a change of mode, owner or times (`chmod`) the enforcement point
        expects next — `tar x`, `rsync -a` and `cp -a` set each new file's and directory's times right after
        making it — decided now without effect: no graph edge, no count, no event. The request is not made;
        when it is, the enforcement point answers it from here as a repeat (`repeated` then records it as the
        decision would have). None when it would not be answered from the cache (denied, an event each time)."""
        if request.op != "chmod":
            raise ValueError("only a change of mode, owner or times is anticipated")
        with self._lock:
            self._dry, steps = True, self.steps
            try:
                decision, key = self._decide_keyed(request)
            finally:
                self._dry, self.steps = False, steps  # not a step of the run's
            return self._repeat(request, decision, key)

    def _repeat(self, request: Request, decision: Decision, key: tuple | None) -> Repeat | None:
        # kept only if nothing moved while it was decided (`_remember`): then its key is the current one
        hit = self._fast.get(key) if decision.allowed and key is not None else None
        if hit is None or self._host_config(request.op, request.target, request.dest):
            return None  # (a change to host-executed configuration is an event each time: `_log`)
        try:
            watch = self.labels.watch()
        except LookupError:
            return None
        cached, edges, validity = hit
        if not self._holds(validity, self.clock()):
            return None
        window = (-math.inf, math.inf) if validity is None else (validity[0], validity[1])
        return Repeat(request.subject, request.op, cached["target"], window, edges, watch)

    def decide_made(self, request: Request) -> tuple[Decision, Made | None]:
        """`decide` a create, delete, change of mode or read (`MADE_OPS`), and whether an enforcement point may answer
        the same request on any name of its *class* itself (`Made`; None: not): any name that matches the same
        globs of the policy, the agent's grants, the token's rights and host-executed configuration as this one,
        in a directory that matches the same as its directory, and that has no stored label or record. For those
        the decision reads nothing else: its label and write rules, its grants, the flows to it, and (a name
        made) the floor of its directory's label are what those globs say (a read: the label it joins into the
        taint, which must add nothing); the run's taint, the token's window and
        the revocation list are what `Made` holds with. It must have had no effect but its edge and count:
        allowed, nothing raised, stored, declassified or logged on its own (host-executed configuration), no
        facts (a symlink, a node type, names beneath). The names answered must be handed back (`made`)."""
        with self._lock:
            decision, key = self._decide_keyed(request)
            free, self._effect_free = self._effect_free, None
            if request.op not in MADE_OPS or request.facts is not None or key is None or not decision.allowed:
                return decision, None
            hit = self._fast.get(key)
            if hit is not None:
                validity = hit[2]
            elif free is not None and free[0] == key:
                validity = free[1]
            else:
                return decision, None
            if self._host_config(request.op, request.target, request.dest) or not self._holds(validity, self.clock()) \
                    or not self.classless(request.target):
                return decision, None
            try:
                watch = self.labels.watch()
            except LookupError:
                return decision, None
            window = (-math.inf, math.inf) if validity is None else (validity[0], validity[1])
            return decision, Made(request.subject, request.op, self.run.taint, window, watch)

    def made_of(self, repeat: Repeat) -> Made | None:
        """A repeatable change of mode, owner or times or read (`decide_repeatable`, `anticipate`) as an answer
        for its class (`decide_made`), when its name is one of a class's."""
        with self._lock:
            if repeat.op not in ("chmod", "read") or not self.classless(repeat.target):
                return None
            return Made(repeat.subject, repeat.op, self.run.taint, repeat.window, repeat.labels)

    def classless(self, target: str) -> bool:
        """Was a decision on `target` one for every name of its class: one with no stored label, record or other
        name? (Else it read them: a name stored `secret` takes a secret run's write with no raise, a plain one
        does not.)"""
        labels = self.labels
        return labels.get(target) is None and labels.named(target) is None and labels.object_of(target) is None

    def made(self, made: Made, name: str, when: float) -> None:
        """An enforcement point answered `made.op` on `name` by its class (`decide_made`) at `when`: record it as
        the decision would have — the provenance edge (a deletion forgets the name's node first), the count."""
        with self._lock:
            self.steps += 1
            subject, file = node("subject", made.subject), node("file", name)
            if made.op == "delete":
                self.graph.forget(file)
                self.graph.record(subject, "delete", file, when, None)
            elif made.op == "read":  # the data flows to the subject, adding nothing to its taint
                self.graph.record(file, "read", subject, when, None)
            else:
                named = self.policy.file_label(name).label
                self.graph.record(subject, made.op, file, when, None, parts=self._news(named, named.join(made.taint)))
            if self.log is not None:
                self.log.count_allow(made.subject, made.op, name, when)

    def repeated(self, repeat: Repeat, count: int, when: float) -> None:
        """`count` repeats of `repeat` an enforcement point answered itself, the last at `when`: counted in the
        provenance graph and the event log as the cache's own hits are."""
        with self._lock:
            self.steps += count
            for source, op, target in repeat.edges:
                self.graph.record(source, op, target, when, None, count=count)
            if self.log is not None:
                self.log.count_allow(repeat.subject, repeat.op, repeat.target, when, count=count)

    FAST_LIMIT = 65536

    def _remember(self, key: tuple, decision: Decision, state: RunState, request: Request) -> None:
        """Keep an allowed decision whose repetition would change nothing but counters.

        A token's answer also depends on time and revocation: it is kept with the token's validity window
        and the revocation list's epoch, and used only while both still hold."""
        trace, self._trace = self._trace, None
        verified, self._verified = self._verified, None
        if not decision.allowed or decision.capabilities_used or key[1] != state.taint.secrecy \
                or key[2] != state.taint.integrity or key[7] != self.labels.version:
            return
        validity = None
        if request.token is not None:
            if verified is None or self.verifier is None:
                return
            validity = (verified.not_before, verified.expires, self.verifier.revocations.epoch)
        self._effect_free = (key, validity)  # for `decide_made`: a deletion is answered by class, not repeated
        if request.op in _GRAPH_CHANGES:
            return  # a move renames, a deletion forgets, the provenance graph's node: a repeat from here would not
        if len(self._fast) >= self.FAST_LIMIT:
            self._fast.clear()
        # a copy of its fields: the caller gets `decision` itself, and a Decision is not frozen
        self._fast[key] = (dict(decision.__dict__), tuple(trace or ()), validity)

    def _edge(self, source: str, op: str, target: str, now: float, event, parts=()) -> None:
        if not self._dry:
            self.graph.record(source, op, target, now, event, parts=parts)
        if self._trace is not None:
            self._trace.append((source, op, target))

    def _log_safely(self, request: Request, decision: Decision) -> Decision:
        """Log the decision; if the log itself fails, the answer is a denial that says so. A denial is also
        kept for the sandbox to read (`denials_text`). A decision made without effect (`anticipate`) is not logged."""
        if self._dry:
            return decision
        try:
            decision = self._log(request, decision)
        except Exception as exc:
            decision = replace(decision, allowed=False, reason=f"denied: the event log failed "
                               f"({type(exc).__name__}: {exc}); {decision.reason}")
        if not decision.allowed:
            with contextlib.suppress(Exception):  # the answer stands even if its note cannot be made
                self.denials.add(denials.note(decision, self.agent, _AUTHORITY_OP.get(decision.op, decision.op)))
        return decision

    def denials_text(self) -> bytes:
        """The run's newest denials with reason, rule and hint, as the sandbox reads them (`ifc.monitor.denials`:
        only what the run asked for and its policy answered)."""
        with self._lock:
            total, notes = self.denials.snapshot()
        return denials.render(total, notes)

    def _decide(self, req: Request, state: RunState, before: str) -> Decision:
        lattice = self.policy.lattice
        op, target = req.op, req.target
        base = {"step": self.steps, "op": op, "target": target, "subject": req.subject, "taint_before": before,
                "taint_after": before}
        if op not in ALL_OPS:
            return Decision(allowed=False, reason=f"unknown operation `{op}`", **base)
        dest = None
        if op in (LIST, LOOKUP):
            try:
                return self._list(req, state, base, normalise_path(target), op == LOOKUP)
            except (PatternError, TypeError) as exc:
                return Decision(allowed=False, reason=f"bad path: {getattr(exc, 'message', exc)}", **base)
        if op in FILE_OPS or op in TWO_PATH_OPS or op == "readlink":
            try:
                target = normalise_path(target)
                dest = normalise_path(req.dest) if op in TWO_PATH_OPS else None
            except (PatternError, TypeError) as exc:
                return Decision(allowed=False, reason=f"bad path: {getattr(exc, 'message', exc)}", **base)
            if op in TWO_PATH_OPS and not dest:
                return Decision(allowed=False, reason=f"{op} needs a destination", **base)
            if not target:
                return Decision(allowed=False, reason="the workspace root is a directory, not a file", **base)
            base["target"] = target if dest is None else f"{target} -> {dest}"
        moves = ()
        if op == "rename" and req.facts is not None and req.facts.beneath:
            moves = _moves(target, dest, req.facts.beneath)
            if moves is None:
                return Decision(allowed=False, reason="bad path: a name beneath the directory is not beneath it",
                                **base)
        endpoint = None
        secret_name = None
        if op in NET_OPS or op == "resolve":
            text = target
            if op == "send":
                secret_name, _, text = target.partition("@")
            try:
                endpoint = _endpoint(text, req.facts) if op != "dns" else None
            except PatternError as exc:
                return Decision(allowed=False, reason=f"bad endpoint: {exc.message}", **base)
            if endpoint is not None and op in ("connect", "resolve"):
                base["target"] = str(endpoint)

        # containment: is the object inside the sandbox's world at all? -----------------------------
        refusal = containment.check(self.policy, op, target, endpoint, req.facts)
        if refusal is not None:
            return Decision(allowed=False, reason=refusal.reason, rule=refusal.rule,
                            tainted_by=self._provenance(state), **base)
        if op in CONTAINMENT_OPS:
            return Decision(allowed=True, reason="inside the sandbox's world", rule="containment", **base)

        # authority ------------------------------------------------------------------------------
        verified, denied = self._authority(req, op, target, dest, endpoint)
        self._verified = verified
        if verified is not None:
            base["token_id"] = getattr(verified, "token_id", None)
        if denied is not None:
            reason, rule, rule_span, block = denied
            return Decision(allowed=False, reason=reason, rule=rule, rule_span=rule_span, token_block=block,
                            tainted_by=self._provenance(state), fix=self._authority_fix(req, op, target, dest),
                            **base)

        # flow and effects --------------------------------------------------------------------------
        subject_node = node("subject", req.subject)
        now = self.clock()
        if op in ("read", "exec"):
            served = op == "read" and req.facts is not None and req.facts.sentinels \
                and self.policy.sentinel_file(target)
            label = self.served_label_of(target) if served else self.label_of(target)
            self._absorb(state, label, node("file", target), subject_node, op, now, req)
            rule = self.policy.file_label(target).rule
            described = lattice.describe(label)
            base["taint_after"] = lattice.describe(state.taint)
            how = "its values served as sentinels, reading" if served else "reading"
            return Decision(allowed=True, reason=f"{how} joins `{described}` into the taint",
                            rule=f"files: {rule.label_text}" if rule else None,
                            rule_span=str(rule.span) if rule else None, object_label=described,
                            tainted_by=self._provenance(state), **base)
        if op in ("write", "create", "delete", "chmod", "rename", "link"):
            return self._write_like(req, state, base, target, dest, subject_node, now, verified, moves)
        if op == "dns":
            return self._dns(state, base, target)
        if op == "send":
            return self._send(state, base, secret_name, endpoint)
        return self._connect(req, state, base, endpoint, subject_node, now, verified)

    # ------------------------------------------------------------------------------------ authority
    def _authority(self, req: Request, op: str, target: str, dest: str | None, endpoint):
        """(verified token or None, None when allowed else (reason, rule, rule span, token block)). A grant or
        right covers what lies beneath the names it matches (like .gitignore), so moving a directory needs no
        more authority than its two names; its names' flows are judged one by one (`_write_like`). Changing a
        file with several names (hard links) needs authority over each."""
        needed = _AUTHORITY_OP.get(op, op)
        objects: list[str | Endpoint] = [target] if op not in NET_OPS else [endpoint] if endpoint else []
        if op in TWO_PATH_OPS:
            objects = [target, dest]
        elif op in ("write", "chmod"):  # a file's other names (hard links) change with it: authority over each
            objects += self._other_names(target)
        if req.token is not None and self.verifier is not None:
            try:
                verified = self.verifier.verify(req.token, now=self.clock())
            except TokenError as exc:
                return None, (f"token rejected ({exc.reason.value}): {exc}", "token", None, None)
            self._note_token(verified, req)
            if op == "dns":
                return verified, None  # resolving a name is judged by the policy's endpoints below
            checks = [(needed, o) for o in objects]
            if op == "rename":
                checks = [("write", target), ("create", dest)]
            for check_op, obj in checks:
                answer = verified.check(check_op, obj)
                if not answer.allowed:
                    return verified, (f"token: {answer.message}", f"token {verified.token_id}", None, answer.block)
            return verified, None
        if req.token is not None:
            return None, ("a token was presented but no verifier is configured", "token", None, None)
        if self.agent is None:
            return None, None
        if op == "dns":
            return None, None
        for obj in objects:
            if not self.agent.allows(needed, obj):
                return None, (self._no_grant(needed, obj), f"agent {self.agent.name}", str(self.agent.span), None)
        return None, None

    def _no_grant(self, op: str, obj: str | Endpoint) -> str:
        patterns = map(EndpointPattern.parse, self.agent.patterns(op)) if isinstance(obj, Endpoint) else ()
        if isinstance(obj, Endpoint) and obj.path is None and not obj.inspected and any(
                p.restricted and p.matches_connection(obj) for p in patterns):
            return (f"agent `{self.agent.name}` may connect to {obj} only for some paths or methods, and this "
                    "connection is not inspected: the hook decides requests only where it terminates TLS, for "
                    "hosts a pattern with a path or methods names exactly")
        return f"agent `{self.agent.name}` has no `{op}` grant covering {obj}"

    def _note_token(self, verified, req: Request) -> None:
        token_id = getattr(verified, "token_id", None)
        if token_id and token_id not in self._tokens_seen and self.log is not None and not self._dry:
            self._tokens_seen.add(token_id)
            self.log.record(kind="token", subject=req.subject, op="use", target=token_id, allowed=True,
                            reason="first use of this token in the run", token_id=token_id, pid=req.pid,
                            cmdline=_cmdline(req))

    # ------------------------------------------------------------------------------------ effects
    def _write_like(self, req, state, base, target, dest, subject_node, now, verified, moves=()) -> Decision:
        lattice = self.policy.lattice
        op = req.op
        written = dest if op in ("rename", "link") else target
        held = self._held(verified)
        # a rename/link moves the content's label to the new name, and a directory's rename every name beneath it:
        # (old name, new name, content) of each, judged as if it moved alone — the new name's rules must accept
        # the content, and a rename's old name must let the run remove it
        moving = tuple((old, new, self.label_of(old)) for old, new in ((target, dest), *moves)) \
            if op in ("rename", "link") else ((None, target, None),)
        if op in ("write", "chmod"):
            # the content (or mode) of a file with several names changes under all of them: each name's rules must
            # accept it — a `.git/config` hard-linked into `src/` is still written only as `.git/config` may be
            moving += tuple((None, name, None) for name in self._other_names(target))
        verdicts = []
        links = () if req.facts is None else ((target, req.facts),) if op == "create" and \
            req.facts.symlink_target is not None else req.facts.moved_symlinks if op == "rename" else ()
        for name, facts in links:  # a symlink made, or moved: at a name the host runs, where it leads matters
            refused = self._symlink_guard(state, base, name, facts)
            if refused is not None:
                return refused
        for old, new, content in moving:
            verdict = self._check_write(state.taint if content is None else state.taint.join(content), new, held)
            if verdict.allowed and op == "rename":
                verdict_src = self._check_write(state.taint, old, held)
                verdict = verdict_src if not verdict_src.allowed else verdict
            if not verdict.allowed:
                return self._from_verdict(state, base, verdict, lattice.describe(self.label_of(new)),
                                          sink=node("file", new), part_hint=None)
            verdicts.append(verdict)
        verdict = verdicts[0]  # the name asked about; the capabilities any move used are all used
        used = verdict.capabilities_used if len(verdicts) == 1 else \
            tuple(dict.fromkeys(cap for v in verdicts for cap in v.capabilities_used))
        reason = verdict.reason
        if op == "delete":
            others = self._other_names(target)
            self.labels.delete(target)
            self.graph.forget(node("file", target))
            self._edge(subject_node, "delete", node("file", target), now, None)
            self._links_counted(req, state, others)
        elif op in ("rename", "link"):
            content = moving[0][2]
            replaced = [n for n in self._other_names(dest) if n != target] if op == "rename" else []
            # the content takes its full label (its old name's policy label included) to the new name, and so
            # does everything beneath a directory; a rename stores it only where the new name's policy label
            # does not hold it already (most renames: no transaction), a link always (its names share one
            # object, so a later raise through either is seen through both). The raises and the move are one
            # transaction (a crash leaves both or neither).
            carried = [(old, new, label) for old, new, label in moving
                       if op == "link" or not label.flows_to(self.policy.file_label(new).label)]
            if carried or self.labels.moves(target, dest):
                why = self._why(req, state, content)
                with self.labels.batch():
                    for old, _, label in carried:
                        self.labels.raise_to(old, label, why)
                    if op == "link":
                        self.labels.link(target, dest, why=why)
                    else:
                        self.labels.rename(target, dest, why=why)
            if op == "rename":
                self.graph.rename(node("file", target), node("file", dest))
            # the file's link count or change time moved: a link made, or the file renamed (its ctime) and any file
            # it replaced (a link lost)
            self._links_counted(req, state, (target,) if op == "link" else (dest, *replaced))
            self._edge(node("file", target), op, node("file", dest), now, None,
                              parts=self._parts(content))
            for name in (dest, *(new for _, new, _ in carried if new != dest)):
                moved = self.label_of(name)
                if moved != self.policy.file_label(name).label:
                    self._label_event(req, name, moved, f"{op} from {target}")
            moved = self.label_of(dest)
            reason = f"{dest} carries `{lattice.describe(moved)}` from {target}"
        else:
            # The raise belongs to the content (the stored object label travels with renames and links),
            # so compare with what is stored, not with the name's policy label: secret data written under a
            # `secrets/**` name must still be secret when the content is reached through another name.
            named = self.policy.file_label(target).label
            stored = self.labels.get(target)
            old = named.join(stored) if stored else named  # `label_of`, its two lookups made once
            base_label = stored or lattice.bottom
            raised = base_label.join(state.taint)
            self._edge(subject_node, op, node("file", target), now, None,
                       parts=self._news(old, old.join(state.taint)))
            # nothing to record for data within a plain file's own policy label; a file with an object
            # (moved or linked) records every raise, since its content may be reached by other names
            # a file served with sentinels is judged against what its reads carry (`served_label_of`), so that a
            # secret written into it (a key named after another file's secret) is recorded, and read back as such
            floor = self.policy.served_label(target) if self.policy.sentinel_file(target) else named
            within_name = stored is None and state.taint.flows_to(floor)
            if raised != base_label and not within_name:
                if self._dry:  # an anticipated change that would raise a label is no repeat: decided when made
                    return Decision(allowed=False, reason="it would raise a label: decided when it is made", **base)
                self.labels.raise_to(target, raised, self._why(req, state, raised))
                new = self.label_of(target)
                self._label_event(req, target, new, f"{'changed' if op == 'chmod' else 'written'} by {req.subject}")
                if new != old:
                    reason = f"{target} floats up to `{lattice.describe(new)}`"
        if op in ("create", "rename", "link"):
            self._name_made(req, state, written)
        if op in ("delete", "rename") and target != dest:  # a name removed: the listing shows it gone
            self._name_made(req, state, target, removed=True)
        for cap in used:
            self._capability_event(req, cap, written)
        base["taint_after"] = lattice.describe(state.taint)
        return Decision(allowed=True, reason=reason, rule=verdict.rule,
                        rule_span=None if verdict.span is None else str(verdict.span),
                        object_label=lattice.describe(self.label_of(written)),
                        capabilities_used=used, tainted_by=self._provenance(state), **base)

    def _links_counted(self, req: Request, state: RunState, names) -> None:
        """A link made or removed (deleted, or renamed over), or a rename, changes the file's link count or change
        time under its other names (`names`): attributes a later run's `stat` reads (`_list`), so a run holding
        secrecy beyond the file's label raises it — else a run that read a key could `ln src/a.py x; rm x` at a
        chosen instant, or leave k links, for the next run to read off `src/a.py`'s ctime or link count."""
        for name in names:
            if state.taint.secrecy <= self.label_of(name).secrecy:
                continue
            held = Label(state.taint.secrecy, self.policy.lattice.top_integrity)  # what it spells, not trust
            self.labels.raise_to(name, held, self._why(req, state, held))
            self._label_event(req, name, self.label_of(name), f"its links changed by {req.subject}")

    def _name_made(self, req: Request, state: RunState, name: str, removed: bool = False) -> None:
        """A name is data too: one a run makes (a file, a directory, a rename's or a link's new name) or removes (a
        deletion, a rename's old name) is written into its directory, and a later run that lists the directory, or
        looks that name up (finding it there or not), reads it (`_list`). So the directory's stored label takes the
        run's secrecy beyond what any name of the workspace holds by policy, and the name is recorded with it
        (`LabelStore.mark_named`) — else a run that read a key could spell it in names (`src/sk_live_…`, or a file
        per bit, made or deleted) for the next run to `ls` or `stat`. A name made again by a run holding nothing
        beyond that says nothing of the earlier run any more."""
        directory = name.rpartition("/")[0]
        # what the directory's policy label holds, where every name of the workspace holds it too (the catch-all
        # rules': `"**" internal`), stays out — else every `internal` run making a file in `src/` would commit a
        # label. No more: a listing reads no policy label, so a secret run's names in `src/credentials/` (`secret` by
        # `**/credentials*`) must raise it. The root has none (`**` is what is *in* it), and a name's own label is no
        # floor: `sk_live….pem` is `secret` as a file, but its name is read by a listing.
        named = self.policy.file_label(directory).label.secrecy & self._names_floor if directory else frozenset()
        secrecy = state.taint.secrecy - named
        if not secrecy:
            if not removed and self.labels.named(name) is not None:
                self.labels.mark_named(name, None)
            return
        names = Label(secrecy, self.policy.lattice.top_integrity)  # names carry what they spell, not trust
        self.labels.mark_named(name, secrecy)
        stored = self.labels.get(directory)
        if stored is not None and names.flows_to(stored):
            return
        self.labels.raise_to(directory, names, self._why(req, state, names))
        self._label_event(req, directory or "/", self.label_of(directory), f"names made in it by {req.subject}")

    def _list(self, req: Request, state: RunState, base: dict, directory: str, lookup: bool = False) -> Decision:
        """Names read: a directory's (a listing), or (`lookup`) whether the name `directory` is there and the
        attributes of what is there. The reader takes what the runs that made or removed them held (`_name_made`:
        the directory's stored label; the name's record), and a file's stored label's secrecy: its size, times and
        mode are what the runs that wrote or changed it made them (`_write_like`) — else a run that read a key
        could `touch -d @<bits>` a clean file, or append as many bytes, for the next run to `stat`. The policy
        label stays out — names and attributes the owner made are no data of the run's, and `ls inbox/` is no read
        of a message. A directory's stored label is its names' (`facts.node_type`): a listing reads it, not every
        path walk through the directory."""
        if lookup:
            secrecy = self.labels.named(directory) or frozenset()
            if req.facts is None or req.facts.node_type != stat_mod.S_IFDIR:
                held = self.labels.get(directory)
                secrecy = secrecy if held is None else secrecy | held.secrecy
            stored = Label(secrecy, self.policy.lattice.top_integrity) if secrecy else None
        else:
            stored = self.labels.get(directory)
        if stored is not None:
            self._absorb(state, stored, node("file", directory or "/"), node("subject", req.subject), "read",
                         self.clock(), req)
        base["target"] = directory or "/"
        base["taint_after"] = self.policy.lattice.describe(state.taint)
        return Decision(allowed=True, reason="its names join what made them into the taint" if stored else
                        "names no tainted run made", object_label=None if stored is None else
                        self.policy.lattice.describe(stored), tainted_by=self._provenance(state), **base)

    def _symlink_guard(self, state, base, target: str, facts: Facts) -> Decision | None:
        """A symlink made at a name whose writes require integrity (`.git/config`, a hook) hands what the host runs
        there to the name it leads to: refused unless writes there require as much (or it leads to a system tree,
        which the sandbox cannot write) — else `.git/config → ../src/cfg`, made while the run is trusted, lets a
        later write to `src/cfg` after untrusted input set `core.fsmonitor`."""
        required, guard = self.policy.write_requirement(target)
        if guard is None:
            return None
        leads = containment.symlink_destination(target, facts)
        if leads is not None and (leads.startswith("/") or self.policy.write_requirement(leads)[0] >= required):
            return None
        where = f"`{leads}`" if leads is not None else "a place past another symlink"
        level = self.policy.lattice.integrity_levels[required]
        kind = hostcfg.kind_of(target)
        return Decision(allowed=False, reason=f"a symlink at {target} (writes require {level}) would lead to {where}, "
                        f"which requires less: what is written there would be what the host runs",
                        rule=f"files: {guard.globs_text} {guard.label_text} writes require {level}",
                        rule_span=str(guard.span), message=kind.message if kind else None,
                        object_label=self.policy.lattice.describe(self.label_of(target)),
                        tainted_by=self._provenance(state),
                        fix={"policy": f"make {target} a file of its own, not a symlink; or make the link on the "
                                       "host, outside the sandbox"},
                        **base)

    def _check_write(self, data: Label, path: str, held: frozenset[str]) -> FlowVerdict:
        """`check_write`, memoised on all it reads besides the fixed policy: the data's label, the path and the
        capabilities held (a verdict is frozen, so sharing one is safe)."""
        key = (data.secrecy, data.integrity, path, held)
        verdict = self._write_verdicts.get(key)
        if verdict is None:
            if len(self._write_verdicts) >= self.FAST_LIMIT:
                self._write_verdicts.clear()
            verdict = self._write_verdicts[key] = check_write(self.policy, data, path, held)
        return verdict

    def _connect(self, req, state, base, endpoint: Endpoint, subject_node, now, verified) -> Decision:
        lattice = self.policy.lattice
        verdict = check_send(self.policy, state.taint, endpoint, self._held(verified),
                             may_declassify=self._token_declassifier(verified, endpoint))
        rule = self.policy.endpoint_rule(endpoint)
        label_text = f"clearance {lattice.describe_tags(rule.clearance)}" if rule else None
        sink = node("endpoint", str(endpoint))
        if not verdict.allowed:
            return self._from_verdict(state, base, verdict, label_text, sink=sink, part_hint=None, endpoint=endpoint)
        self._edge(subject_node, "connect", sink, now, None, parts=self._parts(state.taint))
        for cap in verdict.capabilities_used:
            self._capability_event(req, cap, str(endpoint))
        reason = verdict.reason
        if rule is not None and rule.returns < state.taint.integrity:
            # what comes back is read: an untrusted reply lowers the subject's integrity
            self._absorb(state, Label(frozenset(), rule.returns), sink, subject_node, "reply", now, req)
            reason += f"; the reply is `{lattice.integrity_levels[rule.returns]}`"
        return Decision(allowed=True, reason=reason, rule=verdict.rule,
                        rule_span=None if verdict.span is None else str(verdict.span), object_label=label_text,
                        capabilities_used=verdict.capabilities_used, tainted_by=self._provenance(state),
                        **{**base, "taint_after": lattice.describe(state.taint)})

    def _dns(self, state, base, name: str) -> Decision:
        """A lookup is a sink only if the name leaves. It does not: the only resolver the sandbox has is the
        hook's stub, which answers the names the policy knows itself (a placeholder address) and asks no one;
        the hook resolves a name upstream only for a connect the monitor allowed against the run's taint. So
        the taint is not consulted here; an unknown name is refused all the same, so a lookup never confirms
        or probes anything the policy does not name."""
        host = name.lower().rstrip(".")
        for rule in reversed(self.policy.endpoint_rules):
            if any(p.matches_host(host) for p in rule.patterns):
                return Decision(allowed=True, reason=f"`{host}` is named by an endpoint rule; the stub answers it "
                                "itself and the name is sent nowhere, so the taint does not matter",
                                rule="endpoints", rule_span=str(rule.span), tainted_by=self._provenance(state),
                                **base)
        return Decision(allowed=False, reason=f"no endpoint rule names `{host}`: lookups of unknown names are "
                        "refused (the stub answers only names the policy knows)", rule="endpoints (no match)",
                        tainted_by=self._provenance(state), **base)

    def _send(self, state, base, name: str, endpoint: Endpoint) -> Decision:
        secret = self.policy.secrets.get(name)
        # A workspace file's value: its sentinel stands in the file the sandbox read, so it travels with that
        # content (to the model, in a diff); it is swapped only towards its bound host, and elsewhere it goes
        # as it is — worth nothing there. Refusing it would cut the agent off for having read the file.
        if secret is None and name.endswith("]") and "[" in name:
            return Decision(allowed=True, reason=f"`{name}` is a value of a workspace file that no secret binds: "
                            f"its sentinel goes to {endpoint} as it is, never swapped", rule="secret files", **base)
        if secret is not None and secret.workspace_file and \
                not any(p.names_hosts and p.matches(endpoint) for p in secret.endpoints):
            return Decision(allowed=True, reason=f"secret `{name}` is bound to "
                            f"{', '.join(p.text for p in secret.endpoints) or 'no endpoint'}: its sentinel goes "
                            f"to {endpoint} as it is, never swapped", rule=f"secret {name}",
                            rule_span=str(secret.span), **base)
        if secret is None:
            return Decision(allowed=False, reason=f"no secret named `{name}` in the policy", **base)
        if not any(p.names_hosts and p.matches(endpoint) for p in secret.endpoints):
            # a binding to `*`, a wildcard zone or a network is never honoured (`ifc check` calls it an error):
            # it would hand the secret to hosts nobody named
            broad = [p.text for p in secret.endpoints if not p.names_hosts and p.matches(endpoint)]
            bound = ", ".join(p.text for p in secret.endpoints) or "no endpoint"
            reason = (f"secret `{name}` is bound to the pattern `{broad[0]}`, which covers hosts nobody named; "
                      "a secret goes only to hosts its binding names exactly") if broad else \
                f"secret `{name}` is bound to {bound}, not {endpoint}"
            return Decision(allowed=False, reason=reason, rule=f"secret {name}", rule_span=str(secret.span),
                            tainted_by=self._provenance(state), **base)
        return Decision(allowed=True, reason=f"secret `{name}` may be sent to {endpoint}",
                        rule=f"secret {name}", rule_span=str(secret.span), **base)

    # ------------------------------------------------------------------------------------ helpers
    def _held(self, verified) -> frozenset[str]:
        return self.held if verified is None else frozenset()

    def _token_declassifier(self, verified, endpoint: Endpoint):
        if verified is None:
            return None

        closure = self.policy.lattice.tag_closure

        def may(tag: str) -> bool:
            # `declassify secret to X` releases what `secret` stands for, {internal, secret}, as a
            # policy capability naming `secret` would
            names = [name for name, tags in closure.items() if tag in tags] or [tag]
            return any(verified.check("declassify", endpoint, tag=name).allowed for name in names)

        return may

    def _absorb(self, state: RunState, label: Label, source: str, subject_node: str, op: str,
                now: float, req: Request | None = None) -> None:
        parts = []
        for tag in label.secrecy - state.taint.secrecy:
            state.sources[tag] = source
            state.readers[tag] = subject_node
            state.arrived[tag] = now
            parts.append(tag)
        if label.integrity < state.taint.integrity:
            level = self.policy.lattice.integrity_levels[label.integrity]
            state.sources[level] = source
            state.readers[level] = subject_node
            state.arrived[level] = now
            parts.append(level)
        self._edge(source, op, subject_node, now, None, parts=parts)
        if parts:
            state.provenance = None
            state.taint = state.taint.join(label)
            for moved in self.on_taint:
                moved()
            if self.streams:
                self._recheck_streams(req)

    # ------------------------------------------------------------------------------------ streams
    def open_stream(self, request: Request, describe: str,
                    cut: Callable[[str], None]) -> tuple[Decision, Stream | None]:
        """Decide `connect` for a stream and, if allowed, keep deciding it for as long as it is open."""
        with self._lock:
            decision = self.decide(request)
            if not decision.allowed:
                return decision, None
            try:
                endpoint = _endpoint(decision.target, request.facts)
            except PatternError:  # cannot happen for an allowed connect; fail closed if it does
                return replace(decision, allowed=False, reason="internal error: allowed target unparsable"), None
            stream = Stream(request.subject, endpoint, request.token, describe, cut)
            self.streams.add(stream)
            return decision, stream

    def close_stream(self, stream: Stream | None) -> None:
        if stream is not None:
            with self._lock:
                self.streams.discard(stream)

    def _recheck_streams(self, cause: Request | None) -> None:
        """Decide every open stream again at the run's new taint; cut and log those no longer cleared.

        Called inside the decision that raised the taint: the sandbox has not received the data yet."""
        state = self.run
        verdicts: dict[tuple, FlowVerdict] = {}  # streams to one endpoint with one token: one question
        for stream in list(self.streams):
            key = (stream.endpoint, stream.token)
            verdict = verdicts.get(key)
            if verdict is None:
                verified = None
                if stream.token is not None and self.verifier is not None:
                    try:
                        verified = self.verifier.verify(stream.token, now=self.clock())
                    except TokenError:
                        verified = None  # no declassification from a token that no longer verifies
                verdict = verdicts[key] = check_send(
                    self.policy, state.taint, stream.endpoint, self._held(verified),
                    may_declassify=self._token_declassifier(verified, stream.endpoint))
            if verdict.allowed:
                continue
            self.streams.discard(stream)
            stream.alive = False
            why = f"{cause.op} {cause.target}" if cause is not None else "a reply"
            taint = self.policy.lattice.describe(state.taint)
            base = {"step": self.steps, "op": "connect", "target": str(stream.endpoint), "subject": stream.subject,
                    "taint_before": taint, "taint_after": taint}
            decision = self._from_verdict(state, base, verdict, None, sink=node("endpoint", str(stream.endpoint)),
                                          part_hint=None, endpoint=stream.endpoint)
            decision.reason = f"open stream cut ({stream.describe}): the run's taint rose ({why}); {verdict.reason}"
            stream.cut_reason = decision.reason
            try:
                self._log(Request("connect", str(stream.endpoint), subject=stream.subject), decision)
            except Exception as exc:  # the cut stands even if it cannot be logged
                stream.cut_reason += f" (not logged: {type(exc).__name__})"
            with contextlib.suppress(Exception):  # a stream whose sockets are already gone is cut
                stream.cut(stream.cut_reason)

    def _news(self, old: Label, new: Label) -> list[str]:
        """Label parts `new` has that `old` lacks: the tags added and, if it dropped, the integrity level."""
        parts = sorted(new.secrecy - old.secrecy)
        if new.integrity < old.integrity:
            parts.append(self.policy.lattice.integrity_levels[new.integrity])
        return parts

    def _parts(self, label: Label) -> list[str]:
        parts = sorted(label.secrecy)
        if label.integrity < self.policy.lattice.top_integrity:
            parts.append(self.policy.lattice.integrity_levels[label.integrity])
        return parts

    def _provenance(self, state: RunState) -> tuple[tuple[str, str], ...]:
        """(label part, object) pairs grouped per object: `secret` from `.env`, `untrusted` from a reply."""
        if state.provenance is None:
            state.provenance = self._group_sources(state)
        return state.provenance

    def _group_sources(self, state: RunState) -> tuple[tuple[str, str], ...]:
        lattice = self.policy.lattice
        by_object: dict[str, set[str]] = {}
        for part, obj in state.sources.items():
            by_object.setdefault(obj, set()).add(part)
        out = []
        for obj, parts in by_object.items():
            tags = frozenset(p for p in parts if p in state.taint.secrecy)
            levels = sorted(p for p in parts if p not in tags)
            out.append((" + ".join(([lattice.describe_tags(tags)] if tags else []) + levels), obj.split(":", 1)[1]))
        return tuple(sorted(out, key=lambda pair: pair[1]))

    def _culprits(self, state: RunState, verdict: FlowVerdict) -> list[str]:
        lattice = self.policy.lattice
        blocked = verdict.blocked_tags  # each chain's top: `secret`, not the `internal` it implies
        parts = [t for t in sorted(blocked)
                 if not any(u != t and t in lattice.tag_closure.get(u, ()) for u in blocked)]
        if verdict.integrity_short:
            parts.append(lattice.integrity_levels[state.taint.integrity])
        return parts

    def _from_verdict(self, state, base, verdict: FlowVerdict, object_label, sink: str, part_hint,
                      endpoint: Endpoint | None = None) -> Decision:
        culprits = self._culprits(state, verdict)
        guilty = {state.sources[p].split(":", 1)[1] for p in culprits if p in state.sources}
        tainted_by = tuple(p for p in self._provenance(state) if p[1] in guilty) or self._provenance(state)
        path: tuple[Hop, ...] = ()
        subject_node = node("subject", base["subject"])
        for part in culprits:
            reader = state.readers.get(part)
            if reader is not None and reader != subject_node:  # read by another subject of the same run
                hops = [*self.graph.explain(Hop(reader, "same run", subject_node), part),
                        Hop(subject_node, base["op"], sink)]
            else:
                hops = self.graph.explain(Hop(subject_node, base["op"], sink), part)
            if len(hops) > len(path):
                path = tuple(hops)
        cutoff = None
        if endpoint is not None and base["op"] == "connect" and is_model(self.policy.endpoint_rule(endpoint)):
            arrived = [state.arrived[p] for p in culprits if p in state.arrived]
            cutoff = Cutoff(str(endpoint.connection), min(arrived) if arrived else self.clock(),
                            tuple((p, state.sources[p]) for p in culprits if p in state.sources))
        decision = Decision(allowed=False, reason=verdict.reason, rule=verdict.rule,
                            rule_span=None if verdict.span is None else str(verdict.span), message=verdict.message,
                            object_label=object_label, tainted_by=tainted_by, path=path,
                            fix=self._flow_fix(verdict, base, culprits, state, endpoint), cutoff=cutoff, **base)
        if cutoff is not None:
            self._cutoff_event(decision, endpoint)
        return decision

    def _cutoff_event(self, decision: Decision, endpoint: Endpoint) -> None:
        """The first flow denial of a model endpoint rule in this run is also a `cutoff` event, dated when the
        agent lost it (the read that raised the taint), for the run's summary and report. Once per rule: later
        denials of the same model say nothing new."""
        rule = self.policy.endpoint_rule(endpoint)
        if self.log is None or rule.index in self._cutoffs:
            return
        self._cutoffs.add(rule.index)
        cutoff = decision.cutoff
        self.log.record(ts=cutoff.since, kind="cutoff", subject=decision.subject, op="connect", target=cutoff.endpoint,
                        allowed=False, reason=f"it read {what_was_read(cutoff.reads)}: {decision.reason}",
                        rule=decision.rule, rule_span=decision.rule_span, message=decision.message,
                        object_label=decision.object_label, taint_before=decision.taint_before,
                        taint_after=decision.taint_after, path=[[h.source, h.op, h.target] for h in decision.path],
                        fix=decision.fix)

    # ------------------------------------------------------------------------------------ fixes
    def _authority_fix(self, req: Request, op: str, target: str, dest: str | None) -> dict:
        needed = _AUTHORITY_OP.get(op, op)
        obj = dest if op in TWO_PATH_OPS else target.partition("@")[2] if op == "send" else target
        if op in FILE_OPS or op in TWO_PATH_OPS:
            obj = glob_literal(obj)  # the grant names this file, even one called `*`
        written = encode_string(obj)
        if op == "connect" and " " in obj:  # a request: `METHOD URL` is granted as `"URL" methods METHOD`
            method, _, url = obj.partition(" ")
            url = url.replace("*", "\\*")  # a `*` in the request's path is a character, not a wildcard
            obj, written = methods_text(url, [method]), f"{encode_string(url)} methods {method}"
        agent = self.agent.name if self.agent else "AGENT"
        flag = {"read": "--read", "write": "--write", "create": "--create", "delete": "--delete",
                "exec": "--exec", "connect": "--connect"}.get(needed, f"--{needed}")
        return {
            "policy": f"{needed} {written}   # in `agent {agent} {{ }}`",
            "mint": f"ifc caps mint --policy {shlex.quote(self.policy_path)} --grant {agent} "
                    f"{flag} {shlex.quote(obj)} --audience {shlex.quote(self.audience or 'RUN')} --ttl 1h",
        }

    def _flow_fix(self, verdict: FlowVerdict, base: dict, culprits: list[str], state: RunState,
                  endpoint: Endpoint | None = None) -> dict | None:
        fix = self._rule_fix(verdict, base, culprits, endpoint)
        # where the blocking data came from: a label a write floated up is lowered by a person (`ifc labels`); a
        # label the policy gives by name only by a policy change
        stored = self.labels.get
        paths = {s.split(":", 1)[1] for p in culprits if (s := state.sources.get(p, "")).startswith("file:")}
        lower = lowering_commands(self.policy, {p: stored(p) for p in paths}, culprits, state.sources,
                                  self.workspace)
        named = policy_named(self.policy, culprits, state.sources)
        if lower or named:
            fix = dict(fix or {})
            if lower:
                fix["lower"] = lower
            if named:
                fix["named"] = named
        return fix

    def _rule_fix(self, verdict: FlowVerdict, base: dict, culprits: list[str],
                  endpoint: Endpoint | None = None) -> dict | None:
        # a flow sink names a connection (`https://host:port`), never a request's method and path
        target = str(endpoint.connection) if endpoint is not None else base["target"]
        if verdict.rule and verdict.rule.startswith("deny "):
            return {"policy": f"the deny rule at {verdict.span} forbids this flow on purpose; narrow that rule "
                              "only if the flow is truly intended"}
        tags = [c for c in culprits if c in self.policy.lattice.tag_closure]
        if base["op"] == "connect" and tags:
            agent = self.agent.name if self.agent else "AGENT"
            declass = " ".join(f"--declassify {shlex.quote(f'{t} to {target}')}" for t in tags)
            return {
                "policy": f'allow {" + ".join(tags)} -> {encode_string(target)} "why this data may go there"',
                "mint": f"ifc caps mint --policy {shlex.quote(self.policy_path)} --grant {agent} {declass} "
                        f"--audience {shlex.quote(self.audience or 'RUN')} --ttl 10m",
            }
        levels = [c for c in culprits if c not in self.policy.lattice.tag_closure]
        if levels:
            sink = encode_string(target) if endpoint is not None else f"file {encode_string(target)}"
            return {"policy": f"endorse NAME: {levels[0]} -> {sink} \"who approved this\"   "
                              "# then mint a token holding it for the approved action"}
        return None

    # ------------------------------------------------------------------------------------ logging
    def _why(self, req: Request, state: RunState, label: Label) -> Why:
        """A label change's provenance, stored with it in the workspace's label store (`ifc labels`)."""
        source = "; ".join(f"{part} from {obj}" for part, obj in self._provenance(state)) or None
        return Why(subject=req.subject, command=_cmdline(req), source=source,
                   label=self.policy.lattice.describe(label))

    def _label_event(self, req: Request, path: str, label: Label, why: str) -> None:
        if self.log is not None:
            taint = self.policy.lattice.describe(self.subject(req.subject).taint)
            self.log.record(kind="label", subject=req.subject, op=req.op, target=path, allowed=True,
                            reason=f"label of {path} is now `{self.policy.lattice.describe(label)}` ({why})",
                            object_label=self.policy.lattice.describe(label), taint_before=taint,
                            taint_after=taint, pid=req.pid, cmdline=_cmdline(req))

    def _capability_event(self, req: Request, capability: str, target: str) -> None:
        if self.log is not None and not self._dry:
            cap = self.policy.capabilities.get(capability)
            kind = cap.kind if cap else "declassify"
            self.log.record(kind=kind, subject=req.subject, op=req.op, target=target, allowed=True,
                            reason=f"{kind} via `{capability}`", message=cap.message if cap else None,
                            pid=req.pid, cmdline=_cmdline(req))

    def _log(self, req: Request, decision: Decision) -> Decision:
        if self.log is None:
            return decision
        if decision.allowed:
            self._hostcfg_events(req, decision)
            self.log.count_allow(req.subject, req.op, decision.target)
            return decision
        self._hostcfg_events(req, decision)
        event = self.log.record(
            kind="deny", subject=req.subject, op=req.op, target=decision.target, allowed=False,
            reason=decision.reason, rule=decision.rule, rule_span=decision.rule_span, message=decision.message,
            object_label=decision.object_label, taint_before=decision.taint_before,
            taint_after=decision.taint_after, token_id=decision.token_id, token_block=decision.token_block, pid=req.pid,
            cmdline=_cmdline(req), path=[[h.source, h.op, h.target] for h in decision.path], fix=decision.fix)
        return replace(decision, event=event)

    def _other_names(self, path: str) -> list[str]:
        """The file's other names (hard links the label store knows), in order (most files have no object: asked
        on every write and chmod, cache hits too)."""
        return sorted(self.labels.names(path) - {path}) if self.labels.object_of(path) is not None else []

    def _host_config(self, op: str, target: str, dest: str | None) -> list:
        """The host-executed configuration a change touches (`hostcfg.touched`), and for a write or a change of
        mode every other name of the file too (hard links: `.git/config` changed through `src/cfg`)."""
        touches = hostcfg.touched(op, target, dest)
        if op in ("write", "chmod"):
            with contextlib.suppress(PatternError, TypeError):  # a path that does not normalise changes nothing
                for name in self._other_names(normalise_path(target)):
                    touches += hostcfg.touched(op, name)
        return touches

    def _hostcfg_events(self, req: Request, decision: Decision) -> None:
        """Every change to host-executed configuration, allowed or not, is an event of its own (`hostcfg`,
        committed before the answer): a tool on the host will run what it names, so the owner must see each one,
        and an allow is otherwise only counted."""
        for touch in self._host_config(req.op, req.target, req.dest):
            self.log.record(kind="hostcfg", subject=req.subject, op=req.op, target=touch.path,
                            allowed=decision.allowed, reason=f"{touch.kind.what}: {decision.reason}",
                            rule=decision.rule, rule_span=decision.rule_span, message=decision.message,
                            taint_before=decision.taint_before, taint_after=decision.taint_after, pid=req.pid,
                            cmdline=_cmdline(req))

    # ------------------------------------------------------------------------------------ adapter effects
    # What an enforcement point needs beyond `decide`: refusals that are no decision (a request it could not
    # parse, a stream it cut), its own failures, and label changes it observed on disk. Each goes through
    # here, so the monitor alone writes the log and the label store (docs/architecture.md).

    def sentinels_served(self, request: Request, replaced: int, keys: list[str]) -> None:
        """Log that a read served `request.target` with `replaced` values as sentinels (once per new content):
        `ifc run` counts them, `ifc report` lists the keys. Never raises."""
        if self.log is None:
            return
        shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
        with contextlib.suppress(Exception):
            self.log.record(kind="sentinels", subject=request.subject, op="serve", target=request.target,
                            allowed=True, reason=f"{replaced} value(s) served as sentinels" +
                            (f" (keys: {shown})" if shown else ""), pid=request.pid, cmdline=_cmdline(request),
                            path={"replaced": replaced, "keys": keys})

    def refuse(self, request: Request, reason: str, rule: str) -> Decision:
        """Log a refusal the enforcement point made without asking (it is not a policy question), like a denial."""
        with self._lock:
            self.steps += 1
            return self._log_safely(request, Decision(self.steps, request.op, request.target, False, reason,
                                                      rule=rule, subject=request.subject))

    def error(self, request: Request, reason: str) -> None:
        """Log that an enforcement point failed while serving `request` (it denies). Never raises: the
        enforcement point is already failing closed, and a log that cannot take this cannot take more."""
        with self._lock:
            with contextlib.suppress(Exception):
                self.denials.add(denials.error_note(request.subject, request.op, request.target, reason))
            if self.log is not None:
                with contextlib.suppress(Exception):
                    self.log.record(kind="error", subject=request.subject, op=request.op, target=request.target,
                                    allowed=False, reason=reason, pid=request.pid)

    def absorb_secret(self, name: str, where: str, subject: str = "session") -> Label:
        """A response from `where` carried secret `name`'s real value in a form the hook could not rule out
        (encoded: `ifc.enforce.encodings`), so the run may now hold it: its taint rises to the secret's
        label through the ordinary path — open streams are decided again, and cut, inside this call — and the
        rise is logged with its provenance. The policy gives a secret no label of its own, and its real value
        is what the sandbox must never hold, so its label is every secrecy tag the lattice has. Returns the
        run's taint; never raises for the log (the rise stands even if it cannot be logged)."""
        with self._lock:
            self.steps += 1
            state, lattice = self.run, self.policy.lattice
            label = Label(frozenset().union(*lattice.tag_closure.values()), lattice.top_integrity)
            before = state.taint
            why = f"secret {name} via response from {where}"
            self._absorb(state, label, node("secret", f"{name} via response from {where}"), node("subject", subject),
                         "reveal", self.clock(), Request("reveal", why, subject=subject))
            if self.log is not None:
                with contextlib.suppress(Exception):
                    self.log.record(kind="label", subject=subject, op="reveal", target=where, allowed=True,
                                    reason=f"the run's taint is now `{lattice.describe(state.taint)}` ({why})",
                                    object_label=lattice.describe(label), taint_before=lattice.describe(before),
                                    taint_after=lattice.describe(state.taint))
            return state.taint

    def inherit(self, label: Label, source: str) -> Label:
        """Before the run starts: data the run will reach without the monitor seeing it (an agent's kept home,
        `ifc.monitor.carried`) carries `label`, so the run starts there — through the ordinary path, with
        `source` as its provenance (a denial then names it) and the rise logged. Returns the run's taint."""
        with self._lock:
            self.steps += 1
            state, lattice = self.run, self.policy.lattice
            before = state.taint
            self._absorb(state, label, node("state", source), node("subject", "session"), "inherit", self.clock(),
                         Request("inherit", source))
            if self.log is not None:
                with contextlib.suppress(Exception):
                    self.log.record(kind="label", subject="session", op="inherit", target=source, allowed=True,
                                    reason=f"the run's taint starts at `{lattice.describe(state.taint)}` ({source})",
                                    object_label=lattice.describe(label), taint_before=lattice.describe(before),
                                    taint_after=lattice.describe(state.taint))
            return state.taint

    def _catch_up(self) -> None:
        """Record what enforcement points answered by class since (`made`), in order (called under the lock)."""
        for catch_up in self.on_decide:
            catch_up()

    def flush(self) -> None:
        with self._lock:
            self._catch_up()
        if self.log is not None:
            self.log.flush()

    def taint_of(self, subject: str) -> Label:
        """The taint `subject` decides with now — the run's, whoever asks: writes through an open descriptor
        are decided again when it moved."""
        return self.run.taint

    def stored_labels(self, *paths: str) -> dict[str, Label | None]:
        """The floated labels of `paths`, to give to `restore_labels` if the operation then fails on disk."""
        with self._lock:
            return {path: self.labels.get(path) for path in paths}

    def restore_labels(self, request: Request, saved: dict[str, Label | None]) -> None:
        """An operation the monitor allowed (and applied) failed on disk: raise each name back to at least the
        label it had. Labels only go up, so this is conservative and never launders."""
        with self._lock:
            for path, label in saved.items():
                if label is None:
                    continue
                current = self.labels.get(path)
                self.labels.raise_to(path, label if current is None else current.join(label))
                self._label_event(request, path, self.label_of(path), f"restored: the {request.op} failed")

    def share_label(self, request: Request, paths: list[str]) -> None:
        """Names found on disk to be hard links of one file: the content is one whichever name reads it, so
        every name gets the join of their labels, and the store links them so a later raise is shared."""
        if len(paths) < 2:
            return
        with self._lock:
            before = {path: self.label_of(path) for path in paths}
            joined = before[paths[0]]
            for label in before.values():
                joined = joined.join(label)
            self.labels.raise_to(paths[0], joined)
            for path in paths[1:]:
                self.labels.link(paths[0], path)
                if self.labels.get(path) is None or not joined.flows_to(self.labels.get(path)):
                    self.labels.raise_to(path, joined)  # a name with its own object keeps it, raised
            for path in paths:
                if self.label_of(path) != before[path]:
                    self._label_event(request, path, self.label_of(path), f"hard links of one file: {', '.join(paths)}")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        self.labels.close()
