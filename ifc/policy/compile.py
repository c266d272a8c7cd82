"""AST → Policy: resolve names, build the lattice, compile globs and endpoint patterns.

Every problem becomes a Diagnostic (all of them, in one pass); a Policy is returned only when there are
no errors. Includes are textual: an included file's statements take the place of its `include`, so
"later rules win" reads the same across files.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ifc.diagnostics import Diagnostic, Related, Span, error, sort_diagnostics
from ifc.lang import ast, parse_text
from ifc.lang.lower import encode_string as _quote
from ifc.match import METHODS_WORD, EndpointPattern, Glob, PatternError, methods_text, normalise_path
from ifc.policy import model
from ifc.policy.labels import Label, LabelPattern, Lattice

DEFAULT_INTEGRITY = ("untrusted", "trusted")
MAX_INCLUDE_DEPTH = 16
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# RFC 9110 §9 and PATCH (RFC 5789): methods are case-sensitive, so `get` is not `GET` and would match nothing
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

Reader = Callable[[Path], str]


@dataclass(frozen=True)
class CompileResult:
    policy: model.Policy | None
    diagnostics: tuple[Diagnostic, ...]
    files: tuple[ast.PolicyFile, ...]  # every parsed file, root first (for lints and `fmt`)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity.name == "ERROR"]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def compile_file(path: str | Path, reader: Reader = _read) -> CompileResult:
    return _Compiler(reader).run(Path(path))


def compile_text(text: str, filename: str = "<policy>", reader: Reader = _read) -> CompileResult:
    return _Compiler(reader).run(Path(filename), text=text)


class _Compiler:
    def __init__(self, reader: Reader):
        self.reader = reader
        self.diags: list[Diagnostic] = []
        self.files: list[ast.PolicyFile] = []
        self.defs: dict[str, Span] = {}

    # ----------------------------------------------------------------------------- includes
    def run(self, root: Path, text: str | None = None) -> CompileResult:
        items = self._load(root, text, stack=(), at=None)
        policy = self._compile(items)  # compile what parsed, so meaning errors show beside syntax errors
        diags = sort_diagnostics(self.diags)
        if any(d.severity.name == "ERROR" for d in diags):
            policy = None
        return CompileResult(policy, tuple(diags), tuple(self.files))

    def _load(self, path: Path, text: str | None, stack: tuple[Path, ...], at: Span | None) -> list:
        name = str(path)
        if text is None:
            try:
                text = self.reader(path)
            except FileNotFoundError:
                self._err("include-missing" if at else "unreadable", f"cannot find `{name}`",
                          at or Span(name, 1, 1),
                          help="include paths are relative to the including file" if at else None)
                return []
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else "not valid UTF-8"
                self._err("unreadable", f"cannot read `{name}`: {reason}", at or Span(name, 1, 1))
                return []
        result = parse_text(text, name)
        self.files.append(result.file)
        self.diags.extend(result.diagnostics)
        items: list = []
        for item in result.file.items:
            if not isinstance(item, ast.Include):
                items.append(item)
                continue
            target = (path.parent / item.path) if not Path(item.path).is_absolute() else Path(item.path)
            resolved = target.resolve()
            if resolved in stack or resolved == path.resolve():
                self._err("include-cycle", f"`{item.path}` includes itself", item.span,
                          help="remove one of the includes in the cycle")
                continue
            if len(stack) >= MAX_INCLUDE_DEPTH:
                self._err("include-depth", f"includes nest deeper than {MAX_INCLUDE_DEPTH}", item.span)
                continue
            items.extend(self._load(target, None, (*stack, path.resolve()), item.span))
        return items

    # ----------------------------------------------------------------------------- helpers
    def _err(self, code, message, span, help=None, related=()):
        self.diags.append(error(code, message, span, help, related))

    def _define(self, name: ast.Name, what: str) -> bool:
        if name.text in self.defs:
            self._err("duplicate-definition", f"`{name.text}` is already defined", name.span,
                      help=f"rename this {what} or remove one of them",
                      related=[Related(self.defs[name.text], f"`{name.text}` first defined here")])
            return False
        self.defs[name.text] = name.span
        return True

    def _unknown(self, name: ast.Name, what: str, candidates) -> None:
        guess = difflib.get_close_matches(name.text, list(candidates), n=1, cutoff=0.6)
        known = ", ".join(sorted(candidates)) or "none"
        help = f"did you mean `{guess[0]}`?" if guess else f"declare it first (known: {known})"
        related = []
        if guess and guess[0] in self.defs:
            related = [Related(self.defs[guess[0]], f"`{guess[0]}` is defined here")]
        self._err("unknown-name", f"unknown {what} `{name.text}`", name.span, help=help, related=related)

    def _globs(self, patterns) -> tuple[Glob, ...]:
        out = []
        for pattern in patterns:
            try:
                out.append(Glob.compile(pattern.text))
            except PatternError as exc:
                self._pattern_error(pattern, exc, "glob")
        return tuple(out)

    def _secret_file(self, decl: ast.SecretDecl) -> str:
        """A `from file` secret's reference, checked: a workspace file (relative) is normalised and needs a `key`
        of a recognised format; `key` is for files only; a host file (`~/`, `/`) may have a key too."""
        from ifc.secretfiles import FORMATS, format_of

        ref = decl.ref.text
        known = ", ".join(f"`{pattern}`" for pattern, _ in FORMATS)
        workspace = model.is_workspace_ref(ref)
        if workspace:
            try:
                ref = normalise_path(ref)
            except PatternError as exc:
                self._err("bad-secret", f"secret `{decl.name.text}`: {exc.message}", decl.ref.span)
                return ref
            if not ref:
                self._err("bad-secret", f"secret `{decl.name.text}` names the workspace root, not a file",
                          decl.ref.span)
                return ref
            if decl.key is None:
                self._err("secret-key", f"secret `{decl.name.text}` is a workspace file but names no key",
                          decl.ref.span, help="bind one value of it: `key \"NAME\"`; a host file starts with "
                          "`~/` or `/`")
                return ref
        if decl.key is not None:
            if not decl.key.text:
                self._err("secret-key", f"secret `{decl.name.text}` has an empty key", decl.key.span)
            elif format_of(ref) is None:
                self._err("secret-key", f"`{ref}` is not a file whose values can be named by key",
                          decl.key.span, help=f"recognised names: {known}")
        return ref

    def _endpoints(self, patterns, methods: tuple[ast.Name, ...] = (), narrow: str | None = None
                   ) -> tuple[EndpointPattern, ...]:
        """Endpoint patterns, each narrowed to `methods`. `narrow` says why this place takes no path or method
        (a flow rule's sink, a secret's binding), or None where they are allowed."""
        names = self._methods(methods)
        out = []
        for pattern in patterns:
            if METHODS_WORD in pattern.text:
                self._err("bad-pattern", f"bad endpoint `{pattern.text}`: methods go after the string",
                          pattern.span, help='write `"https://host/path" methods GET, POST`')
                continue
            try:
                parsed = EndpointPattern.parse(methods_text(pattern.text, names))
            except PatternError as exc:
                self._pattern_error(pattern, exc, "endpoint")
                continue
            if narrow is not None and parsed.restricted:
                self._err("bad-pattern", f"{narrow} names hosts, not paths or methods: `{pattern.text}`",
                          pattern.span, help="paths and methods are decided by endpoint rules and `connect` grants")
                continue
            out.append(parsed)
        return tuple(out)

    def _methods(self, methods: tuple[ast.Name, ...]) -> list[str]:
        out: list[str] = []
        for method in methods:
            if method.text.upper() in KNOWN_METHODS and method.text != method.text.upper():
                self._err("bad-method", f"HTTP methods are case-sensitive: `{method.text}` is not "
                          f"`{method.text.upper()}`", method.span, help=f"write `{method.text.upper()}`")
            elif method.text not in out:
                out.append(method.text)
        return out

    def _pattern_error(self, pattern: ast.Pattern, exc: PatternError, what: str) -> None:
        s = pattern.span
        col = s.column + 1 + min(exc.column, max(0, s.end_column - s.column - 2))
        self._err("bad-pattern", f"bad {what} `{pattern.text}`: {exc.message}",
                  Span(s.file, s.line, col, s.line, col + 1), help=exc.help)

    # ----------------------------------------------------------------------------- labels
    def _lattice(self, items) -> Lattice:
        chains: list[tuple[str, ...]] = []
        integrity: ast.IntegrityDecl | None = None
        named: list[ast.NamedLabel] = []
        for block in (i for i in items if isinstance(i, ast.LabelsBlock)):
            for decl in block.decls:
                if isinstance(decl, ast.SecrecyDecl):
                    if all(self._define(n, "secrecy tag") for n in decl.chain):
                        chains.append(tuple(n.text for n in decl.chain))
                elif isinstance(decl, ast.IntegrityDecl):
                    if integrity is not None:
                        self._err("duplicate-definition", "integrity levels are declared twice", decl.span,
                                  help="declare one chain: `integrity untrusted < reviewed < trusted`",
                                  related=[Related(integrity.span, "first declared here")])
                        continue
                    integrity = decl
                    for n in decl.chain:
                        self._define(n, "integrity level")
                else:
                    if self._define(decl.name, "label"):
                        named.append(decl)
        levels = tuple(n.text for n in integrity.chain) if integrity else DEFAULT_INTEGRITY
        if integrity is None:
            for level in DEFAULT_INTEGRITY:
                self.defs.setdefault(level, Span("<builtin>", 1, 1))
        lattice = Lattice(tuple(chains), levels)
        resolved: dict[str, Label] = {}
        for decl in named:  # named labels may use earlier named labels
            secrecy, level = self._resolve(decl.expr, Lattice(lattice.chains, levels, tuple(resolved.items())))
            resolved[decl.name.text] = Label(secrecy, lattice.top_integrity if level is None else level)
        return Lattice(lattice.chains, levels, tuple(resolved.items()))

    def _resolve(self, expr: ast.LabelExpr, lattice: Lattice, allow_integrity: bool = True,
                 what: str = "label") -> tuple[frozenset[str], int | None]:
        secrecy: set[str] = set()
        levels: list[int] = []
        for term in expr.terms:
            kind = lattice.kind_of(term.text)
            if kind == "secrecy":
                secrecy |= lattice.tag_closure[term.text]
            elif kind == "integrity":
                if not allow_integrity:
                    self._err("wrong-kind", f"`{term.text}` is an integrity level, not a secrecy tag", term.span,
                              help=f"a {what} takes secrecy tags only",
                              related=[Related(self.defs[term.text], f"`{term.text}` is declared here")]
                              if term.text in self.defs else [])
                    continue
                levels.append(lattice.integrity_rank[term.text])
            elif kind == "label":
                label = lattice.named_labels[term.text]
                secrecy |= label.secrecy
                if allow_integrity and label.integrity != lattice.top_integrity:
                    levels.append(label.integrity)
            else:
                self._unknown(term, "label", lattice.all_names())
        return frozenset(secrecy), (min(levels) if levels else None)

    def _level(self, name: ast.Name | None, lattice: Lattice, default: int) -> int:
        if name is None:
            return default
        if name.text in lattice.integrity_rank:
            return lattice.integrity_rank[name.text]
        if lattice.kind_of(name.text):
            self._err("wrong-kind", f"`{name.text}` is not an integrity level", name.span,
                      help=f"integrity levels are {', '.join(f'`{x}`' for x in lattice.integrity_levels)}",
                      related=[Related(self.defs[name.text], f"`{name.text}` is declared here")]
                      if name.text in self.defs else [])
        else:
            self._unknown(name, "integrity level", lattice.integrity_levels)
        return default

    # ----------------------------------------------------------------------------- the policy
    def _compile(self, items) -> model.Policy:
        lattice = self._lattice(items)
        top = lattice.top_integrity
        file_rules: list[model.FileRule] = []
        endpoint_rules: list[model.EndpointRule] = []
        for block in (i for i in items if isinstance(i, ast.FilesBlock)):
            for rule in block.rules:
                secrecy, level = self._resolve(rule.label, lattice)
                file_rules.append(model.FileRule(
                    len(file_rules), self._globs(rule.patterns), self._globs(rule.excepts),
                    Label(secrecy, top if level is None else level), _expr_text(rule.label),
                    None if rule.writes_require is None else self._level(rule.writes_require, lattice, top),
                    rule.span))
        for block in (i for i in items if isinstance(i, ast.EndpointsBlock)):
            for rule in block.rules:
                clearance = frozenset()
                if rule.clearance is not None:
                    clearance, _ = self._resolve(rule.clearance, lattice, allow_integrity=False, what="clearance")
                endpoint_rules.append(model.EndpointRule(
                    len(endpoint_rules), self._endpoints(rule.patterns, rule.methods), self._endpoints(rule.excepts),
                    clearance, self._level(rule.requires, lattice, 0), self._level(rule.returns, lattice, 0),
                    frozenset(g.text for g in rule.groups), rule.span))
        groups = {g for r in endpoint_rules for g in r.groups}
        group_spans = {g.text: g.span for i in items if isinstance(i, ast.EndpointsBlock)
                       for r in i.rules for g in r.groups}

        capabilities = []
        for decl in (i for i in items if isinstance(i, ast.CapabilityDecl)):
            if not self._define(decl.name, "capability"):
                continue
            source = self._source(decl.source, lattice)
            capabilities.append(model.Capability(decl.kind, decl.name.text, source, _expr_text(decl.source),
                                                 self._sink(decl.sink, groups, group_spans), decl.message, decl.span))
            if decl.kind == "declassify" and not source.secrecy:
                self._err("empty-capability", f"`{decl.name.text}` declassifies no secrecy tag", decl.source.span,
                          help="name the tags it releases, e.g. `declassify push: internal -> \"github.com\"`")
            if decl.kind == "endorse" and source.integrity is None:
                self._err("empty-capability", f"`{decl.name.text}` endorses no integrity level", decl.source.span,
                          help="name the level it vouches for, e.g. `endorse ci: untrusted -> file \".github/**\"`")
        cap_names = {c.name for c in capabilities}

        flow_rules = [model.FlowRule(rule.effect, self._source(rule.source, lattice), _expr_text(rule.source),
                                     self._sink(rule.sink, groups, group_spans), rule.message, rule.span)
                      for rule in items if isinstance(rule, ast.FlowRule)]

        secrets = []
        for decl in (i for i in items if isinstance(i, ast.SecretDecl)):
            if not self._define(decl.name, "secret"):
                continue
            if not ENV_NAME.match(decl.name.text):
                self._err("bad-name", f"secret name `{decl.name.text}` is not an environment variable name",
                          decl.name.span, help="the sandbox sees the sentinel under this name: use A-Z, 0-9, _")
            if not decl.ref.text:
                self._err("bad-secret", f"secret `{decl.name.text}` has an empty {decl.source} reference",
                          decl.ref.span)
            ref = self._secret_file(decl) if decl.source == "file" and decl.ref.text else decl.ref.text
            if decl.source == "command" and ref:
                try:
                    shlex.split(ref)  # how it runs: without a shell, split as a shell would (ifc.enforce.secrets)
                except ValueError as exc:
                    self._err("bad-secret", f"secret `{decl.name.text}`: its command does not parse: "
                              f"{str(exc).lower()}", decl.ref.span, help="close the quote, or escape it with `\\`")
            if decl.key is not None and decl.source != "file":
                self._err("secret-key", f"`key` names a value of a file, and secret `{decl.name.text}` comes "
                          f"from {decl.source}", decl.key.span,
                          help="drop `key`, or read the value from a file: "
                          f"`from file \"PATH\" key \"{decl.key.text}\"`")
            secrets.append(model.Secret(decl.name.text, decl.source, ref,
                                        self._endpoints(decl.to, narrow="a secret's binding"), decl.span,
                                        decl.key.text if decl.key is not None else None))

        agents = []
        for block in (i for i in items if isinstance(i, ast.AgentBlock)):
            if not self._define(block.name, "agent"):
                continue
            agents.append(self._agent(block, capabilities, cap_names))
        return model.Policy(lattice, tuple(file_rules), tuple(endpoint_rules), tuple(flow_rules),
                            tuple(capabilities), tuple(agents), tuple(secrets),
                            tuple(f.path for f in self.files))

    def _source(self, expr: ast.LabelExpr, lattice: Lattice) -> LabelPattern:
        secrecy, level = self._resolve(expr, lattice)
        return LabelPattern(secrecy, level)

    def _sink(self, sink: ast.Sink, groups: set[str], group_spans: dict[str, Span]) -> model.Sink:
        if sink.kind == "group":
            if sink.group.text not in groups:
                self._unknown(sink.group, "endpoint group", groups)
            return model.Sink("group", group=sink.group.text, text=sink.group.text)
        text = ", ".join(_quote(p.text) for p in sink.patterns)
        if sink.kind == "file":
            return model.Sink("file", globs=self._globs(sink.patterns), text="file " + text)
        return model.Sink("endpoint", endpoints=self._endpoints(sink.patterns, narrow="a flow's sink"), text=text)

    def _agent(self, block: ast.AgentBlock, capabilities, cap_names: set[str]) -> model.Agent:
        grants: list[model.Grant] = []
        delegable: list[tuple[model.Grant, ast.Pattern]] = []
        holds: list[str] = []
        for item in block.items:
            if isinstance(item, ast.Holds):
                for name in item.names:
                    if name.text not in cap_names:
                        self._unknown(name, "capability", cap_names)
                    else:
                        holds.append(name.text)
                continue
            methods = list(dict.fromkeys(m.text for m in item.methods))
            if item.op == "connect":
                self._endpoints(item.patterns, item.methods)
            else:
                self._globs(item.patterns)
                if item.methods:
                    self._err("bad-method", f"`{item.op}` takes no methods", item.methods[0].span,
                              help="only `connect` grants name HTTP methods")
            for pattern in item.patterns:
                grant = model.Grant(item.op, methods_text(pattern.text, methods) if item.op == "connect"
                                    else pattern.text)
                if item.delegate:
                    delegable.append((grant, pattern))
                elif grant not in grants:
                    grants.append(grant)
        for grant, pattern in delegable:
            if not _covered(grant, grants):
                self._err("delegate-widens", f"agent `{block.name.text}` delegates `{_grant_text(grant)}`"
                          " which it does not hold", pattern.span,
                          help=f"grant `{_grant_text(grant)}` to the agent, or delegate less")
        declass = tuple((tag, p.text) for cap in capabilities if cap.name in holds and cap.kind == "declassify"
                        for tag in sorted(cap.source.secrecy) for p in cap.sink.endpoints)
        return model.Agent(block.name.text, tuple(grants), tuple(g for g, _ in delegable), tuple(holds),
                           declass, block.span)


def _grant_text(grant: model.Grant) -> str:
    return f"{grant.op} {model.written(grant.pattern)}"


def _covered(grant: model.Grant, grants: list[model.Grant]) -> bool:
    """Do the held grants cover everything `grant` would allow? (Exact for globs.)"""
    same = [g for g in grants if g.op == grant.op]
    if any(g.pattern == grant.pattern for g in same):
        return True
    try:
        if grant.op == "connect":
            wanted = EndpointPattern.parse(grant.pattern)
            return any(EndpointPattern.parse(g.pattern).covers(wanted) for g in same)
        return Glob.compile(grant.pattern).within(tuple(Glob.compile(g.pattern) for g in same))
    except PatternError:
        return True  # already reported as a bad pattern


def _expr_text(expr: ast.LabelExpr) -> str:
    return " + ".join(t.text for t in expr.terms)
