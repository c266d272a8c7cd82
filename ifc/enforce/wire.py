"""Byte streams the egress hook owns end to end: a socket driven by the event loop, with our own buffer.

Why not asyncio's streams: a proxy hands a connection from one reader to another — the HTTP codec, a
ClientHello check, a TLS engine, a splice(2) thread — and every hand-over must carry the bytes already
read but not yet used. A `StreamReader` keeps those in a private buffer; here they are `Wire.buffer`, ours.
`SocketWire` moves bytes on a non-blocking socket (which a splice thread may also take over): it tries the
system call first and only then waits for readiness, with its own timer — no task per read or write (an
`asyncio.wait_for` around each was most of the hook's per-request cost); `ifc.enforce.tls.TlsStream` is the
same surface over a TLS engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class Wire:
    """A duplex byte stream: `recv`/`send`, plus `buffer` (bytes received and not yet consumed). A recv or
    send that waits longer than `timeout` (or the call's own) raises TimeoutError."""

    sock: socket.socket  # the TCP socket under it (for `Flow.attach` and splice)

    def __init__(self, timeout: float | None = None) -> None:
        self.buffer = bytearray()
        self.timeout = timeout

    async def recv(self, size: int = 1 << 18, timeout: float | None = None) -> bytes:
        """Up to `size` new bytes from the peer; b"" at the end of the stream."""
        raise NotImplementedError

    async def send(self, data: bytes, timeout: float | None = None) -> None:
        raise NotImplementedError

    def shutdown_write(self) -> None:
        """Tell the peer nothing more comes (half-close)."""
        raise NotImplementedError

    def stale(self) -> bool:
        """For a kept-alive connection about to be reused: did the peer close it (or send unasked bytes)?"""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def fill(self, timeout: float | None = None) -> bool:
        """Append what arrives next to `buffer`; False at the end of the stream."""
        data = await self.recv(timeout=timeout)
        self.buffer += data
        return bool(data)

    def take(self) -> bytes:
        """Everything buffered, handed to the next reader."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def give_back(self, data: bytes) -> None:
        """Bytes a reader received but did not use (a codec's trailing data) go first again."""
        if data:
            self.buffer[:0] = data


class SocketWire(Wire):
    def __init__(self, sock: socket.socket, timeout: float | None = None):
        super().__init__(timeout)
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def recv(self, size: int = 1 << 18, timeout: float | None = None) -> bytes:
        while True:
            try:
                return self.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                await self._ready(self.loop.add_reader, self.loop.remove_reader, timeout)

    async def send(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except (BlockingIOError, InterruptedError):
                await self._ready(self.loop.add_writer, self.loop.remove_writer, timeout)

    async def _ready(self, add, remove, timeout: float | None) -> None:
        """Wait until the socket is readable (or writable), at most `timeout` (else the wire's)."""
        timeout = self.timeout if timeout is None else timeout
        fd = self.sock.fileno()
        future = self.loop.create_future()
        add(fd, _settle, future, None)
        timer = self.loop.call_later(timeout, _settle, future, TimeoutError()) if timeout is not None else None
        try:
            await future
        finally:
            remove(fd)
            if timer is not None:
                timer.cancel()

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def stale(self) -> bool:
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # nothing to read: still open and quiet
        except OSError:
            return True
        return True  # b"" (closed) or bytes nobody asked for: either way it cannot carry a new exchange


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


async def open_socket(addresses: tuple[str, ...], port: int, timeout: float,
                      io_timeout: float | None = None) -> SocketWire:
    """A TCP connection to the first checked address that answers (never to a name)."""
    loop = asyncio.get_running_loop()
    last: Exception | None = None
    for addr in addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (addr, port)), timeout)
        except (TimeoutError, OSError) as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketWire(sock, io_timeout)
    raise OSError(f"cannot connect: {last}")
