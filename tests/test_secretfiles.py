"""Secret files taken apart into values and served with sentinels: for any recognised file, serving then parsing
gives the same keys holding sentinels, writing the served bytes back unchanged restores the real bytes exactly,
and no real value byte is served. Generated values all start with `V` and nothing else served has an upper-case
letter (keys are lower case, sentinels are lower-case hex), so "no `V` in the served bytes" is the leak check."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ifc.secretfiles import Sentinels, Unmergeable, format_of, join_key, key_matches, parse, split_key

KEY = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(lambda k: k[0] != "_")
LINE = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\ufeff")


def value(alphabet=LINE, *, strip=True):
    """A value: `V` then text; stripped of surrounding blanks where the format strips them."""
    return st.text(alphabet, max_size=12).map(lambda s: "V" + (s.rstrip() if strip else s))


def no_space(extra=""):
    return st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters="\"'\\#" + extra)


@st.composite
def dotenv_file(draw):
    lines, keys = [], []
    for key in draw(st.lists(KEY, min_size=1, max_size=6, unique=True)):
        style = draw(st.sampled_from(["bare", "single", "double", "export"]))
        if style == "single":
            v = draw(value(st.characters(blacklist_characters="'\\", blacklist_categories=("Cs",)), strip=False))
            lines.append(f"{key}='{v}'")
        elif style == "double":
            v = draw(value(st.characters(blacklist_categories=("Cs",)), strip=False))
            lines.append(f'{key}="' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            v = draw(value(no_space()))
            lines.append(("export " if style == "export" else "") + f"{key}={v}")
        if draw(st.booleans()):
            lines[-1] += " # V" + draw(st.text(LINE, max_size=8))
        if draw(st.booleans()):
            lines.append("# V" + draw(st.text(LINE, max_size=8)))
        keys.append(key)
    return ".env", "\n".join(lines) + draw(st.sampled_from(["", "\n"])), keys


@st.composite
def ini_file(draw):
    lines, keys = [], []
    for section in draw(st.lists(KEY, min_size=1, max_size=3, unique=True)):
        lines.append(f"[{section}]")
        for key in draw(st.lists(KEY, min_size=1, max_size=4, unique=True)):
            sep = draw(st.sampled_from(["=", " = ", ": "]))
            lines.append(f"{key}{sep}{draw(value(LINE))}")
            keys.append(f"{section}.{key}")
            if draw(st.booleans()):
                lines.append(draw(st.sampled_from(["#", ";"])) + " V" + draw(st.text(LINE, max_size=8)))
    name = draw(st.sampled_from([".aws/credentials", ".pypirc", "app.ini"]))
    return name, "\n".join(lines) + "\n", keys


@st.composite
def npmrc_file(draw):
    hosts = draw(st.lists(KEY, min_size=1, max_size=4, unique=True))
    lines = [f"//{h}.example/:_authToken={draw(value(no_space()))}" for h in hosts]
    return ".npmrc", "\n".join(lines) + "\n", [join_key((f"//{h}.example/:_authToken",)) for h in hosts]


@st.composite
def netrc_file(draw):
    lines, keys = [], []
    for host in draw(st.lists(KEY, min_size=1, max_size=4, unique=True)):
        login, password = draw(value(no_space())), draw(value(no_space()))
        sep = draw(st.sampled_from([" ", "\n  "]))
        lines.append(f"machine {host}.example{sep}login {login}{sep}password {password}")
        keys += [join_key((f"{host}.example", "login")), join_key((f"{host}.example", "password"))]
    return ".netrc", "\n".join(lines) + "\n", keys


JSON_LEAF = st.one_of(value(st.characters(blacklist_categories=("Cs",)), strip=False), st.integers(), st.booleans(),
                      st.none())


@st.composite
def json_file(draw):
    doc = draw(st.dictionaries(KEY, st.one_of(JSON_LEAF, st.dictionaries(KEY, JSON_LEAF, min_size=1, max_size=3),
                                              st.lists(JSON_LEAF, min_size=1, max_size=3)), min_size=1, max_size=5))
    keys = []
    for k, v in doc.items():
        if isinstance(v, dict):
            keys += [f"{k}.{kk}" for kk in v]
        elif isinstance(v, list):
            keys += [f"{k}.{n}" for n in range(len(v))]
        else:
            keys.append(k)
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 2])), ensure_ascii=draw(st.booleans()))
    return draw(st.sampled_from(["config.json", "service-account.json"])), text, keys


@st.composite
def toml_file(draw):
    lines, keys = [], []
    for table in draw(st.lists(KEY, min_size=1, max_size=3, unique=True)):
        lines.append(f"[{table}]")
        for key in draw(st.lists(KEY, min_size=1, max_size=3, unique=True)):
            if draw(st.booleans()):
                v = draw(value(st.characters(blacklist_characters="'", blacklist_categories=("Cs", "Cc")),
                               strip=False))
                lines.append(f"{key} = '{v}'")
            else:
                v = draw(value(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"), strip=False))
                lines.append(f"{key} = {json.dumps(v, ensure_ascii=False)}")  # then a valid TOML basic string
            if draw(st.booleans()):
                lines[-1] += " # V" + draw(st.text(LINE, max_size=8))
            keys.append(f"{table}.{key}")
    return "secrets.toml", "\n".join(lines) + "\n", keys


@st.composite
def yaml_file(draw):
    leaf = value(st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufeff"), strip=False)
    doc = draw(st.dictionaries(KEY, st.one_of(leaf, st.dictionaries(KEY, leaf, min_size=1, max_size=3),
                                              st.lists(leaf, min_size=1, max_size=3)), min_size=1, max_size=5))
    keys = []
    for k, v in doc.items():
        keys += [f"{k}.{kk}" for kk in v] if isinstance(v, dict) else \
            [f"{k}.{n}" for n in range(len(v))] if isinstance(v, list) else [k]
    text = yaml.safe_dump(doc, default_flow_style=draw(st.sampled_from([False, None])), allow_unicode=True,
                          width=draw(st.sampled_from([20, 80])))
    if draw(st.booleans()):
        text = "# V" + draw(st.text(LINE, max_size=8)) + "\n" + text
    return draw(st.sampled_from(["secrets.yaml", "values.yml"])), text, keys


ANY_FILE = st.one_of(dotenv_file(), ini_file(), npmrc_file(), netrc_file(), json_file(), toml_file(), yaml_file())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_FILE)
def test_serve_parse_restore(case):
    name, text, keys = case
    data = text.encode()
    parsed = parse(name, data)
    assert parsed is not None, f"{name} not recognised:\n{text}"
    assert sorted(parsed.keys()) == sorted(keys)

    sentinels = Sentinels()
    served = sentinels.serve(name, parsed)
    assert b"V" not in served.data  # no real value byte, no comment byte is served
    assert served.replaced == len(parsed.items)

    again = parse(name, served.data)
    assert again is not None
    assert again.keys() == parsed.keys()
    sentinel_of = {p.item.path: p.sentinel for p in served.placed if p.item.kind == "value"}
    assert all(item.value == sentinel_of[item.path] for item in again.values)

    assert sentinels.restore(name, served.data) == data  # unchanged write-back: the exact real bytes
    assert sentinels.serve(name, parsed).data == served.data  # one run, one sentinel per value


@settings(max_examples=100, deadline=None)
@given(ANY_FILE, st.data())
def test_a_value_the_sandbox_changes_stays_its_own(case, data):
    name, text, _ = case
    parsed = parse(name, text.encode())
    sentinels = Sentinels()
    served = sentinels.serve(name, parsed)
    victim = data.draw(st.sampled_from(served.placed))
    written = served.data.replace(victim.sentinel, b"sandboxown")
    restored = sentinels.restore(name, written)
    real = parsed.data
    expected = real[:victim.item.start] + victim.item.left + b"sandboxown" + victim.item.right + real[victim.item.end:]
    assert restored == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([".env", "x.json", "x.toml", ".aws/credentials", ".npmrc", ".netrc", "x.yaml"]),
       st.binary(max_size=200))
def test_any_content_is_an_answer_never_a_crash(name, data):
    parsed = parse(name, data)
    if parsed is not None:
        sentinels = Sentinels()
        assert sentinels.restore(name, sentinels.serve(name, parsed).data) == data


def test_connection_string_serves_only_the_password():
    data = b'DATABASE_URL=postgres://app:hunter2@db.internal:5432/shop\n'
    parsed = parse(".env", data)
    (item,) = parsed.values
    assert item.key == "DATABASE_URL" and item.value == b"hunter2"
    served = Sentinels().serve(".env", parsed).data
    assert served.startswith(b"DATABASE_URL=postgres://app:ifc-sentinel-")
    assert served.endswith(b"@db.internal:5432/shop\n")


def test_values_carry_what_a_program_reads():
    parsed = parse(".env", b'A="x\\ny \\"q\\""\nB=\'raw\\n\'\nC=plain # note\n')
    assert {i.key: i.value for i in parsed.values} == {"A": b'x\ny "q"', "B": b"raw\\n", "C": b"plain"}
    parsed = parse("k.json", b'{"private_key": "-----BEGIN\\nKEY\\u0041", "n": 3}')
    assert {i.key: i.value for i in parsed.values} == {"private_key": b"-----BEGIN\nKEYA", "n": b"3"}
    served = Sentinels().serve("k.json", parsed).data
    assert json.loads(served)["n"].startswith("ifc-sentinel-")  # a number is served as a string sentinel


@pytest.mark.parametrize("name, data", [
    (".env", b"KEY=value\nthis is not a line of a dotenv file\n"),
    (".env", b'KEY="never closed\n'),
    ("x.json", b'{"a": "b"'),
    ("x.json", b'{"a": NaN}'),
    ("x.toml", b'a = ["array", "values"]\n'),
    ("x.toml", b'a = """multi\nline"""\n'),
    (".aws/credentials", b"aws_secret_access_key = before any section\n"),
    (".aws/credentials", b"[default]\nkey = first\n  continued\n"),
    (".netrc", b"machine h\nmacdef init\ncd /\n\n"),
    ("x.yaml", b"a: &anchor sk_live_1\nb: *anchor\n"),
    ("x.yaml", b"a: |\n  block\n  scalar\n"),
    ("x.yaml", b"a: !vault sk_live_1\n"),
    ("x.yaml", b"a: 1\n---\nb: 2\n"),
    (".env", b"KEY=\xff\xfe\n"),
    ("id_rsa", b"-----BEGIN OPENSSH PRIVATE KEY-----\n"),
])
def test_unparsable_or_unknown_is_not_sentinelised(name, data):
    assert parse(name, data) is None


def test_format_by_name():
    assert [format_of(p) for p in [".env", "app/.env.local", "prod.env", ".docker/config.json", "secrets.toml",
                                   ".aws/credentials", "home/.aws/config", ".pypirc", ".npmrc", ".netrc", "key.pem",
                                   "config", "k8s/secret.yaml", "ci.yml"]] == [
        "dotenv", "dotenv", "dotenv", "json", "toml", "ini", "ini", "ini", "npmrc", "netrc", None, None, "yaml",
        "yaml"]


def test_keys_name_values():
    parsed = parse("config.json", b'{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpw"}}}')
    (item,) = parsed.values
    assert item.key == "auths.https://index\\.docker\\.io/v1/.auth"
    assert split_key(item.key) == item.path
    parsed = parse(".npmrc", b"//registry.npmjs.org/:_authToken=npm_x\n")
    assert key_matches(parsed.values[0], "//registry.npmjs.org/:_authToken")


@pytest.mark.parametrize("name, real, forge", [
    (".env", b"A=sk_live_1\nB=x\n", lambda s: b"%s=x\n" % s["A"]),  # the sentinel as a key
    (".env", b"A=sk_live_1\nB=x\n", lambda s: b"B=pre%spost\n" % s["A"]),  # inside another value
    (".env", b"A=sk_live_1\nB=x\n", lambda s: b"B=x # %s\n" % s["A"]),  # into a comment: one item, not exact
    ("c.json", b'{"a": "sk_live_1"}', lambda s: b'{"%s": 1}' % s["a"]),
    (".aws/credentials", b"[p]\nk = sk_live_1\n", lambda s: b"[%s]\nk = v\n" % s["p.k"]),
    ("k.yaml", b"a: sk_live_1\nb: x\n", lambda s: b"%s: x\n" % s["a"]),
    (".netrc", b"machine h login u password sk_live_1\n",
     lambda s: b"machine %s login u password v\n" % s["h.password"]),
])
def test_a_sentinel_moved_out_of_a_value_is_refused(name, real, forge):
    parsed = parse(name, real)
    sentinels = Sentinels()
    served = sentinels.serve(name, parsed)
    by_key = {p.item.key: p.sentinel for p in served.placed}
    with pytest.raises(Unmergeable):
        sentinels.restore(name, forge(by_key))


def test_npmrc_serves_only_npms_credentials_as_sentinels():
    """npm reads `.npmrc` on every command: its registry and options stay as they are, its tokens do not."""
    data = (b"registry=https://npm.acme.example/\n@acme:registry=https://npm.acme.example/\nstrict-ssl=true\n"
            b"//npm.acme.example/:_authToken=npm_Q8v2Lx9Tz4Rk7Wm3\n_auth=dXNlcjpwYXNz\n# old: npm_Old0ld\n")
    parsed = parse(".npmrc", data)
    assert parsed.keys() == [join_key(("//npm.acme.example/:_authToken",)), "_auth"]
    sentinels = Sentinels()
    served = sentinels.serve(".npmrc", parsed).data
    assert served.startswith(b"registry=https://npm.acme.example/\n@acme:registry=https://npm.acme.example/\n"
                             b"strict-ssl=true\n//npm.acme.example/:_authToken=ifc-sentinel-")
    for secret in (b"npm_Q8v2Lx9Tz4Rk7Wm3", b"dXNlcjpwYXNz", b"npm_Old0ld"):
        assert secret not in served
    assert sentinels.restore(".npmrc", served) == data


@pytest.mark.parametrize("forge", [
    lambda s: b"A=%s\nNEXT_PUBLIC_A=%s\n" % (s["A"], s["A"]),  # copied to a key a build bakes into a public bundle
    lambda s: b"B=%s\n" % s["A"],  # moved to another key (its consumer sends it elsewhere)
    lambda s: b"A=%s\nB=%s\n" % (s["B"], s["A"]),  # two keys' sentinels swapped
])
def test_a_sentinel_moved_to_another_key_is_refused(forge):
    """A real value goes back only under its own key: `B`'s consumer (a webhook URL, a public `NEXT_PUBLIC_*`
    variable) would otherwise carry `A`'s real value wherever the host's tools send `B`."""
    parsed = parse(".env", b"A=sk_live_1\nB=x\n")
    sentinels = Sentinels()
    by_key = {p.item.key: p.sentinel for p in sentinels.serve(".env", parsed).placed}
    with pytest.raises(Unmergeable, match="only under its own key"):
        sentinels.restore(".env", forge(by_key))


def test_a_sentinel_under_its_own_key_goes_back_wherever_the_line_moved():
    parsed = parse(".env", b"A=sk_live_1\nB=x\n")
    sentinels = Sentinels()
    by_key = {p.item.key: p.sentinel for p in sentinels.serve(".env", parsed).placed}
    assert sentinels.restore(".env", b"C=new\nB=%s\nA=%s\n" % (by_key["B"], by_key["A"])) == \
        b"C=new\nB=x\nA=sk_live_1\n"
