"""A one-subject view of the monitor, for dry runs (`ifc decide`) and tests.

`Session(policy, agent).decide("read", ".env")` is `Monitor.decide(Request("read", ".env"))` for the
subject `session`, with an in-memory label store unless one is given.
"""

from __future__ import annotations

from ifc.monitor.labelstore import LabelStore
from ifc.monitor.monitor import Decision, Monitor, Request
from ifc.policy.labels import Label
from ifc.policy.model import Agent, Policy

__all__ = ["Decision", "Session"]


class Session:
    def __init__(self, policy: Policy, agent: Agent | None = None, held: frozenset[str] = frozenset(),
                 floated: dict[str, Label] | None = None, *, monitor: Monitor | None = None,
                 name: str = "session"):
        if monitor is None:
            labels = LabelStore()
            for path, label in (floated or {}).items():
                labels.raise_to(path, label)
            monitor = Monitor(policy, agent=agent, held=held, labels=labels)
        self.monitor = monitor
        self.name = name
        self.policy = policy

    @property
    def taint(self) -> Label:
        return self.monitor.subject(self.name).taint

    @property
    def floated(self) -> dict[str, Label]:
        return self.monitor.labels.snapshot()

    def label_of(self, path: str) -> Label:
        return self.monitor.label_of(path)

    def decide(self, op: str, target: str, dest: str | None = None) -> Decision:
        return self.monitor.decide(Request(op, target, subject=self.name, dest=dest))
