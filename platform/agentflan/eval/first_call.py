"""Read the first tool call of a model's reply, as tool-use eval and Agent-H score it.

The calls are read by :mod:`agentflan.calls` (the parser every caller shares); the rule here is tool-use
eval's: the FIRST call of the reply, in whichever of these formats it comes, read leniently:

=====  ==========================================================================================
chat   the chat-aligned protocol the model is tuned on (:mod:`agentflan.data.align`): the harness
       sends the query, then an ``ELICIT_TOOL`` turn, then an ``ELICIT_ARGS`` turn, and the reply is
       the list of the three assistant turns ``[thought, tool name, arguments]``
react  ``Thought: ...\\nAction: name\\nAction Input: {json}`` (other ReAct dialects are read by
       :func:`~agentflan.data.react.parse_step` too, but are not *valid*: see below)
json   ``{"name", "arguments"}`` or ``{"thought", "name", "arguments"}``, bare or in a ```json fence
native what a tool-calling chat template writes (``eval.output_format: native``, tools passed as
       ``tools=``): Hermes/Qwen ``<tool_call>{"name", "arguments"}</tool_call>`` blocks (text may
       precede them; parallel calls are several blocks, the first is scored; an unclosed block is
       read by :func:`~agentflan.calls.parse_calls`'s rule and is not valid), or Llama-3.1's bare
       ``{"name", "parameters"}``
=====  ==========================================================================================

A call is **valid** when it could be executed as it stands: the format's structure is all there (the
three ReAct labels; a JSON object with no other keys and nothing around it; a bare tool name in the tool
turn), the arguments are a JSON object, and, where the prompt asked for a format, it is that format.
A call that is found but not valid still gets its name and arguments read leniently (scored by
:mod:`agentflan.eval.tool_calls`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from agentflan import calls
from agentflan.calls import json_objects, whole_json
from agentflan.data.react import count_actions, parse_step

CallFormat = Literal["chat", "react", "json", "native"]
Reply = str | Sequence[str]  # one text, or the assistant turns of the chat-aligned protocol


@dataclass(frozen=True)
class FoundCall:
    """The first call of a reply as tool-use eval scores it (read by :mod:`agentflan.calls`)."""

    name: str | None  # None: the reply holds no tool call
    arguments: dict[str, Any] | str | None  # a dict when they parse as a JSON object, else the raw text
    format: CallFormat | None  # the format the call was read from
    valid: bool
    error: str = ""  # why it is not valid (or why no call was found)

    @property
    def found(self) -> bool:
        return self.name is not None


_THOUGHT_LINE = re.compile(r"^\s*Thought\s*:", re.I)
_INPUT_LINE = re.compile(r"^[ \t]*Action[ \t]*Input[ \t]*:", re.I | re.M)
_OBSERVATION_LINE = re.compile(r"^[ \t]*Observation(?:[ \t]+\d+)?[ \t]*:", re.I | re.M)
_JSON_CALL_KEYS = {"thought", "name", "arguments"}


def _decode_arguments(raw: Any) -> tuple[dict[str, Any] | str | None, str]:
    """Arguments as a dict where possible (also from a JSON-encoded string, OpenAI style, or one encoded twice;
    an object inside a text is read, as an error), else the raw text, and an error."""
    if isinstance(raw, dict):
        return raw, ""
    if raw is None:
        return None, "no arguments"
    if not isinstance(raw, str):
        return json.dumps(raw, ensure_ascii=False), "arguments are not a JSON object"
    ok, value = whole_json(raw)
    if ok and isinstance(value, dict):
        return value, ""
    if ok and isinstance(value, str):  # double-encoded
        return _decode_arguments(value)
    embedded = next((o for o, _, _ in json_objects(raw) if isinstance(o, dict)), None)
    if embedded is not None:
        return embedded, "text around the arguments object"
    return raw.strip(), "arguments are not a JSON object"


def _object(call: calls.ToolCall) -> dict[str, Any]:
    """The JSON object a call was written as (its keys say whether it kept to the format)."""
    ok, value = whole_json(call.raw)
    return value if ok and isinstance(value, dict) else {}


def _from_json(call: calls.ToolCall, exact: bool) -> FoundCall:
    obj = _object(call)
    key = next((k for k in ("arguments", "args", "parameters") if k in obj), None)
    arguments, error = _decode_arguments(obj[key]) if key else (None, "no 'arguments' key")
    if not error and key != "arguments":
        error = f"arguments under {key!r}, not 'arguments'"
    if not error and (extra := sorted(set(obj) - _JSON_CALL_KEYS)):
        error = f"unexpected keys {extra}"
    if not error and not exact:
        error = "text around the JSON object"
    return FoundCall(call.name, arguments, "json", not error, error)


def _from_native(text: str) -> FoundCall | None:
    """The first ``<tool_call>`` block of a reply (Hermes/Qwen templates), or a whole-reply Llama-3.1 call."""
    tags = calls.parse_calls(text, "hermes")
    if not tags:
        ok, value = whole_json(text)
        if (
            ok
            and isinstance(value, dict)
            and set(value) == {"name", "parameters"}
            and isinstance(value["name"], str)
        ):
            (call,) = calls.parse_calls(text, "llama31")
            arguments, error = _decode_arguments(call.raw_arguments)
            return FoundCall(call.name, arguments, "native", not error, error)
        return None
    call = tags[0]
    if call.name is None or call.error_code == "bad_call":
        return FoundCall(call.name, None, "native", False, "a <tool_call> block that is not a JSON call")
    keys = set(_object(call))
    arguments, error = (
        _decode_arguments(call.raw_arguments) if "arguments" in keys else (None, "no arguments")
    )
    if not error and (extra := sorted(keys - {"name", "arguments"})):
        error = f"unexpected keys {extra}"
    if not error and call.span and not text[call.span[0] : call.span[1]].rstrip().endswith("</tool_call>"):
        error = "no closing </tool_call>"
    return FoundCall(call.name, arguments, "native", not error, error)


def _from_react(text: str) -> FoundCall | None:
    step = parse_step(text)
    if step is None:
        return None
    if step.is_final or not step.tool:
        return FoundCall(None, None, "react", False, "a final answer, not a call")
    first = calls.parse_calls(text, "react")
    name, raw = (first[0].name, first[0].raw_arguments) if first else (step.tool, step.arguments)
    arguments, error = _decode_arguments(raw)
    if _OBSERVATION_LINE.search(text):
        error = "an 'Observation:' the model wrote itself"
    if (actions := count_actions(text)) > 1:
        error = f"{actions} actions in one reply"
    if not _INPUT_LINE.search(text):
        error = "no 'Action Input:' line"
    if not _THOUGHT_LINE.match(text):
        error = "no 'Thought:' line"
    return FoundCall(name, arguments, "react", not error, error)


def _from_chat(turns: Sequence[str], tool_names: Collection[str]) -> FoundCall:
    found = calls.parse_calls(turns, "chat")
    if not found:
        return FoundCall(None, None, "chat", False, "the tool turn names no tool")
    name, error = found[0].name, ""
    if name is None:  # a chatty tool turn: the one offered tool it mentions, as an invalid call
        mentioned = [n for n in tool_names if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w|\.\w)", turns[1])]
        if len(mentioned) != 1:
            return FoundCall(None, None, "chat", False, "no tool name in the tool turn")
        name, error = mentioned[0], "the tool name is not alone in its turn"
    if len(turns) < 3:
        return FoundCall(name, None, "chat", False, "no arguments turn")
    arguments, args_error = _decode_arguments(turns[2])
    error = error or args_error or ("more turns than [thought, tool, arguments]" if len(turns) > 3 else "")
    return FoundCall(name, arguments, "chat", not error, error)


def _from_text(text: str) -> FoundCall:
    """A native call first (``<tool_call>`` tags; a Llama-3.1 call), then JSON that is the whole reply, then
    ReAct, then a JSON call anywhere in the text, then a reply that starts as a JSON call but does not parse
    (a malformed call is a call, not a missed one).

    ReAct comes before the lenient search because its Action Input is a JSON object that may itself
    have a ``name`` key.
    """
    if (call := _from_native(text)) is not None:
        return call
    ok, value = whole_json(text)
    if ok and isinstance(value, (dict, list)):
        found = calls.parse_calls(text, "json")
        if found and found[0].name is not None and found[0].error_code != "bad_call":
            call = _from_json(found[0], exact=True)
            return (
                replace(call, valid=False, error="a list of calls, not one call")
                if isinstance(value, list)
                else call
            )
    if (call := _from_react(text)) is not None:
        return call
    if not ok and (found := calls.parse_calls(text, "json")) and found[0].name is not None:
        if found[0].error_code == "bad_call":  # a JSON call that does not parse
            return FoundCall(
                found[0].name, _decode_arguments(found[0].raw_arguments)[0], "json", False, "malformed JSON"
            )
        return _from_json(found[0], exact=False)
    return FoundCall(None, None, None, False, "no tool call found")


def parse_call(
    reply: Reply, expected_format: CallFormat | None = None, tool_names: Collection[str] = ()
) -> FoundCall:
    """Read the tool call in a reply: a text (ReAct or JSON), or the turns of the chat-aligned protocol.

    A sequence of two or more turns is read as ``[thought, tool name, arguments]``; a one-turn sequence
    as its text. ``tool_names`` (the tools offered) lets a chatty tool turn ("I'll use X.") still yield
    the name, as an invalid call. ``expected_format``: the format the prompt asked for; a call in another
    format is found but not valid.
    """
    turns = [reply] if isinstance(reply, str) else list(reply)
    if len(turns) >= 2:
        call = _from_chat(turns, tool_names)
    elif turns:
        call = _from_text(turns[0])
    else:
        call = FoundCall(None, None, None, False, "empty reply")
    if expected_format is not None and call.found and call.format != expected_format:
        call = replace(call, valid=False, error=f"asked for {expected_format}, got {call.format}")
    return call
