"""The reference monitor: the one place a decision is made.

`Monitor.decide(request)` asks two questions and both must say yes:

  authority — does the subject's capability token (or, without one, its agent's grants) allow the
              operation on the object? The token block that refused is named.
  flow      — given the subject's taint, may the data go there? (`ifc.policy.flows`, shared with the
              static checker.)

Then it applies the effects of an allowed operation: reads raise the subject's taint; writes float the
object's label up to the taint (kept per object in the `LabelStore`, so renames and hard links carry
it); replies from endpoints lower integrity. Every decision becomes an event; denials, label changes,
declassifications and first token uses are committed to the log before `decide` returns. It never
raises: an internal error is a denial that says why.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from caps import TokenError
from ifc.lang.lower import encode_string
from ifc.match import Endpoint, PatternError, normalise_path
from ifc.monitor.events import EventLog
from ifc.monitor.labelstore import LabelStore, Why
from ifc.monitor.provenance import Hop, ProvenanceGraph, draw, node
from ifc.policy.flows import FlowVerdict, check_send, check_write
from ifc.policy.labels import Label
from ifc.policy.model import Agent, Policy

FILE_OPS = ("read", "write", "create", "delete", "exec", "chmod")
TWO_PATH_OPS = ("rename", "link")
NET_OPS = ("connect", "dns", "send")
ALL_OPS = (*FILE_OPS, *TWO_PATH_OPS, *NET_OPS)
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
    parent: str | None = None  # a new subject inherits this subject's taint (a sub-process)
    pid: int | None = None
    # the command behind the request, for the log: text, or a function reading it, called only when an event
    # is recorded (allows record none, and reading /proc/PID/cmdline for each one cost ~10 µs)
    cmdline: str | Callable[[], str | None] | None = None


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

    @property
    def explanation(self) -> str:
        return draw(list(self.path))

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "path"}
        out["tainted_by"] = [list(p) for p in self.tainted_by]
        out["capabilities_used"] = list(self.capabilities_used)
        out["path"] = [[h.source, h.op, h.target] for h in self.path]
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
    if "\x00" in target or "\x00" in subject:
        return "NUL byte"
    return None


@dataclass
class SubjectState:
    taint: Label
    sources: dict[str, str] = field(default_factory=dict)  # label part -> graph node it came from
    provenance: tuple | None = None  # `_provenance` of the current sources; None when they changed


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
        self.subjects: dict[str, SubjectState] = {}
        self.steps = 0
        self._tokens_seen: set[str] = set()
        # Repeated decisions: an allowed decision whose effects are idempotent (same subject taint, same label
        # store version, nothing declassified) is answered from here; its graph edges and allow count are
        # still recorded. Bounded; cleared when full.
        self._fast: dict[tuple, tuple] = {}
        self._trace: list | None = None
        self._verified = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------ queries
    def subject(self, name: str, parent: str | None = None) -> SubjectState:
        state = self.subjects.get(name)
        if state is None:
            inherited = self.subjects.get(parent) if parent else None
            state = SubjectState(inherited.taint if inherited else self.policy.lattice.bottom,
                                 dict(inherited.sources) if inherited else {})
            self.subjects[name] = state
            if inherited is not None:  # a sub-process starts with what its parent knew
                self.graph.record(node("subject", parent), "spawn", node("subject", name), self.clock(), None,
                                  parts=self._parts(inherited.taint))
        return state

    def label_of(self, path: str) -> Label:
        base = self.policy.file_label(path).label
        extra = self.labels.get(path)
        return base.join(extra) if extra else base

    # ------------------------------------------------------------------------------------ decide
    def decide(self, request: Request) -> Decision:
        with self._lock:
            self.steps += 1
            problem = _malformed(request)
            if problem is not None:
                return self._log_safely(request, Decision(self.steps, str(request.op)[:64], str(request.target)[:256],
                                                          False, f"malformed request: {problem}", subject="?"))
            before = ""
            try:
                state = self.subjects.get(request.subject)
                if state is None:
                    state = self.subject(request.subject, request.parent)
                taint = state.taint  # by its parts: a Label (a dataclass) would hash and compare in Python
                key = (request.subject, taint.secrecy, taint.integrity, request.op, request.target, request.dest,
                       request.token, self.labels.version)
                hit = self._fast.get(key)
                if hit is not None:
                    cached, edges, validity = hit
                    now = self.clock()
                    if validity is None or (validity[0] <= now < validity[1]
                                            and self.verifier.revocations.epoch == validity[2]):
                        for source, op, target in edges:  # the repeat still counts in the provenance graph
                            self.graph.record(source, op, target, now, None)
                        return self._log_safely(request, _restep(cached, self.steps))
                    del self._fast[key]  # the token's window or the revocation list moved on
                before = self.policy.lattice.describe(state.taint)
                self._trace = []
                decision = self._decide(request, state, before)
                self._remember(key, decision, state, request)
            except Exception as exc:  # fail closed, and say why
                decision = Decision(self.steps, request.op, request.target, False,
                                    f"internal error, denied: {type(exc).__name__}: {exc}",
                                    taint_before=before, taint_after=before, subject=request.subject)
            return self._log_safely(request, decision)

    FAST_LIMIT = 65536

    def _remember(self, key: tuple, decision: Decision, state: SubjectState, request: Request) -> None:
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
        if len(self._fast) >= self.FAST_LIMIT:
            self._fast.clear()
        # a copy of its fields: the caller gets `decision` itself, and a Decision is not frozen
        self._fast[key] = (dict(decision.__dict__), tuple(trace or ()), validity)

    def _edge(self, source: str, op: str, target: str, now: float, event, parts=()) -> None:
        self.graph.record(source, op, target, now, event, parts=parts)
        if self._trace is not None:
            self._trace.append((source, op, target))

    def _log_safely(self, request: Request, decision: Decision) -> Decision:
        """Log the decision; if the log itself fails, the answer is a denial that says so."""
        try:
            return self._log(request, decision)
        except Exception as exc:
            return replace(decision, allowed=False,
                           reason=f"denied: the event log failed ({type(exc).__name__}: {exc}); {decision.reason}")

    def _decide(self, req: Request, state: SubjectState, before: str) -> Decision:
        lattice = self.policy.lattice
        op, target = req.op, req.target
        base = {"step": self.steps, "op": op, "target": target, "subject": req.subject, "taint_before": before,
                "taint_after": before}
        if op not in ALL_OPS:
            return Decision(allowed=False, reason=f"unknown operation `{op}`", **base)
        dest = None
        if op in FILE_OPS or op in TWO_PATH_OPS:
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
        endpoint = None
        secret_name = None
        if op in NET_OPS:
            text = target
            if op == "send":
                secret_name, _, text = target.partition("@")
            try:
                endpoint = Endpoint.parse(text) if op != "dns" else None
            except PatternError as exc:
                return Decision(allowed=False, reason=f"bad endpoint: {exc.message}", **base)
            if endpoint is not None and op == "connect":
                base["target"] = str(endpoint)

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
            label = self.label_of(target)
            self._absorb(state, label, node("file", target), subject_node, op, now)
            rule = self.policy.file_label(target).rule
            described = lattice.describe(label)
            base["taint_after"] = lattice.describe(state.taint)
            return Decision(allowed=True, reason=f"reading joins `{described}` into the taint",
                            rule=f"files: {rule.label_text}" if rule else None,
                            rule_span=str(rule.span) if rule else None, object_label=described,
                            tainted_by=self._provenance(state), **base)
        if op in ("write", "create", "delete", "chmod", "rename", "link"):
            return self._write_like(req, state, base, target, dest, subject_node, now, verified)
        if op == "dns":
            return self._dns(state, base, target)
        if op == "send":
            return self._send(state, base, secret_name, endpoint)
        return self._connect(req, state, base, endpoint, subject_node, now, verified)

    # ------------------------------------------------------------------------------------ authority
    def _authority(self, req: Request, op: str, target: str, dest: str | None, endpoint):
        """(verified token or None, None when allowed else (reason, rule, rule span, token block))."""
        needed = _AUTHORITY_OP.get(op, op)
        objects: list[str | Endpoint] = [target] if op not in NET_OPS else [endpoint] if endpoint else []
        if op in TWO_PATH_OPS:
            objects = [target, dest]
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
                return None, (f"agent `{self.agent.name}` has no `{needed}` grant covering {obj}",
                              f"agent {self.agent.name}", str(self.agent.span), None)
        return None, None

    def _note_token(self, verified, req: Request) -> None:
        token_id = getattr(verified, "token_id", None)
        if token_id and token_id not in self._tokens_seen and self.log is not None:
            self._tokens_seen.add(token_id)
            self.log.record(kind="token", subject=req.subject, op="use", target=token_id, allowed=True,
                            reason="first use of this token in the run", token_id=token_id, pid=req.pid,
                            cmdline=_cmdline(req))

    # ------------------------------------------------------------------------------------ effects
    def _write_like(self, req, state, base, target, dest, subject_node, now, verified) -> Decision:
        lattice = self.policy.lattice
        op = req.op
        written = dest if op in ("rename", "link") else target
        held = self._held(verified)
        # a rename/link moves the content's label to the new name; the new name's rules must accept it
        data = state.taint
        if op in ("rename", "link"):
            data = data.join(self.label_of(target))
        verdict = check_write(self.policy, data, written, held)
        if verdict.allowed and op == "rename":
            verdict_src = check_write(self.policy, state.taint, target, held)
            verdict = verdict_src if not verdict_src.allowed else verdict
        if not verdict.allowed:
            return self._from_verdict(state, base, verdict, lattice.describe(self.label_of(written)),
                                      sink=node("file", written), part_hint=None)
        reason = verdict.reason
        if op == "delete":
            self.labels.delete(target)
            self.graph.forget(node("file", target))
            self._edge(subject_node, "delete", node("file", target), now, None)
        elif op == "chmod":
            self._edge(subject_node, "chmod", node("file", target), now, None)
        elif op in ("rename", "link"):
            content = self.label_of(target)
            why = self._why(req, state, content)
            # the content takes its full label (its old name's policy label included) to the new name
            self.labels.raise_to(target, content, why)
            if op == "link":
                self.labels.link(target, dest, why=why)
            else:
                self.labels.rename(target, dest, why=why)
                self.graph.rename(node("file", target), node("file", dest))
            self._edge(node("file", target), op, node("file", dest), now, None,
                              parts=self._parts(content))
            moved = self.label_of(dest)
            if moved != self.policy.file_label(dest).label:
                self._label_event(req, dest, moved, f"{op} from {target}")
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
            within_name = stored is None and state.taint.flows_to(named)
            if raised != base_label and not within_name:
                self.labels.raise_to(target, raised, self._why(req, state, raised))
                new = self.label_of(target)
                self._label_event(req, target, new, f"written by {req.subject}")
                if new != old:
                    reason = f"{target} floats up to `{lattice.describe(new)}`"
        for cap in verdict.capabilities_used:
            self._capability_event(req, cap, written)
        base["taint_after"] = lattice.describe(state.taint)
        return Decision(allowed=True, reason=reason, rule=verdict.rule,
                        rule_span=None if verdict.span is None else str(verdict.span),
                        object_label=lattice.describe(self.label_of(written)),
                        capabilities_used=verdict.capabilities_used, tainted_by=self._provenance(state), **base)

    def _connect(self, req, state, base, endpoint: Endpoint, subject_node, now, verified) -> Decision:
        lattice = self.policy.lattice
        verdict = check_send(self.policy, state.taint, endpoint, self._held(verified),
                             may_declassify=self._token_declassifier(verified, endpoint))
        rule = self.policy.endpoint_rule(endpoint)
        label_text = f"clearance {lattice.describe_tags(rule.clearance)}" if rule else None
        sink = node("endpoint", str(endpoint))
        if not verdict.allowed:
            return self._from_verdict(state, base, verdict, label_text, sink=sink, part_hint=None)
        self._edge(subject_node, "connect", sink, now, None, parts=self._parts(state.taint))
        for cap in verdict.capabilities_used:
            self._capability_event(req, cap, str(endpoint))
        reason = verdict.reason
        if rule is not None and rule.returns < state.taint.integrity:
            # what comes back is read: an untrusted reply lowers the subject's integrity
            self._absorb(state, Label(frozenset(), rule.returns), sink, subject_node, "reply", now)
            reason += f"; the reply is `{lattice.integrity_levels[rule.returns]}`"
        return Decision(allowed=True, reason=reason, rule=verdict.rule,
                        rule_span=None if verdict.span is None else str(verdict.span), object_label=label_text,
                        capabilities_used=verdict.capabilities_used, tainted_by=self._provenance(state),
                        **{**base, "taint_after": lattice.describe(state.taint)})

    def _dns(self, state, base, name: str) -> Decision:
        host = name.lower().rstrip(".")
        for rule in reversed(self.policy.endpoint_rules):
            if any(p.matches_host(host) for p in rule.patterns):
                return Decision(allowed=True, reason=f"`{host}` is named by an endpoint rule",
                                rule="endpoints", rule_span=str(rule.span), tainted_by=self._provenance(state),
                                **base)
        return Decision(allowed=False, reason=f"no endpoint rule names `{host}`: lookups of unknown names are "
                        "refused (a query can carry data out)", rule="endpoints (no match)",
                        tainted_by=self._provenance(state), **base)

    def _send(self, state, base, name: str, endpoint: Endpoint) -> Decision:
        secret = self.policy.secrets.get(name)
        if secret is None:
            return Decision(allowed=False, reason=f"no secret named `{name}` in the policy", **base)
        if not any(p.matches(endpoint) for p in secret.endpoints):
            bound = ", ".join(p.text for p in secret.endpoints) or "no endpoint"
            return Decision(allowed=False, reason=f"secret `{name}` is bound to {bound}, not {endpoint}",
                            rule=f"secret {name}", rule_span=str(secret.span), tainted_by=self._provenance(state),
                            **base)
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

    def _absorb(self, state: SubjectState, label: Label, source: str, subject_node: str, op: str,
                now: float) -> None:
        parts = []
        for tag in label.secrecy - state.taint.secrecy:
            state.sources[tag] = source
            state.provenance = None
            parts.append(tag)
        if label.integrity < state.taint.integrity:
            level = self.policy.lattice.integrity_levels[label.integrity]
            state.sources[level] = source
            state.provenance = None
            parts.append(level)
        self._edge(source, op, subject_node, now, None, parts=parts)
        state.taint = state.taint.join(label)

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

    def _provenance(self, state: SubjectState) -> tuple[tuple[str, str], ...]:
        """(label part, object) pairs grouped per object: `secret` from `.env`, `untrusted` from a reply."""
        if state.provenance is None:
            state.provenance = self._group_sources(state)
        return state.provenance

    def _group_sources(self, state: SubjectState) -> tuple[tuple[str, str], ...]:
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

    def _culprits(self, state: SubjectState, verdict: FlowVerdict) -> list[str]:
        lattice = self.policy.lattice
        blocked = verdict.blocked_tags  # each chain's top: `secret`, not the `internal` it implies
        parts = [t for t in sorted(blocked)
                 if not any(u != t and t in lattice.tag_closure.get(u, ()) for u in blocked)]
        if verdict.integrity_short:
            parts.append(lattice.integrity_levels[state.taint.integrity])
        return parts

    def _from_verdict(self, state, base, verdict: FlowVerdict, object_label, sink: str, part_hint) -> Decision:
        culprits = self._culprits(state, verdict)
        guilty = {state.sources[p].split(":", 1)[1] for p in culprits if p in state.sources}
        tainted_by = tuple(p for p in self._provenance(state) if p[1] in guilty) or self._provenance(state)
        path: tuple[Hop, ...] = ()
        subject_node = node("subject", base["subject"])
        for part in culprits:
            hops = self.graph.explain(Hop(subject_node, base["op"], sink), part)
            if len(hops) > len(path):
                path = tuple(hops)
        return Decision(allowed=False, reason=verdict.reason, rule=verdict.rule,
                        rule_span=None if verdict.span is None else str(verdict.span), message=verdict.message,
                        object_label=object_label, tainted_by=tainted_by, path=path,
                        fix=self._flow_fix(verdict, base, culprits), **base)

    # ------------------------------------------------------------------------------------ fixes
    def _authority_fix(self, req: Request, op: str, target: str, dest: str | None) -> dict:
        needed = _AUTHORITY_OP.get(op, op)
        obj = dest if op in TWO_PATH_OPS else target.partition("@")[2] if op == "send" else target
        agent = self.agent.name if self.agent else "AGENT"
        flag = {"read": "--read", "write": "--write", "create": "--create", "delete": "--delete",
                "exec": "--exec", "connect": "--connect"}.get(needed, f"--{needed}")
        return {
            "policy": f"{needed} {encode_string(obj)}   # in `agent {agent} {{ }}`",
            "mint": f"ifc caps mint --policy {shlex.quote(self.policy_path)} --grant {agent} "
                    f"{flag} {shlex.quote(obj)} --audience {shlex.quote(self.audience or 'RUN')} --ttl 1h",
        }

    def _flow_fix(self, verdict: FlowVerdict, base: dict, culprits: list[str]) -> dict | None:
        target = base["target"]
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
            return {"policy": f"endorse NAME: {levels[0]} -> file {encode_string(target)} \"who approved this\"   "
                              "# then mint a token holding it for the approved action"}
        return None

    # ------------------------------------------------------------------------------------ logging
    def _why(self, req: Request, state: SubjectState, label: Label) -> Why:
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
        if self.log is not None:
            cap = self.policy.capabilities.get(capability)
            kind = cap.kind if cap else "declassify"
            self.log.record(kind=kind, subject=req.subject, op=req.op, target=target, allowed=True,
                            reason=f"{kind} via `{capability}`", message=cap.message if cap else None,
                            pid=req.pid, cmdline=_cmdline(req))

    def _log(self, req: Request, decision: Decision) -> Decision:
        if self.log is None:
            return decision
        if decision.allowed:
            self.log.count_allow(req.subject, req.op, decision.target)
            return decision
        event = self.log.record(
            kind="deny", subject=req.subject, op=req.op, target=decision.target, allowed=False,
            reason=decision.reason, rule=decision.rule, rule_span=decision.rule_span, message=decision.message,
            object_label=decision.object_label, taint_before=decision.taint_before,
            taint_after=decision.taint_after, token_id=decision.token_id, token_block=decision.token_block, pid=req.pid,
            cmdline=_cmdline(req), path=[[h.source, h.op, h.target] for h in decision.path], fix=decision.fix)
        return replace(decision, event=event)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        self.labels.close()
