"""A scripted model server speaking the Anthropic Messages API the way Claude Code uses it: `POST /v1/messages`
(`?beta=true`) with `stream: true`, answered as server-sent events (`message_start`, `content_block_start`,
`content_block_delta` with `text_delta` or `input_json_delta`, `content_block_stop`, `message_delta` with the
stop reason, `message_stop`), tool calls as `tool_use` blocks, results coming back as `tool_result` blocks.

The script is a list of turns; the turn answered is the number of assistant messages already in the request's
conversation, so a retried request gets the same answer and the agent's own bookkeeping requests (titles,
summaries: no `tools`) get a short text. Every request is recorded (its headers and body) for the test to
assert on: which key arrived, what the agent's tools returned."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from dataclasses import dataclass, field

from tls_support import start_server


@dataclass(frozen=True)
class ToolCall:
    """One turn: the model calls `name` with `input` (Claude Code's tools: Bash, Read, Edit, Write, ...)."""

    name: str
    input: dict


@dataclass(frozen=True)
class Say:
    """One turn: the model answers with text and ends its turn."""

    text: str


@dataclass
class Seen:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict
    at: float = 0.0  # time.monotonic() when it arrived (bench/bench_agents.py: start to first request)

    def tool_results(self) -> list[str]:
        """The text of every `tool_result` block in the conversation, in order."""
        out = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") == "tool_result":
                    inner = block.get("content")
                    if isinstance(inner, list):
                        inner = "".join(part.get("text", "") for part in inner if isinstance(part, dict))
                    out.append(str(inner))
        return out


@dataclass
class ModelScript:
    turns: list[ToolCall | Say]
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def turn_for(self, body: dict) -> ToolCall | Say:
        if not body.get("tools"):  # the agent's own small requests (a title, a summary)
            return Say("ok")
        done = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        return self.turns[done] if done < len(self.turns) else Say("done")

    def main_requests(self) -> list[Seen]:
        """The requests of the agent's main loop (those offering tools)."""
        with self.lock:
            return [s for s in self.seen if s.body.get("tools")]


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """What every scripted provider does alike: record each request in the script, answer JSON, stream server-sent
    events in chunked encoding. A provider sets `NOT_FOUND` (its error body) and writes `do_POST`."""

    protocol_version = "HTTP/1.1"
    script: ModelScript
    NOT_FOUND: dict = {}

    def log_message(self, *args):
        pass

    def _json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._json(404, self.NOT_FOUND)

    def _record(self) -> tuple[dict, int]:
        """The request's JSON body (`{}` if it is none), after recording it; and how many requests came so far."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        with self.script.lock:
            self.script.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                         time.monotonic()))
            return body, len(self.script.seen)

    def _stream(self, events: list[bytes], *headers: tuple[str, str]) -> None:
        """A 200 `text/event-stream` of `events` (each a whole event, blank line included), one chunk each."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def serve_handler(handler: type[ScriptedHandler], script: ModelScript, tls: ssl.SSLContext | None,
                  address: tuple[str, int]) -> http.server.ThreadingHTTPServer:
    """`handler` answering from `script` on `address` (TLS with `tls`); the caller shuts it down."""
    return start_server(type("Scripted", (handler,), {"script": script}), tls, address)


def _events(turn: ToolCall | Say, model: str, n: int) -> list[tuple[str, dict]]:
    """The server-sent events of one streamed answer."""
    message = {"id": f"msg_scripted_{n}", "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": message}),
                                      ("ping", {"type": "ping"})]
    if isinstance(turn, ToolCall):
        block = {"type": "tool_use", "id": f"toolu_scripted_{n}", "name": turn.name, "input": {}}
        text = json.dumps(turn.input)
        deltas = [{"type": "input_json_delta", "partial_json": text[i:i + 40]} for i in range(0, len(text), 40)]
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": turn.text}]
        stop = "end_turn"
    events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": 20}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _message(turn: ToolCall | Say, model: str, n: int) -> dict:
    """The same answer, not streamed."""
    if isinstance(turn, ToolCall):
        content = [{"type": "tool_use", "id": f"toolu_scripted_{n}", "name": turn.name, "input": turn.input}]
        stop = "tool_use"
    else:
        content, stop = [{"type": "text", "text": turn.text}], "end_turn"
    return {"id": f"msg_scripted_{n}", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 20}}


class Messages(ScriptedHandler):
    NOT_FOUND = {"type": "error", "error": {"type": "not_found_error", "message": "not scripted"}}

    def do_POST(self):
        body, n = self._record()
        if self.path.split("?", 1)[0] != "/v1/messages":
            return self._json(404, self.NOT_FOUND)
        turn = self.script.turn_for(body)
        model = body.get("model", "claude-scripted")
        if not body.get("stream"):
            return self._json(200, _message(turn, model, n))
        self._stream([f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                      for name, data in _events(turn, model, n)], ("Cache-Control", "no-cache"))
        return None


def serve_model(script: ModelScript, tls: ssl.SSLContext | None = None,
                address: tuple[str, int] = ("127.0.0.1", 0)) -> http.server.ThreadingHTTPServer:
    """The scripted model on `address` (TLS with `tls`); the caller shuts it down."""
    return serve_handler(Messages, script, tls, address)
