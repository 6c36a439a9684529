"""Readers for the function-calling datasets people already have, into the canonical record with native calls.

Every format below becomes OpenAI-style messages: an assistant message carries ``tool_calls``
(``[{id, type: "function", function: {name, arguments}}]``, ``arguments`` a JSON object as text; parallel calls
are several entries) and may carry a ``reasoning`` text; a tool message carries ``tool_call_id`` and ``name``.
``tools`` is a list of JSON-schema functions in OpenAI's wrapper (``{"type": "function", "function": {...}}``).

=====================  ========================================================================================
format                 how it is recognised, and what it looks like
=====================  ========================================================================================
openai                 ``messages`` whose assistant turns hold ``tool_calls`` (or ``function_call``), ``tools``
sharegpt_fc            LLaMA-Factory: ``conversations`` with ``function_call`` / ``observation`` turns, ``tools``
                       as a JSON string
glaive_raw             glaive-function-calling-v2: ``system`` (the schema after "SYSTEM:") and one ``chat``
                       string of ``USER:`` / ``ASSISTANT:`` / ``FUNCTION RESPONSE:`` blocks; a call is
                       ``<functioncall> {"name": ..., "arguments": '{...}'}`` (single-quoted arguments)
typed_parts            ``messages`` whose ``content`` is a list of ``{type: text | reasoning | tool_call, value}``
xlam                   xLAM / APIGen: ``query``, ``tools`` and ``answers`` as JSON strings (one call each)
hermes                 NousResearch Hermes: ShareGPT turns with ``<tools>``, ``<tool_call>``, ``<tool_response>``
toolace                ToolACE: ``system`` naming the tools, ShareGPT turns, calls as ``[func(a=1, b="x")]``
=====================  ========================================================================================

Calls are read by :mod:`agentflan.calls`, the parser every caller shares; the rule here is strict: a call that
cannot be read (arguments that are not a JSON object, a call with no name) or that names a tool the record does
not offer is a :class:`~agentflan.data.readers.RecordError`: the record goes to quarantine with the reason
(the call's error code) and the message it is in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentflan.calls import call_from_json, from_openai, parse_calls, whole_json
from agentflan.data.record import Message
from agentflan.data.tool_schema import CallError, check_calls, normalize_tools, strict

__all__ = ["FORMATS", "CallError", "detect", "normalize_tools", "read"]  # the readers, and what their callers catch

FORMATS = ("openai", "sharegpt_fc", "glaive_raw", "typed_parts", "xlam", "hermes", "toolace")
_GLAIVE_BLOCK = re.compile(r"(USER|ASSISTANT|FUNCTION RESPONSE):\s*", re.M)
_TAG = {name: re.compile(rf"<{name}>\s*(.*?)\s*</{name}>", re.S) for name in ("tools", "tool_response")}
_SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- building blocks


def _json_calls(value: Any, id_prefix: str, where: str) -> list[dict[str, Any]]:
    """A turn that is a call, or a JSON list of calls (ShareGPT ``function_call`` values)."""
    ok, parsed = whole_json(value) if isinstance(value, str) else (True, value)
    values = parsed if ok and isinstance(parsed, list) else [value]
    return [strict(call_from_json(v, f"{id_prefix}{k}"), where) for k, v in enumerate(values)]


def _link_results(messages: list[Message]) -> list[Message]:
    """Give every tool message the id and name of the call it answers (the calls of the last assistant
    message, in order), and every call an id."""
    pending: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            pending = list(m.tool_calls)
        elif m.role == "tool" and pending:
            call = pending.pop(0)
            m.tool_call_id = m.tool_call_id or call["id"]
            m.name = m.name or call["function"]["name"]
    return messages


def _assistant(content: str, calls: list[dict[str, Any]], reasoning: str | None = None) -> Message:
    return Message(
        role="assistant", content=content, loss=True, tool_calls=calls or None, reasoning=reasoning
    )


# --------------------------------------------------------------------------------------------------- formats


def detect(obj: Mapping[str, Any]) -> str | None:
    """The function-calling format of a raw record, or None (then the older readers decide)."""
    if "chat" in obj and isinstance(obj.get("chat"), str):
        return "glaive_raw"
    if "query" in obj and "answers" in obj:
        return "xlam"
    turns = obj.get("messages")
    if isinstance(turns, list) and turns and isinstance(turns[0], Mapping):
        if any(isinstance(t.get("content"), list) for t in turns if isinstance(t, Mapping)):
            return "typed_parts"
        if any(isinstance(t, Mapping) and (t.get("tool_calls") or t.get("function_call")) for t in turns):
            return "openai"
        return None
    turns = obj.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], Mapping):
        roles = {str(t.get("from", "")).lower() for t in turns if isinstance(t, Mapping)}
        values = " ".join(str(t.get("value", "")) for t in turns if isinstance(t, Mapping))
        if "function_call" in roles or "observation" in roles:
            return "sharegpt_fc"
        if "<tool_call>" in values or "<tools>" in values:  # Hermes rows may carry a `tools` column too
            return "hermes"
        if isinstance(obj.get("tools"), (str, list)):
            return "sharegpt_fc"
        if isinstance(obj.get("system"), str) and "tool" in roles and _python_calls_in(turns):
            return "toolace"
    return None


def read(fmt: str, obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    """Messages and tools of a record in ``fmt``; raises :class:`CallError` for a call that cannot be used."""
    reader = {
        "openai": _openai, "sharegpt_fc": _sharegpt_fc, "glaive_raw": _glaive_raw, "typed_parts": _typed_parts,
        "xlam": _xlam, "hermes": _hermes, "toolace": _toolace,
    }[fmt]  # fmt: skip
    messages, tools = reader(obj)
    messages = _link_results(messages)
    check_calls(messages, tools)
    return messages, tools


def _openai(obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    out = []
    for i, t in enumerate(obj["messages"]):
        role = t.get("role")
        content = t.get("content") or ""
        if not isinstance(content, str):
            raise CallError("bad_message", f"message {i}: content is {type(content).__name__}, expected text")
        raw_calls = t.get("tool_calls") or (
            [{"function": t["function_call"]}] if t.get("function_call") else []
        )
        calls = [strict(c, f"message {i}") for c in from_openai(raw_calls, f"call_{i}_")]
        if role == "assistant":
            out.append(_assistant(content, calls, t.get("reasoning") or t.get("reasoning_content")))
        elif role in ("tool", "function"):
            out.append(
                Message(role="tool", content=content, name=t.get("name"), tool_call_id=t.get("tool_call_id"))
            )
        else:
            out.append(Message(role=role, content=content))
    return out, normalize_tools(obj.get("tools"))


def _sharegpt_fc(obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    out: list[Message] = []
    for i, t in enumerate(obj["conversations"]):
        who = str(t.get("from", "")).lower()
        role, value = _SHAREGPT_ROLES.get(who), t.get("value", "")
        if role is None:
            raise CallError("bad_message", f"message {i}: unknown role {who!r}")
        if who == "function_call":
            out.append(_assistant("", _json_calls(value, f"call_{i}_", f"message {i}")))
        elif role == "assistant":
            out.append(_assistant(value, []))
        else:
            out.append(Message(role=role, content=value))
    return out, normalize_tools(obj.get("tools"))


def _glaive_raw(obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    system = re.sub(r"^\s*SYSTEM:\s*", "", obj.get("system") or "")
    tools = _schemas_in(system)
    out = [Message(role="system", content=system.strip())] if system.strip() else []
    blocks = _GLAIVE_BLOCK.split(obj["chat"])
    for k in range(1, len(blocks) - 1, 2):
        label, text = blocks[k], blocks[k + 1].strip()
        where = f"message {len(out)}"
        if label == "USER":
            out.append(Message(role="user", content=text))
        elif label == "FUNCTION RESPONSE":
            out.append(Message(role="tool", content=text))
        elif calls := parse_calls(text, "glaive", f"call_{len(out)}_"):
            before = text[: calls[0].span[0]].strip() if calls[0].span else ""
            ids = [f"call_{len(out)}", *(c.id for c in calls[1:])]
            out.append(_assistant(before, [strict(c, where, i) for c, i in zip(calls, ids, strict=True)]))
        else:
            out.append(_assistant(text.replace("<|endoftext|>", "").strip(), []))
    return out, tools


def _schemas_in(text: str) -> list[dict[str, Any]]:
    """The JSON objects with a ``name`` in a free text (glaive and ToolACE system prompts list their tools), or
    OpenAI-wrapped ones (``{"type": "function", "function": {"name": ...}}``, as Hermes's ``<tools>`` block)."""

    def named(v: Any) -> bool:
        return isinstance(v, Mapping) and ("name" in v or isinstance(v.get("function"), Mapping))

    decoder, found, pos = json.JSONDecoder(), [], 0
    while (start := text.find("{", pos)) != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        if named(value):
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if named(v)]
        pos = end
    list_start = text.find("[")
    if not found and list_start != -1:
        try:
            value, _ = decoder.raw_decode(text, list_start)
            found = [v for v in value if named(v)]
        except ValueError:
            pass
    return normalize_tools(found)


