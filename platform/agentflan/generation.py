"""Batched greedy chat generation with a HF causal LM: one implementation for negative-sample replies and
for evaluation.

Prompts are rendered with the tokenizer's own chat template (a model trained here carries the template
it was trained with), left-padded so a batch generates together, batched by prompt length (longest first) so little of a batch
is padding; greedy decoding makes the output a function of the model and the prompt, so batching never
changes an answer. The exported model's config keeps the KV cache on, so ``generate`` uses it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Generation:
    """One reply with what a rollout needs besides the text: token counts and why generation stopped
    (``stop``: end of turn; ``length``: cut at max_new_tokens; ``context_overflow``: the prompt alone fills
    the model's context, so nothing was generated)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def chat_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as a chat template reads them: every native field kept (``tool_calls``, ``tool_call_id``,
    ``name``, ``reasoning_content``), call arguments as objects (what HF templates iterate over; ours accept
    either), so earlier calls and tool results reach the prompt, not only role and content."""
    out = []
    for m in messages:
        d = {k: v for k, v in m.items() if v is not None}
        d.setdefault("content", "")
        if d.get("tool_calls"):
            calls = []
            for c in d["tool_calls"]:
                fn = dict(c.get("function", c))
                if isinstance(fn.get("arguments"), str):
                    with contextlib.suppress(ValueError):  # else left as text, printed as it is
                        fn["arguments"] = json.loads(fn["arguments"])
                calls.append({**c, "function": fn})
            d["tool_calls"] = calls
        out.append(d)
    return out


class ChatGenerator:
    def __init__(
        self,
        model_path: str,
        max_new_tokens: int,
        batch_size: int = 8,
        device: str | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        context_length: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.temperature, self.top_p = temperature, top_p
        self.context_length = context_length or getattr(self.model.config, "max_position_embeddings", None)

    def prompt(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        """The prompt text; ``tools`` (JSON-schema functions) go to the chat template, as a server offers them."""
        chat = chat_messages(messages)
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                chat, tools=list(tools) if tools else None, add_generation_prompt=True, tokenize=False
            )
        if tools:
            raise ValueError("tools offered natively need a tokenizer with a chat_template")
        return "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:"

    def generate(
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        tools: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    ) -> list[str]:
        """Replies; ``tools[i]``, where given, is offered natively to conversation ``i``.

        Replies are decoded without special tokens; a template's call markers that are plain added tokens
        (Qwen's ``<tool_call>``) stay in the text, where :mod:`agentflan.calls` reads them."""
        return [g.text for g in self.generate_full(conversations, tools)]

    def generate_full(
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        tools: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    ) -> list[Generation]:
        """:meth:`generate` with token counts and finish reasons. A prompt that leaves no room in the model's
        context is not generated (``context_overflow``); the others never run past the context either."""
        import torch

        tool_lists = list(tools) if tools is not None else [None] * len(conversations)
        prompts = [self.prompt(c, t) for c, t in zip(conversations, tool_lists, strict=True)]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        ctx = self.context_length
        out: list[Generation] = [Generation("", n, 0, "context_overflow") for n in lengths]
        fits = [i for i in range(len(prompts)) if ctx is None or lengths[i] < ctx]
        order = sorted(fits, key=lambda i: (-lengths[i], i))  # similar lengths batch together
        sample = self.temperature > 0
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            room = self.max_new_tokens if ctx is None else min(self.max_new_tokens, ctx - lengths[chunk[0]])
            enc = self.tokenizer(
                [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with torch.no_grad():
                generated = self.model.generate(
                    **enc,
                    max_new_tokens=room,
                    do_sample=sample,
                    **({"temperature": self.temperature, "top_p": self.top_p} if sample else {}),
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = generated[:, enc["input_ids"].shape[1] :]
            eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
            for row, i in enumerate(chunk):
                ids = [t for t in new[row].tolist() if t not in eos]
                stopped = any(t in eos for t in new[row].tolist())
                text = self.tokenizer.decode(new[row], skip_special_tokens=True).strip()
                out[i] = Generation(text, lengths[i], len(ids), "stop" if stopped else "length")
        return out
