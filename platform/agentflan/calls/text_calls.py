"""Calls written as text turns: a ReAct step (``react``) and Agent-FLAN's chat-aligned turns (``chat``).

These are the forms a model trained with ``data.call_format: react`` or ``chat`` writes
(:mod:`agentflan.data.align`): ReAct ``Thought: ...\\nAction: name\\nAction Input: {json}``, one ``Action`` /
``Action Input`` pair per call; chat-aligned, the assistant turns ``[thought, tool name, arguments, (tool name,
arguments) ...]`` that the harness asks for with its elicit turns (a step without arguments may end after the
tool name: ``{}``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agentflan.calls.json_calls import decode_arguments, unfence
from agentflan.calls.types import ToolCall
from agentflan.data.react import action_spans, parse_step

_BARE_NAME = re.compile(r"^\w[\w.\-]*$")  # ToolBench names may start with a digit
REFUSALS = frozenset({"none", "no", "n/a", "null", "nothing", "no tool"})  # a tool turn that names none


def _arguments(text: str | None) -> tuple[dict | None, str | None]:
    return decode_arguments(unfence(text)) if text is not None and text.strip() else ({}, None)


def parse_react(text: str, id_prefix: str = "call_") -> list[ToolCall]:
    """Every action of a ReAct turn (read by :func:`agentflan.data.react.parse_step`, every dialect). A final
    answer (``Final Answer:``, ``Finish``) is not a call. Arguments are the ``Action Input`` (or ``name[...]``,
    a code block) as a JSON object; other text is an error that keeps the text in ``raw_arguments``."""
    calls = []
    for start, end in action_spans(text):
        segment = text[start:end]
        step = parse_step(segment)
        if step is None or step.is_final or not step.tool:
            continue
        arguments, error = _arguments(step.arguments)
        calls.append(ToolCall(step.tool.strip(), arguments, f"{id_prefix}{len(calls)}", segment.strip(), error,
                              syntax="react", error_code="bad_call_arguments" if error else None,
                              raw_arguments=step.arguments, span=(start, end)))  # fmt: skip
    return calls


def tool_turn_name(text: str) -> str | None:
    """The tool a chat-aligned tool turn names when it names one alone (quotes, backticks, a full stop off)."""
    bare = text.strip().strip("`'\"*").rstrip(".").strip()
    return bare if _BARE_NAME.match(bare) and bare.casefold() not in REFUSALS else None


def is_refusal(text: str) -> bool:
    return text.strip().strip("`'\"*").rstrip(".").strip().casefold() in REFUSALS


def parse_chat(turns: str | Sequence[str], id_prefix: str = "call_") -> list[ToolCall]:
    """The calls of the chat-aligned turns ``[thought, tool, arguments, tool, arguments, ...]``. A tool turn
    that declines (``None``) ends them; one that does not name a tool alone is an error (name None)."""
    if isinstance(turns, str):
        return []  # one turn is a thought or an answer
    rest = list(turns[1:])
    calls = []
    for k in range(0, len(rest), 2):
        tool_turn, call_id = rest[k], f"{id_prefix}{len(calls)}"
        if is_refusal(tool_turn):
            break
        name = tool_turn_name(tool_turn)
        if name is None:
            calls.append(ToolCall(None, None, call_id, tool_turn, f"no tool name in the tool turn: {tool_turn[:60]!r}",
                                  syntax="chat", error_code="bad_call"))  # fmt: skip
            continue
        raw_args = rest[k + 1] if k + 1 < len(rest) else None
        arguments, error = _arguments(raw_args)
        calls.append(ToolCall(name, arguments, call_id, "\n".join(rest[k : k + 2]), error, syntax="chat",
                              error_code="bad_call_arguments" if error else None, raw_arguments=raw_args))  # fmt: skip
    return calls
