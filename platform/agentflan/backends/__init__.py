"""Model backends behind one interface, shared by the negatives responder, eval and rollouts.

A backend takes requests (a conversation and the tools offered) and returns, per request, a future of a
:class:`~agentflan.rollout.types.Reply` (its calls already parsed) or a :class:`BackendFailure`. Futures, so
that a caller can act on each reply as it comes (a rollout steps that episode's environment while the others
still wait) or simply wait for all (:meth:`Backend.generate`, eval).

- ``hf`` (:mod:`.hf`): a transformers model on long-lived Ray actors; a submitted batch is split over the
  actors and generated in batches on each. One batch in flight at a time (``max_batches`` 1): requests that
  arrive meanwhile wait and go together in the next, which is what makes batched stepping pay.
- ``openai`` (:mod:`.openai`): any OpenAI-compatible server through :class:`.openai_client.OpenAIClient`;
  every request goes as soon as it is submitted, ``max_in_flight`` at a time.
- ``vllm`` (:mod:`.vllm`): an in-process vLLM engine; optional, untested here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from agentflan.config import BackendConfig
from agentflan.rollout.types import Reply

Request = tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]] | None]  # messages, tools


@dataclass(frozen=True)
class BackendFailure:
    """No reply: ``reason`` is the rollout ending it causes (``context_overflow`` or ``backend_error``)."""

    reason: str
    detail: str = ""


Result = Reply | BackendFailure


class Backend(Protocol):
    syntax: str | None
    max_batches: int  # submitted batches worth having in flight at once (hf 1; openai: as many as come)
    context_length: int | None  # prompt + reply tokens the model holds, where known
    max_new_tokens: int | None  # the reply length limit (a reply cut below it was cut by the context)

    def submit(self, requests: Sequence[Request]) -> list[Future[Result]]: ...

    def close(self) -> None: ...


def generate(backend: Backend, requests: Sequence[Request]) -> list[Result]:
    """Every reply, in order (eval, negatives: callers that need them all before going on)."""
    return [f.result() for f in backend.submit(requests)]


def make_backend(cfg: BackendConfig, syntax: str | None, default_model: str | None = None) -> Backend:
    """The backend ``cfg`` names. ``syntax`` is how calls are read from reply text (see
    :func:`agentflan.calls.syntax_for`; None: not read, the reply is the raw text, and a server's
    ``tool_calls`` come back as Hermes tags in it); ``default_model`` stands in for an unset hf ``model``.
    A backend's ``syntax`` attribute may be changed later: eval hands its backend on to its rollouts."""
    if cfg.kind == "openai":
        from agentflan.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg, syntax)
    model = cfg.model or default_model
    if not model:
        raise ValueError(f"backend kind {cfg.kind!r} needs `model`")
    if cfg.kind == "vllm":
        from agentflan.backends.vllm import VLLMBackend

        return VLLMBackend(cfg, model, syntax)
    from agentflan.backends.hf import HFBackend

    return HFBackend(cfg, model, syntax)
