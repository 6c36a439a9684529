"""Calls written as JSON: bare objects or lists (``json``), Hermes ``<tool_call>`` tags (``hermes``), Llama-3.1's
``{"name", "parameters"}`` and ``<|python_tag|>`` forms (``llama31``), glaive's ``<functioncall>`` (``glaive``),
and OpenAI ``tool_calls`` (:func:`from_openai`).

Every reader ends in :func:`call_from_json`, so a call object means the same whatever wraps it: the name under
``name`` (or an OpenAI wrapper's ``function.name``), the arguments under ``arguments`` (else ``parameters``, else
``args``; none at all is ``{}``) as an object or as the JSON text of one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from agentflan.calls.fences import unfence
from agentflan.calls.python_calls import parse_python
from agentflan.calls.types import ToolCall

_NAME = re.compile(r'"name"\s*:\s*"([^"\\]+)"')  # the name of a call whose JSON does not parse
_ARGS_TAIL = re.compile(r'"arguments"\s*:\s*(.*?)[\s`]*$', re.S)  # ... and the text of its arguments
_DECODER = json.JSONDecoder()
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "</s>")
_GLAIVE_QUOTED = re.compile(r'"name"\s*:\s*"([^"]+)"\s*,\s*"arguments"\s*:\s*\'(.*)\'\s*}\s*$', re.S)
_TAG_OPEN, _TAG_CLOSE = "<tool_call>", "</tool_call>"
_GLAIVE_OPEN, _GLAIVE_END = "<functioncall>", "<|endoftext|>"
_PYTHON_TAG = "<|python_tag|>"


def whole_json(text: str) -> tuple[bool, Any]:
    """(True, value) when the whole text, or one fenced block that is the whole text, is JSON."""
    try:
        return True, json.loads(unfence(text))
    except (ValueError, RecursionError):
        return False, None


def json_objects(text: str) -> Iterator[tuple[Any, int, int]]:
    """Every JSON object that starts at some ``{`` of the text, in order, with its span (nested ones too)."""
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                value, end = _DECODER.raw_decode(text, i)
            except (ValueError, RecursionError):
                continue
            yield value, i, end


def strip_end_markers(text: str) -> str:
    """The text less end-of-turn markers a server may leave on it."""
    t = text.rstrip()
    while t.endswith(_END_MARKERS):
        t = next(t[: -len(m)].rstrip() for m in _END_MARKERS if t.endswith(m))
    return t


def decode_arguments(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Arguments as a JSON object: an object, or the JSON text of one (empty text: ``{}``); else an error."""
    if isinstance(raw, str):
        text = raw.strip() or "{}"
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None, f"arguments are not JSON: {text[:80]!r}"
    else:
        value = raw
    if not isinstance(value, dict):
        return None, f"arguments are {type(value).__name__}, not a JSON object"
    return value, None


def call_from_json(
    value: Any, call_id: str, *, raw: str | None = None, span: tuple[int, int] | None = None, syntax: str = "json"
) -> ToolCall:
    """One call from a JSON value, or from a text that should hold one: never raises, errors are returned."""
    if isinstance(value, str):
        text = raw = value if raw is None else raw
        try:
            value = json.loads(unfence(value))
        except (ValueError, RecursionError):
            name = m.group(1) if (m := _NAME.search(text)) else None
            tail = a.group(1) if (a := _ARGS_TAIL.search(text)) else None
            return ToolCall(name, None, call_id, text, f"the call is not JSON: {text[:80]!r}", syntax=syntax,
                            error_code="bad_call", raw_arguments=tail, span=span)  # fmt: skip
    if raw is None:
        raw = json.dumps(value, ensure_ascii=False, default=str)
    if not isinstance(value, Mapping):
        error = f"the call is {type(value).__name__}, not an object"
        return ToolCall(None, None, call_id, raw, error, syntax=syntax, error_code="bad_call", span=span)
    fn = value["function"] if isinstance(value.get("function"), Mapping) else value
    given = value.get("id")
    if isinstance(given, (str, int)) and not isinstance(given, bool) and str(given):
        call_id = str(given)
    key = next((k for k in ("arguments", "parameters", "args") if k in fn), None)
    arguments, error = decode_arguments(fn[key]) if key else ({}, None)
    code = "bad_call_arguments" if error else None
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        name, error, code = None, "a call without a function name", "bad_call"
    else:
        name = name.strip()
    return ToolCall(name, arguments, call_id, raw, error, syntax=syntax, error_code=code,
                    raw_arguments=fn[key] if key else None, span=span)  # fmt: skip


def from_openai(tool_calls: Sequence[Any] | None, id_prefix: str = "call_") -> list[ToolCall]:
    """OpenAI ``tool_calls`` (``{id, type, function: {name, arguments}}``; the bare inner ``{name, arguments}``
    too), arguments as JSON text or as an object. The server's id is kept; one without gets ``call_<i>``."""
    return [call_from_json(c, f"{id_prefix}{k}", syntax="openai") for k, c in enumerate(tool_calls or [])]


def _call_like(value: Any) -> bool:
    if not isinstance(value, Mapping):
        return False
    fn = value["function"] if isinstance(value.get("function"), Mapping) else value
    return isinstance(fn.get("name"), str) and bool(fn["name"].strip())


def _array_items(text: str, start: int) -> list[tuple[Any, int, int]] | None:
    """The elements of the JSON array at ``text[start]``, each with its span; None if it is not one."""
    items, i = [], start + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            return None
        if text[i] == "]":
            return items
        try:
            value, end = _DECODER.raw_decode(text, i)
        except (ValueError, RecursionError):
            return None
        items.append((value, i, end))
        i = end


def parse_json(text: str, id_prefix: str = "call_", syntax: str = "json") -> list[ToolCall]:
    """Calls written as JSON: the whole reply (bare or fenced) as one call object, a list of them, or an OpenAI
    message with ``tool_calls``; else every call object inside the text (``Sure: {"name": ...}``); else a reply
    that starts as a JSON call (a line opening with ``{`` that names one) but does not parse: one error."""
    body = unfence(text)
    offset = max(text.find(body), 0)
    ok, value = whole_json(text)
    if ok and isinstance(value, list):
        items = _array_items(body, 0) or [(v, 0, 0) for v in value]
        return [
            call_from_json(v, f"{id_prefix}{k}", raw=body[s:e] or None, span=(offset + s, offset + e) if e else None,
                           syntax=syntax)  # fmt: skip
            for k, (v, s, e) in enumerate(items)
        ]
    if ok and isinstance(value, dict):
        if "tool_calls" in value and isinstance(value["tool_calls"], (list, type(None))):
            return [
                replace(c, syntax=syntax)
                for c in from_openai(value["tool_calls"], id_prefix)
            ]
        return [call_from_json(value, f"{id_prefix}0", raw=body, span=(offset, offset + len(body)), syntax=syntax)]
    if ok:
        return []  # a JSON string or number is a reply, not a call
    calls: list[ToolCall] = []
    taken = 0
    for value, start, end in json_objects(text):
        if start >= taken and _call_like(value):
            calls.append(call_from_json(value, f"{id_prefix}{len(calls)}", raw=text[start:end],
                                        span=(start, end), syntax=syntax))  # fmt: skip
            taken = end
    if calls:
        return calls
    # A call that does not parse: a line that opens with "{" (after an opening fence) and names a function.
    for m in re.finditer(r"^[ \t]*(?:```[\w+-]*[ \t]*\n)?[ \t]*\{", text, re.M):
        rest = text[m.start() :].strip()
        rest = rest.split("\n", 1)[1] if rest.startswith("```") and "\n" in rest else rest
        if _NAME.search(rest) or m.start() == 0:
            return [call_from_json(rest, f"{id_prefix}0", span=(m.start(), len(text)), syntax=syntax)]
    return []


def parse_hermes(text: str, id_prefix: str = "call_") -> list[ToolCall]:
    """Hermes / Qwen ``<tool_call>{"name", "arguments"}</tool_call>`` blocks, in order; text around them is the
    reply's content.

    The one rule for an unclosed tag: a ``<tool_call>`` without its ``</tool_call>`` runs to the next
    ``<tool_call>`` or to the end of the reply (less end-of-turn markers). It is a call when that text is one
    complete JSON call (a server that stops at ``</tool_call>`` leaves exactly this), and an error otherwise
    (the reply was cut inside the call). A stray ``</tool_call>`` is ignored."""
    calls: list[ToolCall] = []
    pos = 0
    while (start := text.find(_TAG_OPEN, pos)) != -1:
        body_start = start + len(_TAG_OPEN)
        close, nxt = text.find(_TAG_CLOSE, body_start), text.find(_TAG_OPEN, body_start)
        closed = close != -1 and (nxt == -1 or close < nxt)
        if closed:
            body, end = text[body_start:close], close + len(_TAG_CLOSE)
        else:
            end = nxt if nxt != -1 else len(text)
            body = strip_end_markers(text[body_start:end])
        call = call_from_json(body.strip(), f"{id_prefix}{len(calls)}", span=(start, end), syntax="hermes")
        if not closed and call.error:
            call = replace(call, error=f"unclosed <tool_call>: {call.error}")
        calls.append(call)
        pos = end
    return calls


def parse_llama31(text: str, id_prefix: str = "call_") -> list[ToolCall]:
    """Llama-3.1: ``{"name": ..., "parameters": {...}}`` objects (after any text, one per line, or separated by
    ``;``), or after ``<|python_tag|>``: such objects, or a built-in tool's ``brave_search.call(query="x")``."""
    body = strip_end_markers(text)
    if _PYTHON_TAG in body:
        start = body.index(_PYTHON_TAG) + len(_PYTHON_TAG)
        after = body[start:].strip()
        if not after.startswith(("{", "[")):
            return [
                replace(c, name=c.name.removesuffix(".call") if c.name else c.name, syntax="llama31",
                        span=(c.span[0] + shift, c.span[1] + shift) if c.span else None)  # fmt: skip
                for c in parse_python(after, id_prefix)
                if (shift := body.find(after, start)) >= 0
            ]
        body = after
    return parse_json(body, id_prefix, syntax="llama31")


def parse_glaive(text: str, id_prefix: str = "call_") -> list[ToolCall]:
    """glaive-function-calling: ``<functioncall> {"name": "f", "arguments": '{"a": 1}'}`` up to
    ``<|endoftext|>`` (the arguments a single-quoted JSON string, so the call as a whole is not JSON)."""
    calls: list[ToolCall] = []
    pos = 0
    while (start := text.find(_GLAIVE_OPEN, pos)) != -1:
        body_start = start + len(_GLAIVE_OPEN)
        ends = [e for e in (text.find(_GLAIVE_OPEN, body_start), text.find(_GLAIVE_END, body_start)) if e != -1]
        end = min(ends, default=len(text))
        body = text[body_start:end].strip()
        call_id = f"{id_prefix}{len(calls)}"
        if m := _GLAIVE_QUOTED.search(body):
            arguments, error = decode_arguments(m.group(2))
            call = ToolCall(m.group(1).strip(), arguments, call_id, body, error, syntax="glaive",
                            error_code="bad_call_arguments" if error else None, raw_arguments=m.group(2),
                            span=(start, end))  # fmt: skip
        else:
            call = call_from_json(body, call_id, span=(start, end), syntax="glaive")
        calls.append(call)
        pos = end if end > body_start else body_start
    return calls
