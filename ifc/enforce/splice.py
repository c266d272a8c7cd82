"""splice(2) pumps: the parts of the egress hook where bytes move without entering Python.

A blind tunnel (nothing to inspect: the endpoint is allowed and only a sentinel could leave through it) and
the body of a large plain-HTTP response are moved between two sockets by a thread, through a pipe, by the
kernel. The event loop only waits for the thread; a `Flow.cut` shuts the sockets down and the thread's next
call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
import threading

from ifc.enforce.secrets import StreamScrubber

TUNNEL_IDLE = 300.0  # seconds a tunnel may sit silent in both directions


async def splice_tunnel(a: socket.socket, b: socket.socket, a_to_b: bytes = b"", b_to_a: bytes = b"") -> None:
    """Hand a checked tunnel to the kernel: one thread per direction moves data with splice(2) through a pipe,
    never into Python. `a_to_b`/`b_to_a`: bytes already read from one side, sent to the other first. The
    sockets stay open (the caller closes them); a `Flow.cut` shuts them down and both threads end."""
    loop = asyncio.get_running_loop()
    done = [loop.create_future(), loop.create_future()]

    def run(src: int, dst: int, first: bytes, future) -> None:
        try:
            _pump(src, dst, first)
        except OSError:
            pass
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

    for args in ((a.fileno(), b.fileno(), a_to_b, done[0]), (b.fileno(), a.fileno(), b_to_a, done[1])):
        threading.Thread(target=run, args=args, name="ifc-tunnel", daemon=True).start()
    await asyncio.gather(*done)


def _pump(src: int, dst: int, first: bytes) -> None:
    os.set_blocking(dst, True)
    if first:
        with socket.socket(fileno=os.dup(dst)) as out:
            out.sendall(first)
    r, w = os.pipe()
    try:
        with contextlib.suppress(OSError):
                fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        while True:
            ready, _, _ = select.select([src], [], [], TUNNEL_IDLE)
            if not ready:
                break
            try:
                n = os.splice(src, w, 1 << 20, flags=getattr(os, "SPLICE_F_NONBLOCK", 2))
            except BlockingIOError:
                continue
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst, n)
    finally:
        os.close(r)
        os.close(w)
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(dst)) as out:
            out.shutdown(socket.SHUT_WR)


def _send_all(dst: int, data: bytes, writable: select.poll) -> None:
    """Write all of `data` to the non-blocking socket `dst`, waiting (at most TUNNEL_IDLE) while it is full."""
    out = memoryview(data)
    while out:
        events = writable.poll(TUNNEL_IDLE * 1000)
        if not events:
            raise TimeoutError("the client stopped reading")
        if events[0][1] & (select.POLLHUP | select.POLLERR):
            raise ConnectionError("the client went away")
        with contextlib.suppress(BlockingIOError):
            out = out[os.write(dst, out):]


def _writable(dst: int) -> select.poll:
    poller = select.poll()
    poller.register(dst, select.POLLOUT)
    return poller


def pump_count(src: int, dst: int, count: int, first: bytes = b"") -> int:
    """Send `first`, then move exactly `count` bytes src → dst with splice(2), leaving both (non-blocking)
    sockets as they were."""
    _send_all(dst, first, _writable(dst))
    r, w = os.pipe()
    moved = inpipe = 0
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        capacity = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ
        nonblock = getattr(os, "SPLICE_F_NONBLOCK", 2)
        poller = select.poll()
        while count > 0 or inpipe:
            want_read = count > 0 and inpipe < capacity
            poller.register(src, select.POLLIN if want_read else 0)
            poller.register(dst, select.POLLOUT if inpipe else 0)
            events = dict(poller.poll(TUNNEL_IDLE * 1000))
            poller.unregister(src)
            poller.unregister(dst)
            if not events:
                break
            if events.get(dst, 0) & (select.POLLHUP | select.POLLERR):
                raise ConnectionError("the client went away")
            if want_read and events.get(src):
                try:
                    n = os.splice(src, w, min(count, capacity - inpipe), flags=nonblock)
                except BlockingIOError:
                    n = -1
                if n == 0:
                    count = 0  # the upstream closed early: deliver what is in the pipe, then stop
                elif n > 0:
                    count -= n
                    inpipe += n
            if inpipe and events.get(dst):
                try:
                    m = os.splice(r, dst, inpipe, flags=nonblock)
                except BlockingIOError:
                    m = 0
                inpipe -= m
                moved += m
    finally:
        os.close(r)
        os.close(w)
    return moved


def pump_scrubbed(src: int, dst: int, count: int, first: bytes, scrub: StreamScrubber) -> int:
    """Send `first` (already scrubbed), then move `count` bytes src → dst through `scrub`, in this thread,
    straight between the (non-blocking) sockets. Returns the bytes read; what `scrub` still holds back is the
    caller's to flush."""
    readable, writable = select.poll(), _writable(dst)
    readable.register(src, select.POLLIN)
    _send_all(dst, first, writable)
    done = 0
    while done < count:
        if not readable.poll(TUNNEL_IDLE * 1000):
            break
        try:
            chunk = os.read(src, min(count - done, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            break
        done += len(chunk)
        _send_all(dst, scrub.feed(chunk), writable)
    return done
