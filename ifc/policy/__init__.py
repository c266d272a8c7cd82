"""Compiled policies: load a .flow file (with its includes) into an immutable `Policy`."""

from __future__ import annotations

from pathlib import Path

from ifc.diagnostics import Diagnostic
from ifc.policy.compile import CompileResult, compile_file, compile_text
from ifc.policy.labels import Label, LabelPattern, Lattice
from ifc.policy.model import Agent, Capability, EndpointRule, FileRule, FlowRule, Grant, Policy, Secret, Sink

SHIPPED_DIR = Path(__file__).resolve().parent.parent.parent / "policies"


class PolicyError(Exception):
    """A policy that does not compile; `diagnostics` holds every error found."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...]):
        first = diagnostics[0] if diagnostics else None
        super().__init__(f"{first.span}: error: {first.message}" if first else "policy does not compile")
        self.diagnostics = diagnostics


def load_policy(path: str | Path) -> Policy:
    result = compile_file(path)
    if result.policy is None:
        raise PolicyError(tuple(d for d in result.diagnostics if d.severity.name == "ERROR"))
    return result.policy


def shipped_policy(name: str = "default") -> Path:
    """The path of a policy shipped in `policies/` (the embedded default is `default`)."""
    return SHIPPED_DIR / f"{name}.flow"


__all__ = [
    "Agent", "Capability", "CompileResult", "EndpointRule", "FileRule", "FlowRule", "Grant", "Label",
    "LabelPattern", "Lattice", "Policy", "PolicyError", "Secret", "Sink", "compile_file", "compile_text",
    "load_policy", "shipped_policy",
]
