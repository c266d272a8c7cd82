"""Non-interference, as a hypothesis state machine.

Each example generates a small policy (a few files labelled from the chain `public < internal < secret`, the
independent tag `customer` and `untrusted`; a few endpoints with clearances; deny/allow rules; one named
declassification), then runs a random sequence of reads, writes, renames, hard links, deletes, connects,
new subjects (some children of others) and declassifications (a monitor whose subjects hold the named
capability, or a connect presenting a capability token with `declassify TAG to ENDPOINT` rights).

The test keeps its own shadow of the information flow, computed only from the sequence of allowed
operations: a subject's taint is the union of the labels of everything it read, where a file's label is its
policy label plus whatever flowed into its content (writes by tainted subjects, carried by renames and
shared by hard links). Two properties hold after every step:

* the monitor never under-approximates: the shadow taint of every subject is within the monitor's taint, and
  every file's shadow label within the monitor's label for it;
* an allowed connect carries no secrecy tag outside the endpoint's clearance (widened by matching `allow`
  rules) unless a declassification covering that tag and endpoint was used, named in the decision's
  `capabilities_used` and logged as a `declassify` event; no `deny` rule matches it; an unknown endpoint is
  never reached; and data below an endpoint's required integrity is not sent there.

The shadow's notion of a file label is the minimal sound one: a file's content object starts with the
policy label of the name it was first seen under, and every write joins the writer's taint into it; a rename
or hard link moves or shares the object (a read through any name sees that name's policy label plus the
object's). The monitor may be coarser, never finer. Like the monitor, the shadow treats a link onto a name
the monitor already knows as failing (link(2) answers EEXIST).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hypothesis import HealthCheck, assume, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from caps import HostKey, Verifier, mint
from ifc.monitor import EventLog, Monitor, Request
from ifc.policy import compile_text

NOW = 1_800_000_000.0
AUDIENCE = "run-ni"
HOST = HostKey.generate()

LEVELS = ("public", "internal", "secret")
CLOSURE = {"public": frozenset(), "internal": frozenset({"internal"}), "secret": frozenset({"internal", "secret"}),
           "customer": frozenset({"customer"})}
TAG_NAMES = ("internal", "secret", "customer")
TRUSTED, UNTRUSTED = 1, 0

FILES = tuple(f"d/f{i}" for i in range(4))  # named by a file rule each
FRESH = ("d/n0", "d/n1", "new/n2")  # labelled by the catch-all rule
PATHS = FILES + FRESH
ENDPOINTS = tuple(f"https://e{i}.example" for i in range(3))
UNKNOWN = "https://unknown.example"


# ------------------------------------------------------------------------------------------- the policy
@dataclass(frozen=True)
class FileLabel:
    level: str
    customer: bool
    untrusted: bool

    @property
    def tags(self) -> frozenset[str]:
        return CLOSURE[self.level] | (CLOSURE["customer"] if self.customer else frozenset())

    @property
    def integrity(self) -> int:
        return UNTRUSTED if self.untrusted else TRUSTED

    def text(self) -> str:
        terms = ([self.level] if self.level != "public" else []) + (["customer"] if self.customer else [])
        terms += ["untrusted"] if self.untrusted else []
        return " + ".join(terms) or "public"


@dataclass(frozen=True)
class EndpointSpec:
    level: str
    customer: bool
    requires_trusted: bool
    returns_untrusted: bool

    @property
    def clearance(self) -> frozenset[str]:
        return CLOSURE[self.level] | (CLOSURE["customer"] if self.customer else frozenset())

    def text(self, index: int) -> str:
        clearance = " + ".join(([self.level] if self.level != "public" else []) + (["customer"] if self.customer
                                                                                   else [])) or "public"
        requires = " requires trusted" if self.requires_trusted else ""
        returns = "untrusted" if self.returns_untrusted else "trusted"
        return f'"{ENDPOINTS[index]}" clearance {clearance}{requires} returns {returns} as ext, g{index}'


@dataclass(frozen=True)
class FlowSpec:
    effect: str  # deny | allow
    source: str  # a tag name or `untrusted`
    sink: int | None  # an endpoint index, or None for the group `ext`

    def matches(self, endpoint: int) -> bool:
        return self.sink is None or self.sink == endpoint

    def text(self) -> str:
        sink = "ext" if self.sink is None else (f'"{ENDPOINTS[self.sink]}"' if self.effect == "allow"
                                               else f"g{self.sink}")
        return f'{self.effect} {self.source} -> {sink} "generated"'


@dataclass(frozen=True)
class PolicySpec:
    default: FileLabel
    files: tuple[FileLabel, ...]
    endpoints: tuple[EndpointSpec, ...]
    flows: tuple[FlowSpec, ...]
    capability: tuple[tuple[str, ...], int] | None  # (tags it declassifies, endpoint index)
    held: bool  # do subjects hold the capability (the agent's `holds`)?
    token_rights: tuple[tuple[str, int], ...]  # (tag, endpoint index) declassify rights of the token

    def base(self, path: str) -> FileLabel:
        return self.files[FILES.index(path)] if path in FILES else self.default

    def text(self) -> str:
        lines = ["labels {", "  secrecy public < internal < secret", "  secrecy customer",
                 "  integrity untrusted < trusted", "}", "files {", f'  "**" {self.default.text()}']
        lines += [f'  "{path}" {label.text()}' for path, label in zip(FILES, self.files, strict=True)]
        lines += ["}", "endpoints {"] + [f"  {e.text(i)}" for i, e in enumerate(self.endpoints)] + ["}"]
        lines += [f.text() for f in self.flows]
        if self.capability is not None:
            tags, endpoint = self.capability
            lines.append(f'declassify rel: {" + ".join(tags)} -> "{ENDPOINTS[endpoint]}" "generated"')
        return "\n".join(lines) + "\n"


file_labels = st.builds(FileLabel, st.sampled_from(LEVELS), st.booleans(), st.booleans())
endpoint_specs = st.builds(EndpointSpec, st.sampled_from(LEVELS), st.booleans(), st.booleans(), st.booleans())
endpoint_index = st.integers(0, len(ENDPOINTS) - 1)
flow_specs = st.builds(FlowSpec, st.sampled_from(("deny", "allow")),
                       st.sampled_from((*TAG_NAMES, "untrusted")), st.none() | endpoint_index)
policy_specs = st.builds(
    PolicySpec,
    default=file_labels,
    files=st.tuples(*[file_labels] * len(FILES)),
    endpoints=st.tuples(*[endpoint_specs] * len(ENDPOINTS)),
    flows=st.lists(flow_specs, max_size=4).map(tuple),
    capability=st.none() | st.tuples(st.lists(st.sampled_from(TAG_NAMES), min_size=1, max_size=3, unique=True)
                                     .map(tuple), endpoint_index),
    held=st.booleans(),
    token_rights=st.lists(st.tuples(st.sampled_from(TAG_NAMES), endpoint_index), max_size=6, unique=True)
    .map(tuple),
)


# ------------------------------------------------------------------------------------------- the machine
@dataclass
class Shadow:
    tags: frozenset[str]
    integrity: int

    def join(self, tags: frozenset[str], integrity: int) -> Shadow:
        return Shadow(self.tags | tags, min(self.integrity, integrity))


@lru_cache(maxsize=4096)
def _compile(text: str):
    return compile_text(text).policy  # ~30 ms: shrinking replays the same policies many times


class NonInterference(RuleBasedStateMachine):

    @initialize(spec=policy_specs)
    def setup(self, spec: PolicySpec) -> None:
        policy = _compile(spec.text())
        if policy is None and spec.flows:  # e.g. an `allow` a `deny` makes dead: keep the denies
            spec = PolicySpec(spec.default, spec.files, spec.endpoints,
                              tuple(f for f in spec.flows if f.effect == "deny"), None, spec.held, spec.token_rights)
            policy = _compile(spec.text())
        assume(policy is not None)
        self.spec = spec
        self.policy = policy
        self.log = EventLog(":memory:")
        held = frozenset({"rel"}) if spec.held and spec.capability else frozenset()
        self.monitor = Monitor(self.policy, held=held, log=self.log, clock=lambda: NOW,
                               verifier=Verifier([HOST.public], audience=AUDIENCE))
        rights = [f"connect {e}" for e in ENDPOINTS] + [f"connect {UNKNOWN}"]
        rights += [f"declassify {tag} to {ENDPOINTS[i]}" for tag, i in spec.token_rights]
        self.token = mint(HOST, rights=rights, audience=AUDIENCE, ttl=3600, now=NOW)
        self.subjects: dict[str, Shadow] = {"session": Shadow(frozenset(), TRUSTED)}
        self.order = ["session"]
        self.names: dict[str, int] = {}  # path -> content object, as the shadow sees it
        self.objects: dict[int, Shadow] = {}
        self.born: dict[int, str] = {}  # object -> the name it was first seen under
        self.next_object = 0
        self.declassify_events = 0

    # ------------------------------------------------------------------------- shadow helpers
    def _subject(self, index: int) -> str:
        return self.order[index % len(self.order)]

    def _label(self, path: str) -> Shadow:
        base = self.spec.base(path)
        label = Shadow(base.tags, base.integrity)
        oid = self.names.get(path)
        return label if oid is None else label.join(self.objects[oid].tags, self.objects[oid].integrity)

    def _object(self, path: str) -> int:
        """The content object behind `path`: the first time, the original content, labelled by the policy."""
        oid = self.names.get(path)
        if oid is None:
            oid = self.names[path] = self.next_object
            self.next_object += 1
            base = self.spec.base(path)
            self.objects[oid] = Shadow(base.tags, base.integrity)
            self.born[oid] = path
        return oid

    def _same_file(self, src: str, dst: str) -> bool:
        return src == dst or (src in self.names and self.names.get(dst) == self.names[src])

    def _decide(self, request: Request):
        decision = self.monitor.decide(request)
        assert decision.reason, decision
        return decision

    # ------------------------------------------------------------------------- operations
    @rule(who=st.integers(0, 7), path=st.sampled_from(PATHS))
    def read(self, who: int, path: str) -> None:
        subject = self._subject(who)
        if self._decide(Request("read", path, subject=subject)).allowed:
            label = self._label(path)
            self.subjects[subject] = self.subjects[subject].join(label.tags, label.integrity)

    @rule(who=st.integers(0, 7), path=st.sampled_from(PATHS), op=st.sampled_from(("write", "create")))
    def write(self, who: int, path: str, op: str) -> None:
        subject = self._subject(who)
        if self._decide(Request(op, path, subject=subject)).allowed:
            event("write raised a label" if not self.subjects[subject].tags <= self._label(path).tags else "write")
            oid = self._object(path)
            taint = self.subjects[subject]
            self.objects[oid] = self.objects[oid].join(taint.tags, taint.integrity)

    @rule(who=st.integers(0, 7), src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def rename(self, who: int, src: str, dst: str) -> None:
        if self._decide(Request("rename", src, dest=dst, subject=self._subject(who))).allowed:
            if self._same_file(src, dst):
                return  # POSIX: renaming a file onto itself (or onto another of its names) does nothing
            self.names[dst] = self._object(src)
            del self.names[src]

    @rule(who=st.integers(0, 7), src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def link(self, who: int, src: str, dst: str) -> None:
        exists = self.monitor.labels.get(dst) is not None  # the names the monitor knows exist
        if self._decide(Request("link", src, dest=dst, subject=self._subject(who))).allowed:
            if self._same_file(src, dst) or exists:
                return  # the link fails (EEXIST): nothing changes
            self.names[dst] = self._object(src)

    @rule(who=st.integers(0, 7), path=st.sampled_from(PATHS))
    def delete(self, who: int, path: str) -> None:
        if self._decide(Request("delete", path, subject=self._subject(who))).allowed:
            self.names.pop(path, None)

    @precondition(lambda self: len(self.order) < 8)
    @rule(parent=st.none() | st.integers(0, 7))
    def new_subject(self, parent: int | None) -> None:
        name = f"s{len(self.order)}"
        parent_name = None if parent is None else self._subject(parent)
        # a DNS lookup creates the subject in the monitor without touching any taint
        self._decide(Request("dns", "e0.example", subject=name, parent=parent_name))
        inherited = self.subjects[parent_name] if parent_name else Shadow(frozenset(), TRUSTED)
        self.subjects[name] = Shadow(inherited.tags, inherited.integrity)
        self.order.append(name)

    @rule(who=st.integers(0, 7), path=st.sampled_from(PATHS), where=endpoint_index, with_token=st.booleans())
    def read_then_connect(self, who: int, path: str, where: int, with_token: bool) -> None:
        """The interesting connects carry something: read first (one step, so sequences stay short)."""
        self.read(who, path)
        self.connect(who, where, with_token)

    @precondition(lambda self: self.spec.capability is not None or self.spec.token_rights)
    @rule(who=st.integers(0, 7), path=st.sampled_from(PATHS), pick=st.integers(0, 6))
    def read_then_connect_where_a_declassification_applies(self, who: int, path: str, pick: int) -> None:
        sinks = [(i, True) for _, i in self.spec.token_rights]
        if self.spec.capability is not None:
            sinks.append((self.spec.capability[1], False))
        where, with_token = sinks[pick % len(sinks)]
        self.read(who, path)
        self.connect(who, where, with_token)

    @rule(who=st.integers(0, 7), where=st.sampled_from((*range(len(ENDPOINTS)), None)), with_token=st.booleans())
    def connect(self, who: int, where: int | None, with_token: bool) -> None:
        subject = self._subject(who)
        url = UNKNOWN if where is None else ENDPOINTS[where]
        monitor_taint = self.monitor.subject(subject).taint  # before the connect: its reply is read after
        d = self._decide(Request("connect", url, subject=subject, token=self.token if with_token else None))
        events = sum(1 for _ in self.log.events("declassify"))
        new_events, self.declassify_events = events - self.declassify_events, events
        if not d.allowed:
            assert not d.capabilities_used and new_events == 0
            event("connect denied")
            return
        event("connect allowed" + (" with a declassification" if d.capabilities_used else "")
              + (" (token)" if with_token else ""))
        assert where is not None, "an endpoint no rule names is never reached"
        spec = self.spec
        endpoint = spec.endpoints[where]
        carried = self.subjects[subject].tags | monitor_taint.secrecy
        # no deny rule matches the data
        for flow in spec.flows:
            if flow.effect == "deny" and flow.matches(where):
                if flow.source == "untrusted":
                    assert monitor_taint.integrity > UNTRUSTED, f"{flow} matched but the connect was allowed"
                else:
                    assert not CLOSURE[flow.source] <= carried, f"{flow} matched but the connect was allowed"
        # secrecy: every tag within clearance + allows, or declassified by what the decision names
        widened = set(endpoint.clearance)
        for flow in spec.flows:
            if flow.effect == "allow" and flow.matches(where) and flow.source != "untrusted":
                widened |= CLOSURE[flow.source]
        for tag in sorted(carried - widened):
            assert self._declassified(tag, where, d.capabilities_used, with_token), (
                f"`{tag}` reached {url} (clearance {sorted(endpoint.clearance)}) without a declassification: "
                f"{d.reason}; used {d.capabilities_used}")
        assert new_events == len(d.capabilities_used), "every declassification used is logged"
        # integrity: data below the endpoint's requirement is not sent (no endorsements in these policies)
        lowered = any(f.effect == "allow" and f.source == "untrusted" and f.matches(where) for f in spec.flows)
        if endpoint.requires_trusted and not lowered:
            assert self.subjects[subject].integrity == TRUSTED and monitor_taint.integrity == TRUSTED
        if endpoint.returns_untrusted:  # the reply is read
            self.subjects[subject] = self.subjects[subject].join(frozenset(), UNTRUSTED)

    def _declassified(self, tag: str, target: int, used: tuple[str, ...], with_token: bool) -> bool:
        spec = self.spec
        if "rel" in used and spec.capability is not None and not with_token and spec.held:
            tags, endpoint = spec.capability
            if endpoint == target and any(tag in CLOSURE[t] for t in tags):
                return True
        for name in used:
            if name.startswith("token: declassify ") and with_token:
                released = name.removeprefix("token: declassify ")
                # a right `declassify T to E` releases what T stands for (its chain closure)
                if released == tag and any(tag in CLOSURE[t] and i == target for t, i in spec.token_rights):
                    return True
        return False

    # ------------------------------------------------------------------------- invariants
    @invariant()
    def monitor_never_under_approximates_subjects(self) -> None:
        for name, shadow in self.subjects.items():
            taint = self.monitor.subject(name).taint
            assert shadow.tags <= taint.secrecy, (name, sorted(shadow.tags - taint.secrecy))
            assert taint.integrity <= shadow.integrity, name

    @invariant()
    def monitor_never_under_approximates_files(self) -> None:
        for path in PATHS:
            shadow, label = self._label(path), self.monitor.label_of(path)
            assert shadow.tags <= label.secrecy, (path, sorted(shadow.tags - label.secrecy))
            assert label.integrity <= shadow.integrity, path

    def teardown(self) -> None:
        if hasattr(self, "monitor"):
            self.monitor.close()


FAST = settings(max_examples=100, stateful_step_count=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_noninterference():
    run_state_machine_as_test(NonInterference, settings=FAST)

