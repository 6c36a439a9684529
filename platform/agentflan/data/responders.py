"""Who writes the plain replies of negative samples.

The paper had GPT-4 answer its negative queries. Here the default works offline and reproducibly
(:class:`TemplateResponder`: replies drawn from the corpus where it has one, templates where it does not);
users with a model plug in :class:`HFResponder` (a local transformers model) or :class:`OpenAIResponder`
(any OpenAI-compatible chat endpoint, e.g. vLLM). All take a batch, so a model is called once per batch.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Literal, Protocol

from agentflan.config import ResponderConfig
from agentflan.data.record import Message
from agentflan.data.stage import rng


@dataclass(frozen=True)
class NegativeRequest:
    id: str
    case: Literal["b", "c"]
    messages: list[Message]  # the prompt: optional system message with tools, then the user query
    reference: str | None = None  # a reply the corpus already holds for this query, if any


class Responder(Protocol):
    def respond(self, requests: list[NegativeRequest]) -> list[str]: ...


# Plain replies for a query that looks like it needs a tool when none is offered (case c). They say
# what the assistant can do without announcing a tool call.
_NO_TOOL_REPLIES = (
    "I don't have access to live data or external services in this conversation, so I can't look that up "
    "directly. If you share the details you have, I'm happy to help you work through it.",
    "That needs information I can't fetch from here. If you paste the relevant data, I can help analyse it "
    "or explain how to get the answer yourself.",
    "I can't check that for you right now because no external services are available in this chat. I can "
    "still explain the steps to find it, or help with any information you already have.",
    "I'm not able to retrieve that from here. Could you share more context? With it I can give you a useful "
    "answer or point you to where to find it.",
)
_ANSWER_REPLIES = ("The answer is {a}.", "{a}.", "It is {a}.", "Based on what I know, the answer is {a}.")


class TemplateResponder:
    """Offline and deterministic: corpus replies for case (b), answers or templates for case (c)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def respond(self, requests: list[NegativeRequest]) -> list[str]:
        replies = []
        for req in requests:
            r = rng(self.seed, "responder", req.id)
            if req.case == "b" and req.reference:
                replies.append(req.reference)
            elif req.reference:
                replies.append(r.choice(_ANSWER_REPLIES).format(a=req.reference.strip().rstrip(".")))
            else:
                replies.append(r.choice(_NO_TOOL_REPLIES))
        return replies


class HFResponder:
    """A local transformers causal LM, greedy, batched (see :class:`agentflan.generation.ChatGenerator`)."""

    def __init__(self, cfg: ResponderConfig) -> None:
        from agentflan.generation import ChatGenerator

        self.generator = ChatGenerator(cfg.model, cfg.max_new_tokens, cfg.batch_size)  # type: ignore[arg-type]

    def respond(self, requests: list[NegativeRequest]) -> list[str]:
        return self.generator.generate(
            [[{"role": m.role, "content": m.content} for m in r.messages] for r in requests]
        )


class OpenAIResponder:
    """Any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, TGI, llama.cpp server)."""

    def __init__(self, cfg: ResponderConfig) -> None:
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"  # type: ignore[union-attr]
        self.key = os.environ.get(cfg.api_key_env, "")

    def _one(self, req: NegativeRequest) -> str:
        body = {
            "model": self.cfg.model,
            "messages": [{"role": m.role, "content": m.content} for m in req.messages],
            "max_tokens": self.cfg.max_new_tokens,
            "temperature": 0,
        }
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        http = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(http, timeout=self.cfg.timeout_s) as resp:
            payload = json.loads(resp.read())
        return str(payload["choices"][0]["message"]["content"] or "").strip()

    def respond(self, requests: list[NegativeRequest]) -> list[str]:
        return [self._one(r) for r in requests]


def make_responder(cfg: ResponderConfig, seed: int) -> Responder:
    if cfg.kind == "hf":
        return HFResponder(cfg)
    if cfg.kind == "openai":
        return OpenAIResponder(cfg)
    return TemplateResponder(seed)
