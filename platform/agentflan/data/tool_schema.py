"""Tools and calls in the canonical record's shape (OpenAI's): the error a reader raises for an unusable call,
a strict call, the tool list from any of the shapes datasets use, and the check that every call names an offered
tool. Shared by the function-calling readers, the negatives (tool pools) and eval (the tools a prompt offers)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentflan.calls import ToolCall
from agentflan.data.record import Message


class CallError(ValueError):
    """A call that cannot be used: (reason code, detail); readers turn it into a RecordError."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


def strict(call: ToolCall, where: str, call_id: str | None = None) -> dict[str, Any]:
    """A call read by :mod:`agentflan.calls` as an OpenAI call, or a :class:`CallError` with its code."""
    if call.error is not None or call.name is None or call.arguments is None:
        raise CallError(call.error_code or "bad_call", f"{where}: {call.error}")
    return {
        "id": call_id or call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }


def normalize_tools(tools: Any, where: str = "tools") -> list[dict[str, Any]]:
    """A list of JSON-schema functions in OpenAI's wrapper, from a list, a JSON string or a ``<tools>`` text."""
    if tools is None or tools == "":
        return []
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise CallError("bad_tools", f"{where} is not JSON") from None
    if isinstance(tools, Mapping):
        tools = [tools]
    if not isinstance(tools, list):
        raise CallError("bad_tools", f"{where} is {type(tools).__name__}, not a list")
    out = []
    for t in tools:
        if not isinstance(t, Mapping):
            raise CallError("bad_tools", f"{where}: a tool is {type(t).__name__}, not an object")
        fn = t["function"] if isinstance(t.get("function"), Mapping) else t
        if not isinstance(fn.get("name"), str):
            raise CallError("bad_tools", f"{where}: a tool without a name")
        out.append({"type": "function", "function": dict(fn)})
    return out


def tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    return {(t.get("function") or t).get("name", "") for t in tools}


def check_calls(messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> None:
    """Every call names an offered tool (when the record offers any)."""
    offered = tool_names(tools)
    if not offered:
        return
    for i, m in enumerate(messages):
        for call in m.tool_calls or []:
            name = call["function"]["name"]
            if name not in offered:
                raise CallError(
                    "unknown_tool",
                    f"message {i}: calls {name!r}, which the record does not offer ({', '.join(sorted(offered))})",
                )
