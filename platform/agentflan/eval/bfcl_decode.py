"""Decode a model's reply into the calls BFCL's checker reads: ``[{name: {param: value}}]`` (:data:`Call`).

The calls are read by :mod:`agentflan.calls`, the parser every caller shares; this module is BFCL's rule on
top. A reply is a list of OpenAI ``tool_calls`` (native function calling), or a text, tried in this order:
Hermes ``<tool_call>`` tags; a reply that is JSON as a whole (a call, a list of calls, an OpenAI message with
``tool_calls``); Python-style calls (BFCL's prompting format: ``[func(a=1, b="x")]``, keyword arguments,
dotted names, read as BFCL's own decoder reads them); the first ReAct ``Action`` / ``Action Input`` step.
A reply whose calls cannot all be read in the first form it takes is a :class:`DecodeError` (BFCL's
"decoder failed"). Kept apart from the checker (:mod:`agentflan.eval.bfcl`), which only sees decoded calls.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from agentflan.calls import ToolCall, from_openai, parse_calls, whole_json

Call = dict[str, dict[str, Any]]  # {function name: {parameter: value}}, BFCL's decoded form


class DecodeError(ValueError):
    """The reply holds no call in any format we read."""


def decode_reply(reply: str | Sequence[Any]) -> tuple[list[Call], bool]:
    """The calls in a reply, and whether they came as native ``tool_calls``. Raises :class:`DecodeError`."""
    if not isinstance(reply, str):
        return [_shape(c) for c in from_openai(reply)], True
    text = reply.strip()
    if not text:
        raise DecodeError("empty reply")
    if tags := parse_calls(text, "hermes"):
        return [_shape(c) for c in tags], False
    ok, value = whole_json(text)
    if ok and isinstance(value, (dict, list)):
        return [_shape(c) for c in parse_calls(text, "json")], False
    python = parse_calls(text, "python")
    if python and all(_bfcl_python(c) for c in python):
        return [{_bfcl_name(c.name): c.arguments} for c in python], False  # type: ignore[arg-type, misc]
    react = parse_calls(text, "react")
    if react and react[0].arguments is not None:
        return [{react[0].name: react[0].arguments}], False  # type: ignore[dict-item]
    if react:
        raise DecodeError(f"ReAct arguments are not a JSON object: {react[0].error}")
    why = next((c.error for c in python if c.error), "no call in any format read")
    raise DecodeError(f"no call: {why}")


def _shape(call: ToolCall) -> Call:
    """A JSON or native call in BFCL's shape; one that cannot be read fails the whole reply."""
    if call.error is not None or call.name is None or call.arguments is None:
        raise DecodeError(call.error or "unreadable call")
    return {call.name: call.arguments}


def _bfcl_python(call: ToolCall) -> bool:
    """A Python call BFCL's decoder reads: a name and keyword arguments, their values read as BFCL reads them
    (non-literal values and positional arguments are BFCL's to judge, not a decoding failure)."""
    return call.name is not None and call.arguments is not None and all(
        p.isidentifier() for p in _bfcl_name(call.name).split(".")
    )


def _bfcl_name(name: str) -> str:
    """The name as BFCL's ``resolve_ast_call`` takes it: the attribute chain, less a base that is not a name
    (``__import__('os').system`` is ``system``: a string BFCL compares, never code)."""
    try:
        node = ast.parse(name, mode="eval").body
    except SyntaxError:
        return name
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))
