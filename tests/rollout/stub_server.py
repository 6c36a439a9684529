"""An OpenAI-compatible chat-completions server that answers with scripted policies, for rollout tests.

A policy is ``(messages, tools) -> Reply`` (the environments' ``gold_policy(task)`` / ``never_call_policy``
have this shape). The request's ``model`` picks the policy: ``policies[model]``, or ``policy_for(model,
messages, tools)`` where one policy per task is needed. Requests are served on a thread each, so concurrent
requests really are concurrent (``max_in_flight`` records the most seen at once). A policy that raises
:class:`ContextOverflow` gets the 400 a vLLM server sends for a prompt longer than its context.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentflan.rollout.types import Reply

Policy = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Reply]


class ContextOverflow(Exception):
    pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 resets connections when many requests arrive at once


class StubServer:
    def __init__(self, policies: dict[str, Policy] | None = None, delay_s: float = 0.0) -> None:
        self.policies = dict(policies or {})
        self.policy_for: Callable[[str, list, list], Reply] | None = None
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    time.sleep(stub.delay_s)
                    status, answer = stub.answer(body)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        messages, tools = body["messages"], body.get("tools") or []
        try:
            if self.policy_for is not None:
                reply = self.policy_for(body["model"], messages, tools)
            else:
                reply = self.policies[body["model"]](messages, tools)
        except ContextOverflow:
            msg = "This model's maximum context length is 64 tokens. However, you requested 90 tokens."
            return 400, {"object": "error", "message": msg, "code": 400}
        message = reply.message()
        return 200, {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason or "stop"}],
            "usage": {"prompt_tokens": len(json.dumps(messages)) // 4, "completion_tokens": len(reply.content) // 4},
        }

    def __enter__(self) -> StubServer:
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
