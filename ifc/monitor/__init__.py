"""The reference monitor: the one place a decision is made."""

from ifc.monitor.events import EventLog
from ifc.monitor.labelstore import LabelStore
from ifc.monitor.monitor import Decision, Monitor, Request
from ifc.monitor.session import Session

__all__ = ["Decision", "EventLog", "LabelStore", "Monitor", "Request", "Session"]
