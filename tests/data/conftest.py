"""Fixtures for the data tests: a stub OpenAI-compatible endpoint (no endpoint can be reached from CI)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentflan.config import ResponderConfig


class Endpoint:
    """A stub OpenAI-compatible server on a thread per request. ``script(query, attempt)`` says what the
    attempt-th request (from 1) for a query gets: ``(status, headers)``; a 200 answers "Plain answer to: ..."."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.attempts: Counter[str] = Counter()
        self.script: Callable[[str, int], tuple[int, dict[str, str]]] = lambda q, n: (200, {})
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                query = body["messages"][-1]["content"]
                with endpoint.lock:
                    endpoint.seen.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                    )
                    endpoint.attempts[query] += 1
                    attempt = endpoint.attempts[query]
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                time.sleep(endpoint.delay_s)
                with endpoint.lock:
                    endpoint.in_flight -= 1
                status, headers = endpoint.script(query, attempt)
                reply = {
                    "choices": [{"message": {"role": "assistant", "content": f"Plain answer to: {query}"}}]
                }
                data = json.dumps(reply if status == 200 else {"error": {"message": "stub says no"}}).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def config(self, **kw) -> ResponderConfig:
        return ResponderConfig(kind="openai", model="m", base_url=self.base_url, **kw)


@pytest.fixture
def endpoint():
    e = Endpoint()
    threading.Thread(target=e.server.serve_forever, args=(0.01,), daemon=True).start()
    yield e
    e.server.shutdown()
    e.server.server_close()
