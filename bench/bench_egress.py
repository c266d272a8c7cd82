"""Egress-hook benchmark: one run, one table, direct vs through `ifc proxy`, no thresholds (goals beside).

    python bench/bench_egress.py              # aligned text table
    python bench/bench_egress.py --markdown   # the table for docs/benchmarks.md
    python bench/bench_egress.py --quick      # smaller counts, 3 s of concurrency (a smoke run)

Three processes: an upstream HTTP server (asyncio, keep-alive; `/small` answers 2 bytes, `/big` streams
100 MB; the same on a second port over TLS, with a certificate from a CA made here), `python -m ifc proxy`
on a policy naming the upstream by IP (`--agent none`: flows only, an event log in a temporary run
directory; a secret bound to `https://bound.test`, so tunnels there are terminated), and this client.

* added latency per request: sequential GETs of `/small` on one kept-alive connection, direct and as
  absolute-URI requests through the proxy (which decides, then opens a fresh upstream connection per
  request); p50 and p99; and p50 again with 100 idle CONNECT tunnels open through the proxy (streams the
  monitor keeps registered, to re-decide when the run's taint rises: while it is stable they cost nothing);
* throughput of one 100 MB GET, direct, through the proxy (plain HTTP), through a CONNECT tunnel (raw TCP,
  allowed by a `tcp://` rule), through a bare splice(2) relay (a dozen lines, no checks: the ceiling for any
  relay on this machine), and through a proxy whose policy holds a secret (every response scrubbed); the
  median over `--rounds` rounds that alternate the cases, the ratio to direct taken within each round (the
  machine's slow moments hit both sides), and the whole machine's CPU seconds per GB moved;
* 200 concurrent kept-alive connections through the proxy for `--duration` seconds: requests, errors;
* TLS termination: time to the first response byte on a fresh HTTPS connection (connect, CONNECT, handshake,
  one GET), direct, through a blind tunnel (`blind.test`) and through a terminated one (`bound.test`,
  trusting RUN/ca.pem); one 100 MB GET through a terminated tunnel; the run CA's and a leaf's generation.

Goals (issue #6): +<= 1 ms p50, >= 80 % of direct throughput, 200 connections with no error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tls_support import make_upstream_ca

UPSTREAM = textwrap.dedent('''
    import asyncio, ssl, sys
    BIG = 100 * 1024 * 1024
    CHUNK = b"x" * (1 << 20)

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                path = head.split(b" ", 2)[1]
                if path.endswith(b"/big"):
                    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % BIG)
                    for _ in range(BIG // len(CHUNK)):
                        writer.write(CHUNK)
                        await writer.drain()
                else:
                    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
                    await writer.drain()
                if b"connection: close" in head.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[1], sys.argv[2])
        tls_server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024, ssl=tls)
        print(server.sockets[0].getsockname()[1], tls_server.sockets[0].getsockname()[1], flush=True)
        await asyncio.gather(server.serve_forever(), tls_server.serve_forever())

    asyncio.run(main())
''')

POLICY = """
labels {{
  secrecy public < internal < secret
}}
files {{ "**" internal }}
endpoints {{
  "http://127.0.0.1:{port}"  clearance internal as web, external
  "tcp://127.0.0.1:{port}"   clearance internal as web, external
  "https://bound.test:{tport}", "https://blind.test:{tport}"  clearance internal as web, external
  "https://127.0.0.1:{tport}"  clearance internal
}}
"""
# a second proxy for the TLS rows: with a secret, so every response it relays is scrubbed (the first has none)
SECRET = 'secret BENCH_KEY from env "IFC_BENCH_KEY" to "https://bound.test:{tport}"\n'
HOSTS = "bound.test 127.0.0.1\nblind.test 127.0.0.1\n"


def start_upstream(tmp: Path) -> tuple[subprocess.Popen, int, int]:
    """The upstream server: (process, plain HTTP port, HTTPS port)."""
    _ca, cert, key = make_upstream_ca(tmp, ["bound.test", "blind.test"])  # the tests' upstream CA, reused
    up = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(cert), str(key)], stdout=subprocess.PIPE, text=True)
    port, tport = map(int, up.stdout.readline().split())
    (tmp / "hosts").write_text(HOSTS)
    return up, port, tport


def start_proxy(tmp: Path, name: str, policy: str) -> tuple[subprocess.Popen, int]:
    """`ifc proxy` on `policy`, run dir TMP/NAME, log TMP/NAME.log: (process, port)."""
    (tmp / f"{name}.flow").write_text(policy)
    root = Path(__file__).resolve().parent.parent
    errors = tmp / f"{name}.log"  # a file, not a pipe: a full pipe would stall the proxy
    with open(errors, "w") as err:
        proxy = subprocess.Popen([sys.executable, "-m", "ifc", "proxy", "--policy", str(tmp / f"{name}.flow"),
                                  "--listen", "127.0.0.1:0", "--agent", "none", "--run-dir", str(tmp / name),
                                  "--hosts", str(tmp / "hosts"), "--upstream-ca", str(tmp / "upstream-ca.pem")],
                                 stderr=err, cwd=root, env={**os.environ, "PYTHONPATH": str(root),
                                                            "IFC_BENCH_KEY": "bench-real-value"})
    deadline = time.monotonic() + 20
    while " http on " not in errors.read_text() and time.monotonic() < deadline and proxy.poll() is None:
        time.sleep(0.05)
    line = next((x for x in errors.read_text().splitlines() if " http on " in x), None)
    if line is None:
        proxy.kill()
        raise SystemExit(f"the proxy did not start: {errors.read_text()}")
    return proxy, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def latency(host_port: tuple[str, int], url: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection(*host_port, timeout=10)
    out = []
    for i in range(n + 50):
        t = time.perf_counter()
        conn.request("GET", url)
        resp = conn.getresponse()
        resp.read()
        if i >= 50:  # warm-up
            out.append(time.perf_counter() - t)
    conn.close()
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def connection(host_port: tuple[str, int], tunnel: tuple[str, int] | None = None, tls: ssl.SSLContext | None = None,
               timeout: float = 60) -> http.client.HTTPConnection:
    """Plain HTTP to `host_port`; with `tunnel`, through the proxy at `host_port` (TLS inside if `tls`); with
    `tls` alone, HTTPS straight to `host_port` for the name the certificate carries (`bound.test`)."""
    if tls is None:
        conn = http.client.HTTPConnection(*host_port, timeout=timeout)
    elif tunnel:
        conn = http.client.HTTPSConnection(*host_port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPSConnection("bound.test", host_port[1], timeout=timeout, context=tls)
        conn.sock = tls.wrap_socket(socket.create_connection(host_port, timeout=timeout), server_hostname="bound.test")
    if tunnel:
        conn.set_tunnel(*tunnel)
    return conn


def throughput(host_port: tuple[str, int], url: str, tunnel: tuple[str, int] | None = None,
               tls: ssl.SSLContext | None = None) -> float:
    conn = connection(host_port, tunnel, tls)
    t = time.perf_counter()
    conn.request("GET", url)
    resp = conn.getresponse()
    total = 0
    while chunk := resp.read(1 << 20):
        total += len(chunk)
    elapsed = time.perf_counter() - t
    conn.close()
    assert total == 100 * 1024 * 1024, total
    return total / elapsed / 1e6


def bare_relay() -> int:
    """A CONNECT relay with nothing but splice(2), one blocking thread per direction: the port."""
    import fcntl
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(None)  # blocking, whatever the default timeout: splice(2) here waits in the kernel

    def pump(src: socket.socket, dst: socket.socket) -> None:
        r, w = os.pipe()
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        with contextlib.suppress(OSError):  # a client that hangs up early
            while n := os.splice(src.fileno(), w, 1 << 20):
                while n:
                    n -= os.splice(r, dst.fileno(), n)
            dst.shutdown(socket.SHUT_WR)
        os.close(r)
        os.close(w)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            host, port = head.split(b" ")[1].decode().rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.settimeout(None)
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, all threads) of this process and of `pids` (/proc/PID/stat)."""
    total = sum(os.times()[:2])
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def throughputs(cases: dict[str, tuple[str | None, tuple]], rounds: int,
                pids: list[int]) -> dict[str, tuple[float, float, float]]:
    """Per case: (median MB/s, median ratio to its baseline case within a round, CPU seconds per GB spent by
    this client, the upstream and the proxies — other load on the machine not counted)."""
    speeds: dict[str, list[float]] = {name: [] for name in cases}
    cpu = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for name, (_base, args) in cases.items():
            before = cpu_seconds(pids)
            speeds[name].append(throughput(*args))
            cpu[name] += cpu_seconds(pids) - before
    out = {}
    for name, (base, _args) in cases.items():
        ratios = [a / b for a, b in zip(speeds[name], speeds[base or name], strict=True)]
        out[name] = (statistics.median(speeds[name]), statistics.median(ratios), cpu[name] / (rounds * 0.1048576))
    return out


