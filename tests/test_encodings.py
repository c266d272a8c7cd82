"""Compressed and encoded echoes of a real secret (ifc.enforce.encodings, Monitor.absorb_secret).

Real gzip, deflate (zlib-wrapped and raw) and br streams, fed split at every byte boundary and at points
hypothesis picks; the decoder must give the same bytes however the stream is cut, never the real value,
and must report (before handing them on) the encoded forms it masks. The monitor entry point is tested with
a real policy and an open stream registered through `Monitor.open_stream`.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import zlib
from urllib.parse import quote

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ifc.enforce import encodings
from ifc.enforce.encodings import PIECE, BodyScrubber, EncodingRefused, Reveals, identity_only
from ifc.enforce.secrets import Held, Vault
from ifc.match import EndpointPattern
from ifc.monitor import EventLog, Monitor, Request
from ifc.policy import compile_text

REAL = b"sk-real-0123456789abcdef/Zz"
VAULT = Vault([Held("API_KEY", b"ifc-sentinel-0123456789abcdef", REAL, (EndpointPattern.parse("https://api.test"),))])


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate (raw)": raw_deflate,
    "br": brotli.compress,
    "gzip, br": lambda d: brotli.compress(gzip.compress(d)),
    "identity": lambda d: d,
}


def header(name: str) -> str:
    return name.split(" ")[0] if name != "gzip, br" else name


def run(encoding: str | None, data: bytes, cuts: list[int], vault: Vault = VAULT, **kw) -> tuple[bytes, list[str]]:
    """Everything the scrubber yields for `data` fed in pieces cut at `cuts`, and the secrets it reported."""
    reported: list[str] = []
    body = BodyScrubber(vault, encoding, lambda held: reported.append(held.name), **kw)
    out = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        out.extend(body.feed(data[start:end]))
    out.extend(body.finish())
    return b"".join(out), reported


# ------------------------------------------------------------------------------------------ request side

def test_identity_only_asks_for_unencoded_bytes_in_str_and_bytes_headers():
    headers = [("Host", "api.test"), ("accept-encoding", "gzip, br"), ("TE", "gzip"), ("X-A", "1")]
    assert identity_only(headers) == [("Host", "api.test"), ("X-A", "1"), ("Accept-Encoding", "identity")]
    raw = [(b"host", b"api.test"), (b"Accept-Encoding", b"zstd")]
    assert identity_only(raw) == [(b"host", b"api.test"), (b"Accept-Encoding", b"identity")]
    assert identity_only([]) == [("Accept-Encoding", "identity")]


# ------------------------------------------------------------------------------------------ decoding

ECHO = b'{"echo": "Bearer ' + REAL + b'", "n": 1}' + bytes(range(256)) * 4


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_byte_boundary_gives_the_same_masked_body(name):
    encoded = ENCODERS[name](ECHO)
    whole, _ = run(header(name), encoded, [])
    assert whole == ECHO.replace(REAL, b"*" * len(REAL))
    for cut in range(1, len(encoded)):
        assert run(header(name), encoded, [cut])[0] == whole
    assert run(header(name), encoded, list(range(1, len(encoded))))[0] == whole  # one byte at a time


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(list(ENCODERS)), before=st.binary(max_size=300), after=st.binary(max_size=300),
       copies=st.integers(0, 3), cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_decoded_output_is_the_body_with_the_value_masked_however_it_is_cut(name, before, after, copies, cuts):
    body = before + REAL * copies + after
    encoded = ENCODERS[name](body)
    out, _ = run(header(name), encoded, [c % (len(encoded) + 1) for c in cuts])
    assert REAL not in out
    if REAL not in before + after and not Reveals(VAULT).mask(body)[1]:
        assert out == body.replace(REAL, b"*" * len(REAL))


def test_gzip_members_one_after_another_decode_as_one_body():
    data = gzip.compress(b"first " + REAL) + gzip.compress(b" second")
    assert run("gzip", data, [5, 30])[0] == b"first " + b"*" * len(REAL) + b" second"


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "gzip, br"])
def test_pieces_stay_bounded(name):
    data = ENCODERS[name](bytes(8 << 20))
    body = BodyScrubber(VAULT, name, lambda held: None)
    sizes = [len(p) for p in body.feed(data)] + [len(p) for p in body.finish()]
    assert sum(sizes) == 8 << 20
    # a piece (brotli overshoots its output limit by up to half), plus what the scanners held back before it
    assert max(sizes) <= 2 * PIECE + 3 * len(REAL)


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "gzip, br"])
def test_a_decompression_bomb_is_refused_at_the_cap(name):
    bomb = ENCODERS[name](bytes(32 << 20))
    assert len(bomb) < 64 << 10
    body = BodyScrubber(VAULT, name, lambda held: None, max_decoded=4 << 20)
    relayed = 0
    with pytest.raises(EncodingRefused, match="inflates past 4194304 bytes"):
        for piece in body.feed(bomb):
            relayed += len(piece)
    assert relayed <= 4 << 20


@pytest.mark.parametrize("encoding", ["zstd", "compress", "gzip, zstd", "exi", "x-compress", "chunked"])
def test_an_encoding_it_cannot_decode_is_refused_before_anything_is_relayed(encoding):
    with pytest.raises(EncodingRefused, match="cannot decode to mask a secret"):
        BodyScrubber(VAULT, encoding, lambda held: None)


def test_br_is_refused_where_brotli_is_not_installed(monkeypatch):
    monkeypatch.setattr(encodings, "brotli", None)
    with pytest.raises(EncodingRefused, match="`brotli` package is not installed"):
        BodyScrubber(VAULT, "br", lambda held: None)
    BodyScrubber(VAULT, "gzip", lambda held: None)


def test_a_byte_range_of_an_encoded_body_is_refused():
    with pytest.raises(EncodingRefused, match="byte range"):
        BodyScrubber(VAULT, "gzip", lambda held: None, ranged=True)
    BodyScrubber(VAULT, "identity", lambda held: None, ranged=True)


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("gzip", lambda d: d[:-9], "ended before"),
    ("br", lambda d: d[:-3], "ended before"),
    ("gzip", lambda d: d[:12] + b"\xff" * 8 + d[20:], "does not decode"),
    ("deflate", lambda d: d + b"more", "after the end"),
    ("br", lambda d: d + b"more", "does not decode|after the end"),  # brotli refuses it inside one call
    ("gzip", lambda d: d + b"trailing garbage", "does not decode"),
])
def test_a_damaged_stream_is_refused(name, damage, problem):
    with pytest.raises(EncodingRefused, match=problem):
        run(name, damage(ENCODERS[name](ECHO)), [7])


def test_an_empty_body_is_empty_whatever_it_claims():
    assert run("gzip", b"", []) == (b"", [])


# ------------------------------------------------------------------------------------------ headers

def test_headers_of_a_decoded_body_drop_what_describes_the_encoded_bytes():
    body = BodyScrubber(VAULT, "gzip", lambda held: None)
    headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip"), ("Content-Length", "51"),
               ("ETag", '"abc"'), ("Digest", "sha-256=x"), ("Vary", "Accept-Encoding")]
    assert body.headers(headers) == [("Content-Type", "application/json"), ("ETag", 'W/"abc"'),
                                     ("Vary", "Accept-Encoding")]
    weak = BodyScrubber(VAULT, "gzip", lambda held: None).headers([(b"etag", b'W/"abc"')])
    assert weak == [(b"etag", b'W/"abc"')]


def test_headers_of_an_identity_body_keep_their_length_and_echoes_are_masked_and_reported():
    reported = []
    body = BodyScrubber(VAULT, None, lambda held: reported.append(held.name))
    headers = [("Content-Length", "12"), ("X-Echo", "Bearer " + REAL.decode()),
               ("X-B64", base64.b64encode(b"u:" + REAL).decode())]
    out = body.headers(headers)
    assert out[0] == ("Content-Length", "12")
    assert out[1] == ("X-Echo", "Bearer " + "*" * len(REAL))
    assert REAL.decode() not in str(out) and base64.b64encode(REAL).decode()[:20] not in str(out)
    assert reported == ["API_KEY"]  # the base64 one; the literal one is masked as before


# ------------------------------------------------------------------------------------------ the detector

FORMS = {
    "other casing": REAL.upper(),
    "hex": REAL.hex().encode(),
    "HEX": REAL.hex().upper().encode(),
    "base64": base64.b64encode(REAL),
    "base64 at offset 1": base64.b64encode(b"x" + REAL),
    "base64 at offset 2": base64.b64encode(b"xy" + REAL),
    "base64url": base64.urlsafe_b64encode(b"?" + REAL),
    "Basic auth": base64.b64encode(b"user:" + REAL),
    "percent-encoded": "".join(f"%{b:02X}" for b in REAL).encode(),
    "url-quoted": quote(REAL, safe="").encode(),
    "JSON-escaped": REAL.replace(b"/", b"\\/"),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name", ["gzip", "identity"])
def test_an_encoded_value_is_masked_and_reported(form, name):
    body = b'{"echo": "' + FORMS[form] + b'"}'
    encoded = ENCODERS[name](body)
    for cuts in ([], list(range(1, len(encoded)))):
        out, reported = run(name, encoded, cuts)
        assert reported == ["API_KEY"]
        assert out.startswith(b'{"echo": "') and len(out) == len(body)
        assert FORMS[form] not in out and REAL not in out


def test_unrelated_data_is_neither_masked_nor_reported():
    body = (base64.b64encode(b"sk-real-0123456789abcdeX/Zz") + b" " + b"sk-real-0123456789".hex().encode()
            + b" sk-real-0123456789abcdef" + bytes(range(256)))
    assert run("gzip", gzip.compress(body), [3, 100]) == (body, [])


def test_values_too_short_for_encoded_forms_are_only_masked_literally():
    short = Vault([Held("PIN", b"ifc-sentinel-1", b"1234")])
    assert Reveals(short).forms == []
    assert run(None, b"1234 MTIzNA== 31323334", [], vault=short) == (b"**** MTIzNA== 31323334", [])


def test_the_report_comes_before_the_bytes_holding_the_form():
    events = []
    body = BodyScrubber(VAULT, "gzip", lambda held: events.append("reported"))
    data = gzip.compress(b"x" * 100_000 + base64.b64encode(REAL) + b"y" * 100_000)
    for cut in range(0, len(data), 97):
        for piece in body.feed(data[cut:cut + 97]):
            events.append(b"*" in piece)
    events.extend(b"*" in piece for piece in body.finish())
    assert events.index("reported") < events.index(True)


# ------------------------------------------------------------------------------------------ the monitor

POLICY = """
labels {
  secrecy public < internal < secret
  secrecy customer
}
files {
  "**"  internal
}
endpoints {
  "https://api.test"       clearance internal
  "https://vault.test"     clearance secret + customer
}
secret API_KEY from env "IFC_TEST_API_KEY" to "https://api.test"
"""


@pytest.fixture
def monitor(tmp_path):
    log = EventLog(tmp_path / "events.db")
    monitor = Monitor(compile_text(POLICY).policy, log=log)
    yield monitor
    monitor.close()


def test_absorb_secret_raises_the_run_taint_cuts_open_streams_and_logs_where_it_came_from(monitor):
    cuts: list[str] = []
    kept: list[str] = []
    _, api = monitor.open_stream(Request("connect", "https://api.test:443"), "tunnel to api.test", cuts.append)
    _, vault = monitor.open_stream(Request("connect", "https://vault.test:443"), "tunnel to vault.test",
                                   kept.append)
    assert api is not None and vault is not None
    taint = monitor.absorb_secret("API_KEY", "https://api.test:443")
    assert taint.secrecy == {"internal", "secret", "customer"}  # every secrecy tag the lattice has
    assert monitor.run.taint == taint
    assert len(cuts) == 1 and "secret API_KEY via response from https://api.test:443" in cuts[0]
    assert not api.alive and vault.alive and kept == []
    later = monitor.decide(Request("connect", "https://api.test:443"))
    assert not later.allowed
    assert ("secret + customer", "API_KEY via response from https://api.test:443") in later.tainted_by
    assert later.explanation.startswith("secret:API_KEY via response from https://api.test:443 --reveal--> session")
    monitor.flush()
    events = [e for e in monitor.log.events("label") if e.op == "reveal"]
    assert len(events) == 1 and events[0].target == "https://api.test:443"
    assert "secret API_KEY via response from https://api.test:443" in events[0].reason
    assert events[0].taint_before != events[0].taint_after


def test_the_scrubber_reporting_to_the_monitor_cuts_the_stream_before_the_echo_is_relayed(monitor):
    order: list[bytes | str] = []
    monitor.open_stream(Request("connect", "https://api.test:443"), "tunnel to api.test",
                        lambda reason: order.append("cut"))
    body = BodyScrubber(VAULT, "gzip", lambda held: monitor.absorb_secret(held.name, "https://api.test:443"))
    data = gzip.compress(b'{"echo": "' + base64.b64encode(b"x:" + REAL) + b'"}')
    for i in range(len(data)):
        order.extend(body.feed(data[i:i + 1]))
    order.extend(body.finish())
    assert order.count("cut") == 1
    before = b"".join(p for p in order[:order.index("cut")] if isinstance(p, bytes))
    after = b"".join(p for p in order[order.index("cut"):] if isinstance(p, bytes))
    assert b"*" not in before and b"*" * 20 in after  # no byte of the masked echo went out before the cut
    monitor.flush()
    assert [e.reason for e in monitor.log.events("deny") if "open stream cut" in e.reason]
