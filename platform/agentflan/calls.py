"""Tool calls read from model output: the one parser every caller uses (data, eval, BFCL, rollouts).

Placeholder: only the call type is fixed here; the parser is being written (issue 23).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One call found in a reply. Every call is returned, in order, each with an id; a call that cannot be
    read is still returned, with ``error`` set, so a rollout can hand the error back as an observation."""

    name: str | None  # the tool name as written (None when not even a name could be read)
    arguments: dict[str, Any] | None  # parsed JSON object; None when they do not parse as one
    id: str  # the server's id, or a deterministic one (call_<index>) when the syntax has none
    raw: str = ""  # the text the call was read from
    error: str | None = None  # why it cannot be executed as it stands


# --- Stand-in until the calls helper's parser lands (issue 23): Hermes tags and OpenAI tool_calls only. ---
import json as _json  # noqa: E402
import re as _re  # noqa: E402

_HERMES = _re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", _re.S)


def syntax_for(call_format: str, template: str) -> str:
    """The call syntax a model trained with ``call_format`` under ``template`` writes."""
    if call_format == "native":
        return "llama31" if template == "llama31" else "hermes"
    return call_format


def parse_calls(text: str, syntax: str) -> list[ToolCall]:
    """Every call in ``text`` (stand-in: Hermes ``<tool_call>`` tags only)."""
    if syntax != "hermes":
        return []
    calls = []
    for i, m in enumerate(_HERMES.finditer(text or "")):
        raw = m.group(1)
        try:
            obj = _json.loads(raw)
        except ValueError as e:
            calls.append(ToolCall(None, None, f"call_{i}", raw, f"not JSON: {e}"))
            continue
        name, args = (obj.get("name"), obj.get("arguments")) if isinstance(obj, dict) else (None, None)
        ok = isinstance(name, str) and isinstance(args, dict)
        calls.append(ToolCall(name, args if ok else None, f"call_{i}", raw, None if ok else "no name/arguments"))
    return calls


def from_openai(tool_calls: list[dict[str, Any]] | None) -> list[ToolCall]:
    """A server's ``tool_calls`` as ToolCalls (arguments parsed from their JSON text)."""
    out = []
    for i, c in enumerate(tool_calls or []):
        fn = c.get("function") or {}
        raw = fn.get("arguments")
        try:
            args = _json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as e:
            out.append(ToolCall(fn.get("name"), None, c.get("id") or f"call_{i}", str(raw), f"not JSON: {e}"))
            continue
        ok = isinstance(args, dict)
        out.append(ToolCall(fn.get("name"), args if ok else None, c.get("id") or f"call_{i}", str(raw),
                            None if ok else "arguments are not an object"))  # fmt: skip
    return out
