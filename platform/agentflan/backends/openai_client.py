"""The one OpenAI-compatible chat-completions client: negatives, eval and rollouts all send through it.

Its transport came from the negatives responder, where it had proved sound: requests run ``max_in_flight``
at a time (a server batches concurrent requests itself); a connection error, timeout, 408, 429 or 5xx is
retried up to ``max_retries`` times, waiting what the server's ``Retry-After`` asks, else ``retry_backoff_s``
doubled per attempt with jitter (so that clients hit by the same outage do not all come back at once). What
it adds: ``tools=`` and the sampling settings go out, and the server's ``tool_calls``, reasoning, usage and
finish reason come back. A request that still fails, or gets any other 4xx, or an unreadable answer, comes
back as a :class:`ClientFailure` (a value, not an exception): one bad request never costs the others.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from agentflan.config import BackendConfig

# Worth another try: the server is busy or down for a moment. Any other 4xx is our request's fault, and
# sending it again would fail again.
_RETRY_STATUS = frozenset({408, 429})
_MAX_WAIT_S = 300.0  # a Retry-After longer than this is cut short (the retry may then fail)
# How servers word "the prompt does not fit" in a 400 (vLLM, OpenAI, SGLang, TGI, llama.cpp, and
# `transformers serve`: "The prompt has N tokens, but the model takes at most L ... (`--max-model-len`)").
_OVERFLOW_WORDS = (
    "context length",
    "context_length",
    "maximum context",
    "too long",
    "exceeds",
    "max_model_len",
    "max-model-len",
)


@dataclass(frozen=True)
class Completion:
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # as the server sent them
    reasoning: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ClientFailure:
    """A request left unanswered after the retries; ``reason`` says why, ``context_overflow`` whether the server
    refused the prompt as longer than the model's context."""

    reason: str
    context_overflow: bool = False


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Transient(Exception):
    """A failed attempt that may succeed later; ``wait`` is the server's Retry-After, if it sent one."""

    def __init__(self, detail: str, wait: float | None = None) -> None:
        super().__init__(detail)
        self.wait = wait


class OpenAIClient:
    """``POST {base_url}/chat/completions`` with the backend config's model, key, sampling and retries."""

    def __init__(self, cfg: BackendConfig) -> None:
        if not cfg.base_url:
            raise ValueError("an OpenAI-compatible backend needs `base_url`")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.key = os.environ.get(cfg.api_key_env, "")
        self._jitter = random.Random()  # timing only: replies do not depend on it
        self._pool: ThreadPoolExecutor | None = None

    def body(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
    ) -> dict[str, Any]:
        s = self.cfg.sampling
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": list(messages),
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
        }
        if s.top_p < 1:
            body["top_p"] = s.top_p
        if s.seed is not None:
            body["seed"] = s.seed
        if tools:
            body["tools"] = list(tools)
        return body

    def _attempt(self, body: dict[str, Any]) -> Completion:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        post = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(post, timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            with e:
                detail = f"HTTP {e.code}: {e.read()[:300].decode(errors='replace').strip()}"
            if e.code in _RETRY_STATUS or e.code >= 500:
                raise _Transient(
                    detail, _retry_after(e.headers.get("Retry-After") if e.headers else None)
                ) from None
            raise ValueError(detail) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None
        try:
            choice = json.loads(raw)["choices"][0]
            msg = choice["message"]
            usage = json.loads(raw).get("usage") or {}
            return Completion(
                content=str(msg.get("content") or "").strip(),
                tool_calls=list(msg.get("tool_calls") or []),
                reasoning=msg.get("reasoning_content") or msg.get("reasoning") or None,
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ValueError(f"unreadable reply ({type(e).__name__}: {e}): {raw[:200]!r}") from None

    def complete(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> Completion | ClientFailure:
        """One reply, retried as the module says; never raises for a server's or the network's failure."""
        body = self.body(messages, tools)
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return self._attempt(body)
            except ValueError as e:
                text = str(e)
                overflow = text.startswith("HTTP 400") and any(w in text.lower() for w in _OVERFLOW_WORDS)
                return ClientFailure(text, context_overflow=overflow)
            except _Transient as e:
                if attempt == self.cfg.max_retries:
                    return ClientFailure(f"{e} (after {attempt + 1} attempts)")
                backoff = self.cfg.retry_backoff_s * 2**attempt * self._jitter.uniform(0.5, 1.5)
                time.sleep(min(_MAX_WAIT_S, e.wait if e.wait is not None else backoff))
        raise AssertionError("unreachable")

    def submit(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> Future[Completion | ClientFailure]:
        """:meth:`complete` on the client's pool: at most ``max_in_flight`` requests at once, the rest queue."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.cfg.max_in_flight, thread_name_prefix="openai")
        return self._pool.submit(self.complete, messages, tools)

    def complete_many(
        self, requests: Sequence[tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]] | None]]
    ) -> list[Completion | ClientFailure]:
        """Replies to every request, in order, sent concurrently."""
        if len(requests) <= 1:
            return [self.complete(m, t) for m, t in requests]
        return [f.result() for f in [self.submit(m, t) for m, t in requests]]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
