"""Upstream servers for the egress tests: one origin that answers every status and framing an HTTP/1.1 client
meets in practice (so a test can say exactly which bytes must come back through the hook), a PEP 503 simple
index, git's smart HTTP protocol (git-http-backend run as CGI), and the tiny wheel the index serves."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import ssl
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tls_support import start_server

GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


@dataclass(frozen=True)
class Canned:
    """One fixed response: what the origin sends and what every client must get back."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


TEXT = (("Content-Type", "text/plain; charset=utf-8"),)
CANNED = {
    "/ok": Canned(200, b"hello through the hook\n", TEXT),
    "/missing": Canned(404, b"no such page on this origin\n", TEXT),
    "/moved": Canned(301, b"moved to /ok\n", (*TEXT, ("Location", "/ok"))),
    "/boom": Canned(500, b"the origin broke\n", TEXT),
    "/empty": Canned(204),
    "/json": Canned(200, b'{"answer": 42}', (("Content-Type", "application/json"),)),
    "/early": Canned(200, b"after the early hints\n", TEXT),  # preceded by EARLY_HINTS
    "/cookies": Canned(200, b"two cookies\n", (*TEXT, ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"))),
}
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
ETAG = '"v1"'
CHUNKS = (b"hello ", b"chunked ", b"world\n")
LEGACY_BODY = b"an HTTP/1.0 answer, delimited by the close\n"


def make_wheel(where: Path, name: str = "tinypkg", version: str = "0.1") -> Path:
    """A pure-Python wheel written by hand: building one with pip would need setuptools from an index."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
                     f"{len(d)}\n" for p, d in files.items()) + f"{dist}/RECORD,,\n"
    path = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{dist}/RECORD", record)
    return path


class Origin(http.server.BaseHTTPRequestHandler):
    """Routes: CANNED paths (/early after a 103 interim response); /etag (304 on a matching If-None-Match);
    /chunked; /legacy (HTTP/1.0, no length, ends with the close); /upload (POST: the body's length and sha256);
    /simple/<project>/ and the wheel files of a simple index rooted at `files`, with /old-simple/<project>/
    answering 301 to /simple/<project>/; /git/<repo>/... through git-http-backend over the bare repositories
    under `files`/git."""

    protocol_version = "HTTP/1.1"
    files: Path
    seen: list[tuple[str, str]]

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self) -> None:
        type(self).seen.append((self.command, self.path))
        path = self.path.split("?", 1)[0]
        if path.startswith("/git/"):
            return self._git()
        if path == "/early":
            self.wfile.write(EARLY_HINTS)
        if path in CANNED:
            c = CANNED[path]
            return self._send(c.status, c.body, c.headers)
        if path == "/etag":
            if self.headers.get("If-None-Match") == ETAG:
                return self._send(304, headers=(("ETag", ETAG),))
            return self._send(200, b"version one\n", (*TEXT, ("ETag", ETAG)))
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in CHUNKS:
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return None
        if path == "/legacy":
            self.close_connection = True
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + LEGACY_BODY)
            return None
        if path == "/upload" and self.command == "POST":
            data = self._body()
            return self._send(200, f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode(), TEXT)
        if path.startswith("/old-simple/"):
            return self._send(301, b"", (("Location", "/simple/" + path.removeprefix("/old-simple/")),))
        return self._index(path)

    def _index(self, path: str) -> None:
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "simple" and path.endswith("/"):
            wheels = sorted(self.files.glob(f"{parts[1]}-*.whl"))
            if wheels:
                links = "".join(f'<a href="/{w.name}">{w.name}</a>\n' for w in wheels)
                return self._send(200, f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode(),
                                  (("Content-Type", "text/html"),))
        elif len(parts) == 1 and parts[0].endswith(".whl") and (self.files / parts[0]).is_file():
            return self._send(200, (self.files / parts[0]).read_bytes(), (("Content-Type", "application/zip"),))
        return self._send(404, b"not found\n", TEXT)

    def _git(self) -> None:
        """Run git-http-backend as a CGI script: its `Status:` and headers become the response's."""
        body = self._body() if self.command == "POST" else b""
        path, _, query = self.path.partition("?")
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.files / "git"), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": self.command, "PATH_INFO": path.removeprefix("/git"), "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_ADDR": self.client_address[0], "REMOTE_USER": "tester", "SERVER_PROTOCOL": "HTTP/1.1",
               "GATEWAY_INTERFACE": "CGI/1.1"}
        for name, value in self.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                env["HTTP_" + name.upper().replace("-", "_")] = value
        out = subprocess.run([GIT_HTTP_BACKEND], input=body, capture_output=True, env=env, timeout=30).stdout
        head, _, payload = out.partition(b"\r\n\r\n") if b"\r\n\r\n" in out else out.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((name.strip(), value.strip()))
        self._send(status, payload, tuple(headers))

    do_GET = do_HEAD = do_POST = _route


def serve_origin(files: Path, tls: ssl.SSLContext | None = None) -> http.server.ThreadingHTTPServer:
    """Start an Origin over `files` on 127.0.0.1 (TLS when `tls` is given); the caller shuts it down."""
    return start_server(type("Served", (Origin,), {"files": files, "seen": []}), tls)
