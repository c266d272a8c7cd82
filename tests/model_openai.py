"""A scripted model server speaking the OpenAI Responses API the way Codex CLI uses it: `POST /v1/responses`
with `stream: true`, answered as server-sent events (`response.created`, `response.output_item.added`,
`response.output_item.done`, `response.completed`). Codex offers one freeform tool, `exec` (JavaScript in which
`tools.exec_command({cmd})` runs a shell command), so a `ToolCall("exec", {"js": ...})` turn becomes a
`custom_tool_call` item; its result comes back as a `custom_tool_call_output` item in the next request's input.

The turn answered is the number of tool outputs already in the request's input; requests and their headers are
recorded in the same `ModelScript` the Anthropic server uses. A websocket upgrade (Codex tries one first) is
not served: the egress hook refuses it where the key is bound, and Codex falls back to this."""

from __future__ import annotations

import http.server
import json
import ssl
import time

from model_anthropic import ModelScript, Say, ScriptedHandler, ToolCall, serve_handler

OUTPUTS = ("custom_tool_call_output", "function_call_output")


def tool_outputs(body: dict) -> list[str]:
    """The text of every tool output in a request's input, in order."""
    out = []
    for item in body.get("input", []) if isinstance(body.get("input"), list) else []:
        if isinstance(item, dict) and item.get("type") in OUTPUTS:
            value = item.get("output")
            if isinstance(value, list):
                value = "".join(part.get("text", "") for part in value if isinstance(part, dict))
            out.append(str(value))
    return out


def codex_exec(cmd: str) -> ToolCall:
    """One Codex turn: its `exec` tool (JavaScript) running a shell command and returning its output."""
    return ToolCall("exec", {"js": f"const r = await tools.exec_command({{cmd: {json.dumps(cmd)}}});\ntext(r.output);"})


def _item(turn: ToolCall | Say, n: int) -> dict:
    if isinstance(turn, ToolCall):
        return {"type": "custom_tool_call", "id": f"ctc_scripted_{n}", "call_id": f"call_scripted_{n}",
                "name": turn.name, "input": turn.input["js"], "status": "completed"}
    return {"type": "message", "id": f"msg_scripted_{n}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": turn.text, "annotations": []}]}


class Responses(ScriptedHandler):
    NOT_FOUND = {"error": {"message": "not scripted", "type": "invalid_request_error"}}

    def do_POST(self):
        body, n = self._record()
        script = self.script
        if self.path.split("?", 1)[0] != "/v1/responses":
            return self._json(404, self.NOT_FOUND)
        done = len(tool_outputs(body))
        turn = script.turns[done] if done < len(script.turns) else Say("done")
        item = _item(turn, n)
        response = {"id": f"resp_scripted_{n}", "object": "response", "created_at": int(time.time()),
                    "status": "in_progress", "model": body.get("model", "scripted"), "output": []}
        events = [("response.created", {"type": "response.created", "response": response}),
                  ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                  "item": {**item, "status": "in_progress"}}),
                  ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                                 "item": item}),
                  ("response.completed", {"type": "response.completed", "response": {
                      **response, "status": "completed", "output": [item],
                      "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30,
                                "input_tokens_details": {"cached_tokens": 0},
                                "output_tokens_details": {"reasoning_tokens": 0}}}})]
        self._stream([f"event: {name}\ndata: {json.dumps({**data, 'sequence_number': seq})}\n\n".encode()
                      for seq, (name, data) in enumerate(events)])
        return None


def serve_responses(script: ModelScript, tls: ssl.SSLContext | None = None,
                    address: tuple[str, int] = ("127.0.0.1", 0)) -> http.server.ThreadingHTTPServer:
    """The scripted Responses API on `address` (TLS with `tls`); the caller shuts it down."""
    return serve_handler(Responses, script, tls, address)
