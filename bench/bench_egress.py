"""Egress-hook benchmark: one run, one table, direct vs through `ifc proxy`, no thresholds (goals beside).

    python bench/bench_egress.py              # aligned text table
    python bench/bench_egress.py --markdown   # the table for docs/benchmarks.md
    python bench/bench_egress.py --quick      # smaller counts, 3 s of concurrency (a smoke run)

Three processes: an upstream HTTP server (asyncio, keep-alive; `/small` answers 2 bytes, `/big` streams
100 MB), `python -m ifc proxy` on a policy naming the upstream by IP (`--agent none`: flows only, an
event log in a temporary run directory), and this client.

* added latency per request: sequential GETs of `/small` on one kept-alive connection, direct and as
  absolute-URI requests through the proxy (which decides, then opens a fresh upstream connection per
  request); p50 and p99;
* throughput of one 100 MB GET, direct, through the proxy (plain HTTP, scanned for secrets), and through a
  CONNECT tunnel (raw TCP, allowed by a `tcp://` rule);
* 200 concurrent kept-alive connections through the proxy for `--duration` seconds: requests, errors.

Goals (issue #6): +<= 1 ms p50, >= 80 % of direct throughput, 200 connections with no error.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import platform
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

UPSTREAM = textwrap.dedent('''
    import asyncio, sys
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
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

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
}}
"""


def start(tmp: Path):
    up = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True)
    port = int(up.stdout.readline())
    (tmp / "p.flow").write_text(POLICY.format(port=port))
    root = Path(__file__).resolve().parent.parent
    errors = tmp / "proxy.log"  # a file, not a pipe: a full pipe would stall the proxy
    with open(errors, "w") as err:
        proxy = subprocess.Popen([sys.executable, "-m", "ifc", "proxy", "--policy", str(tmp / "p.flow"), "--listen",
                                  "127.0.0.1:0", "--agent", "none", "--run-dir", str(tmp / "run")],
                                 stderr=err, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.monotonic() + 20
    while " http on " not in errors.read_text() and time.monotonic() < deadline and proxy.poll() is None:
        time.sleep(0.05)
    line = next((x for x in errors.read_text().splitlines() if " http on " in x), None)
    if line is None:
        proxy.kill()
        up.terminate()
        raise SystemExit(f"the proxy did not start: {errors.read_text()}")
    return up, port, proxy, int(line.rsplit(":", 1)[1])


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


def throughput(host_port: tuple[str, int], url: str, tunnel: tuple[str, int] | None = None) -> float:
    conn = http.client.HTTPConnection(*host_port, timeout=60)
    if tunnel:
        conn.set_tunnel(*tunnel)
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
    args = ap.parse_args()
    n = 500 if args.quick else 3000
    seconds = args.duration or (3 if args.quick else 30)
    with tempfile.TemporaryDirectory() as d:
        up, uport, proxy, pport = start(Path(d))
        try:
            direct = latency(("127.0.0.1", uport), "/small", n)
            via = latency(("127.0.0.1", pport), f"http://127.0.0.1:{uport}/small", n)
            tp_direct = throughput(("127.0.0.1", uport), "/big")
            tp_proxy = throughput(("127.0.0.1", pport), f"http://127.0.0.1:{uport}/big")
            tp_tunnel = throughput(("127.0.0.1", pport), "/big", tunnel=("127.0.0.1", uport))
            done, errors = asyncio.run(hammer(pport, uport, 200, seconds))
        finally:
            proxy.terminate()
            up.terminate()
            up.wait(10)
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
            log_text = (Path(d) / "proxy.log").read_text()
    if "Traceback" in log_text:
        print(log_text[-3000:], file=sys.stderr)
    ms = 1000
    p50d, p99d, p50v, p99v = pct(direct, .5) * ms, pct(direct, .99) * ms, pct(via, .5) * ms, pct(via, .99) * ms
    rows = [
        ("latency p50 (ms/request)", f"{p50d:.3f}", f"{p50v:.3f}", f"{p50v - p50d:+.3f} ms", "+<= 1 ms"),
        ("latency p99 (ms/request)", f"{p99d:.3f}", f"{p99v:.3f}", f"{p99v - p99d:+.3f} ms", ""),
        ("100 MB GET, plain HTTP (MB/s)", f"{tp_direct:.0f}", f"{tp_proxy:.0f}", f"{tp_proxy / tp_direct:.0%}",
         ">= 80 %"),
        ("100 MB GET, CONNECT tunnel (MB/s)", f"{tp_direct:.0f}", f"{tp_tunnel:.0f}", f"{tp_tunnel / tp_direct:.0%}",
         ">= 80 %"),
        (f"200 connections x {seconds:g} s", "", f"{done} requests", f"{errors} errors, {done / seconds:.0f} req/s",
         "0 errors"),
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
