"""Static analysis of a compiled policy: a named list of stages, each `(CheckContext) -> [Diagnostic]`.

Stages are pure and print nothing; the CLI renders what they return. Adding a check means writing one
function and listing it in `STAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ifc.diagnostics import Diagnostic, Severity, sort_diagnostics
from ifc.lang import ast
from ifc.policy import CompileResult, Policy


@dataclass(frozen=True)
class CheckContext:
    policy: Policy
    files: tuple[ast.PolicyFile, ...]


@dataclass(frozen=True)
class CheckResult:
    diagnostics: tuple[Diagnostic, ...]

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]


def stages():
    from ifc.check import flowgraph, lints

    return (
        ("unused-names", lints.unused_names),
        ("file-rules", lints.file_rule_overlaps),
        ("endpoints", lints.broad_endpoints),
        ("grants", lints.grants),
        ("secrets", lints.secrets),
        ("contradictions", lints.contradictions),
        ("messages", lints.messages),
        ("flows", flowgraph.flow_paths),
    )


def check(result: CompileResult) -> CheckResult:
    """Compile diagnostics plus, when the policy compiled, every stage's findings."""
    found = list(result.diagnostics)
    if result.policy is not None:
        ctx = CheckContext(result.policy, result.files)
        for _name, stage in stages():
            found.extend(stage(ctx))
    return CheckResult(tuple(sort_diagnostics(found)))