def _typed_parts(obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    out: list[Message] = []
    for i, t in enumerate(obj["messages"]):
        role, parts = t.get("role"), t.get("content")
        parts = parts if isinstance(parts, list) else [{"type": "text", "value": parts or ""}]
        text = "\n".join(p.get("value", "") for p in parts if p.get("type") == "text").strip()
        reasoning = (
            "\n".join(p.get("value", "") for p in parts if p.get("type") == "reasoning").strip() or None
        )
        calls = [
            strict(call_from_json(p.get("value"), f"call_{i}_{k}"), f"message {i}")
            for k, p in enumerate(x for x in parts if x.get("type") == "tool_call")
        ]
        if role == "assistant":
            out.append(_assistant(text, calls, reasoning))
        elif role == "tool":
            out += _tool_results(text)
        else:
            out.append(Message(role=role, content=text))
    _ids_from_results(out)
    return out, normalize_tools(obj.get("tools"))


def _tool_results(text: str) -> list[Message]:
    """A tool turn that holds the results of parallel calls as ``[{tool_call_id, name, content}, ...]``."""
    try:
        value = json.loads(text)
    except ValueError:
        return [Message(role="tool", content=text)]
    if isinstance(value, list) and value and all(isinstance(v, Mapping) and "content" in v for v in value):
        return [
            Message(
                role="tool",
                content=v["content"] if isinstance(v["content"], str) else json.dumps(v["content"]),
                name=v.get("name"),
                tool_call_id=v.get("tool_call_id"),
            )
            for v in value
        ]
    return [Message(role="tool", content=text)]


def _ids_from_results(messages: list[Message]) -> None:
    """Calls written without ids take the ids their results carry (in order), so the two stay linked."""
    for i, m in enumerate(messages):
        if m.role != "assistant" or not m.tool_calls:
            continue
        results = []
        for later in messages[i + 1 :]:
            if later.role != "tool":
                break
            results.append(later)
        for call, result in zip(m.tool_calls, results, strict=False):
            if result.tool_call_id:
                call["id"] = result.tool_call_id


def _xlam(obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    tools = normalize_tools(obj.get("tools"))
    for t in tools:  # xLAM writes parameters as {name: {type, description, default}}: made a JSON schema
        params = t["function"].get("parameters")
        if (
            isinstance(params, Mapping)
            and "properties" not in params
            and all(isinstance(p, Mapping) for p in params.values())
        ):
            required = [k for k, p in params.items() if "optional" not in str(p.get("type", ""))]
            t["function"]["parameters"] = {"type": "object", "properties": dict(params), "required": required}
    answers = obj.get("answers")
    if isinstance(answers, str):
        try:
            answers = json.loads(answers)
        except ValueError:
            raise CallError("bad_call", "answers are not JSON") from None
    if not isinstance(answers, list):
        raise CallError("bad_call", f"answers are {type(answers).__name__}, not a list")
    calls = [strict(c, "message 1") for c in from_openai(answers)]
    return [Message(role="user", content=str(obj["query"])), _assistant("", calls)], tools


def _hermes(obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    tools = normalize_tools(obj.get("tools"))
    out: list[Message] = []
    for i, t in enumerate(obj["conversations"]):
        role, value = _SHAREGPT_ROLES.get(str(t.get("from", "")).lower()), str(t.get("value", ""))
        if role is None:
            raise CallError("bad_message", f"message {i}: unknown role {t.get('from')!r}")
        if role == "system" and _TAG["tools"].search(value):
            # The prompt's own words name an empty "<tools> </tools>" pair before the real block.
            tools = tools or _schemas_in("\n".join(_TAG["tools"].findall(value)))
            out.append(
                Message(role="system", content=_TAG["tools"].sub("", value).strip() or "You can call tools.")
            )
        elif role == "assistant":
            read = parse_calls(value, "hermes", f"call_{i}_")
            content = value
            for c in reversed(read):  # the <tool_call> blocks leave the text
                content = content[: c.span[0]] + content[c.span[1] :] if c.span else content
            out.append(_assistant(content.strip(), [strict(c, f"message {i}") for c in read]))
        elif role == "tool" or (role == "user" and _TAG["tool_response"].search(value)):
            responses = _TAG["tool_response"].findall(value) or [value]
            out += [Message(role="tool", content=r) for r in responses]
        else:
            out.append(Message(role=role, content=value))
    return out, tools


def _python_calls_in(turns: Sequence[Mapping[str, Any]]) -> bool:
    return any(
        str(t.get("value", "")).strip().startswith("[") and "(" in str(t.get("value", ""))
        for t in turns
        if str(t.get("from", "")).lower() in ("assistant", "gpt")
    )


def _toolace(obj: Mapping[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    tools = _schemas_in(obj.get("system") or "")
    out = [Message(role="system", content=obj["system"])] if obj.get("system") else []
    for i, t in enumerate(obj["conversations"], start=len(out)):
        role, value = _SHAREGPT_ROLES.get(str(t.get("from", "")).lower()), str(t.get("value", ""))
        if role is None:
            raise CallError("bad_message", f"message {i}: unknown role {t.get('from')!r}")
        if role == "assistant" and value.strip().startswith("[") and "(" in value:
            out.append(_assistant("", _python_calls(value, f"message {i}")))
        else:
            out.append(Message(role=role, content=value))
    return out, tools


def _python_calls(text: str, where: str) -> list[dict[str, Any]]:
    """ToolACE's ``[func(a=1, b="x"), other(c=[1, 2])]``: keyword arguments with Python literal values."""
    calls = parse_calls(text, "python")
    if not calls:
        raise CallError("bad_call", f"{where}: not a list of calls")
    return [strict(c, where) for c in calls]
