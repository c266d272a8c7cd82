"""The reference monitor: the one place a decision is made."""

from ifc.monitor.session import Decision, Session

__all__ = ["Decision", "Session"]
