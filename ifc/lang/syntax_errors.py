"""Friendly syntax errors, chosen by example (lark's `UnexpectedInput.match_examples`).

Each entry is (message, help, examples that fail in that way). Adding a new friendly message means adding
a line here, not code.
"""

from __future__ import annotations

EXAMPLES: list[tuple[str, str, list[str]]] = [
    (
        "a file rule needs a label after its patterns",
        'write the label after the globs, e.g. `".env*" secret`; separate globs with `,`',
        ['files { "a" }', 'files { "a", "b" }', 'files { "a" "b" x }'],
    ),
    (
        "a list of patterns needs commas",
        'separate patterns with `,`: `"a", "b"`',
        ['agent a { read "x" "y" }', 'agent a { read "x" write "y" "z" }'],
    ),
    (
        "unclosed block",
        "add the missing `}`",
        ["files {", 'files { "a" x', "labels { secrecy a", "agent a { read \"x\"", "endpoints {"],
    ),
    (
        "a flow rule needs `->` between the label and where the data goes",
        'e.g. `deny secret -> external "secrets stay here"`',
        ["deny secret external", "allow a b", "deny secret", "declassify c: a b"],
    ),
    (
        "a flow rule needs a destination after `->`",
        'name an endpoint pattern (`"smtp.*:587"`), an endpoint group (`external`) or `file "glob"`',
        ["deny secret ->", "deny secret -> }", "allow a -> {"],
    ),
    (
        "a secret needs a source: `from env`, `from file` or `from command`",
        'e.g. `secret GITHUB_TOKEN from env "GITHUB_TOKEN" to "https://api.github.com"`',
        ["secret X", "secret X from", 'secret X from vault "y"', 'secret X to "y"', "secret X from env"],
    ),
    (
        "an agent block holds grants: read, write, create, delete, exec, connect, delegate or holds",
        'e.g. `agent coder { read "**"  write "src/**" }`',
        ['agent a { x "y" }', 'agent a { readd "y" }', "agent a { read }", "agent { }", "agent a read"],
    ),
    (
        "a labels block declares `secrecy`, `integrity` or `label` lines",
        "e.g. `labels { secrecy public < internal < secret  integrity untrusted < trusted }`",
        ["labels { x }", "labels { secrecy }", "labels { label x }", "labels { secrecy a < }",
         "labels { label x = }", "labels { integrity }"],
    ),
    (
        "`methods` takes HTTP method names, separated by `,`",
        'e.g. `"https://api.github.com/repos/acme/**" methods GET, POST`',
        ['endpoints { "a" methods }', 'endpoints { "a" methods GET POST }', 'endpoints { "a" methods "GET" }',
         'agent a { connect "x" methods }', 'agent a { connect "x" methods GET, }', 'endpoints { "a" methods GET, }'],
    ),
    (
        "an endpoint rule option is one of clearance, requires, returns, as, except, methods",
        'e.g. `"https://api.github.com" clearance public returns untrusted as external`',
        ['endpoints { "a" x }', 'endpoints { "a" clearance }', 'endpoints { "a" as }', 'endpoints { "a" returns }',
         'endpoints { "a" requires }', 'endpoints { "a" clearance x "b" requires }', 'endpoints { "a" y }'],
    ),
    (
        "a file rule option is `except \"glob\"` or `writes require LEVEL`",
        'e.g. `".env*" secret except ".env.example"`',
        ['files { "a" x y }', 'files { "b" z "a" x y }', 'files { "a" x writes }', 'files { "a" x except }',
         'files { "a" x writes require }'],
    ),
    (
        "expected a top-level statement",
        "statements are include, labels, files, endpoints, secret, agent, deny, allow, declassify, endorse",
        ["x", '"x"', "}", "{", "labels { } x", "files { } }"],
    ),
    (
        "a label expression joins names with `+`",
        "e.g. `internal + customer`",
        ['files { "a" x + }', "deny a + -> b", 'files { "a" x + "b" }'],
    ),
    (
        "unterminated string",
        'close the string with `"` on the same line',
        ['files { "a', 'include "x'],
    ),
]