def first_byte(host_port: tuple[str, int], tls: ssl.SSLContext, tunnel: tuple[str, int] | None, n: int) -> list[float]:
    """Seconds from connect to the first byte of the response, each on a fresh connection (and handshake)."""
    out = []
    for i in range(n + 10):
        t = time.perf_counter()
        conn = connection(host_port, tunnel, tls, timeout=10)
        conn.request("GET", "/small")
        resp = conn.getresponse()
        resp.read(1)
        if i >= 10:
            out.append(time.perf_counter() - t)
        conn.close()
    return out


def generation(n: int) -> tuple[float, float]:
    """Median seconds to make the run CA, and a leaf (key, certificate, SSLContext) for a new host."""
    from ifc.enforce.tls import RunCA
    from ifc.match import EndpointPattern

    bound = [EndpointPattern.parse("https://*.bench.test")]
    cas, leaves = [], []
    for i in range(n):
        t = time.perf_counter()
        ca = RunCA(bound)
        cas.append(time.perf_counter() - t)
        t = time.perf_counter()
        ca.server_context(f"h{i}.bench.test")
        leaves.append(time.perf_counter() - t)
    return pct(cas, .5), pct(leaves, .5)


async def hammer(pport: int, uport: int, conns: int, seconds: float) -> tuple[int, int]:
    done = errors = 0
    request = f"GET http://127.0.0.1:{uport}/small HTTP/1.1\r\nHost: 127.0.0.1:{uport}\r\n\r\n".encode()
    stop = time.monotonic() + seconds

    async def one():
        nonlocal done, errors
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", pport)
        except OSError:
            errors += 1
            return
        try:
            while time.monotonic() < stop:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                    return
                await reader.readexactly(2)
                done += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return done, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--duration", type=float, default=None, help="seconds of 200-connection load (default 30)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the 100 MB transfers (default 5)")
    args = ap.parse_args()
    n = 500 if args.quick else 3000
    seconds = args.duration or (3 if args.quick else 30)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        up, uport, tport = start_upstream(tmp)
        procs = [up]
        try:
            proxy, pport = start_proxy(tmp, "plain", POLICY.format(port=uport, tport=tport))
            procs.append(proxy)
            secret_proxy, sport = start_proxy(tmp, "secret", POLICY.format(port=uport, tport=tport) +
                                              SECRET.format(tport=tport))
            procs.append(secret_proxy)
            direct = latency(("127.0.0.1", uport), "/small", n)
            via = latency(("127.0.0.1", pport), f"http://127.0.0.1:{uport}/small", n)
            idle = [connection(("127.0.0.1", pport), ("127.0.0.1", uport)) for _ in range(100)]
            for conn in idle:  # open streams the monitor keeps deciding (on a taint rise: none happens here)
                conn.connect()
            via_busy = latency(("127.0.0.1", pport), f"http://127.0.0.1:{uport}/small", n)
            for conn in idle:
                conn.close()
            upstream_tls = ssl.create_default_context(cafile=str(Path(d) / "upstream-ca.pem"))
            run_tls = ssl.create_default_context(cafile=str(tmp / "secret" / "ca.pem"))
            relay = bare_relay()
            tp = throughputs({
                "direct": (None, (("127.0.0.1", uport), "/big")),
                "http": ("direct", (("127.0.0.1", pport), f"http://127.0.0.1:{uport}/big")),
                "tunnel": ("direct", (("127.0.0.1", pport), "/big", ("127.0.0.1", uport))),
                "relay": ("direct", (("127.0.0.1", relay), "/big", ("127.0.0.1", uport))),
                "scrubbed": ("direct", (("127.0.0.1", sport), f"http://127.0.0.1:{uport}/big")),
                "tls": (None, (("127.0.0.1", tport), "/big", None, upstream_tls)),
                "terminated": ("tls", (("127.0.0.1", sport), "/big", ("bound.test", tport), run_tls)),
            }, args.rounds or (2 if args.quick else 5), [p.pid for p in procs])
            fresh = n // 10
            ttfb_direct = first_byte(("127.0.0.1", tport), upstream_tls, None, fresh)
            ttfb_blind = first_byte(("127.0.0.1", sport), upstream_tls, ("blind.test", tport), fresh)
            ttfb_term = first_byte(("127.0.0.1", sport), run_tls, ("bound.test", tport), fresh)
            ca_time, leaf_time = generation(20 if args.quick else 100)
            done, errors = asyncio.run(hammer(pport, uport, 200, seconds))
        finally:
            for proc in reversed(procs):
                stop(proc)
            log_text = "".join(log.read_text() for log in tmp.glob("*.log"))
    if "Traceback" in log_text:
        print(log_text[-3000:], file=sys.stderr)
    ms = 1000
    p50d, p99d, p50v, p99v = pct(direct, .5) * ms, pct(direct, .99) * ms, pct(via, .5) * ms, pct(via, .99) * ms
    rows = [
        ("latency p50 (ms/request)", f"{p50d:.3f}", f"{p50v:.3f}", f"{p50v - p50d:+.3f} ms", "+<= 1 ms"),
        ("latency p99 (ms/request)", f"{p99d:.3f}", f"{p99v:.3f}", f"{p99v - p99d:+.3f} ms", ""),
        ("latency p50 with 100 idle tunnels open (ms/request)", f"{p50d:.3f}", f"{pct(via_busy, .5) * ms:.3f}",
         f"{pct(via_busy, .5) * ms - p50d:+.3f} ms", "+<= 1 ms"),
        *((f"100 MB GET, {label} (MB/s)", f"{tp[base][0]:.0f}", f"{tp[name][0]:.0f}", f"{tp[name][1]:.0%}", goal)
          for name, base, label, goal in (
              ("http", "direct", "plain HTTP", ">= 80 %"), ("tunnel", "direct", "CONNECT tunnel", ">= 80 %"),
              ("relay", "direct", "bare splice relay, no checks", ""),
              ("scrubbed", "direct", "plain HTTP, a secret in the policy", ""))),
        ("CPU time per GB moved, the bench's processes (s)", f"{tp['direct'][2]:.2f}",
         f"{tp['http'][2]:.2f} http, {tp['tunnel'][2]:.2f} tunnel", f"bare relay {tp['relay'][2]:.2f}", ""),
        (f"200 connections x {seconds:g} s", "", f"{done} requests", f"{errors} errors, {done / seconds:.0f} req/s",
         "0 errors"),
    ]
    ttfb = [pct(x, .5) * ms for x in (ttfb_direct, ttfb_blind, ttfb_term)]
    rows += [
        ("HTTPS first byte, blind tunnel (ms, p50)", f"{ttfb[0]:.2f}", f"{ttfb[1]:.2f}", f"{ttfb[1] / ttfb[0]:.1f}x",
         ""),
        ("HTTPS first byte, terminated tunnel (ms, p50)", f"{ttfb[0]:.2f}", f"{ttfb[2]:.2f}",
         f"{ttfb[2] / ttfb[0]:.1f}x ({ttfb[2] / ttfb[1]:.1f}x blind)", ""),
        ("100 MB GET, terminated tunnel (MB/s)", f"{tp['tls'][0]:.0f}", f"{tp['terminated'][0]:.0f}",
         f"{tp['terminated'][1]:.0%}", ""),
        ("run CA generation (ms, median)", "", f"{ca_time * ms:.2f}", "once per run", ""),
        ("leaf generation + SSLContext (ms, median)", "", f"{leaf_time * ms:.2f}", "once per host", ""),
    ]
    head = ("measure", "direct", "via ifc proxy", "difference", "goal")
    print(f"# egress hook: Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{n} sequential requests")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
        for row in (head, *rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
