"""HTTP/1.1 codecs for the egress hook, side by side: what each costs and what each refuses on its own.

    python bench/bench_http_codec.py                       # h11, the hook's codec (h11 + its rules), httptools
    python bench/bench_http_codec.py --hand /tmp/ifc-pre   # plus the hand parser of a pre-codec tree

Rows: microseconds to decode a typical request head (curl-like, 8 headers); MB/s to frame a 1 MiB
Content-Length body and a chunked one arriving in 64 KiB reads; and how many of the hostile heads in
tests/test_http_codec.py's corpus the parser refuses by itself (the rest the hook must catch, or lets
through). httptools (llhttp) is optional. mitmproxy is not a row: its HTTP/1 reader is tied to its own
connection and flow objects (no sans-IO entry point) and it pulls in dozens of packages; its framing rules are
the same RFC 9112 ones h11 implements. No thresholds.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import h11

from ifc.enforce.http_codec import Limits, ProxyError, decode_request, new_server
from tests.test_http_codec import _corpus

HEAD = (b"GET http://pypi.test:8080/simple/tinypkg/?q=1 HTTP/1.1\r\nHost: pypi.test:8080\r\n"
        b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"Cache-Control: no-cache\r\nX-Request-Id: 0123456789abcdef\r\nProxy-Authorization: Basic aWZjOnRvaw==\r\n"
        b"\r\n")
BODY = b"x" * (1 << 20)
READ = 1 << 16


def per_call(fn, seconds: float = 0.5) -> float:
    """Microseconds per call (median of 5 runs)."""
    runs = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            fn()
            n += 1
        runs.append((time.perf_counter() - start) / n * 1e6)
    return sorted(runs)[2]


def h11_head() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(HEAD)
    conn.next_event()


def codec_head() -> None:
    decode_request(new_server(Limits()), HEAD)


def h11_body(chunked: bool) -> float:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(BODY)
    wire = b"".join(b"%x\r\n%s\r\n" % (READ, BODY[i:i + READ]) for i in range(0, len(BODY), READ)) + b"0\r\n\r\n" \
        if chunked else BODY

    def run() -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\n" + framing + b"\r\n\r\n")
        conn.next_event()
        for i in range(0, len(wire), READ):
            conn.receive_data(wire[i:i + READ])
            while isinstance(conn.next_event(), h11.Data):
                pass
    return len(BODY) / per_call(run, 1.0)  # bytes per µs = MB/s


class _Sink:
    """httptools callbacks: nothing kept (the cost is the parse)."""

    def on_url(self, url):
        pass

    def on_header(self, name, value):
        pass

    def on_body(self, body):
        pass


def httptools_rows():
    try:
        import httptools
    except ImportError:
        return None

    def head() -> None:
        httptools.HttpRequestParser(_Sink()).feed_data(HEAD)

    def body(chunked: bool) -> float:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(BODY)
        wire = b"".join(b"%x\r\n%s\r\n" % (READ, BODY[i:i + READ]) for i in range(0, len(BODY), READ)) + \
            b"0\r\n\r\n" if chunked else BODY

        def run() -> None:
            parser = httptools.HttpRequestParser(_Sink())
            parser.feed_data(b"POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\n" + framing + b"\r\n\r\n")
            for i in range(0, len(wire), READ):
                parser.feed_data(wire[i:i + READ])
        return len(BODY) / per_call(run, 1.0)

    def refuses(data: bytes) -> bool:
        try:
            httptools.HttpRequestParser(_Sink()).feed_data(data)
        except httptools.HttpParserUpgrade:  # hands the rest of the stream to the caller (an HTTP/2 preface)
            return False
        except httptools.HttpParserError:
            return True
        return False

    return per_call(head), body(False), body(True), refuses


def h11_refuses(data: bytes) -> bool:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        while conn.next_event() not in (h11.NEED_DATA, h11.PAUSED) and conn.their_state is not h11.ERROR:
            if conn.their_state in (h11.DONE, h11.CLOSED, h11.MUST_CLOSE):
                return False
    except h11.RemoteProtocolError:
        return True
    return False


def codec_refuses(data: bytes) -> bool:
    """The hook's codec on the head, then h11 on the body (the proxy's own reading of the stream aside)."""
    if b"\r\n\r\n" not in data:
        return True
    end = data.index(b"\r\n\r\n") + 4
    try:
        conn = new_server(Limits())
        decode_request(conn, data[:end])
    except ProxyError:
        return True
    conn.receive_data(data[end:])
    conn.receive_data(b"")
    try:
        while not isinstance(conn.next_event(), h11.EndOfMessage | h11.ConnectionClosed):
            pass
    except h11.RemoteProtocolError:
        return True
    return False


def hand_rows(tree: Path):
    spec = importlib.util.spec_from_file_location("hand_http_proxy", tree / "ifc/enforce/http_proxy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)

    def refuses(data: bytes) -> bool:
        head = data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in data else data
        try:
            module.parse_request(head)
        except module.ProxyError:
            return True
        return False
    return per_call(lambda: module.parse_request(HEAD[:-4])), refuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hand", type=Path, help="a pre-codec tree: its hand parser is measured too")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    hostile = [data for _n, data, expect in _corpus(8080) if expect != "pass"]
    rows = [("h11 0.16 (sans-IO)", per_call(h11_head), h11_body(False), h11_body(True),
             sum(map(h11_refuses, hostile))),
            ("the hook's codec (h11 + rules)", per_call(codec_head), None, None, sum(map(codec_refuses, hostile)))]
    tools = httptools_rows()
    if tools is not None:
        rows.append(("httptools (llhttp)", *tools[:3], sum(map(tools[3], hostile))))
    if args.hand:
        head, refuses = hand_rows(args.hand)
        rows.append(("hand parser (pre-codec, head only)", head, None, None, sum(map(refuses, hostile))))
    header = ("codec", "head (µs)", "1 MiB by length (MB/s)", "1 MiB chunked (MB/s)",
              f"hostile refused (of {len(hostile)})")
    out = [header] + [(name, f"{h:.1f}", f"{b:.0f}" if b else "(h11)", f"{c:.0f}" if c else "(h11)", str(r))
                      for name, h, b, c, r in rows]
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in out[1:]:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in out) for i in range(len(header))]
    for row in out:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
