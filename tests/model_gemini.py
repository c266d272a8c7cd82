"""A scripted model server speaking the Gemini API the way Gemini CLI uses it: `POST /v1beta/models/M:
streamGenerateContent?alt=sse` for its turns (server-sent events, each `data:` a `GenerateContentResponse`
whose candidate's parts are text or a `functionCall`), and `:generateContent` for its own small requests (the
model router, the next-speaker check: no tools offered; they get a JSON answer that satisfies either). A
`ToolCall(name, args)` turn becomes a `functionCall` (Gemini CLI's tools: `run_shell_command`, `read_file`,
`replace`, ...); its result comes back as a `functionResponse` part in the next request's contents.

The turn answered is the number of `functionResponse` parts already in the conversation; requests are recorded in
the same `ModelScript` the Anthropic server uses."""

from __future__ import annotations

import http.server
import json
import ssl

from model_anthropic import ModelScript, Say, ScriptedHandler, ToolCall, serve_handler

CHATTER = json.dumps({"next_speaker": "user", "reasoning": "scripted", "model_choice": "flash"})
USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 20, "totalTokenCount": 30}


def function_responses(body: dict) -> list[str]:
    """Every `functionResponse` part's response, as JSON text, in order."""
    out = []
    for content in body.get("contents", []):
        for part in content.get("parts", []) if isinstance(content, dict) else []:
            if isinstance(part, dict) and "functionResponse" in part:
                out.append(json.dumps(part["functionResponse"].get("response")))
    return out


def _answer(turn: ToolCall | Say) -> dict:
    part = {"functionCall": {"name": turn.name, "args": turn.input}} if isinstance(turn, ToolCall) else \
        {"text": turn.text}
    return {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": USAGE, "modelVersion": "scripted"}


class Gemini(ScriptedHandler):
    NOT_FOUND = {"error": {"code": 404, "message": "not scripted", "status": "NOT_FOUND"}}

    def do_POST(self):
        body, _ = self._record()
        script = self.script
        path = self.path.split("?", 1)[0]
        if path.endswith(":countTokens"):
            return self._json(200, {"totalTokens": 10})
        if not body.get("tools"):  # the CLI's own small requests
            answer: ToolCall | Say = Say(CHATTER)
        else:
            done = len(function_responses(body))
            answer = script.turns[done] if done < len(script.turns) else Say("done")
        if path.endswith(":generateContent"):
            return self._json(200, _answer(answer))
        if not path.endswith(":streamGenerateContent"):
            return self._json(404, self.NOT_FOUND)
        self._stream([f"data: {json.dumps(_answer(answer))}\r\n\r\n".encode()])
        return None


def serve_gemini(script: ModelScript, tls: ssl.SSLContext | None = None,
                 address: tuple[str, int] = ("127.0.0.1", 0)) -> http.server.ThreadingHTTPServer:
    """The scripted Gemini API on `address` (TLS with `tls`); the caller shuts it down."""
    return serve_handler(Gemini, script, tls, address)
