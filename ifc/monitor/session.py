"""A subject's session: authority from its grants, flow from labels and the taint it has accumulated.

This is the decision core the enforcement points and `ifc decide` share. It keeps, for every secrecy
tag in the taint, the object it came from, so a denial can say not only which rule fired but which
read put the subject in that state (`.env` → session → smtp.gmail.com:587).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ifc.match import Endpoint, Glob, PatternError, normalise_path
from ifc.policy.flows import FlowVerdict, check_send, check_write
from ifc.policy.labels import Label
from ifc.policy.model import OPS, Agent, Policy

FILE_OPS = ("read", "write", "create", "delete", "exec")


@dataclass(frozen=True)
class Decision:
    step: int
    op: str
    target: str
    allowed: bool
    reason: str
    rule: str | None = None
    rule_span: str | None = None
    message: str | None = None
    object_label: str | None = None  # the file's or endpoint's label, as the user writes labels
    taint_before: str = ""
    taint_after: str = ""
    tainted_by: tuple[tuple[str, str], ...] = ()  # (tag or integrity level, object it came from)
    capabilities_used: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {k: (list(map(list, v)) if k == "tainted_by" else v) for k, v in self.__dict__.items()}


@dataclass
class Session:
    """One subject's view: its taint, where each part came from, and labels floated by its writes."""

    policy: Policy
    agent: Agent | None = None
    held: frozenset[str] = frozenset()  # capabilities (declassify/endorse) the subject holds
    taint: Label = None
    sources: dict[str, str] = field(default_factory=dict)  # tag / integrity level -> object
    floated: dict[str, Label] = field(default_factory=dict)  # path -> label raised by a write
    steps: int = 0

    def __post_init__(self):
        if self.taint is None:
            self.taint = self.policy.lattice.bottom
        if self.agent is not None and not self.held:
            self.held = frozenset(self.agent.holds)

    # ----------------------------------------------------------------------------------- queries
    def label_of(self, path: str) -> Label:
        base = self.policy.file_label(path).label
        extra = self.floated.get(path)
        return base.join(extra) if extra else base

    def decide(self, op: str, target: str) -> Decision:
        """Decide one operation and apply its effect on the taint when allowed. Never raises."""
        self.steps += 1
        before = self.policy.lattice.describe(self.taint)
        try:
            return self._decide(op, target, before)
        except Exception as exc:  # fail closed: an internal error is a denial that says why
            return Decision(self.steps, op, target, False, f"internal error, denied: {exc}", taint_before=before,
                            taint_after=before)

    # ----------------------------------------------------------------------------------- internals
    def _decide(self, op: str, target: str, before: str) -> Decision:
        if op not in (*OPS, "send"):
            return self._deny(op, target, before, f"unknown operation `{op}`")
        if op in FILE_OPS:
            try:
                target = normalise_path(target)
            except PatternError as exc:
                return self._deny(op, target, before, f"bad path: {exc.message}")
        authority = self._authorise(op, target)
        if authority is not None:
            return self._deny(op, target, before, authority, rule=f"agent {self.agent.name}",
                              rule_span=str(self.agent.span))
        lattice = self.policy.lattice
        if op == "read" or op == "exec":
            label = self.label_of(target)
            self._absorb(label, target)
            return self._allow(op, target, before, f"reading joins `{lattice.describe(label)}` into the taint",
                               label, self.policy.file_label(target).rule)
        if op in ("write", "create", "delete"):
            verdict = check_write(self.policy, self.taint, target, self.held)
            if not verdict.allowed:
                return self._from_verdict(op, target, before, verdict, self.label_of(target))
            if op != "delete":
                new = self.label_of(target).join(self.taint)
                if new != self.label_of(target):
                    self.floated[target] = new
                    verdict = FlowVerdict(True, f"{target} floats up to `{lattice.describe(new)}`",
                                          verdict.rule, verdict.span, capabilities_used=verdict.capabilities_used)
            return self._from_verdict(op, target, before, verdict, self.label_of(target))
        if op == "send":
            return self._send(target, before)
        try:
            endpoint = Endpoint.parse(target)
        except PatternError as exc:
            return self._deny(op, target, before, f"bad endpoint: {exc.message}")
        verdict = check_send(self.policy, self.taint, endpoint, self.held)
        rule = self.policy.endpoint_rule(endpoint)
        decision = self._from_verdict(op, str(endpoint), before, verdict, None,
                                      clearance=rule.clearance if rule else None)
        if verdict.allowed and rule is not None and rule.returns < self.taint.integrity:
            # what comes back is read: an untrusted reply lowers the subject's integrity
            self._absorb(Label(frozenset(), rule.returns), str(endpoint))
            decision = _replace(decision, taint_after=lattice.describe(self.taint),
                                reason=decision.reason + f"; the reply is `{lattice.integrity_levels[rule.returns]}`",
                                tainted_by=self._provenance())
        return decision

    def _send(self, target: str, before: str) -> Decision:
        name, _, endpoint_text = target.partition("@")
        secret = self.policy.secrets.get(name)
        if secret is None:
            return self._deny("send", target, before, f"no secret named `{name}` in the policy")
        try:
            endpoint = Endpoint.parse(endpoint_text)
        except PatternError as exc:
            return self._deny("send", target, before, f"bad endpoint: {exc.message}")
        if not any(p.matches(endpoint) for p in secret.endpoints):
            return self._deny("send", target, before, f"secret `{name}` is bound to "
                              f"{', '.join(p.text for p in secret.endpoints) or 'no endpoint'}, not {endpoint}",
                              rule=f"secret {name}", rule_span=str(secret.span))
        return self._allow("send", target, before, f"secret `{name}` may be sent to {endpoint}", None, None)

    def _authorise(self, op: str, target: str) -> str | None:
        """None when the agent's grants cover the operation; otherwise why not."""
        if self.agent is None:
            return None
        needed = "connect" if op == "send" else op
        patterns = self.agent.patterns(needed)
        if op in FILE_OPS:
            if any(Glob.compile(p).matches(target) for p in patterns):
                return None
        else:
            from ifc.match import EndpointPattern

            text = target.partition("@")[2] if op == "send" else target
            try:
                endpoint = Endpoint.parse(text)
            except PatternError:
                return None  # the flow check reports the bad endpoint
            if any(EndpointPattern.parse(p).matches(endpoint) for p in patterns):
                return None
        return f"agent `{self.agent.name}` has no `{needed}` grant covering {target}"

    def _absorb(self, label: Label, source: str) -> None:
        for tag in label.secrecy - self.taint.secrecy:
            self.sources[tag] = source
        if label.integrity < self.taint.integrity:
            self.sources[self.policy.lattice.integrity_levels[label.integrity]] = source
        self.taint = self.taint.join(label)

    def _provenance(self) -> tuple[tuple[str, str], ...]:
        """(label part, object) pairs, one per object: `secret` from `.env`, `untrusted` from a reply."""
        lattice = self.policy.lattice
        by_object: dict[str, set[str]] = {}
        for part, obj in self.sources.items():
            by_object.setdefault(obj, set()).add(part)
        out = []
        for obj, parts in by_object.items():
            tags = frozenset(p for p in parts if p in self.taint.secrecy)
            levels = sorted(p for p in parts if p not in tags)
            text = " + ".join(([lattice.describe_tags(tags)] if tags else []) + levels)
            out.append((text, obj))
        return tuple(sorted(out, key=lambda pair: pair[1]))

    def _allow(self, op, target, before, reason, label, rule) -> Decision:
        lattice = self.policy.lattice
        return Decision(self.steps, op, target, True, reason,
                        rule=None if rule is None else f"files: {rule.label_text}",
                        rule_span=None if rule is None else str(rule.span),
                        object_label=None if label is None else lattice.describe(label),
                        taint_before=before, taint_after=lattice.describe(self.taint),
                        tainted_by=self._provenance())

    def _deny(self, op, target, before, reason, rule=None, rule_span=None) -> Decision:
        return Decision(self.steps, op, target, False, reason, rule=rule, rule_span=rule_span,
                        taint_before=before, taint_after=before, tainted_by=self._provenance())

    def _from_verdict(self, op, target, before, verdict: FlowVerdict, label, clearance=None) -> Decision:
        lattice = self.policy.lattice
        if label is not None:
            object_label = lattice.describe(label)
        elif clearance is not None:
            object_label = f"clearance {lattice.describe_tags(clearance)}"
        else:
            object_label = None
        blocked = verdict.blocked_tags  # keep each chain's top: `secret`, not the `internal` it implies
        culprits = {t for t in blocked if not any(u != t and t in lattice.tag_closure.get(u, ()) for u in blocked)} | (
            {lattice.integrity_levels[self.taint.integrity]} if verdict.integrity_short else set())
        guilty = {obj for part, obj in self.sources.items() if part in culprits}
        tainted_by = tuple(p for p in self._provenance() if verdict.allowed or p[1] in guilty) or self._provenance()
        return Decision(self.steps, op, target, verdict.allowed, verdict.reason, verdict.rule,
                        None if verdict.span is None else str(verdict.span), verdict.message, object_label,
                        before, lattice.describe(self.taint), tainted_by, verdict.capabilities_used)


def _replace(decision: Decision, **changes) -> Decision:
    from dataclasses import replace

    return replace(decision, **changes)
