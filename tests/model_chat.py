"""A scripted model server speaking OpenAI Chat Completions the way aider (through litellm and the openai SDK)
uses it: `POST /v1/chat/completions` with `stream: true`, answered as `chat.completion.chunk` server-sent events
ending in `data: [DONE]`. aider offers no tools: the model's text carries the edits (SEARCH/REPLACE blocks) and
the shell commands it suggests, so every turn is a `Say`. The turn answered is the number of assistant messages
already in the conversation (of those the script said: aider's prompt holds example replies); a
request whose system prompt asks for a commit message gets `COMMIT`."""

from __future__ import annotations

import http.server
import json
import ssl
import time

from model_anthropic import ModelScript, Say, ScriptedHandler, serve_handler

COMMIT = "calc: add adds"


def _text(body: dict) -> str:
    messages = body.get("messages", [])
    system = " ".join(str(m.get("content")) for m in messages if m.get("role") == "system")
    if "commit message" in system.lower():
        return COMMIT
    return ""


class Chat(ScriptedHandler):
    NOT_FOUND = {"error": {"message": "not scripted", "type": "invalid_request_error"}}

    def do_POST(self):
        body, n = self._record()
        script = self.script
        if self.path.split("?", 1)[0] != "/v1/chat/completions":
            return self._json(404, self.NOT_FOUND)
        text = _text(body)
        if not text:
            said = {t.text for t in script.turns if isinstance(t, Say)}  # aider's prompt has example replies too
            done = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant" and m.get("content") in said)
            turn = script.turns[done] if done < len(script.turns) else Say("done")
            text = turn.text if isinstance(turn, Say) else "done"
        base = {"id": f"chatcmpl-scripted-{n}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", "scripted")}
        if not body.get("stream"):
            return self._json(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                        "finish_reason": None}]},
                  {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        self._stream([f"data: {data}\n\n".encode() for data in [*(json.dumps(c) for c in chunks), "[DONE]"]])
        return None


def serve_chat(script: ModelScript, tls: ssl.SSLContext | None = None,
               address: tuple[str, int] = ("127.0.0.1", 0)) -> http.server.ThreadingHTTPServer:
    """The scripted Chat Completions API on `address` (TLS with `tls`); the caller shuts it down."""
    return serve_handler(Chat, script, tls, address)
