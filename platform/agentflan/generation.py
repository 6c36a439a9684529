"""Batched greedy chat generation with a HF causal LM: one implementation for negative-sample replies and
for evaluation.

Prompts are rendered with the tokenizer's own chat template (a model trained here carries the template
it was trained with), left-padded so a batch generates together, batched by prompt length (longest first) so little of a batch
is padding; greedy decoding makes the output a function of the model and the prompt, so batching never
changes an answer. The exported model's config keeps the KV cache on, so ``generate`` uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ChatGenerator:
    def __init__(
        self, model_path: str, max_new_tokens: int, batch_size: int = 8, device: str | None = None
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

    def prompt(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        """The prompt text; ``tools`` (JSON-schema functions) go to the chat template, as a server offers them."""
        chat = [{"role": m["role"], "content": m["content"]} for m in messages]
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
        """Greedy replies; ``tools[i]``, where given, is offered natively to conversation ``i``.

        Replies are decoded without special tokens; a template's call markers that are plain added tokens
        (Qwen's ``<tool_call>``) stay in the text, where :mod:`agentflan.calls` reads them."""
        import torch

        tool_lists = list(tools) if tools is not None else [None] * len(conversations)
        prompts = [self.prompt(c, t) for c, t in zip(conversations, tool_lists, strict=True)]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))  # similar lengths batch together
        replies: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with torch.no_grad():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, text in zip(
                chunk, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True
            ):
                replies[i] = text.strip()
        return replies
