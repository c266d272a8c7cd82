"""Static analysis of a compiled policy: a named list of stages, each `(CheckContext) -> [Diagnostic]`.

Stages are pure and print nothing; the CLI renders what they return. Adding a check means writing one
function and listing it in `STAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ifc.diagnostics import Diagnostic, Severity, sort_diagnostics
from ifc.lang import ast
from ifc.policy import CompileResult, Policy

# Every diagnostic code, with the one-line description SARIF consumers and docs show.
CODES: dict[str, str] = {
    "syntax": "The policy text does not parse.",
    "policy-too-large": "The policy file is larger than the parser accepts.",
    "unreadable": "A policy file cannot be read.",
    "include-missing": "An included file does not exist.",
    "include-cycle": "Files include each other in a cycle.",
    "include-depth": "Includes nest too deeply.",
    "duplicate-definition": "A name is defined twice.",
    "unknown-name": "A label, level, group or capability is used but never declared.",
    "wrong-kind": "A name of one kind (secrecy tag, integrity level) is used where another is required.",
    "bad-pattern": "A glob or endpoint pattern is malformed.",
    "bad-method": "An HTTP method is misspelt (methods are case-sensitive) or given to a grant that is not `connect`.",
    "bad-name": "A secret's name cannot be an environment variable name.",
    "bad-secret": "A secret's source reference is empty.",
    "empty-capability": "A declassify or endorse capability releases nothing.",
    "delegate-widens": "An agent delegates more than it holds.",
    "unused-label": "A declared label is never used.",
    "unheld-capability": "No agent holds a capability; only a minted token can use it.",
    "shadowed-rule": "A rule never decides because a later rule matches everything it does.",
    "uninspected-route": "A path or method pattern under a wildcard host: TLS to those hosts is not terminated, so "
                         "their requests cannot be checked and their connections are refused.",
    "unknown-method": "A method name that is not a registered HTTP method (methods are case-sensitive).",
    "path-except": "An `except` naming paths: servers may read a path another way (case, aliases), so a "
                   "list of allowed paths is safer than a list of refused ones.",
    "overlapping-globs": "A later file rule lowers the label of part of an earlier, more secret rule.",
    "broad-endpoint": "An endpoint pattern matches every host.",
    "broad-grant": "A grant covers every file or endpoint.",
    "unusable-grant": "A connect grant names an endpoint no rule knows, so it can never be used.",
    "secret-no-endpoint": "A secret can never be sent anywhere.",
    "secret-pattern": "A secret is bound to a pattern (`*`, a wildcard zone, a network) instead of exact hosts.",
    "secret-key": "A secret's `key` names no value it can have (not a file, not a recognised format), or a "
                  "workspace file secret names no key.",
    "secret-file-label": "A secret is a value of a workspace file the sandbox reads in clear (not labelled `secret`).",
    "allow-denied": "An allow, clearance or capability is contradicted by a deny rule.",
    "missing-message": "A deny rule has no message for the reviewer.",
    "host-config-write": "An agent that can read untrusted data may write configuration a tool on the host runs.",
    "model-cutoff": "An agent can read data its own model endpoint may not receive: after that read every model call "
                    "of the run is refused.",
    "unexplained-flow": "Labelled data can reach a sink that only a clearance or integrity check protects.",
    "unlabelled-secret": "A workspace file looks like a secret but is not labelled secret.",
}


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
    from ifc.check import flowgraph, lints, secretfiles

    return (
        ("unused-names", lints.unused_names),
        ("file-rules", lints.file_rule_overlaps),
        ("endpoints", lints.broad_endpoints),
        ("grants", lints.grants),
        ("secrets", lints.secrets),
        ("secret-patterns", lints.secret_patterns),
        ("secret-files", secretfiles.workspace_bindings),
        ("routes", lints.routes),
        ("contradictions", lints.contradictions),
        ("messages", lints.messages),
        ("host-config", lints.host_config_writes),
        ("model-cutoff", lints.model_cutoff),
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
