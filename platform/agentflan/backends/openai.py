"""``kind: openai``: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, ``transformers serve``,
a hosted API). Tools go out as ``tools=``, calls come back from ``tool_calls``; requests run concurrently,
``max_in_flight`` at a time, with the shared client's retries and backoff."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

from agentflan.backends import BackendFailure, Request, Result
from agentflan.backends.openai_client import ClientFailure, Completion, OpenAIClient
from agentflan.backends.replies import reply_from_server
from agentflan.config import BackendConfig
from agentflan.rollout import dialect


class OpenAIBackend:
    max_batches = 1 << 30  # every request goes at once; the client's pool holds max_in_flight of them

    def __init__(self, cfg: BackendConfig, syntax: str | None) -> None:
        self.client = OpenAIClient(cfg)
        self.syntax = syntax
        self.max_new_tokens = cfg.sampling.max_new_tokens
        self.context_length = cfg.context_length

    def _result(self, answer: Completion | ClientFailure, syntax: str | None) -> Result:
        if isinstance(answer, ClientFailure):
            reason = "context_overflow" if answer.context_overflow else "backend_error"
            return BackendFailure(reason, answer.reason)
        return reply_from_server(
            answer.content,
            answer.tool_calls,
            syntax,
            answer.reasoning,
            answer.finish_reason,
            answer.prompt_tokens,
            answer.completion_tokens,
        )

    def submit(self, requests: Sequence[Request]) -> list[Future[Result]]:
        out = []
        for messages, tools in requests:
            done: Future[Result] = Future()
            messages, tools, syntax = dialect.request(self.syntax, messages, tools)  # text-call models: ReAct
            sent = self.client.submit(messages, tools)
            sent.add_done_callback(
                lambda f, done=done, syntax=syntax: _settle(done, f, lambda a: self._result(a, syntax))
            )
            out.append(done)
        return out

    def close(self) -> None:
        self.client.close()


def _settle(target: Future, source: Future, convert) -> None:
    try:
        target.set_result(convert(source.result()))
    except Exception as e:  # a bug in conversion fails this request alone
        target.set_result(BackendFailure("backend_error", f"{type(e).__name__}: {e}"))
