"""Tool calls read from model output: the one parser every caller uses (data, eval, BFCL, rollouts).

``parse_calls(text, syntax)`` returns EVERY call of a reply, in order, each with an id (``call_<i>``, or the
id the call carries), the text it was read from and an error; it never raises on model output and never
evaluates it. ``from_openai(tool_calls)`` reads a server's native calls the same way. Each caller applies its
own rule on top (docs/evaluation.md, "Reading tool calls"):

* data readers (:mod:`agentflan.data.function_calling`, :mod:`agentflan.data.readers`): strict, a call with
  an error sends the record to quarantine with the error's code;
* tool-use eval (:func:`agentflan.eval.tool_calls.parse_call`): the first call, scored leniently;
* BFCL (:mod:`agentflan.eval.bfcl_decode`): BFCL's ``[{name: {param: value}}]``;
* rollouts: every call; an error goes back to the model as the tool's observation.

=========  =================================================================================================
syntax     what it reads
=========  =================================================================================================
hermes     ``<tool_call>{"name", "arguments"}</tool_call>`` blocks (Hermes / Qwen; our ``hermes`` template)
llama31    ``{"name", "parameters"}`` objects after any text (our ``llama31`` template), ``<|python_tag|>``
json       a JSON call object or list, bare or fenced, or call objects inside text
python     ``[f(a=1), g.h(b="x")]`` via :mod:`ast` (BFCL's prompting format, ToolACE)
react      ``Thought / Action / Action Input`` steps, one pair per call (``call_format: react``)
glaive     ``<functioncall> {"name": ..., "arguments": '{...}'}``
chat       Agent-FLAN's chat-aligned turns ``[thought, tool name, arguments, ...]`` (``call_format: chat``)
=========  =================================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agentflan.calls.json_calls import (
    call_from_json,
    decode_arguments,
    from_openai,
    json_objects,
    parse_glaive,
    parse_hermes,
    parse_json,
    parse_llama31,
    unfence,
    whole_json,
)
from agentflan.calls.python_calls import parse_python
from agentflan.calls.text_calls import parse_chat, parse_react
from agentflan.calls.types import SYNTAXES, CallSyntax, ToolCall

__all__ = [
    "SYNTAXES", "CallSyntax", "ToolCall", "call_from_json", "decode_arguments", "from_openai", "json_objects",
    "parse_calls", "syntax_for", "unfence", "whole_json",
]  # fmt: skip

_READERS: dict[str, Callable[..., list[ToolCall]]] = {
    "hermes": parse_hermes, "llama31": parse_llama31, "json": parse_json, "python": parse_python,
    "react": parse_react, "glaive": parse_glaive, "chat": parse_chat,
}  # fmt: skip


def parse_calls(text: str | Sequence[str], syntax: CallSyntax, id_prefix: str = "call_") -> list[ToolCall]:
    """Every call in a reply written in ``syntax`` (``chat``: the list of its assistant turns), in order.

    A reply with no call gives ``[]``; a call that cannot be used is returned with ``error`` set. Ids are
    ``<id_prefix><i>`` unless the call carries its own (a JSON call with an ``id``)."""
    reader = _READERS.get(syntax)
    if reader is None:
        raise ValueError(f"unknown call syntax {syntax!r} (one of {', '.join(SYNTAXES)})")
    if syntax != "chat" and not isinstance(text, str):
        raise TypeError(f"a {syntax} reply is a text, not {type(text).__name__}")
    return reader(text, id_prefix)


# What each named template (train.model.template) writes a native call as.
_TEMPLATE_SYNTAX = {"hermes": "hermes", "llama31": "llama31"}


def syntax_for(call_format: str, template: str, chat_template: str | None = None) -> CallSyntax:
    """The syntax a model writes its calls in: from what it was trained on (``data.call_format``, or an
    ``eval.output_format``) and the chat template it is served with (``train.model.template``).

    ``native`` calls are written the way the template renders ``tool_calls``: ``hermes`` or ``llama31``; for
    ``template: model`` the model's own template text (``chat_template``) is looked at (Llama-3.1 templates
    write ``"parameters"`` after ``<|python_tag|>``), Hermes/Qwen tags when it is not given."""
    if call_format in ("chat", "react", "json", "python"):
        return call_format  # type: ignore[return-value]
    if call_format != "native":
        raise ValueError(f"unknown call_format {call_format!r} (chat, react, native, json, python)")
    if template in _TEMPLATE_SYNTAX:
        return _TEMPLATE_SYNTAX[template]  # type: ignore[return-value]
    if template == "model":
        if chat_template and "<tool_call>" not in chat_template and "<|python_tag|>" in chat_template:
            return "llama31"
        return "hermes"
    raise ValueError(
        f"call_format native needs a tool-calling template (hermes, llama31 or model), not {template!r}"
    )
