"""Trained spans under a Jinja chat template: the model's own, or a named tool-calling one.

A Jinja template is a black box, so the spans are found by rendering prefixes of the conversation as text
(``apply_chat_template(..., tools=tools, tokenize=False)``, exactly as inference renders a prompt):

* a trained reply starts where ``messages[:i]`` rendered with the generation prompt ends (so the header is
  not trained) and lies within ``messages[:i + 1]``;
* within that, training stops after the first special token (``<|im_end|>``, ``</s>``, ``<|eot_id|>``) that
  follows the reply's text, i.e. the end-of-turn marker; a separator after it (a newline) is not trained. A
  template with no such marker trains to the end of the message.

A native call message (``tool_calls``, with ``part_weights`` from capability decomposition) is weighed part by
part inside its span: its thought (the ``reasoning`` text and the content) at the ``reasoning`` weight, each
function name at the ``names`` weight, each call's arguments (rendered as the template's ``tojson`` writes them)
at the ``arguments`` weight. The call's structure (tags, braces, keys) and the end-of-turn marker keep the
message's ``weight``. A part at weight 0 is not trained at all (label -100), so a masked-off part costs nothing
and does not dilute the loss. The parts are looked up in the order templates write them (reasoning, content,
then each call's name and arguments), each after the previous one; a part the template does not render
raises, except a ``reasoning`` text (Llama-3.1's template drops it; there is then no thought to train).

A template that does not render prefix-consistently (one that rewrites earlier turns, such as Qwen3's dropping
past reasoning) cannot be handled this way and raises; use a named template for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Span:
    """Characters ``[start, stop)`` of the text are trained with ``weight`` (None: not trained, overriding an
    earlier span). With ``content_end``, training stops after the first special token at or after it (the
    end-of-turn marker). Later spans override earlier ones where they overlap."""

    start: int
    stop: int
    weight: float | None
    content_end: int | None = None


def template_spans(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[str, list[Span]]:
    """The text and trained spans of a conversation under the tokenizer's ``chat_template``."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat_template; pass a named template (chatml, llama2, agentflan)"
        )
    chat = [chat_message(m) for m in messages]
    tool_list = [dict(t) for t in tools] if tools else None

    def render(n: int, generation_prompt: bool = False) -> str:
        if n == 0:
            return ""
        return tokenizer.apply_chat_template(
            chat[:n], tools=tool_list, tokenize=False, add_generation_prompt=generation_prompt
        )

    full = render(len(chat))
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not message.get("loss", False):
            continue
        if i == 0:
            raise ValueError(
                "message 0 is a trained assistant message: its header cannot be told from its reply"
            )
        head, through = render(i, generation_prompt=True), render(i + 1)
        if not (full.startswith(head) and full.startswith(through)):
            raise ValueError(
                f"message {i}: the tokenizer's chat template does not render this conversation "
                f"prefix-consistently; pass a named template"
            )
        weight = float(message.get("weight", 1.0))
        if message.get("part_weights"):
            parts = _part_spans(full, len(head), len(through), message, i)
            content_end = max((s.stop for s in parts), default=len(head))
            spans.append(Span(len(head), len(through), weight, content_end))
            spans += parts
            continue
        content = message["content"].strip()
        found = full.find(content, len(head), len(through)) if content else -1
        content_end = found + len(content) if found >= 0 else len(head)
        spans.append(Span(len(head), len(through), weight, content_end))
    return full, spans


def _part_spans(text: str, start: int, stop: int, message: Mapping[str, Any], index: int) -> list[Span]:
    """The spans of a call message's parts within ``text[start:stop]``, each found after the previous one."""
    weights = message["part_weights"]
    cursor, spans = start, []

    def weight_of(part: str) -> float | None:
        w = float(weights.get(part, 0.0) or 0.0)
        return w if w > 0 else None

    def place(candidates: Sequence[str], part: str, what: str, required: bool = True) -> None:
        nonlocal cursor
        for candidate in candidates:
            k = text.find(candidate, cursor, stop) if candidate else -1
            if k >= 0:
                spans.append(Span(k, k + len(candidate), weight_of(part)))
                cursor = k + len(candidate)
                return
        if required:
            raise ValueError(
                f"message {index}: the chat template does not render {what} as the corpus has it; "
                "its tokens cannot be weighed"
            )

    if message.get("reasoning"):
        place([message["reasoning"].strip()], "reasoning", "the reasoning text", required=False)
    if message.get("content", "").strip():
        place([message["content"].strip()], "reasoning", "the content")
    for k, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        place([fn["name"]], "names", f"call {k}'s name")
        place(_argument_renderings(fn.get("arguments")), "arguments", f"call {k}'s arguments")
    return spans


def _argument_renderings(arguments: Any) -> list[str]:
    """How a template may write a call's arguments: Hugging Face's ``tojson`` of the object (what every
    template we know uses), ASCII-escaped or compact JSON, or the JSON text itself."""
    value = json.loads(arguments) if isinstance(arguments, str) else (arguments or {})
    out = [
        json.dumps(value, ensure_ascii=False),
        json.dumps(value),
        json.dumps(value, ensure_ascii=False, separators=(",", ":")),
    ]
    if isinstance(arguments, str):
        out.append(arguments)
    return list(dict.fromkeys(out))


def chat_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """The keys a Hugging Face template reads; our training keys (loss, weight...) stay out of its way.

    Call arguments go in as objects (the convention of Hugging Face templates, which ``tojson`` them); a
    reasoning text as both ``reasoning`` and ``reasoning_content`` (templates read one or the other)."""
    out: dict[str, Any] = {"role": message["role"], "content": message["content"]}
    if message["role"] == "tool":
        for key in ("name", "tool_call_id"):
            if message.get(key):
                out[key] = message[key]
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": c.get("id"),
                "type": c.get("type") or "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _as_object(c["function"].get("arguments")),
                },
            }
            for c in message["tool_calls"]
        ]
    if message.get("reasoning"):
        out["reasoning"] = out["reasoning_content"] = message["reasoning"]
    return out


def _as_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments if arguments is not None else {}
